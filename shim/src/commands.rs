//! The CNI commands: environment + stdin + daemon in, result or error out.
//!
//! Nothing here touches the process: the binary supplies the environment
//! lookup, the bytes read from stdin and a [`Daemon`], and prints what comes
//! back. That keeps every command testable without a socket.

use std::io::Read;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tailnet_cni_proto::v1::{
    AddRequest, AddResponse, Attachment as ProtoAttachment, CheckRequest, DelRequest, GcRequest,
    IpConfig as ProtoIpConfig, PodRef, StatusRequest,
};
use tailnet_cni_proto::API_VERSION;

use crate::client::{Daemon, DaemonError, DaemonTarget};
use crate::env::{require_cni_path, Command, ContainerEnv, EnvLookup};
use crate::error::*;
use crate::netconf::{parse_json, peek_version, NetConf};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::version::CniVersion;

/// Largest network configuration accepted on stdin.
pub const MAX_STDIN_BYTES: usize = 1 << 20;
/// ADD includes registering the pod with the control server.
pub const ADD_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A command that succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    /// JSON to print on stdout; `None` for commands that print nothing.
    pub output: Option<Value>,
    /// Lines for stderr: things the operator should know that did not fail
    /// the command.
    pub warnings: Vec<String>,
}

impl Success {
    fn silent() -> Self {
        Self {
            output: None,
            warnings: Vec::new(),
        }
    }

    fn printing(output: Value) -> Self {
        Self {
            output: Some(output),
            warnings: Vec::new(),
        }
    }
}

/// A command that failed, with what is needed to report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub command: Option<Command>,
    pub container_id: Option<String>,
    /// Version the error object is printed in: the config's when known.
    pub cni_version: CniVersion,
    pub error: CniError,
}

impl Failure {
    /// The error object for stdout.
    pub fn to_json(&self) -> Value {
        self.error.to_json(self.cni_version.as_str())
    }

    /// One structured line for stderr.
    pub fn log_line(&self) -> String {
        let mut line = String::from("tailnet-cni: level=error");
        if let Some(command) = self.command {
            line.push_str(&format!(" command={command}"));
        }
        if let Some(id) = &self.container_id {
            line.push_str(&format!(" container={id}"));
        }
        line.push_str(&format!(
            " code={} msg={:?}",
            self.error.code, self.error.msg
        ));
        line
    }
}

/// Reads at most `limit` bytes; more is refused rather than truncated.
pub fn read_stdin(mut reader: impl Read, limit: usize) -> Result<Vec<u8>, CniError> {
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .by_ref()
        .take(cap)
        .read_to_end(&mut bytes)
        .map_err(|err| CniError::new(IO_FAILURE, format!("reading stdin: {err}")))?;
    if bytes.len() > limit {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!("network configuration on stdin exceeds {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// Runs the command the environment names.
pub async fn run<D: Daemon>(
    daemon: &D,
    env: EnvLookup<'_>,
    stdin: Result<Vec<u8>, CniError>,
) -> Result<Success, Failure> {
    let mut context = FailureContext {
        command: None,
        container_id: None,
        cni_version: CniVersion::LATEST,
    };
    execute(daemon, env, stdin, &mut context)
        .await
        .map_err(|error| Failure {
            command: context.command,
            container_id: context.container_id,
            cni_version: context.cni_version,
            error,
        })
}

/// What is known about the invocation so far, for reporting a failure.
struct FailureContext {
    command: Option<Command>,
    container_id: Option<String>,
    cni_version: CniVersion,
}

async fn execute<D: Daemon>(
    daemon: &D,
    env: EnvLookup<'_>,
    stdin: Result<Vec<u8>, CniError>,
    context: &mut FailureContext,
) -> Result<Success, CniError> {
    let command = Command::from_env(env)?;
    context.command = Some(command);
    let config = stdin.and_then(|bytes| parse_json(&bytes));
    if let Some(version) = config.as_ref().ok().and_then(peek_version) {
        context.cni_version = version;
    }
    // The environment is checked before the configuration, as the reference
    // plugins do.
    match command {
        Command::Version => Ok(version_info(config.ok().as_ref())),
        Command::Status => {
            let conf = load_conf(command, &config?)?;
            status(daemon, &call_target(command, &conf)).await
        }
        Command::Gc => {
            require_cni_path(env)?;
            let conf = load_conf(command, &config?)?;
            gc(daemon, &call_target(command, &conf), &conf).await
        }
        Command::Add | Command::Del | Command::Check => {
            let container = ContainerEnv::from_env(command, env)?;
            context.container_id = Some(container.container_id.clone());
            let conf = load_conf(command, &config?)?;
            let target = call_target(command, &conf);
            match command {
                Command::Add => add(daemon, &target, &conf, &container).await,
                Command::Del => del(daemon, &target, &conf, &container).await,
                _ => check(daemon, &target, &conf, &container).await,
            }
        }
    }
}

/// Validates the configuration, including that its spec version defines
/// `command`.
fn load_conf(command: Command, config: &Map<String, Value>) -> Result<NetConf, CniError> {
    let conf = NetConf::from_json(config)?;
    if !conf.cni_version.allows(command) {
        let first = CniVersion::SUPPORTED
            .into_iter()
            .find(|version| version.allows(command))
            .unwrap_or(CniVersion::LATEST);
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "{command} is not defined for cniVersion {} (needs {first} or later)",
                conf.cni_version
            ),
        ));
    }
    Ok(conf)
}

fn call_target(command: Command, conf: &NetConf) -> DaemonTarget {
    DaemonTarget {
        socket: conf.daemon_socket.clone(),
        call_timeout: conf.timeout.unwrap_or(match command {
            Command::Add => ADD_TIMEOUT,
            _ => DEFAULT_TIMEOUT,
        }),
    }
}

fn version_info(config: Option<&Map<String, Value>>) -> Success {
    let version = config.and_then(peek_version).unwrap_or(CniVersion::LATEST);
    let supported: Vec<&str> = CniVersion::SUPPORTED
        .iter()
        .map(|version| version.as_str())
        .collect();
    Success::printing(json!({
        "cniVersion": version.as_str(),
        "supportedVersions": supported,
    }))
}

fn pod_ref(conf: &NetConf, container: &ContainerEnv) -> PodRef {
    PodRef {
        container_id: container.container_id.clone(),
        netns: container.netns.clone(),
        if_name: conf.if_name.clone(),
        namespace: container.args.namespace.clone(),
        name: container.args.name.clone(),
        uid: container.args.uid.clone(),
        network: conf.name.clone(),
        runtime_if_name: container.if_name.clone(),
    }
}

fn required_prev_result(conf: &NetConf, command: Command) -> Result<CniResult, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "prevResult",
            format!(
                "required for {command}: tailnet-cni must be chained after the primary CNI plugin"
            ),
        )
    })?;
    CniResult::from_prev_result(prev)
}

async fn add<D: Daemon>(
    daemon: &D,
    target: &DaemonTarget,
    conf: &NetConf,
    container: &ContainerEnv,
) -> Result<Success, CniError> {
    let mut result = required_prev_result(conf, Command::Add)?;
    if conf.if_name == container.if_name {
        return Err(CniError::invalid_config(
            "ifName",
            format!(
                "{:?} is the runtime's interface (CNI_IFNAME); choose another name",
                conf.if_name
            ),
        ));
    }
    if result.has_interface(&conf.if_name, &container.netns) {
        return Err(CniError::invalid_config(
            "ifName",
            format!(
                "prevResult already has an interface {:?} in {}",
                conf.if_name, container.netns
            ),
        ));
    }
    let response = daemon
        .add(
            target,
            AddRequest {
                api_version: API_VERSION,
                pod: Some(pod_ref(conf, container)),
                mtu: conf.mtu.unwrap_or(0),
            },
        )
        .await
        .map_err(|err| daemon_failure(Command::Add, err))?;
    let mut success = Success::silent();
    if response.attached {
        if response.mac.is_empty() {
            success.warnings.push(format!(
                "tailnet-cni: level=warn command=ADD container={} msg={:?}",
                container.container_id, "daemon gave no MAC; interface reported without sandbox"
            ));
        }
        let (interface, addresses, routes) = tailnet_entries(conf, container, response);
        result.append_interface(interface, addresses, routes)?;
    }
    success.output = Some(result.into_version(conf.cni_version)?);
    Ok(success)
}

/// The result entries describing the daemon's interface.
fn tailnet_entries(
    conf: &NetConf,
    container: &ContainerEnv,
    response: AddResponse,
) -> (Interface, Vec<IpConfig>, Vec<Route>) {
    let non_empty = |text: String| (!text.is_empty()).then_some(text);
    let mac = non_empty(response.mac);
    // Runtimes that read the result (podman) refuse an interface inside the
    // container without a MAC, and skip one without `sandbox`: without a MAC,
    // report the interface host-side rather than fail the pod.
    let sandbox = mac.as_ref().map(|_| container.netns.clone());
    let interface = Interface {
        name: non_empty(response.if_name).unwrap_or_else(|| conf.if_name.clone()),
        mac,
        mtu: (conf.cni_version.interfaces_carry_mtu() && response.mtu != 0).then_some(response.mtu),
        sandbox,
        extra: Map::new(),
    };
    let addresses = response
        .ips
        .into_iter()
        .map(|ip| IpConfig {
            version: None,
            address: ip.address,
            gateway: non_empty(ip.gateway),
            interface: None,
            extra: Map::new(),
        })
        .collect();
    let routes = response
        .routes
        .into_iter()
        .map(|route| Route {
            dst: route.dst,
            gw: non_empty(route.gw),
            extra: Map::new(),
        })
        .collect();
    (interface, addresses, routes)
}

async fn del<D: Daemon>(
    daemon: &D,
    target: &DaemonTarget,
    conf: &NetConf,
    container: &ContainerEnv,
) -> Result<Success, CniError> {
    let request = DelRequest {
        api_version: API_VERSION,
        pod: Some(pod_ref(conf, container)),
    };
    match daemon.del(target, request).await {
        Ok(_) => Ok(Success::silent()),
        // A DEL that fails only makes the runtime retry forever and blocks
        // pod removal. With no daemon running there is nothing to release
        // now: on start the daemon recovers its state and releases pods the
        // runtime no longer has (recovery and GC). So succeed, and say so.
        Err(err @ DaemonError::NotRunning { .. }) => Ok(Success {
            output: None,
            warnings: vec![format!(
                "tailnet-cni: level=warn command=DEL container={} msg={:?}",
                container.container_id,
                format!("{err}; nothing to release now, the daemon cleans up on start")
            )],
        }),
        Err(err) => match daemon_failure(Command::Del, err) {
            // Already gone (or never attached): DEL is idempotent.
            error if error.code == UNKNOWN_CONTAINER => Ok(Success::silent()),
            error => Err(error),
        },
    }
}

async fn check<D: Daemon>(
    daemon: &D,
    target: &DaemonTarget,
    conf: &NetConf,
    container: &ContainerEnv,
) -> Result<Success, CniError> {
    let result = required_prev_result(conf, Command::Check)?;
    // No interface of ours in the result means ADD left the pod unattached;
    // the daemon knows whether that is still right, so ask it with no
    // addresses rather than deciding here.
    let expected_ips = result
        .addresses_of(&conf.if_name, &container.netns)
        .unwrap_or_default()
        .into_iter()
        .map(|ip| ProtoIpConfig {
            address: ip.address.clone(),
            gateway: ip.gateway.clone().unwrap_or_default(),
        })
        .collect();
    daemon
        .check(
            target,
            CheckRequest {
                api_version: API_VERSION,
                pod: Some(pod_ref(conf, container)),
                expected_ips,
            },
        )
        .await
        .map_err(|err| daemon_failure(Command::Check, err))?;
    Ok(Success::silent())
}

async fn status<D: Daemon>(daemon: &D, target: &DaemonTarget) -> Result<Success, CniError> {
    let response = daemon
        .status(
            target,
            StatusRequest {
                api_version: API_VERSION,
            },
        )
        .await
        .map_err(|err| daemon_failure(Command::Status, err))?;
    if !response.ready {
        let reason = if response.reason.is_empty() {
            "no reason given"
        } else {
            &response.reason
        };
        return Err(CniError::new(
            NOT_AVAILABLE,
            format!(
                "daemon at {} is not ready: {reason}",
                target.socket.display()
            ),
        ));
    }
    let mut success = Success::silent();
    if !response.reason.is_empty() {
        success.warnings.push(format!(
            "tailnet-cni: level=warn command=STATUS msg={:?}",
            format!("daemon ready but degraded: {}", response.reason)
        ));
    }
    Ok(success)
}

async fn gc<D: Daemon>(
    daemon: &D,
    target: &DaemonTarget,
    conf: &NetConf,
) -> Result<Success, CniError> {
    // An absent list must not be read as "nothing is valid": that would
    // release every pod on the node.
    let attachments = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "cni.dev/valid-attachments",
            "required for GC; refusing to release every attachment",
        )
    })?;
    let request = GcRequest {
        api_version: API_VERSION,
        valid_attachments: attachments
            .iter()
            .map(|attachment| ProtoAttachment {
                container_id: attachment.container_id.clone(),
                if_name: attachment.if_name.clone(),
            })
            .collect(),
    };
    daemon
        .gc(target, request)
        .await
        .map_err(|err| daemon_failure(Command::Gc, err))?;
    Ok(Success::silent())
}

/// The CNI error for a failed daemon call. STATUS may only fail with 50/51;
/// other commands report an unreachable daemon as "try again later".
pub fn daemon_failure(command: Command, err: DaemonError) -> CniError {
    let unreachable = match command {
        Command::Status => NOT_AVAILABLE,
        _ => TRY_AGAIN_LATER,
    };
    let code = match &err {
        DaemonError::NotRunning { .. }
        | DaemonError::Connect { .. }
        | DaemonError::ConnectTimeout { .. }
        | DaemonError::CallTimeout { .. } => unreachable,
        DaemonError::Rpc { status, .. } => {
            let code = code_from_metadata(status)
                .unwrap_or_else(|| code_from_grpc(command, status.code()));
            match (command, code) {
                (Command::Status, LIMITED_CONNECTIVITY) => LIMITED_CONNECTIVITY,
                (Command::Status, _) => NOT_AVAILABLE,
                (_, code) => code,
            }
        }
    };
    CniError::new(code, format!("{command}: {err}"))
}

/// The daemon's CNI code for a failure. 0 means success in CNI, so a 0
/// (from a confused daemon) is no code at all: the gRPC status decides.
fn code_from_metadata(status: &tonic::Status) -> Option<u32> {
    status
        .metadata()
        .get(tailnet_cni_proto::CNI_CODE_METADATA)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|code| *code != 0)
}

fn code_from_grpc(command: Command, code: tonic::Code) -> u32 {
    use tonic::Code;
    match code {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
            TRY_AGAIN_LATER
        }
        Code::NotFound => UNKNOWN_CONTAINER,
        Code::InvalidArgument | Code::OutOfRange => INVALID_CONFIG,
        Code::FailedPrecondition if command == Command::Check => CHECK_FAILED,
        Code::Unimplemented => INCOMPATIBLE_VERSION,
        Code::PermissionDenied | Code::Unauthenticated => IO_FAILURE,
        _ => INTERNAL,
    }
}

#[cfg(test)]
mod tests {
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
    async fn timeout_seconds_overrides_the_call_timeout() {
        let daemon = FakeDaemon::default();
        invoke(
            &daemon,
            &env_for("ADD"),
            config(
                "1.0.0",
                json!({"prevResult": prev("1.0.0"), "timeoutSeconds": 3}),
            ),
        )
        .await
        .unwrap();
        let Seen::Add(_, target) = &daemon.seen.borrow()[0] else {
            panic!()
        };
        assert_eq!(target.call_timeout, Duration::from_secs(3));
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
}
