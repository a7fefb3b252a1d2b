use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use tailnet_cni_proto::v1::{
    CheckResponse, DelResponse, GcResponse, IpConfig as ProtoIp, Route as ProtoRoute,
    StatusResponse,
};

use super::*;

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Add(AddRequest, DaemonTarget),
    Del(DelRequest),
    Check(CheckRequest),
    Status,
    Gc(GcRequest),
}

/// Answers every call with `failure` if set, else with canned replies.
struct FakeDaemon {
    add: AddResponse,
    status: StatusResponse,
    failure: Option<fn() -> DaemonError>,
    seen: RefCell<Vec<Seen>>,
}

impl Default for FakeDaemon {
    fn default() -> Self {
        Self {
            add: AddResponse {
                api_version: 1,
                attached: true,
                if_name: "ts0".into(),
                mac: "ee:ee:64:40:00:09".into(),
                mtu: 1280,
                ips: vec![ProtoIp {
                    address: "100.64.0.9/32".into(),
                    gateway: String::new(),
                }],
                routes: vec![ProtoRoute {
                    dst: "100.64.0.0/10".into(),
                    gw: String::new(),
                }],
                hostname: "pod".into(),
            },
            status: StatusResponse {
                api_version: 1,
                ready: true,
                ..Default::default()
            },
            failure: None,
            seen: RefCell::new(Vec::new()),
        }
    }
}

impl FakeDaemon {
    fn answer<T>(&self, seen: Seen, reply: T) -> Result<T, DaemonError> {
        self.seen.borrow_mut().push(seen);
        match self.failure {
            Some(make) => Err(make()),
            None => Ok(reply),
        }
    }
}

impl Daemon for FakeDaemon {
    async fn add(
        &self,
        target: &DaemonTarget,
        req: AddRequest,
    ) -> Result<AddResponse, DaemonError> {
        self.answer(Seen::Add(req, target.clone()), self.add.clone())
    }
    async fn del(&self, _: &DaemonTarget, req: DelRequest) -> Result<DelResponse, DaemonError> {
        self.answer(Seen::Del(req), DelResponse::default())
    }
    async fn check(
        &self,
        _: &DaemonTarget,
        req: CheckRequest,
    ) -> Result<CheckResponse, DaemonError> {
        self.answer(Seen::Check(req), CheckResponse::default())
    }
    async fn status(
        &self,
        _: &DaemonTarget,
        _: StatusRequest,
    ) -> Result<StatusResponse, DaemonError> {
        self.answer(Seen::Status, self.status.clone())
    }
    async fn gc(&self, _: &DaemonTarget, req: GcRequest) -> Result<GcResponse, DaemonError> {
        self.answer(Seen::Gc(req), GcResponse::default())
    }
}

fn env_for(command: &str) -> HashMap<String, OsString> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/t"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=uid-1",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), OsString::from(v)))
    .collect()
}

fn config(version: &str, extra: Value) -> Vec<u8> {
    let mut config = json!({"cniVersion": version, "name": "net", "type": "tailnet-cni", "daemonSocket": "/tmp/fake.sock"});
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    serde_json::to_vec(&config).unwrap()
}

async fn invoke(
    daemon: &FakeDaemon,
    env: &HashMap<String, OsString>,
    stdin: Vec<u8>,
) -> Result<Success, Failure> {
    let lookup = |name: &str| env.get(name).cloned();
    run(daemon, &lookup, Ok(stdin)).await
}

fn prev(version: &str) -> Value {
    json!({"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": "/run/netns/t"}],
               "ips": [{"address": "10.0.0.2/24", "interface": 0}], "dns": {"nameservers": ["10.0.0.1"]}})
}

#[tokio::test]
async fn add_sends_the_pod_and_extends_prev_result() {
    let daemon = FakeDaemon::default();
    let out = invoke(
        &daemon,
        &env_for("ADD"),
        config("1.1.0", json!({"prevResult": prev("1.1.0"), "mtu": 1400})),
    )
    .await
    .unwrap();
    assert_eq!(
        out.output.unwrap(),
        json!({"cniVersion": "1.1.0",
                   "interfaces": [{"name": "eth0", "sandbox": "/run/netns/t"}, {"name": "ts0", "mac": "ee:ee:64:40:00:09", "mtu": 1280, "sandbox": "/run/netns/t"}],
                   "ips": [{"address": "10.0.0.2/24", "interface": 0}, {"address": "100.64.0.9/32", "interface": 1}],
                   "routes": [{"dst": "100.64.0.0/10"}],
                   "dns": {"nameservers": ["10.0.0.1"]}})
    );
    let seen = daemon.seen.borrow();
    let Seen::Add(request, target) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!(request.mtu, 1400);
    assert_eq!(request.api_version, API_VERSION);
    assert_eq!(
        request.pod,
        Some(PodRef {
            container_id: "c0ffee".into(),
            netns: "/run/netns/t".into(),
            if_name: "ts0".into(),
            namespace: "ns".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            network: "net".into(),
            runtime_if_name: "eth0".into(),
        })
    );
    assert_eq!(target.socket, PathBuf::from("/tmp/fake.sock"));
    assert_eq!(target.call_timeout, ADD_TIMEOUT);
}

#[tokio::test]
async fn interface_without_mac_is_reported_outside_the_sandbox() {
    let mut daemon = FakeDaemon::default();
    daemon.add.mac.clear();
    let out = invoke(
        &daemon,
        &env_for("ADD"),
        config("1.0.0", json!({"prevResult": prev("1.0.0")})),
    )
    .await
    .unwrap();
    let output = out.output.unwrap();
    assert_eq!(output["interfaces"][1], json!({"name": "ts0"}));
    assert_eq!(output["ips"][1]["interface"], 1);
    assert_eq!(out.warnings.len(), 1);
    assert!(out.warnings[0].contains("no MAC"), "{}", out.warnings[0]);
}

#[tokio::test]
async fn timeout_seconds_lengthens_the_call_timeout() {
    let daemon = FakeDaemon::default();
    invoke(
        &daemon,
        &env_for("ADD"),
        config(
            "1.0.0",
            json!({"prevResult": prev("1.0.0"), "timeoutSeconds": 90}),
        ),
    )
    .await
    .unwrap();
    let Seen::Add(_, target) = &daemon.seen.borrow()[0] else {
        panic!()
    };
    assert_eq!(target.call_timeout, Duration::from_secs(90));
}

#[tokio::test]
async fn unattached_pod_gets_prev_result_unchanged() {
    let mut daemon = FakeDaemon::default();
    daemon.add.attached = false;
    let out = invoke(
        &daemon,
        &env_for("ADD"),
        config("1.0.0", json!({"prevResult": prev("1.0.0")})),
    )
    .await
    .unwrap();
    assert_eq!(out.output.unwrap(), prev("1.0.0"));
}

#[tokio::test]
async fn add_refuses_to_reuse_the_runtime_interface_name() {
    let daemon = FakeDaemon::default();
    let err = invoke(
        &daemon,
        &env_for("ADD"),
        config(
            "1.0.0",
            json!({"prevResult": prev("1.0.0"), "ifName": "eth0"}),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.error.code, INVALID_CONFIG);
    assert!(err.error.msg.contains("ifName"), "{}", err.error.msg);
    assert!(daemon.seen.borrow().is_empty());
}

#[tokio::test]
async fn check_sends_our_addresses_from_prev_result() {
    let daemon = FakeDaemon::default();
    let prev = json!({"cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/t"}, {"name": "ts0", "sandbox": "/run/netns/t"}],
            "ips": [{"version": "4", "address": "10.0.0.2/24", "interface": 0},
                    {"version": "4", "address": "100.64.0.9/32", "interface": 1},
                    {"version": "6", "address": "fd7a:115c:a1e0::9/128", "gateway": "fd7a::1", "interface": 1}]});
    let out = invoke(
        &daemon,
        &env_for("CHECK"),
        config("0.4.0", json!({"prevResult": prev})),
    )
    .await
    .unwrap();
    assert_eq!(out, Success::silent());
    let Seen::Check(request) = &daemon.seen.borrow()[0] else {
        panic!()
    };
    assert_eq!(
        request.expected_ips,
        vec![
            ProtoIp {
                address: "100.64.0.9/32".into(),
                gateway: String::new()
            },
            ProtoIp {
                address: "fd7a:115c:a1e0::9/128".into(),
                gateway: "fd7a::1".into()
            },
        ]
    );
}

#[tokio::test]
async fn del_without_a_running_daemon_succeeds_with_a_warning() {
    let daemon = FakeDaemon {
        failure: Some(|| DaemonError::NotRunning {
            socket: "/tmp/fake.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }),
        ..Default::default()
    };
    let mut env = env_for("DEL");
    env.remove("CNI_NETNS");
    let out = invoke(&daemon, &env, config("1.0.0", json!({})))
        .await
        .unwrap();
    assert_eq!(out.output, None);
    assert_eq!(out.warnings.len(), 1);
    assert!(
        out.warnings[0].contains("/tmp/fake.sock"),
        "{}",
        out.warnings[0]
    );
    let Seen::Del(request) = &daemon.seen.borrow()[0] else {
        panic!()
    };
    assert_eq!(request.pod.as_ref().unwrap().netns, "");
}

#[tokio::test]
async fn del_of_an_unknown_pod_succeeds_but_other_failures_do_not() {
    let unknown = FakeDaemon {
        failure: Some(|| rpc_error(tonic::Code::NotFound, None)),
        ..Default::default()
    };
    assert_eq!(
        invoke(&unknown, &env_for("DEL"), config("1.0.0", json!({}))).await,
        Ok(Success::silent())
    );
    let timed_out = FakeDaemon {
        failure: Some(|| DaemonError::CallTimeout {
            socket: "/tmp/fake.sock".into(),
            after: Duration::from_secs(10),
        }),
        ..Default::default()
    };
    let err = invoke(&timed_out, &env_for("DEL"), config("1.0.0", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.error.code, TRY_AGAIN_LATER);
    assert_eq!(err.container_id.as_deref(), Some("c0ffee"));
}

#[tokio::test]
async fn status_reports_not_ready_as_50_with_the_reason() {
    let daemon = FakeDaemon {
        status: StatusResponse {
            api_version: 1,
            ready: false,
            reason: "control unreachable".into(),
            daemon_version: String::new(),
        },
        ..Default::default()
    };
    let err = invoke(&daemon, &env_for("STATUS"), config("1.1.0", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.error.code, NOT_AVAILABLE);
    assert!(
        err.error.msg.contains("control unreachable"),
        "{}",
        err.error.msg
    );
}

#[tokio::test]
async fn gc_forwards_the_valid_list_and_refuses_without_one() {
    let daemon = FakeDaemon::default();
    let with_list = config(
        "1.1.0",
        json!({"cni.dev/valid-attachments": [{"containerID": "a1", "ifname": "eth0"}]}),
    );
    assert_eq!(
        invoke(&daemon, &env_for("GC"), with_list).await,
        Ok(Success::silent())
    );
    let Seen::Gc(request) = daemon.seen.borrow()[0].clone() else {
        panic!()
    };
    assert_eq!(
        request.valid_attachments,
        vec![ProtoAttachment {
            container_id: "a1".into(),
            if_name: "eth0".into()
        }]
    );

    let daemon = FakeDaemon::default();
    let err = invoke(&daemon, &env_for("GC"), config("1.1.0", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.error.code, INVALID_CONFIG);
    assert!(daemon.seen.borrow().is_empty());
}

#[tokio::test]
async fn commands_newer_than_the_config_version_are_refused() {
    for (command, version) in [("CHECK", "0.3.1"), ("STATUS", "1.0.0"), ("GC", "0.4.0")] {
        let daemon = FakeDaemon::default();
        let err = invoke(
            &daemon,
            &env_for(command),
            config(version, json!({"prevResult": prev(version)})),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error.code, INCOMPATIBLE_VERSION, "{command} {version}");
        assert!(err.error.msg.contains(command), "{}", err.error.msg);
        assert_eq!(err.cni_version.as_str(), version);
        assert!(daemon.seen.borrow().is_empty());
    }
}

#[tokio::test]
async fn version_echoes_a_supported_version_and_needs_nothing_else() {
    let daemon = FakeDaemon::default();
    let env: HashMap<String, OsString> =
        [("CNI_COMMAND".to_owned(), OsString::from("VERSION"))].into();
    let out = invoke(&daemon, &env, br#"{"cniVersion":"0.3.1"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(
        out.output.unwrap(),
        json!({"cniVersion": "0.3.1", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let out = invoke(&daemon, &env, Vec::new()).await.unwrap();
    assert_eq!(out.output.unwrap()["cniVersion"], "1.1.0");
    assert!(daemon.seen.borrow().is_empty());
}

fn rpc_error(code: tonic::Code, cni_code: Option<&str>) -> DaemonError {
    let mut status = tonic::Status::new(code, "boom");
    if let Some(cni_code) = cni_code {
        status.metadata_mut().insert(
            tailnet_cni_proto::CNI_CODE_METADATA,
            cni_code.parse().unwrap(),
        );
    }
    DaemonError::Rpc {
        socket: "/s".into(),
        status: Box::new(status),
    }
}

#[test]
fn daemon_failures_map_to_cni_codes() {
    use tonic::Code;
    let cases = [
        (
            Command::Add,
            rpc_error(Code::Internal, Some("101")),
            AUTH_FAILURE,
        ),
        (
            Command::Add,
            rpc_error(Code::Unavailable, Some("11")),
            TRY_AGAIN_LATER,
        ),
        (
            Command::Add,
            rpc_error(Code::Unavailable, None),
            TRY_AGAIN_LATER,
        ),
        (
            Command::Add,
            rpc_error(Code::Internal, Some("junk")),
            INTERNAL,
        ),
        // Found by the cni_env fuzz target: a failure must never carry
        // code 0, which CNI reads as success.
        (Command::Add, rpc_error(Code::Internal, Some("0")), INTERNAL),
        (
            Command::Add,
            rpc_error(Code::InvalidArgument, None),
            INVALID_CONFIG,
        ),
        (
            Command::Add,
            rpc_error(Code::Unimplemented, None),
            INCOMPATIBLE_VERSION,
        ),
        (
            Command::Check,
            rpc_error(Code::FailedPrecondition, None),
            CHECK_FAILED,
        ),
        (
            Command::Del,
            rpc_error(Code::NotFound, None),
            UNKNOWN_CONTAINER,
        ),
        (
            Command::Status,
            rpc_error(Code::Internal, Some("7")),
            NOT_AVAILABLE,
        ),
        (
            Command::Status,
            rpc_error(Code::Unavailable, Some("51")),
            LIMITED_CONNECTIVITY,
        ),
        (
            Command::Status,
            DaemonError::ConnectTimeout {
                socket: "/s".into(),
                after: Duration::from_secs(2),
            },
            NOT_AVAILABLE,
        ),
        (
            Command::Gc,
            DaemonError::ConnectTimeout {
                socket: "/s".into(),
                after: Duration::from_secs(2),
            },
            TRY_AGAIN_LATER,
        ),
    ];
    for (command, err, code) in cases {
        let text = err.to_string();
        let mapped = daemon_failure(command, err);
        assert_eq!(mapped.code, code, "{command} {text}");
        assert!(mapped.msg.starts_with(command.as_str()), "{}", mapped.msg);
        assert!(mapped.msg.contains("/s"), "{}", mapped.msg);
    }
}

#[test]
fn stdin_is_bounded() {
    assert_eq!(read_stdin(&b"abc"[..], 3).unwrap(), b"abc");
    let err = read_stdin(&b"abcd"[..], 3).unwrap_err();
    assert_eq!(err.code, INVALID_CONFIG);
    assert!(err.msg.contains("exceeds 3 bytes"), "{}", err.msg);
}

#[test]
fn failure_log_line_is_one_structured_line() {
    let failure = Failure {
        command: Some(Command::Add),
        container_id: Some("c1".into()),
        cni_version: CniVersion::V1_0_0,
        error: CniError::new(TRY_AGAIN_LATER, "daemon \"down\"\nnow"),
    };
    assert_eq!(
        failure.log_line(),
        r#"tailnet-cni: level=error command=ADD container=c1 code=11 msg="daemon \"down\"\nnow""#
    );
    assert_eq!(failure.to_json()["cniVersion"], "1.0.0");
}

fn unreachable_daemon() -> DaemonError {
    DaemonError::ConnectTimeout {
        socket: "/tmp/fake.sock".into(),
        after: Duration::from_secs(2),
    }
}

fn annotated(pairs: Value) -> Value {
    json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": pairs}})
}

fn with_prev(mut extra: Value, prev_result: Value) -> Value {
    extra["prevResult"] = prev_result;
    extra
}

#[tokio::test]
async fn pods_that_did_not_opt_in_are_answered_without_the_daemon() {
    let daemon = FakeDaemon {
        failure: Some(unreachable_daemon),
        ..Default::default()
    };
    let mut unannotated = annotated(json!({"other.io/x": "1"}));
    unannotated["selection"] = json!("annotated");
    let opted_out = annotated(json!({"tailnet-cni.io/enabled": "false"}));
    for extra in [unannotated, opted_out] {
        let out = invoke(
            &daemon,
            &env_for("ADD"),
            config("1.1.0", with_prev(extra.clone(), prev("1.0.0"))),
        )
        .await
        .unwrap();
        // Converted to the requested version, otherwise unchanged.
        let mut expected = prev("1.0.0");
        expected["cniVersion"] = json!("1.1.0");
        assert_eq!(out.output, Some(expected), "{extra}");

        let out = invoke(
            &daemon,
            &env_for("CHECK"),
            config("1.1.0", with_prev(extra.clone(), prev("1.1.0"))),
        )
        .await
        .unwrap();
        assert_eq!(out, Success::silent(), "{extra}");

        let out = invoke(&daemon, &env_for("DEL"), config("1.1.0", extra.clone()))
            .await
            .unwrap();
        assert_eq!(out, Success::silent(), "{extra}");
    }
    // DEL still asks, in case the pod joined under another selection;
    // ADD and CHECK never do.
    let seen = daemon.seen.borrow();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|call| matches!(call, Seen::Del(_))),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_skipped_pod_with_our_interface_is_still_checked_by_the_daemon() {
    let daemon = FakeDaemon::default();
    let mut result = prev("1.1.0");
    result["interfaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ts0", "sandbox": "/run/netns/t"}));
    let extra = with_prev(
        annotated(json!({"tailnet-cni.io/enabled": "false"})),
        result,
    );
    invoke(&daemon, &env_for("CHECK"), config("1.1.0", extra))
        .await
        .unwrap();
    assert!(matches!(daemon.seen.borrow()[0], Seen::Check(_)));
}

#[tokio::test]
async fn del_of_a_skipped_pod_still_reports_the_daemon_refusing() {
    let daemon = FakeDaemon {
        failure: Some(|| rpc_error(tonic::Code::Internal, None)),
        ..Default::default()
    };
    let extra = annotated(json!({"tailnet-cni.io/enabled": "false"}));
    let err = invoke(&daemon, &env_for("DEL"), config("1.1.0", extra))
        .await
        .unwrap_err();
    assert_eq!(err.error.code, INTERNAL);
}

#[tokio::test]
async fn opted_in_pods_forward_only_our_annotations() {
    let daemon = FakeDaemon::default();
    let mut extra = annotated(json!({
        "tailnet-cni.io/enabled": "true",
        "tailnet-cni.io/tags": "tag:web",
        "kubectl.kubernetes.io/last-applied-configuration": "{}"
    }));
    extra["selection"] = json!("annotated");
    invoke(
        &daemon,
        &env_for("ADD"),
        config("1.1.0", with_prev(extra, prev("1.1.0"))),
    )
    .await
    .unwrap();
    let seen = daemon.seen.borrow();
    let Seen::Add(request, _) = &seen[0] else {
        panic!("{seen:?}")
    };
    let entries = &request.annotations.as_ref().unwrap().entries;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries["tailnet-cni.io/enabled"], "true");
    assert_eq!(entries["tailnet-cni.io/tags"], "tag:web");
}

#[tokio::test]
async fn without_annotations_or_selection_every_pod_is_forwarded() {
    // No annotations from the runtime: forwarded whatever `selection` says.
    let daemon = FakeDaemon::default();
    invoke(
        &daemon,
        &env_for("ADD"),
        config(
            "1.1.0",
            json!({"selection": "annotated", "prevResult": prev("1.1.0")}),
        ),
    )
    .await
    .unwrap();
    // Annotations without the flag and no `selection`: forwarded too.
    invoke(
        &daemon,
        &env_for("ADD"),
        config("1.1.0", with_prev(annotated(json!({})), prev("1.1.0"))),
    )
    .await
    .unwrap();
    let seen = daemon.seen.borrow();
    let [Seen::Add(first, _), Seen::Add(second, _)] = seen.as_slice() else {
        panic!("{seen:?}")
    };
    assert_eq!(first.annotations, None);
    assert_eq!(second.annotations, Some(PodAnnotations::default()));
}
