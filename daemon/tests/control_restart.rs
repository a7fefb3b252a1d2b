//! A control-server restart: sessions notice, reconnect with backoff, and
//! netmaps resume by themselves. Runs its own test bed instance (its own
//! rscale and PostgreSQL in a temporary directory) so stopping that rscale
//! disturbs no other test. Needs root and `scripts/isolated.sh`
//! (TAILNET_ISOLATED=1); skips, saying why, otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tailnet_cnid::control::{
    AuthKeySource, ControlClient, ControlConfig, IdentityKeys, IdentityOptions, SessionState,
};

fn testbed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/testbed.sh")
}

/// One private test bed, brought down on drop.
struct PrivateBed {
    dir: tempfile::TempDir,
}

impl PrivateBed {
    fn up() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bed = Self { dir };
        bed.run("up");
        bed
    }

    fn run(&self, command: &str) -> String {
        let out = Command::new(testbed())
            .arg(command)
            .env("TAILNET_TESTBED_DIR", self.dir.path())
            .output()
            .expect("testbed.sh");
        assert!(
            out.status.success(),
            "testbed.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .expect(name)
            .trim()
            .to_string()
    }

    fn stop_control_server(&self) {
        let pid: i32 = self.read("rscale.pid").parse().expect("pid");
        // SAFETY: kill with a pid from our own pid file.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..100 {
            // SAFETY: signal 0 only probes for the process.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("rscale did not stop");
    }
}

impl Drop for PrivateBed {
    fn drop(&mut self) {
        let _ = Command::new(testbed())
            .arg("down")
            .env("TAILNET_TESTBED_DIR", self.dir.path())
            .output();
    }
}

struct Mint {
    bed_url: String,
    token: String,
}

#[tonic::async_trait]
impl AuthKeySource for Mint {
    async fn auth_key(&self) -> Result<String, String> {
        let out = tokio::process::Command::new("curl")
            .args([
                "-fsS",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-H",
            ])
            .arg(format!("Authorization: Bearer {}", self.token))
            .args(["-d", r#"{"description":"restart test","tags":[]}"#])
            .arg(format!("{}/api/v1/admin/auth-keys", self.bed_url))
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "no key".into())
    }
}

#[tokio::test]
async fn sessions_reconnect_after_a_control_server_restart() {
    if std::env::var("TAILNET_ISOLATED").as_deref() != Ok("1") {
        eprintln!("skipped: not inside scripts/isolated.sh");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let bed = PrivateBed::up();
    let url = format!("http://127.0.0.1:{}", bed.read("rscale.port"));
    let client = ControlClient::new(ControlConfig::new(&url, None).unwrap()).unwrap();
    let handle = client.spawn_identity(
        IdentityKeys::generate(),
        IdentityOptions::new("restart-test", vec![]),
        Arc::new(Mint {
            bed_url: url.clone(),
            token: bed.read("admin-token"),
        }),
    );
    let before = handle
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("registered");
    let me = handle.self_node().expect("self");

    bed.stop_control_server();
    let mut state = handle.state();
    tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| matches!(s, SessionState::Reconnecting { .. })),
    )
    .await
    .expect("the session noticed the server going away")
    .expect("state channel");

    let mut netmap = handle.netmap();
    netmap.borrow_and_update();
    // Same config, same database: the server comes back as it was.
    bed.run("up");
    tokio::time::timeout(
        Duration::from_secs(90),
        state.wait_for(|s| *s == SessionState::Connected),
    )
    .await
    .expect("the session reconnected by itself")
    .expect("state channel");
    tokio::time::timeout(Duration::from_secs(30), netmap.changed())
        .await
        .expect("a fresh netmap arrived")
        .expect("netmap channel");
    let after = netmap.borrow().clone().expect("netmap");
    assert!(!Arc::ptr_eq(&before, &after), "netmap was not refreshed");
    assert_eq!(
        handle.self_node().as_ref(),
        Some(&me),
        "identity changed over the restart"
    );
    handle.shutdown();
}
