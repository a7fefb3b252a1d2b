//! Selection from the runtime's pod annotations, through the built binary:
//! pods that did not opt in never need the daemon; the rest are forwarded as
//! before.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};
use tailnet_cni_proto::v1::AddRequest;

/// No daemon listens here: the directory does not exist.
const ABSENT_SOCKET: &str = "/nonexistent/tailnet-cni-test/daemon.sock";
/// A skipped pod is answered locally; this bounds it far below the 2 s
/// connect timeout a daemon call could spend.
const LOCAL_ANSWER_BOUND: Duration = Duration::from_secs(1);

fn add_config(socket: &Path, version: &str, extra: Value) -> Vec<u8> {
    let mut config = plugin_config(version, socket, extra);
    config["prevResult"] = bridge_result(version);
    serde_json::to_vec(&config).expect("json")
}

fn with_annotations(annotations: Value, selection: Option<&str>) -> Value {
    let mut extra = json!({"runtimeConfig": {
        "io.kubernetes.cri.pod-annotations": annotations,
        "portMappings": []
    }});
    if let Some(selection) = selection {
        extra["selection"] = json!(selection);
    }
    extra
}

/// Runs ADD with `extra` keys against a fake daemon that attaches the pod;
/// checks the result and returns the one request the daemon received.
fn add_through_fake_daemon(extra: Value) -> AddRequest {
    let daemon = FakeDaemon::start(Script::default());
    let output = run_binary(
        &container_env("ADD"),
        &add_config(&daemon.socket, "1.1.0", extra),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout_json(&output), expected_add_result("1.1.0"));
    match daemon.calls().as_slice() {
        [Call::Add(request)] => request.clone(),
        calls => panic!("{calls:?}"),
    }
}

#[test]
fn pods_that_did_not_opt_in_get_prev_result_with_no_daemon() {
    let socket = Path::new(ABSENT_SOCKET);
    let cases = [
        (
            "unannotated, selection annotated",
            with_annotations(
                json!({"kubernetes.io/config.seen": "now"}),
                Some("annotated"),
            ),
        ),
        (
            "opted out, selection all",
            with_annotations(json!({"tailnet-cni.io/enabled": "false"}), Some("all")),
        ),
        (
            "opted out, no selection",
            with_annotations(json!({"tailnet-cni.io/enabled": "false"}), None),
        ),
    ];
    for (case, extra) in cases {
        for version in VERSIONS {
            let started = Instant::now();
            let output = run_binary(
                &container_env("ADD"),
                &add_config(socket, version, extra.clone()),
            );
            assert!(
                output.status.success(),
                "{case} {version}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(started.elapsed() < LOCAL_ANSWER_BOUND, "{case} {version}");
            assert_eq!(
                stdout_json(&output),
                bridge_result(version),
                "{case} {version}"
            );
            assert!(output.stderr.is_empty(), "{case} {version}");
        }
        for command in ["CHECK", "DEL"] {
            let output = run_binary(
                &container_env(command),
                &add_config(socket, "1.1.0", extra.clone()),
            );
            assert!(
                output.status.success(),
                "{case} {command}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.stdout.is_empty(), "{case} {command}");
        }
    }
}

#[test]
fn opted_in_pods_still_need_the_daemon() {
    let extra = with_annotations(json!({"tailnet-cni.io/enabled": "true"}), Some("annotated"));
    let output = run_binary(
        &container_env("ADD"),
        &add_config(Path::new(ABSENT_SOCKET), "1.1.0", extra),
    );
    assert!(!output.status.success());
    let error = stdout_json(&output);
    assert_eq!(error["code"], json!(11), "{error}");
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains(ABSENT_SOCKET),
        "{error}"
    );
}

#[test]
fn without_annotations_every_pod_is_forwarded_as_before() {
    // `selection = "annotated"` alone decides nothing: the runtime did not
    // say what the pod carries.
    let extra = json!({"selection": "annotated"});
    let output = run_binary(
        &container_env("ADD"),
        &add_config(Path::new(ABSENT_SOCKET), "1.1.0", extra.clone()),
    );
    assert!(!output.status.success());
    assert_eq!(stdout_json(&output)["code"], json!(11));

    assert_eq!(add_through_fake_daemon(extra).annotations, None);
}

#[test]
fn opted_in_pods_carry_their_annotations_to_the_daemon() {
    let extra = with_annotations(
        json!({"tailnet-cni.io/enabled": "true", "tailnet-cni.io/hostname": "web", "team": "x"}),
        Some("annotated"),
    );
    let request = add_through_fake_daemon(extra);
    let entries = &request.annotations.as_ref().expect("annotations").entries;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries["tailnet-cni.io/hostname"], "web");
}
