//! A SIGKILLed daemon resumes its pods' WireGuard sessions: the restarted
//! daemon re-handshakes with the official tailscaled peer the pod had a
//! session with, instead of leaving the peer to find out at its rekey
//! timeout. Real daemon, real shim, the test bed's tailscaled.
//!
//! Run inside `scripts/isolated.sh` with the test bed's environment (as
//! `scripts/test-in-netns.sh` does); otherwise it says why and skips
//! (fails under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    self, require, run_tag, take_turn, wait_for_page, wait_until, Daemon, DaemonOptions, Pod,
};

const TOOLS: &[&str] = &["ip", "curl", "setpriv", "/usr/bin/busybox"];
const RESUMED: &str = "tailnet_cni_resume_handshakes_total";

/// The peers the daemon remembers for `container_id`.
fn remembered_peers(state_dir: &Path, container_id: &str) -> Vec<Value> {
    let file = state_dir
        .join("sessions")
        .join(format!("{container_id}.json"));
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|json| json["peers"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_restarted_daemon_re_handshakes_with_the_peers_its_pods_had() {
    let bed = require!(common::daemon_bed(TOOLS));
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let cluster = format!("resume{}", run_tag());
    let mut daemon = Daemon::start(work.path(), DaemonOptions::new(&bed, &cluster));

    let web = Pod::create("web", 1);
    let ipv4 = web
        .add(&daemon.socket)
        .expect_ok("ADD web")
        .tailnet_ipv4()
        .expect("web address");
    let _server = web.serve(work.path(), "alive\n");
    let url = format!("http://{ipv4}/");
    assert_eq!(
        wait_for_page(&bed.peer_socks5, &url, Duration::from_secs(60)),
        "alive\n"
    );
    // The session with the peer is on disk before the kill.
    wait_until(
        Duration::from_secs(30),
        "the pod's session to be remembered",
        || (!remembered_peers(&daemon.state_dir, &web.container_id).is_empty()).then_some(()),
    );

    daemon.kill9();
    daemon.start_again();
    let restarted_at = Instant::now();
    // The restarted daemon started the handshake itself; the peer did not
    // have to time out its old session first.
    let resumed = wait_until(Duration::from_secs(30), "a resume handshake", || {
        daemon.gauge(RESUMED).filter(|n| *n >= 1.0)
    });
    assert_eq!(
        wait_for_page(&bed.peer_socks5, &url, Duration::from_secs(60)),
        "alive\n"
    );
    eprintln!(
        "RESTART resume: resume_handshakes={resumed} page_after_s={:.2}",
        restarted_at.elapsed().as_secs_f64()
    );

    web.del(&daemon.socket).expect_ok("DEL web");
    assert!(
        remembered_peers(&daemon.state_dir, &web.container_id).is_empty()
            && !daemon
                .state_dir
                .join("sessions")
                .join(format!("{}.json", web.container_id))
                .exists(),
        "DEL left the remembered sessions"
    );
    assert!(
        daemon.state_files().is_empty(),
        "{:?}",
        daemon.state_files()
    );
    assert!(bed
        .admin()
        .enabled_nodes(&cluster)
        .expect("admin API")
        .is_empty());
}
