//! Driving containerd's CRI as kubelet does: `runtime.v1.RuntimeService`
//! over the runtime's Unix socket, with the generated client of `k8s-cri`.
//!
//! The tests are synchronous; each call runs on a runtime of this client's
//! own, so a test reads as the sequence of calls kubelet makes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint};

/// How long one CRI call may take: RunPodSandbox includes the whole CNI
/// chain, and a tailnet pod waits for its first netmap.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// A pod as kubelet describes it to the runtime.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub annotations: HashMap<String, String>,
}

impl PodSpec {
    /// A pod in `namespace` with a UID derived from its name and the
    /// annotations kubelet puts on every sandbox (where it got the pod,
    /// when it saw it), so even a pod without annotations of its own
    /// reaches the plugin with some.
    pub fn new(namespace: &str, name: &str) -> Self {
        let annotations = HashMap::from([
            ("kubernetes.io/config.source".to_string(), "api".to_string()),
            (
                "kubernetes.io/config.seen".to_string(),
                "2026-01-01T00:00:00.000000000Z".to_string(),
            ),
        ]);
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
            annotations,
        }
    }

    /// The same pod with one more annotation.
    pub fn annotated(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    fn sandbox_config(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            annotations: self.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }
}

/// A sandbox the runtime started, with the config it was started with
/// (CreateContainer needs it again, as kubelet sends it).
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    config: PodSandboxConfig,
}

/// What a command run in a container printed, and how it ended.
#[derive(Debug)]
pub struct Exec {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A connected CRI client.
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the runtime's socket.
    pub fn connect(socket: &Path) -> Result<Self, tonic::transport::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the CRI client");
        let path: PathBuf = socket.to_path_buf();
        // The URI is a placeholder: the connector ignores it.
        let channel = runtime.block_on(
            Endpoint::from_static("http://cri.invalid")
                .timeout(CALL_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
        )?;
        Ok(Self {
            runtime,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// RunPodSandbox: the sandbox, its network namespace, the CNI ADD.
    pub fn run_pod(&mut self, pod: &PodSpec) -> Result<Sandbox, tonic::Status> {
        let config = pod.sandbox_config();
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let reply = self
            .runtime
            .block_on(self.client.run_pod_sandbox(request))?;
        Ok(Sandbox {
            id: reply.into_inner().pod_sandbox_id,
            config,
        })
    }

    /// The pod IP PodSandboxStatus reports (eth0's, from the primary plugin).
    pub fn pod_ip(&mut self, sandbox: &Sandbox) -> Result<String, tonic::Status> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.id.clone(),
            verbose: false,
        };
        let reply = self
            .runtime
            .block_on(self.client.pod_sandbox_status(request))?;
        Ok(reply
            .into_inner()
            .status
            .and_then(|status| status.network)
            .map(|network| network.ip)
            .unwrap_or_default())
    }

    /// CreateContainer + StartContainer of `image` running `command`.
    pub fn start_container(
        &mut self,
        sandbox: &Sandbox,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|arg| arg.to_string()).collect(),
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox.id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox.config.clone()),
        };
        let id = self
            .runtime
            .block_on(self.client.create_container(request))?
            .into_inner()
            .container_id;
        let request = StartContainerRequest {
            container_id: id.clone(),
        };
        self.runtime
            .block_on(self.client.start_container(request))?;
        Ok(id)
    }

    /// ExecSync: runs `command` in the container and waits for it.
    pub fn exec(&mut self, container: &str, command: &[&str]) -> Result<Exec, tonic::Status> {
        let request = ExecSyncRequest {
            container_id: container.into(),
            cmd: command.iter().map(|arg| arg.to_string()).collect(),
            timeout: 30,
        };
        let reply = self.runtime.block_on(self.client.exec_sync(request))?;
        let reply = reply.into_inner();
        Ok(Exec {
            exit_code: reply.exit_code,
            stdout: String::from_utf8_lossy(&reply.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&reply.stderr).into_owned(),
        })
    }

    /// StopPodSandbox (the first DEL, with the cached result) and then
    /// RemovePodSandbox (the second DEL, without a network namespace), as
    /// kubelet tears a pod down.
    pub fn stop_and_remove_pod(&mut self, sandbox: &Sandbox) -> Result<(), tonic::Status> {
        let id = sandbox.id.clone();
        self.runtime
            .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            }))?;
        self.runtime.block_on(
            self.client
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }),
        )?;
        Ok(())
    }
}
