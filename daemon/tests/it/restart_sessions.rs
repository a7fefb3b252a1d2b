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

use crate::common::pod::Server;
use crate::common::{
    self, peer_fetch_within, require, run_tag, take_turn, wait_for_page, wait_until, Bed, Daemon,
    DaemonOptions, Pod, PrivateBed,
};

const TOOLS: &[&str] = &["ip", "curl", "setpriv", "/usr/bin/busybox"];
const RESUMED: &str = "tailnet_cni_resume_handshakes_total";

/// The daemon's sessions file for `container_id`, if it parses.
fn sessions_file(state_dir: &Path, container_id: &str) -> Option<Value> {
    let file = state_dir
        .join("sessions")
        .join(format!("{container_id}.json"));
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
}

/// The peers the daemon remembers for `container_id`.
fn remembered_peers(state_dir: &Path, container_id: &str) -> Vec<Value> {
    sessions_file(state_dir, container_id)
        .and_then(|json| json["peers"].as_array().cloned())
        .unwrap_or_default()
}

/// A pod of `daemon` serving a page, once the test bed's peer fetches it
/// over the tailnet; with its address, its URL and its server.
fn pod_reached_by_the_peer(
    bed: &Bed,
    daemon: &Daemon,
    dir: &Path,
    name: &str,
    index: u32,
) -> (Pod, String, String, Server) {
    let pod = Pod::create(name, index);
    let ipv4 = pod
        .add(&daemon.socket)
        .expect_ok("ADD")
        .tailnet_ipv4()
        .expect("the pod's address");
    let server = pod.serve(dir, "alive\n");
    let url = format!("http://{ipv4}/");
    assert_eq!(
        wait_for_page(&bed.peer_socks5, &url, Duration::from_secs(60)),
        "alive\n"
    );
    (pod, ipv4, url, server)
}

#[test]
fn a_restarted_daemon_re_handshakes_with_the_peers_its_pods_had() {
    let bed = require!(common::daemon_bed(TOOLS));
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let cluster = format!("resume{}", run_tag());
    let mut daemon = Daemon::start(work.path(), DaemonOptions::new(&bed, &cluster));

    let (web, _, url, _server) = pod_reached_by_the_peer(&bed, &daemon, work.path(), "web", 1);
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

/// After a restart the pod enforces the packet filter it remembered only
/// until control sends its own: a rule removed at the control server while
/// the daemon was down is enforced once the netmap arrives. (That the
/// remembered filter lets peers in before any netmap is covered by
/// `wg::engine::tests::resume::a_remembered_filter_admits_peers_before_the_netmap`.)
#[test]
fn a_rule_removed_at_control_while_the_daemon_was_down_is_enforced_after_the_restart() {
    require!(common::daemon_bed(TOOLS));
    let _turn = take_turn();
    // The policy is tailnet-wide: a bed of our own.
    let private = PrivateBed::up();
    let bed = private.bed();
    let work = tempfile::tempdir().expect("tempdir");
    let cluster = format!("filter{}", run_tag());
    let mut daemon = Daemon::start(work.path(), DaemonOptions::new(&bed, &cluster));

    let (web, ipv4, url, _server) =
        pod_reached_by_the_peer(&bed, &daemon, work.path(), "filtered", 3);
    wait_until(
        Duration::from_secs(30),
        "the pod's session and filter to be remembered",
        || {
            let file = sessions_file(&daemon.state_dir, &web.container_id)?;
            (!remembered_peers(&daemon.state_dir, &web.container_id).is_empty()
                && file["filter"]["rules"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()))
            .then_some(())
        },
    );

    daemon.kill9();
    // While the daemon is down the policy stops letting the peer in.
    let policy = serde_json::json!({
        "groups": [],
        "rules": [
            {"action": "accept", "sources": [ipv4], "destinations": [format!("{}:*", bed.peer_ipv4)]}
        ]
    });
    bed.admin()
        .call("PUT", "/api/v1/admin/policy", Some(&policy))
        .expect("policy applied");
    daemon.start_again();

    wait_until(
        Duration::from_secs(60),
        "control's filter to refuse the peer",
        || {
            let refused = !peer_fetch_within(&bed.peer_socks5, &url, 3)
                .status
                .success();
            let filtered = daemon.pod(&ipv4)["filtered_packets"].as_u64().unwrap_or(0);
            (refused && filtered > 0).then_some(())
        },
    );
    assert!(
        !peer_fetch_within(&bed.peer_socks5, &url, 3)
            .status
            .success(),
        "the rule removed at control let the peer in after the netmap"
    );
    web.del(&daemon.socket).expect_ok("DEL web");
}
