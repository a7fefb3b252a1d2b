//! The shim's integration tests, one binary. Run one module with
//! `cargo test -p tailnet-cni --test it -- <module>::`.

mod common;

mod annotations;
mod bad_input;
mod podman;
mod static_binary;
mod versions;
