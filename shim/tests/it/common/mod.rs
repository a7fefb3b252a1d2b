//! A scripted `tailnet-cnid` stand-in: the real generated gRPC service on a
//! Unix socket in a temporary directory, recording every request.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};
use tailnet_cni_proto::v1::cni_daemon_server::{CniDaemon, CniDaemonServer};
use tailnet_cni_proto::v1::*;
use tailnet_cni_proto::CNI_CODE_METADATA;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// An error the fake answers with: gRPC code plus optional CNI code metadata.
#[derive(Debug, Clone)]
pub struct Fail {
    pub grpc: tonic::Code,
    pub cni_code: Option<u32>,
    pub msg: &'static str,
}

impl Fail {
    fn status(&self) -> Status {
        let mut status = Status::new(self.grpc, self.msg);
        if let Some(code) = self.cni_code {
            status
                .metadata_mut()
                .insert(CNI_CODE_METADATA, code.to_string().parse().expect("ascii"));
        }
        status
    }
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub struct Script {
    pub add: Result<AddResponse, Fail>,
    pub del: Result<(), Fail>,
    pub check: Result<(), Fail>,
    pub status: Result<StatusResponse, Fail>,
    pub gc: Result<GcResponse, Fail>,
    /// Never answer any call.
    pub hang: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            add: Ok(tailnet_add_response()),
            del: Ok(()),
            check: Ok(()),
            status: Ok(StatusResponse {
                api_version: 1,
                ready: true,
                reason: String::new(),
                daemon_version: "test".into(),
            }),
            gc: Ok(GcResponse {
                api_version: 1,
                released_container_ids: vec!["gone".into()],
            }),
            hang: false,
        }
    }
}

pub fn tailnet_add_response() -> AddResponse {
    AddResponse {
        api_version: 1,
        attached: true,
        if_name: "ts0".into(),
        mac: "ee:ee:64:40:00:07".into(),
        mtu: 1280,
        ips: vec![
            IpConfig {
                address: "100.64.0.7/32".into(),
                gateway: String::new(),
            },
            IpConfig {
                address: "fd7a:115c:a1e0::7/128".into(),
                gateway: String::new(),
            },
        ],
        routes: vec![
            Route {
                dst: "100.64.0.0/10".into(),
                gw: String::new(),
            },
            Route {
                dst: "fd7a:115c:a1e0::/48".into(),
                gw: String::new(),
            },
        ],
        hostname: "default-web".into(),
    }
}

/// A request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Add(AddRequest),
    Del(DelRequest),
    Check(CheckRequest),
    Status(StatusRequest),
    Gc(GcRequest),
}

#[derive(Clone)]
struct FakeService {
    script: Arc<Script>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeService {
    async fn answer<T>(&self, call: Call, reply: Result<T, Fail>) -> Result<Response<T>, Status> {
        self.calls.lock().expect("calls lock").push(call);
        if self.script.hang {
            std::future::pending::<()>().await;
        }
        reply.map(Response::new).map_err(|fail| fail.status())
    }
}

#[tonic::async_trait]
impl CniDaemon for FakeService {
    async fn add(&self, r: Request<AddRequest>) -> Result<Response<AddResponse>, Status> {
        self.answer(Call::Add(r.into_inner()), self.script.add.clone())
            .await
    }
    async fn del(&self, r: Request<DelRequest>) -> Result<Response<DelResponse>, Status> {
        let reply = self
            .script
            .del
            .clone()
            .map(|()| DelResponse { api_version: 1 });
        self.answer(Call::Del(r.into_inner()), reply).await
    }
    async fn check(&self, r: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let reply = self
            .script
            .check
            .clone()
            .map(|()| CheckResponse { api_version: 1 });
        self.answer(Call::Check(r.into_inner()), reply).await
    }
    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.answer(Call::Status(r.into_inner()), self.script.status.clone())
            .await
    }
    async fn gc(&self, r: Request<GcRequest>) -> Result<Response<GcResponse>, Status> {
        self.answer(Call::Gc(r.into_inner()), self.script.gc.clone())
            .await
    }
    async fn list_pods(
        &self,
        _: Request<ListPodsRequest>,
    ) -> Result<Response<ListPodsResponse>, Status> {
        Err(Status::unimplemented("not used by the shim"))
    }
}

/// The fake daemon, serving on its own thread until dropped.
pub struct FakeDaemon {
    /// Holds the socket; removed with the fake.
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    calls: Arc<Mutex<Vec<Call>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeDaemon {
    pub fn start(script: Script) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("daemon.sock");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let service = FakeService {
            script: Arc::new(script),
            calls: calls.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&path).expect("bind");
                ready_tx.send(()).expect("ready");
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                // A hung handler keeps its connection open; do not wait for
                // it on shutdown.
                let serving = tonic::transport::Server::builder()
                    .add_service(CniDaemonServer::new(service))
                    .serve_with_incoming(incoming);
                tokio::select! {
                    _ = serving => {}
                    _ = stopped => {}
                }
            });
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the fake daemon's socket within 30 s");
        Self {
            _dir: dir,
            socket,
            calls,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server thread may have stopped already; joining below is what counts.
            stop.send(()).ok();
        }
        if let Some(thread) = self.thread.take() {
            // The thread panics only before it is ready, which `start` reports; a
            // second panic while dropping would abort the test binary.
            thread.join().ok();
        }
    }
}

/// The environment of a container command, as podman/containerd send it.
pub fn container_env(command: &str) -> HashMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "3f6940ab5ab43bc5"),
        ("CNI_NETNS", "/run/netns/cni-test"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=9d1c;K8S_POD_INFRA_CONTAINER_ID=3f6940ab5ab43bc5",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A plugin config for `version` pointing at `socket`, with `extra` keys.
pub fn plugin_config(version: &str, socket: &Path, extra: Value) -> Value {
    let mut config = json!({
        "cniVersion": version,
        "name": "podman-tailnet",
        "type": "tailnet-cni",
        "daemonSocket": socket.display().to_string(),
    });
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    config
}

/// What a bridge + host-local primary plugin returns, in `version`'s shape,
/// with keys the shim does not know.
pub fn bridge_result(version: &str) -> Value {
    let old = version.starts_with("0.");
    let mut ip = json!({"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2, "x-ipam": "host-local"});
    if old {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni-podman0", "mac": "de:ad:be:ef:00:01"},
            {"name": "veth1234", "mac": "de:ad:be:ef:00:02"},
            {"name": "eth0", "mac": "de:ad:be:ef:00:03", "sandbox": "/run/netns/cni-test"}
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "dns": {"nameservers": ["10.88.0.1"], "search": ["dns.podman"], "options": ["ndots:5"]},
        "x-custom": {"keep": [1, "two", null]}
    })
}

/// `bridge_result` extended the way ADD must extend it in `version`.
pub fn expected_add_result(version: &str) -> Value {
    let old = version.starts_with("0.");
    let mut expected = bridge_result(version);
    let mut interface =
        json!({"name": "ts0", "mac": "ee:ee:64:40:00:07", "sandbox": "/run/netns/cni-test"});
    if version == "1.1.0" {
        interface["mtu"] = json!(1280);
    }
    expected["interfaces"]
        .as_array_mut()
        .expect("interfaces")
        .push(interface);
    for (address, family) in [("100.64.0.7/32", "4"), ("fd7a:115c:a1e0::7/128", "6")] {
        let mut ip = json!({"address": address, "interface": 3});
        if old {
            ip["version"] = json!(family);
        }
        expected["ips"].as_array_mut().expect("ips").push(ip);
    }
    for dst in ["100.64.0.0/10", "fd7a:115c:a1e0::/48"] {
        expected["routes"]
            .as_array_mut()
            .expect("routes")
            .push(json!({"dst": dst}));
    }
    expected
}

pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Runs the in-process command logic against the real gRPC client.
pub fn run_in_process(
    env: &HashMap<String, String>,
    stdin: &[u8],
) -> Result<tailnet_cni::Success, tailnet_cni::Failure> {
    let env: HashMap<String, OsString> = env
        .iter()
        .map(|(k, v)| (k.clone(), OsString::from(v)))
        .collect();
    let lookup = |name: &str| env.get(name).cloned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(tailnet_cni::run(
        &tailnet_cni::UdsDaemon::default(),
        &lookup,
        Ok(stdin.to_vec()),
    ))
}

/// Runs the built `tailnet-cni` binary with exactly `env` and `stdin`.
pub fn run_binary(env: &HashMap<String, String>, stdin: &[u8]) -> Output {
    let mut child = Process::new(env!("CARGO_BIN_EXE_tailnet-cni"))
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tailnet-cni");
    let mut input = child.stdin.take().expect("stdin");
    // The shim may stop reading early (oversized input); a broken pipe here
    // is part of that test, not a failure.
    input.write_all(stdin).ok();
    drop(input);
    child.wait_with_output().expect("wait tailnet-cni")
}

/// Parses the binary's stdout as one JSON value.
pub fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not JSON ({err}): {:?}; stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
