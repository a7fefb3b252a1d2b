//! Every command in every supported spec version, through the real gRPC
//! client against a fake daemon, both in process and through the binary.

use std::collections::HashMap;

use serde_json::{json, Value};
use tailnet_cni_proto::v1::{Attachment, IpConfig, PodRef};

use crate::common::*;

/// What the runtime sees: success or not, and stdout as JSON.
#[derive(Debug, PartialEq)]
struct Observed {
    ok: bool,
    stdout: Option<Value>,
}

/// Runs the case in process and through the binary; both must agree.
fn observe(env: &HashMap<String, String>, stdin: &Value) -> Observed {
    let stdin = serde_json::to_vec(stdin).expect("json");
    let in_process = match run_in_process(env, &stdin) {
        Ok(success) => Observed {
            ok: true,
            stdout: success.output,
        },
        Err(failure) => Observed {
            ok: false,
            stdout: Some(failure.to_json()),
        },
    };
    let output = run_binary(env, &stdin);
    let binary = Observed {
        ok: output.status.success(),
        stdout: (!output.stdout.is_empty()).then(|| stdout_json(&output)),
    };
    assert_eq!(in_process, binary, "in-process and binary disagree");
    binary
}

fn expected_pod() -> PodRef {
    PodRef {
        container_id: "3f6940ab5ab43bc5".into(),
        netns: "/run/netns/cni-test".into(),
        if_name: "ts0".into(),
        namespace: "default".into(),
        name: "web".into(),
        uid: "9d1c".into(),
        network: "podman-tailnet".into(),
        runtime_if_name: "eth0".into(),
    }
}

#[test]
fn add_extends_prev_result_in_every_version() {
    for version in VERSIONS {
        let daemon = FakeDaemon::start(Script::default());
        let config = plugin_config(
            version,
            &daemon.socket,
            json!({"prevResult": bridge_result(version)}),
        );
        let observed = observe(&container_env("ADD"), &config);
        assert_eq!(
            observed,
            Observed {
                ok: true,
                stdout: Some(expected_add_result(version))
            },
            "version {version}"
        );
        let calls = daemon.calls();
        assert_eq!(calls.len(), 2, "one call per run");
        for call in calls {
            let Call::Add(request) = call else {
                panic!("unexpected {call:?}")
            };
            assert_eq!(request.api_version, tailnet_cni_proto::API_VERSION);
            assert_eq!(request.pod, Some(expected_pod()));
            assert_eq!(request.mtu, 0);
        }
    }
}

#[test]
fn add_for_an_unselected_pod_returns_prev_result_unchanged() {
    for version in VERSIONS {
        let mut script = Script::default();
        script.add.as_mut().expect("ok").attached = false;
        let daemon = FakeDaemon::start(script);
        let config = plugin_config(
            version,
            &daemon.socket,
            json!({"prevResult": bridge_result(version)}),
        );
        assert_eq!(
            observe(&container_env("ADD"), &config),
            Observed {
                ok: true,
                stdout: Some(bridge_result(version))
            },
            "version {version}"
        );
    }
}

#[test]
fn del_prints_nothing_in_every_version() {
    for version in VERSIONS {
        let daemon = FakeDaemon::start(Script::default());
        // With and without prevResult, with and without CNI_NETNS.
        let with_prev = plugin_config(
            version,
            &daemon.socket,
            json!({"prevResult": expected_add_result(version)}),
        );
        let without_prev = plugin_config(version, &daemon.socket, json!({}));
        let mut no_netns = container_env("DEL");
        no_netns.remove("CNI_NETNS");
        for (env, config) in [
            (container_env("DEL"), &with_prev),
            (no_netns, &without_prev),
        ] {
            assert_eq!(
                observe(&env, config),
                Observed {
                    ok: true,
                    stdout: None
                },
                "version {version}"
            );
        }
        let netns: Vec<String> = daemon
            .calls()
            .into_iter()
            .map(|call| match call {
                Call::Del(request) => request.pod.expect("pod").netns,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            netns,
            ["/run/netns/cni-test", "/run/netns/cni-test", "", ""]
        );
    }
}

#[test]
fn check_sends_our_addresses_where_the_version_has_check() {
    for version in VERSIONS {
        let daemon = FakeDaemon::start(Script::default());
        let config = plugin_config(
            version,
            &daemon.socket,
            json!({"prevResult": expected_add_result(version)}),
        );
        let observed = observe(&container_env("CHECK"), &config);
        if version.starts_with("0.3") {
            assert!(!observed.ok);
            let error = observed.stdout.expect("error object");
            assert_eq!(error["code"], 1, "version {version}");
            assert_eq!(error["cniVersion"], version);
            assert!(error["msg"].as_str().expect("msg").contains("CHECK"));
            assert!(daemon.calls().is_empty());
            continue;
        }
        assert_eq!(
            observed,
            Observed {
                ok: true,
                stdout: None
            },
            "version {version}"
        );
        for call in daemon.calls() {
            let Call::Check(request) = call else {
                panic!("unexpected {call:?}")
            };
            assert_eq!(request.pod, Some(expected_pod()));
            assert_eq!(
                request.expected_ips,
                vec![
                    IpConfig {
                        address: "100.64.0.7/32".into(),
                        gateway: String::new()
                    },
                    IpConfig {
                        address: "fd7a:115c:a1e0::7/128".into(),
                        gateway: String::new()
                    },
                ]
            );
        }
    }
}

#[test]
fn version_is_answered_without_a_daemon() {
    let env: HashMap<String, String> = [("CNI_COMMAND".to_owned(), "VERSION".to_owned())].into();
    for version in VERSIONS {
        assert_eq!(
            observe(&env, &json!({"cniVersion": version})),
            Observed {
                ok: true,
                stdout: Some(json!({
                    "cniVersion": version,
                    "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
                }))
            }
        );
    }
}

#[test]
fn status_and_gc_exist_only_from_1_1_0() {
    for version in VERSIONS {
        let daemon = FakeDaemon::start(Script::default());
        let status_env: HashMap<String, String> =
            [("CNI_COMMAND".to_owned(), "STATUS".to_owned())].into();
        let mut gc_env = status_env.clone();
        gc_env.insert("CNI_COMMAND".into(), "GC".into());
        gc_env.insert("CNI_PATH".into(), "/opt/cni/bin".into());
        let gc_config = plugin_config(
            version,
            &daemon.socket,
            json!({"cni.dev/valid-attachments": [
                {"containerID": "3f6940ab5ab43bc5", "ifname": "eth0"},
                {"containerID": "77aa", "ifname": "eth0"}
            ]}),
        );
        let status_config = plugin_config(version, &daemon.socket, json!({}));
        let status = observe(&status_env, &status_config);
        let gc = observe(&gc_env, &gc_config);
        if version != "1.1.0" {
            for (command, observed) in [("STATUS", status), ("GC", gc)] {
                assert!(!observed.ok, "{command} {version}");
                let error = observed.stdout.expect("error object");
                assert_eq!(error["code"], 1);
                assert!(error["msg"].as_str().expect("msg").contains(command));
            }
            assert!(daemon.calls().is_empty());
            continue;
        }
        assert_eq!(
            status,
            Observed {
                ok: true,
                stdout: None
            }
        );
        assert_eq!(
            gc,
            Observed {
                ok: true,
                stdout: None
            }
        );
        let calls = daemon.calls();
        assert_eq!(calls.len(), 4);
        let valid = vec![
            Attachment {
                container_id: "3f6940ab5ab43bc5".into(),
                if_name: "eth0".into(),
            },
            Attachment {
                container_id: "77aa".into(),
                if_name: "eth0".into(),
            },
        ];
        assert!(matches!(calls[0], Call::Status(_)));
        assert!(matches!(&calls[3], Call::Gc(request) if request.valid_attachments == valid));
    }
}
