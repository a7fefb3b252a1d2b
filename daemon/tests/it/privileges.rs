//! Least privilege, seen from outside the daemon: once started it holds
//! only the capabilities it needs in every set, on every thread, with
//! no_new_privs set, and a pod's ADD and DEL still work.

use std::collections::BTreeMap;
use std::fs;

use tailnet_cnid::podmgr::naming::{host_veth_name, tun_name};

use crate::common::{self, require, run_tag, take_turn, Daemon, DaemonOptions, Pod};

/// `CAP_NET_ADMIN` (12) and `CAP_SYS_ADMIN` (21): the health port of the
/// test daemon is above 1024.
const KEPT: u64 = (1 << 12) | (1 << 21);

/// The capability and no_new_privs lines of a `/proc/.../status`.
fn privileges(status: &str) -> BTreeMap<String, u64> {
    status
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.starts_with("Cap") || *key == "NoNewPrivs")
        .map(|(key, value)| {
            let value = value.trim();
            let parsed = if key == "NoNewPrivs" {
                value.parse()
            } else {
                u64::from_str_radix(value, 16)
            };
            (key.to_string(), parsed.expect("a number"))
        })
        .collect()
}

#[test]
fn the_daemon_keeps_only_net_admin_and_sys_admin_and_still_serves_pods() {
    let bed = require!(common::daemon_bed(&["ip"]));
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let cluster = format!("priv{}", run_tag());
    let daemon = Daemon::start(work.path(), DaemonOptions::new(&bed, &cluster));

    let expected = BTreeMap::from([
        ("CapAmb".to_string(), 0),
        ("CapBnd".to_string(), KEPT),
        ("CapEff".to_string(), KEPT),
        ("CapInh".to_string(), 0),
        ("CapPrm".to_string(), KEPT),
        ("NoNewPrivs".to_string(), 1),
    ]);
    let tasks = fs::read_dir(format!("/proc/{}/task", daemon.pid())).expect("daemon tasks");
    let mut threads = 0;
    for task in tasks {
        let path = task.expect("task").path().join("status");
        let status = fs::read_to_string(&path).expect("task status");
        assert_eq!(privileges(&status), expected, "{}", path.display());
        threads += 1;
    }
    assert!(threads > 1, "the runtime's threads are checked too");

    let pod = Pod::create("privweb", 1);
    let pod_links = [
        tun_name(&pod.container_id),
        host_veth_name(&pod.container_id),
    ];
    let added = pod.add(&daemon.socket);
    added.expect_ok("ADD with reduced capabilities");
    assert!(added.tailnet_ipv4().is_some(), "{}", added.stdout);
    let links = common::our_links();
    assert!(pod_links.iter().all(|l| links.contains(l)), "{links:?}");
    pod.del(&daemon.socket)
        .expect_ok("DEL with reduced capabilities");
    let links = common::our_links();
    assert!(!pod_links.iter().any(|l| links.contains(l)), "{links:?}");
}
