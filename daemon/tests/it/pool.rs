//! The warm identity pool against the real test bed (rscale and the
//! official tailscaled): a pod ADDed from the pool is known to the peer by
//! its own hostname and is reachable through the home relay its identity
//! kept connected while pooled; the pool refills; a stopped daemon
//! leaves no pooled node enabled, and neither does a killed one once it
//! starts again, even with the pool turned off.
//!
//! Run inside `scripts/isolated.sh` with the test bed's environment (as
//! `scripts/test-in-netns.sh` does); otherwise it says why and skips
//! (fails under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::collections::HashSet;
use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::common::peer::peer_status;
use crate::common::{
    self, require, run_tag, take_turn, wait_for_page, wait_until, Bed, Daemon, DaemonOptions, Pod,
};

const TOOLS: &[&str] = &["ip", "curl", "setpriv", "/usr/bin/busybox"];
const POOL_SIZE: usize = 2;

/// Ids of the enabled nodes named under `prefix`.
fn enabled(bed: &Bed, prefix: &str) -> HashSet<u64> {
    bed.admin()
        .enabled_nodes(prefix)
        .expect("admin API")
        .iter()
        .filter_map(|node| node["id"].as_u64())
        .collect()
}

/// The peer's view of the node holding `ipv4`.
fn peer_entry(bed: &Bed, ipv4: &str) -> Option<Value> {
    let status = peer_status(bed);
    status["Peer"].as_object()?.values().find_map(|peer| {
        peer["TailscaleIPs"]
            .as_array()?
            .iter()
            .any(|ip| ip.as_str() == Some(ipv4))
            .then(|| peer.clone())
    })
}

#[test]
fn a_pod_bound_from_the_pool_is_known_by_its_hostname_and_no_pooled_node_outlives_the_daemon() {
    let bed = require!(common::daemon_bed(TOOLS));
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let cluster = format!("pool{}", run_tag());
    let pool_prefix = format!("{cluster}-pool-");
    let options = DaemonOptions {
        pool_size: POOL_SIZE,
        extra_config: "pool_tags = [[]]".into(),
        ..DaemonOptions::new(&bed, &cluster)
    };
    let mut daemon = Daemon::start(work.path(), options);

    // Registered ahead of demand.
    let pooled = wait_until(Duration::from_secs(60), "the pool to fill", || {
        let ids = enabled(&bed, &pool_prefix);
        (ids.len() == POOL_SIZE).then_some(ids)
    });
    // Each keeps its home relay connected while it waits.
    wait_until(
        Duration::from_secs(30),
        "the pooled identities' home relays",
        || (daemon.log_text().matches("DERP connected").count() >= POOL_SIZE).then_some(()),
    );

    let web = Pod::create("poolweb", 1);
    let ipv4 = web
        .add(&daemon.socket)
        .expect_ok("ADD web")
        .tailnet_ipv4()
        .expect("web address");
    let node = bed
        .admin()
        .node_with_ipv4(ipv4.parse().expect("an IPv4 address"))
        .expect("admin API")
        .expect("the pod's node");
    let node_id = node["id"].as_u64().expect("node id");
    assert!(pooled.contains(&node_id), "{node} is not a pooled node");
    assert!(
        daemon
            .log_text()
            .contains("takes over its identity's warm relay links"),
        "the pod did not get its pooled identity's relay link"
    );

    // The peer learns the pod's hostname through control.
    let hostname = web.hostname(&cluster);
    let seen = wait_until(
        Duration::from_secs(30),
        "the peer to see the hostname",
        || {
            peer_entry(&bed, &ipv4)
                .filter(|peer| peer["HostName"].as_str() == Some(hostname.as_str()))
        },
    );
    eprintln!("POOL peer sees {}", seen["HostName"]);

    let _server = web.serve(work.path(), "pooled\n");
    let url = format!("http://{ipv4}/");
    assert_eq!(
        wait_for_page(&bed.peer_socks5, &url, Duration::from_secs(60)),
        "pooled\n"
    );

    // Refilled: the pod's node and a full pool.
    wait_until(Duration::from_secs(60), "the pool to refill", || {
        (enabled(&bed, &cluster).len() == POOL_SIZE + 1).then_some(())
    });

    web.del(&daemon.socket).expect_ok("DEL web");
    assert!(!enabled(&bed, &cluster).contains(&node_id));

    // SIGTERM: the pool is logged out; the next start fills a new one.
    let before_stop = enabled(&bed, &cluster);
    daemon.restart();
    let refilled = wait_until(Duration::from_secs(60), "a new pool", || {
        let ids = enabled(&bed, &cluster);
        (ids.len() == POOL_SIZE).then_some(ids)
    });
    assert!(
        refilled.is_disjoint(&before_stop),
        "stopped daemon left pooled nodes enabled: {:?}",
        refilled.intersection(&before_stop).collect::<Vec<_>>()
    );

    // SIGKILL, then a start with the pool off: what the killed daemon held
    // is logged out and removed.
    daemon.kill9();
    let config = fs::read_to_string(&daemon.config).expect("daemon config");
    let without_pool = config.replace(&format!("pool_size = {POOL_SIZE}"), "pool_size = 0");
    assert_ne!(config, without_pool, "pool_size is in the config");
    fs::write(&daemon.config, without_pool).expect("daemon config");
    daemon.start_again();
    let pool_dir = daemon.state_dir.join("pool");
    let key_files = || -> Vec<_> {
        fs::read_dir(&pool_dir)
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    wait_until(
        Duration::from_secs(60),
        "the leftover pool to be removed",
        || (enabled(&bed, &cluster).is_empty() && key_files().is_empty()).then_some(()),
    );
}
