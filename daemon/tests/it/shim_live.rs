//! The shim binary against a real `tailnet-cnid` on the test bed: STATUS,
//! a DEL of a container that was never added, and the daemon's health and
//! metrics endpoints.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common::{
    self, require, run_ok, run_tag, run_with_stdin, take_turn, Bed, Daemon, DaemonOptions,
};

const TOOLS: &[&str] = &["ip"];

/// A CNI 1.1.0 plugin config pointing at `socket`.
fn plugin_config(socket: &Path) -> Vec<u8> {
    json!({
        "cniVersion": "1.1.0",
        "name": "podman-tailnet",
        "type": "tailnet-cni",
        "daemonSocket": socket.display().to_string(),
    })
    .to_string()
    .into_bytes()
}

/// Runs the shim binary with exactly `env` and `stdin`.
fn run_shim(env: &HashMap<&str, String>, stdin: &[u8]) -> Output {
    run_with_stdin(
        Command::new(common::shim_binary()).env_clear().envs(env),
        stdin,
    )
}

fn start_daemon(work: &Path, bed: &Bed) -> Daemon {
    Daemon::start(
        work,
        DaemonOptions::new(bed, &format!("shimlive{}", run_tag())),
    )
}

#[test]
fn status_answers_ready_or_not_available() {
    let bed = require!(common::daemon_bed(TOOLS));
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let daemon = start_daemon(work.path(), &bed);
    let env = HashMap::from([("CNI_COMMAND", "STATUS".to_owned())]);
    let output = run_shim(&env, &plugin_config(&daemon.socket));
    if output.status.success() {
        assert!(output.stdout.is_empty());
    } else {
        let error: Value = serde_json::from_slice(&output.stdout).expect("CNI error JSON");
        assert!(error["code"] == 50 || error["code"] == 51, "{error}");
        assert!(!error["msg"].as_str().unwrap_or_default().is_empty());
    }
}

#[test]
fn del_of_a_never_added_container_succeeds_twice() {
    let bed = require!(common::daemon_bed(TOOLS));
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let daemon = start_daemon(work.path(), &bed);
    let env = HashMap::from([
        ("CNI_COMMAND", "DEL".to_owned()),
        ("CNI_CONTAINERID", format!("shimtest{}", run_tag())),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/opt/cni/bin".to_owned()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=9d1c"
                .to_owned(),
        ),
    ]);
    let config = plugin_config(&daemon.socket);
    for attempt in 0..2 {
        let output = run_shim(&env, &config);
        assert!(
            output.status.success(),
            "attempt {attempt}: {} {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.stdout.is_empty());
    }
}

/// `/healthz` of a live daemon answers from its real state, and `/metrics`
/// carries what Prometheus in a cluster needs.
#[test]
fn health_and_build_info_of_a_live_daemon() {
    let bed = require!(common::daemon_bed(&["ip", "curl"]));
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let daemon = start_daemon(work.path(), &bed);
    let healthz = run_ok(Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        " %{http_code}",
        &format!("http://{}/healthz", daemon.health),
    ]));
    assert_eq!(healthz, "ok\n 200");
    let metrics = daemon.metrics();
    let build_info = metrics
        .lines()
        .find(|line| line.starts_with("tailnet_cni_build_info{"))
        .unwrap_or_else(|| panic!("no build_info in\n{metrics}"));
    assert!(
        build_info.starts_with(&format!(
            "tailnet_cni_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )) && build_info.ends_with("\"} 1"),
        "{build_info}"
    );
    assert_eq!(daemon.gauge("tailnet_cni_pods_missing_plugin"), Some(0.0));
}
