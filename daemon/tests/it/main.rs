//! The daemon's integration tests, one binary: linking the daemon once
//! instead of once per test file. Run one module with
//! `cargo test -p tailnet-cnid --test it -- <module>::`; the ones that need
//! the real test bed, root and the isolated network namespace run with
//! `scripts/isolated.sh scripts/test-in-netns.sh -p tailnet-cnid --test it <filter>`.

mod common;

mod control_expiry;
mod control_https;
mod control_restart;
mod control_rscale;
mod cri_k3s_node;
mod cri_kubelet;
mod dataplane_direct;
mod dataplane_e2e;
mod dataplane_tailscaled;
mod dataplane_tun;
mod e2e_podman;
mod host_bypass;
mod installed_entry;
mod magicdns;
mod minter;
mod peer_routes;
mod plumbing;
mod pool;
mod privileges;
mod reliability;
mod restart_sessions;
mod shim_live;
