//! The auth backends' integration tests, one binary. Run one module with
//! `cargo test -p tailnet-auth --test it -- <module>::`.

mod common;

mod contract_headscale;
mod contract_minter;
mod contract_rscale;
mod contract_tailscale;
mod no_secret_leaks;
mod rscale_live;
mod tls_ca_file;
