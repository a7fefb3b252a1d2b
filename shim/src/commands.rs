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
    IpConfig as ProtoIpConfig, PodAnnotations, PodRef, StatusRequest,
};
use tailnet_cni_proto::API_VERSION;

use crate::client::{call_timeout, Daemon, DaemonError, DaemonTarget};
use crate::env::{require_cni_path, Command, ContainerEnv, EnvLookup};
use crate::error::*;
use crate::netconf::{parse_json, peek_version, NetConf};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::selection::{decide_locally, forwarded_annotations, LocalDecision};
use crate::version::CniVersion;

/// Largest network configuration accepted on stdin.
pub const MAX_STDIN_BYTES: usize = 1 << 20;
/// ADD includes registering the pod with the control server.
pub const ADD_TIMEOUT: Duration = tailnet_cni_proto::budget::ADD.shim;

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
        call_timeout: call_timeout(command, conf.timeout),
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

/// Whether the runtime's annotations already say the pod does not join.
fn skipped_locally(conf: &NetConf) -> bool {
    decide_locally(conf.selection, conf.pod_annotations.as_ref()) == LocalDecision::Skip
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
    if skipped_locally(conf) {
        // Decided without the daemon, so a daemon outage never blocks a pod
        // that does not want the tailnet.
        return Ok(Success::printing(result.into_version(conf.cni_version)?));
    }
    let annotations = conf
        .pod_annotations
        .as_ref()
        .map(|annotations| PodAnnotations {
            entries: forwarded_annotations(annotations).into_iter().collect(),
        });
    let response = daemon
        .add(
            target,
            AddRequest {
                api_version: API_VERSION,
                pod: Some(pod_ref(conf, container)),
                mtu: conf.mtu.unwrap_or(0),
                annotations,
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
    // A pod ADD skipped was never the daemon's; it is still asked, in case
    // the pod joined under an earlier `selection`, but only if it answers.
    let skipped = skipped_locally(conf);
    match daemon.del(target, request).await {
        Ok(_) => Ok(Success::silent()),
        Err(err) if skipped && err.is_unreachable() => Ok(Success::silent()),
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
    // A skipped pod has nothing of ours to check, unless it joined under an
    // earlier `selection`: then the daemon checks it.
    if skipped_locally(conf) && !result.names_interface(&conf.if_name) {
        return Ok(Success::silent());
    }
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
mod tests;
