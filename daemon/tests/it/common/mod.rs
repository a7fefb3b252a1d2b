//! The harness of the daemon's integration tests.
//!
//! What a test requires is checked through `tailnet_testbed`: when the
//! test bed, root or a tool is missing, the test skips saying so, unless
//! `CI=true` or `TAILNET_TEST_REQUIRE=1` asks for every test to run, in
//! which case it fails with the same message. Everything that needs root
//! runs inside `scripts/isolated.sh` (as `scripts/test-in-netns.sh` does),
//! and tests that share its network namespace in ways that collide take
//! turns ([`turn`]).

use std::path::PathBuf;

pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod host;
pub mod installer;
pub mod keys;
pub mod netns;
pub mod packet;
pub mod peer;
pub mod pod;
pub mod podman;
pub mod private_bed;
pub mod process;
pub mod token_review;
pub mod turn;

pub use daemon::{Daemon, DaemonOptions};
pub use host::{describe_fds, host_leaks, links_named, our_links, our_rules};
pub use peer::{peer_fetch, peer_fetch_within, wait_for_page};
pub use pod::{shim, Pod};
pub use private_bed::PrivateBed;
pub use process::{run, run_ok, run_tag, run_with_stdin, run_within, wait_until};
pub use tailnet_testbed::{require, settle, Bed, KeySpec, Missing, Needs, Unmet};
pub use turn::take_turn;

pub const CNI_PATH: &str = "/usr/lib/cni";

/// The shim binary next to the daemon's in the target directory.
pub fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tailnet-cnid")).with_file_name("tailnet-cni")
}

/// The shared test bed, for tests that only talk to it.
pub fn bed() -> Result<Bed, Unmet> {
    Needs::new().bed()
}

/// What tests that run the real daemon and shim need: root inside
/// `scripts/isolated.sh`, the shim binary, `tools`, and the shared bed.
pub fn daemon_bed(tools: &[&str]) -> Result<Bed, Unmet> {
    isolated_root()
        .tools(tools)
        .file(
            shim_binary(),
            "build the shim first: `cargo build -p tailnet-cni` (a workspace test run builds it)",
        )
        .bed()
}

/// Root inside `scripts/isolated.sh`: links, rules and firewall changes
/// stay in the test's own network namespace.
pub fn isolated_root() -> Needs {
    Needs::new().isolated().root()
}
