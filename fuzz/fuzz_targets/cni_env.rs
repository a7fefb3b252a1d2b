//! A whole CNI invocation: `CNI_*` environment (UTF-8 or not), stdin, and
//! whatever the daemon answers, run through the shim's `run` against an
//! in-memory daemon.
//!
//! Asserts: no panic; a failure prints a spec error object carrying its
//! code; only ADD and VERSION print a result; ADD's result is in the
//! config's version; the daemon sees the container ID the runtime gave; a
//! DEL with no daemon running succeeds; validated names obey the rules.
#![no_main]

use std::cell::RefCell;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tailnet_cni::client::{Daemon, DaemonError, DaemonTarget};
use tailnet_cni::env::{parse_cni_args, validate_container_id, validate_interface_name, Command};
use tailnet_cni::{run, CniVersion};
use tailnet_cni_fuzz::block_on;
use tailnet_cni_proto::v1::{
    AddRequest, AddResponse, CheckRequest, CheckResponse, DelRequest, DelResponse, GcRequest,
    GcResponse, IpConfig, Route, StatusRequest, StatusResponse,
};

/// How the in-memory daemon fails, if it does.
#[derive(Debug, Clone)]
enum Fail {
    NotRunning,
    Connect,
    ConnectTimeout,
    CallTimeout,
    Rpc {
        code: i32,
        cni_code: Option<String>,
        message: String,
    },
}

/// The daemon's answer, read leniently from the input's third part (JSON).
#[derive(Debug, Default)]
struct Reply {
    fail: Option<Fail>,
    attached: bool,
    if_name: String,
    mac: String,
    mtu: u32,
    ips: Vec<(String, String)>,
    routes: Vec<(String, String)>,
    ready: bool,
    reason: String,
}

impl Reply {
    fn parse(bytes: &[u8]) -> Self {
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            return Reply::default();
        };
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let pairs = |v: &Value| -> Vec<(String, String)> {
            v.as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|pair| (text(&pair[0]), text(&pair[1])))
                        .collect()
                })
                .unwrap_or_default()
        };
        let fail = match &v["fail"] {
            Value::String(kind) => match kind.as_str() {
                "NotRunning" => Some(Fail::NotRunning),
                "Connect" => Some(Fail::Connect),
                "ConnectTimeout" => Some(Fail::ConnectTimeout),
                _ => Some(Fail::CallTimeout),
            },
            Value::Object(rpc) => Some(Fail::Rpc {
                code: rpc.get("code").and_then(Value::as_i64).unwrap_or(2) as i32,
                cni_code: rpc
                    .get("cniCode")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                message: rpc.get("message").map(text).unwrap_or_default(),
            }),
            _ => None,
        };
        Reply {
            fail,
            attached: v["attached"].as_bool().unwrap_or(false),
            if_name: text(&v["ifName"]),
            mac: text(&v["mac"]),
            mtu: v["mtu"].as_u64().unwrap_or(0) as u32,
            ips: pairs(&v["ips"]),
            routes: pairs(&v["routes"]),
            ready: v["ready"].as_bool().unwrap_or(false),
            reason: text(&v["reason"]),
        }
    }
}

/// The environment: `KEY=VALUE` lines, values any bytes.
fn environment(text: &[u8]) -> Vec<(Vec<u8>, OsString)> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let eq = line.iter().position(|&b| b == b'=')?;
            Some((
                line[..eq].to_vec(),
                OsString::from_vec(line[eq + 1..].to_vec()),
            ))
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Seen {
    Add(AddRequest),
    Del(DelRequest),
    Check(CheckRequest),
    Status,
    Gc(GcRequest),
}

struct FakeDaemon<'a> {
    reply: &'a Reply,
    seen: RefCell<Vec<Seen>>,
}

impl FakeDaemon<'_> {
    fn answer<T>(&self, seen: Seen, target: &DaemonTarget, ok: T) -> Result<T, DaemonError> {
        self.seen.borrow_mut().push(seen);
        let socket = target.socket.clone();
        match &self.reply.fail {
            None => Ok(ok),
            Some(Fail::NotRunning) => Err(DaemonError::NotRunning {
                socket,
                source: std::io::ErrorKind::NotFound.into(),
            }),
            Some(Fail::Connect) => Err(DaemonError::Connect {
                socket,
                detail: "refused".into(),
            }),
            Some(Fail::ConnectTimeout) => Err(DaemonError::ConnectTimeout {
                socket,
                after: target.call_timeout,
            }),
            Some(Fail::CallTimeout) => Err(DaemonError::CallTimeout {
                socket,
                after: target.call_timeout,
            }),
            Some(Fail::Rpc {
                code,
                cni_code,
                message,
            }) => {
                let mut status = tonic::Status::new(tonic::Code::from_i32(*code), message.clone());
                if let Some(Ok(value)) = cni_code.as_deref().map(str::parse) {
                    status
                        .metadata_mut()
                        .insert(tailnet_cni_proto::CNI_CODE_METADATA, value);
                }
                Err(DaemonError::Rpc {
                    socket,
                    status: Box::new(status),
                })
            }
        }
    }
}

impl Daemon for FakeDaemon<'_> {
    async fn add(
        &self,
        target: &DaemonTarget,
        req: AddRequest,
    ) -> Result<AddResponse, DaemonError> {
        let r = self.reply;
        let response = AddResponse {
            api_version: 1,
            attached: r.attached,
            if_name: r.if_name.clone(),
            mac: r.mac.clone(),
            mtu: r.mtu,
            ips: r
                .ips
                .iter()
                .map(|(address, gateway)| IpConfig {
                    address: address.clone(),
                    gateway: gateway.clone(),
                })
                .collect(),
            routes: r
                .routes
                .iter()
                .map(|(dst, gw)| Route {
                    dst: dst.clone(),
                    gw: gw.clone(),
                })
                .collect(),
            hostname: "pod".into(),
        };
        self.answer(Seen::Add(req), target, response)
    }

    async fn del(
        &self,
        target: &DaemonTarget,
        req: DelRequest,
    ) -> Result<DelResponse, DaemonError> {
        self.answer(Seen::Del(req), target, DelResponse::default())
    }

    async fn check(
        &self,
        target: &DaemonTarget,
        req: CheckRequest,
    ) -> Result<CheckResponse, DaemonError> {
        self.answer(Seen::Check(req), target, CheckResponse::default())
    }

    async fn status(
        &self,
        target: &DaemonTarget,
        _req: StatusRequest,
    ) -> Result<StatusResponse, DaemonError> {
        let response = StatusResponse {
            api_version: 1,
            ready: self.reply.ready,
            reason: self.reply.reason.clone(),
            ..Default::default()
        };
        self.answer(Seen::Status, target, response)
    }

    async fn gc(&self, target: &DaemonTarget, req: GcRequest) -> Result<GcResponse, DaemonError> {
        self.answer(Seen::Gc(req), target, GcResponse::default())
    }
}

// Input: environment lines, NUL, stdin, NUL, the daemon's reply as JSON.
fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let env = environment(parts.next().unwrap_or_default());
    let stdin = parts.next().unwrap_or_default().to_vec();
    let reply = Reply::parse(parts.next().unwrap_or_default());
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| value.clone())
    };
    let text = |name: &str| lookup(name).and_then(|v| v.into_string().ok());

    // The validators on their own.
    if let Some(id) = text("CNI_CONTAINERID") {
        if validate_container_id(&id).is_ok() {
            assert!(!id.is_empty());
        }
    }
    if let Some(name) = text("CNI_IFNAME") {
        if validate_interface_name(&name).is_ok() {
            assert!(!name.is_empty() && name.len() <= 15);
            assert!(!name.contains(['/', ':']) && !name.chars().any(char::is_whitespace));
        }
    }
    if let Some(args) = text("CNI_ARGS") {
        if let Ok(parsed) = parse_cni_args(&args) {
            for value in [&parsed.namespace, &parsed.name, &parsed.uid] {
                assert!(value.is_empty() || args.contains(value.as_str()));
            }
        }
    }

    let daemon = FakeDaemon {
        reply: &reply,
        seen: RefCell::new(Vec::new()),
    };
    let outcome = block_on(run(&daemon, &lookup, Ok(stdin)));
    let command =
        text("CNI_COMMAND").and_then(|t| Command::ALL.into_iter().find(|c| c.as_str() == t));
    let seen = daemon.seen.into_inner();
    assert!(seen.len() <= 1, "one daemon call per invocation");

    if let Some(call) = seen.first() {
        let id = text("CNI_CONTAINERID");
        match call {
            Seen::Add(req) => assert_eq!(req.pod.as_ref().map(|p| &p.container_id), id.as_ref()),
            Seen::Del(req) => assert_eq!(req.pod.as_ref().map(|p| &p.container_id), id.as_ref()),
            Seen::Check(req) => {
                assert_eq!(req.pod.as_ref().map(|p| &p.container_id), id.as_ref())
            }
            Seen::Status | Seen::Gc(_) => {}
        }
    }

    match outcome {
        Ok(success) => {
            let command = command.expect("success needs a known command");
            match command {
                Command::Version => {
                    let output = success.output.expect("VERSION prints");
                    assert!(output["supportedVersions"].is_array());
                }
                Command::Add => {
                    let output = success.output.expect("ADD prints a result");
                    let version = output["cniVersion"]
                        .as_str()
                        .expect("result has cniVersion");
                    assert!(CniVersion::parse(version).is_some());
                    assert!(matches!(seen.first(), Some(Seen::Add(_))));
                }
                _ => assert!(success.output.is_none(), "{command} prints nothing"),
            }
        }
        Err(failure) => {
            assert_ne!(failure.error.code, 0);
            let object = failure.to_json();
            assert_eq!(object["code"], json!(failure.error.code));
            assert_eq!(object["cniVersion"], failure.cni_version.as_str());
            assert!(object["msg"].is_string());
            let _ = failure.log_line();
            if matches!(seen.first(), Some(Seen::Del(_))) {
                assert!(
                    !matches!(reply.fail, Some(Fail::NotRunning) | None),
                    "DEL must succeed when the daemon is not running"
                );
            }
        }
    }
});
