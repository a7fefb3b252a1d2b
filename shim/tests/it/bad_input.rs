//! What the runtime sees when something is wrong: the right CNI code, a
//! message naming the problem, one stderr line, and never a hang.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tailnet_cni_proto::budget;

use crate::common::*;

const ABSENT_SOCKET: &str = "/nonexistent/tailnet-cni-test/daemon.sock";

/// Runs the binary and checks it failed with `code` and a message
/// containing `needle`, printed as the spec's error object.
fn assert_fails(case: &str, env: &HashMap<String, String>, stdin: &[u8], code: u32, needle: &str) {
    let output = run_binary(env, stdin);
    assert!(!output.status.success(), "{case}: exited 0");
    let error = stdout_json(&output);
    assert_eq!(error["code"], json!(code), "{case}: {error}");
    let msg = error["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{case}: {msg:?} lacks {needle:?}");
    assert!(error["cniVersion"].is_string(), "{case}: {error}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{case}: stderr {stderr:?}");
    assert!(
        stderr.contains(&format!("code={code}")),
        "{case}: {stderr:?}"
    );
}

fn config_bytes(version: &str, socket: &Path, extra: Value) -> Vec<u8> {
    serde_json::to_vec(&plugin_config(version, socket, extra)).expect("json")
}

fn without(mut env: HashMap<String, String>, variable: &str) -> HashMap<String, String> {
    env.remove(variable);
    env
}

fn with(mut env: HashMap<String, String>, variable: &str, value: &str) -> HashMap<String, String> {
    env.insert(variable.into(), value.into());
    env
}

#[test]
fn malformed_environment_and_config_are_refused_before_the_daemon() {
    // A daemon that would answer, so a missed validation shows as success.
    let daemon = FakeDaemon::start(Script::default());
    let socket = daemon.socket.as_path();
    let good = config_bytes(
        "1.0.0",
        socket,
        json!({"prevResult": bridge_result("1.0.0")}),
    );
    let oversized = {
        let mut bytes = br#"{"cniVersion":"1.0.0","name":"n","type":"t","pad":""#.to_vec();
        bytes.resize(bytes.len() + (1 << 20), b'a');
        bytes.extend_from_slice(br#""}"#);
        bytes
    };
    let gc_env = with(HashMap::new(), "CNI_COMMAND", "GC");

    // (case, environment, stdin, expected code, text the message must contain)
    type Case<'a> = (&'a str, HashMap<String, String>, Vec<u8>, u32, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed json",
            container_env("ADD"),
            b"{\"cniVersion\":".to_vec(),
            6,
            "not valid JSON",
        ),
        (
            "empty stdin",
            container_env("ADD"),
            Vec::new(),
            6,
            "no network configuration",
        ),
        (
            "json array",
            container_env("DEL"),
            b"[]".to_vec(),
            6,
            "not a JSON object",
        ),
        (
            "oversized stdin",
            container_env("ADD"),
            oversized,
            7,
            "exceeds 1048576 bytes",
        ),
        (
            "no command",
            without(container_env("ADD"), "CNI_COMMAND"),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "unknown command",
            container_env("ATTACH"),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "no container id",
            without(container_env("ADD"), "CNI_CONTAINERID"),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "no netns on ADD",
            without(container_env("ADD"), "CNI_NETNS"),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "no netns on CHECK",
            without(container_env("CHECK"), "CNI_NETNS"),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "no ifname on DEL",
            without(container_env("DEL"), "CNI_IFNAME"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "bad ifname",
            with(container_env("ADD"), "CNI_IFNAME", "eth0:1"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "invalid container id",
            with(container_env("ADD"), "CNI_CONTAINERID", "-x/../y"),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "unknown CNI_ARGS",
            with(
                container_env("ADD"),
                "CNI_ARGS",
                "K8S_POD_NAME=web;COLOR=blue",
            ),
            good.clone(),
            4,
            "COLOR",
        ),
        (
            "GC without CNI_PATH",
            gc_env,
            config_bytes("1.1.0", socket, json!({"cni.dev/valid-attachments": []})),
            4,
            "CNI_PATH",
        ),
        (
            "unsupported version",
            container_env("ADD"),
            config_bytes("0.2.0", socket, json!({})),
            1,
            "0.2.0",
        ),
        (
            "future version",
            container_env("DEL"),
            config_bytes("2.0.0", socket, json!({})),
            1,
            "2.0.0",
        ),
        (
            "no name",
            container_env("ADD"),
            br#"{"cniVersion":"1.0.0","type":"tailnet-cni","prevResult":{}}"#.to_vec(),
            7,
            "`name`",
        ),
        (
            "no type",
            container_env("ADD"),
            br#"{"cniVersion":"1.0.0","name":"n","prevResult":{}}"#.to_vec(),
            7,
            "`type`",
        ),
        (
            "no cniVersion",
            container_env("ADD"),
            br#"{"name":"n","type":"t","prevResult":{}}"#.to_vec(),
            7,
            "`cniVersion`",
        ),
        (
            "bad mtu",
            container_env("ADD"),
            config_bytes("1.0.0", socket, json!({"mtu": 9, "prevResult": {}})),
            7,
            "`mtu`",
        ),
        (
            "bad prevResult",
            container_env("ADD"),
            config_bytes("1.0.0", socket, json!({"prevResult": {"ips": 3}})),
            7,
            "prevResult",
        ),
        (
            "ADD without prevResult",
            container_env("ADD"),
            config_bytes("1.0.0", socket, json!({})),
            7,
            "prevResult",
        ),
        (
            "CHECK without prevResult",
            container_env("CHECK"),
            config_bytes("1.1.0", socket, json!({})),
            7,
            "prevResult",
        ),
        (
            "GC without valid list",
            with(container_env("GC"), "CNI_PATH", "/opt/cni/bin"),
            config_bytes("1.1.0", socket, json!({})),
            7,
            "valid-attachments",
        ),
    ];
    for (case, env, stdin, code, needle) in cases {
        assert_fails(case, &env, &stdin, code, needle);
    }
    assert!(daemon.calls().is_empty(), "{:?}", daemon.calls());
}

#[test]
fn absent_daemon_socket() {
    let socket = Path::new(ABSENT_SOCKET);
    let add = config_bytes(
        "1.0.0",
        socket,
        json!({"prevResult": bridge_result("1.0.0")}),
    );
    assert_fails("ADD", &container_env("ADD"), &add, 11, ABSENT_SOCKET);
    let check = config_bytes(
        "1.0.0",
        socket,
        json!({"prevResult": expected_add_result("1.0.0")}),
    );
    assert_fails("CHECK", &container_env("CHECK"), &check, 11, ABSENT_SOCKET);
    let status = config_bytes("1.1.0", socket, json!({}));
    assert_fails(
        "STATUS",
        &container_env("STATUS"),
        &status,
        50,
        ABSENT_SOCKET,
    );

    // DEL succeeds, warning on stderr only.
    let del = config_bytes("1.0.0", socket, json!({}));
    let output = run_binary(&container_env("DEL"), &del);
    assert!(output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("level=warn") && stderr.contains(ABSENT_SOCKET),
        "{stderr}"
    );
}

#[test]
fn stale_socket_file_counts_as_no_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("daemon.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let del = config_bytes("1.1.0", &socket, json!({}));
    let output = run_binary(&container_env("DEL"), &del);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let add = config_bytes(
        "1.1.0",
        &socket,
        json!({"prevResult": bridge_result("1.1.0")}),
    );
    assert_fails("ADD", &container_env("ADD"), &add, 11, "not running");
}

#[test]
fn hung_daemon_times_out_with_try_again_later() {
    let daemon = FakeDaemon::start(Script {
        hang: true,
        ..Script::default()
    });
    let socket_text = daemon.socket.display().to_string();
    // `timeoutSeconds` may lengthen a verb's wait, never shorten it below
    // the budget the daemon's own bounds fit in: a hung daemon is given up
    // on after exactly that budget.
    let add_wait = format!("did not answer within {}s", budget::ADD.shim.as_secs());
    let del_wait = format!("did not answer within {}s", budget::DEL.shim.as_secs());
    for (command, needle) in [
        ("ADD", add_wait.as_str()),
        ("DEL", del_wait.as_str()),
        ("DEL", socket_text.as_str()),
    ] {
        let config = config_bytes(
            "1.0.0",
            &daemon.socket,
            json!({"prevResult": bridge_result("1.0.0"), "timeoutSeconds": 1}),
        );
        let started = Instant::now();
        assert_fails(command, &container_env(command), &config, 11, needle);
        let budget = if command == "ADD" {
            budget::ADD.shim
        } else {
            budget::DEL.shim
        };
        // A hang guard, not a speed check: the shim never waits much past
        // its budget.
        assert!(
            started.elapsed() < budget + Duration::from_secs(5),
            "{command} took {:?}",
            started.elapsed()
        );
    }
    let status = config_bytes("1.1.0", &daemon.socket, json!({"timeoutSeconds": 1}));
    assert_fails(
        "STATUS",
        &container_env("STATUS"),
        &status,
        50,
        "did not answer",
    );
    assert_eq!(daemon.calls().len(), 4);
}

#[test]
fn daemon_errors_carry_their_cni_code() {
    let fail = |grpc, cni_code, msg| Fail {
        grpc,
        cni_code,
        msg,
    };
    let daemon = FakeDaemon::start(Script {
        add: Err(fail(
            tonic::Code::Internal,
            Some(101),
            "minting the auth key failed",
        )),
        del: Err(fail(tonic::Code::NotFound, Some(3), "no such pod")),
        check: Err(fail(
            tonic::Code::FailedPrecondition,
            Some(103),
            "ts0 lost its address",
        )),
        status: Ok(tailnet_cni_proto::v1::StatusResponse {
            api_version: 1,
            ready: false,
            reason: "control server unreachable".into(),
            daemon_version: String::new(),
        }),
        gc: Err(fail(tonic::Code::Unavailable, None, "starting up")),
        hang: false,
    });
    let socket = daemon.socket.as_path();
    let add = config_bytes(
        "1.0.0",
        socket,
        json!({"prevResult": bridge_result("1.0.0")}),
    );
    assert_fails(
        "ADD",
        &container_env("ADD"),
        &add,
        101,
        "minting the auth key failed",
    );
    let check = config_bytes(
        "0.4.0",
        socket,
        json!({"prevResult": expected_add_result("0.4.0")}),
    );
    assert_fails(
        "CHECK",
        &container_env("CHECK"),
        &check,
        103,
        "ts0 lost its address",
    );
    let status = config_bytes("1.1.0", socket, json!({}));
    assert_fails(
        "STATUS",
        &container_env("STATUS"),
        &status,
        50,
        "control server unreachable",
    );
    let gc = config_bytes("1.1.0", socket, json!({"cni.dev/attachments": []}));
    assert_fails(
        "GC",
        &with(container_env("GC"), "CNI_PATH", "/opt/cni/bin"),
        &gc,
        11,
        "starting up",
    );

    // An unknown pod is already deleted.
    let del = config_bytes("1.0.0", socket, json!({}));
    let output = run_binary(&container_env("DEL"), &del);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(output.stdout.is_empty());
}
