//! The test bed's tailscaled peer (fetches through its SOCKS5 proxy, its
//! CLI) and the tailscaled nodes a test starts and logs in itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tailnet_testbed::{Bed, KeySpec};

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

/// An official tailscaled a test started, with its state and socket in a
/// directory of the test's; killed (by its own pid) when dropped.
pub struct OwnTailscaled {
    child: Child,
    pub socket: PathBuf,
    pub state: PathBuf,
}

impl OwnTailscaled {
    /// Starts tailscaled on `tun` (a TUN name or `userspace-networking`)
    /// with files named `<name>.state` and `<name>.sock` in `dir`, and
    /// waits for its socket.
    pub fn start(bed: &Bed, dir: &Path, name: &str, tun: &str) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        let state = dir.join(format!("{name}.state"));
        let child = Command::new(&bed.tailscaled_bin)
            .env("TS_NO_LOGS_NO_SUPPORT", "true")
            .arg(format!("--tun={tun}"))
            .args(["--no-logs-no-support", "--port=0"])
            .arg(format!("--state={}", state.display()))
            .arg(format!("--socket={}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tailscaled");
        let daemon = Self {
            child,
            socket,
            state,
        };
        wait_until(Duration::from_secs(30), "tailscaled's socket", || {
            daemon.socket.exists().then_some(())
        });
        daemon
    }

    /// `tailscale up` against the test bed's control server with a fresh
    /// single-use key and DNS left alone, plus `extra` flags; panics with
    /// the CLI's error when it fails.
    pub fn up(&self, bed: &Bed, hostname: &str, extra: &[&str]) {
        let key = bed
            .admin()
            .mint(&KeySpec::single_use(hostname).expiring_in(3600))
            .expect("admin API");
        let mut args = vec![
            "up".to_owned(),
            format!("--login-server={}", bed.control_url),
            format!("--auth-key={key}"),
            format!("--hostname={hostname}"),
            "--accept-dns=false".to_owned(),
            "--timeout=60s".to_owned(),
        ];
        args.extend(extra.iter().map(|flag| (*flag).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = tailscale(bed, &self.socket, &args);
        assert!(
            out.status.success(),
            "tailscale up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnTailscaled {
    fn drop(&mut self) {
        // Cleanup: nothing is left to do for a child that is already gone.
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
