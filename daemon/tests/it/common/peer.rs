//! The test bed's tailscaled peer: fetches through its SOCKS5 proxy and
//! its CLI.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tailnet_testbed::Bed;

use super::process::{run, wait_until};

/// The tailscaled peer fetches `url` through its SOCKS5 proxy.
pub fn peer_fetch(socks5: &str, url: &str) -> Output {
    peer_fetch_within(socks5, url, 10)
}

/// [`peer_fetch`], giving up after `max_secs`.
pub fn peer_fetch_within(socks5: &str, url: &str, max_secs: u32) -> Output {
    run(Command::new("curl").args([
        "-sS",
        "--max-time",
        &max_secs.to_string(),
        "--socks5-hostname",
        socks5,
        url,
    ]))
}

pub fn wait_for_page(socks5: &str, url: &str, timeout: Duration) -> String {
    wait_until(timeout, &format!("the peer to fetch {url}"), || {
        let out = peer_fetch(socks5, url);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
}

/// `tailscale --socket=<socket> <args>`.
pub fn tailscale(bed: &Bed, socket: &Path, args: &[&str]) -> Output {
    run(Command::new(&bed.tailscale_bin)
        .arg(format!("--socket={}", socket.display()))
        .args(args))
}

/// The peer's `tailscale status --json`.
pub fn peer_status(bed: &Bed) -> serde_json::Value {
    let out = tailscale(bed, &bed.peer_socket, &["status", "--json"]);
    assert!(
        out.status.success(),
        "tailscale status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}
