//! Talking to `tailnet-cnid`: the [`Daemon`] trait the commands use, and its
//! gRPC implementation over the daemon's Unix socket.
//!
//! Each shim process makes one call, so the client connects per call and
//! bounds both the connect and the call: the shim must never hang a runtime.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tailnet_cni_proto::budget;
use tailnet_cni_proto::v1::cni_daemon_client::CniDaemonClient;
use tailnet_cni_proto::v1::{
    AddRequest, AddResponse, CheckRequest, CheckResponse, DelRequest, DelResponse, GcRequest,
    GcResponse, StatusRequest, StatusResponse,
};
use tonic::transport::Channel;

use crate::env::Command;

/// How long to wait for the daemon to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the shim waits for the daemon's answer to `command`: the verb's
/// budget from `proto` (inside which the daemon bounds its own work), or
/// longer when the network configuration asks (`timeoutSeconds`); never
/// shorter, or the daemon's work would no longer fit.
pub fn call_timeout(command: Command, requested: Option<Duration>) -> Duration {
    let budget = match command {
        Command::Add => budget::ADD,
        Command::Del => budget::DEL,
        Command::Check => budget::CHECK,
        Command::Gc => budget::GC,
        Command::Status | Command::Version => budget::STATUS,
    };
    requested.map_or(budget.shim, |requested| requested.max(budget.shim))
}

/// Where and how long one call may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonTarget {
    pub socket: PathBuf,
    pub call_timeout: Duration,
}

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Nothing listens on the socket: the file is absent or stale.
    #[error("daemon not running: cannot connect to {}: {source}", socket.display())]
    NotRunning {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to daemon at {}: {detail}", socket.display())]
    Connect { socket: PathBuf, detail: String },
    #[error("daemon at {} did not accept a connection within {}s", socket.display(), after.as_secs_f32())]
    ConnectTimeout { socket: PathBuf, after: Duration },
    #[error("daemon at {} did not answer within {}s", socket.display(), after.as_secs_f32())]
    CallTimeout { socket: PathBuf, after: Duration },
    /// The daemon answered with an error status.
    #[error("daemon at {} failed the call: {}", socket.display(), status.message())]
    Rpc {
        socket: PathBuf,
        status: Box<tonic::Status>,
    },
}

impl DaemonError {
    /// The daemon could not be reached or did not answer in time, as opposed
    /// to answering with an error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::NotRunning { .. }
            | Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::CallTimeout { .. } => true,
            Self::Rpc { .. } => false,
        }
    }
}

/// The daemon's CNI operations, as the commands need them.
#[allow(async_fn_in_trait)]
pub trait Daemon {
    async fn add(&self, target: &DaemonTarget, req: AddRequest)
        -> Result<AddResponse, DaemonError>;
    async fn del(&self, target: &DaemonTarget, req: DelRequest)
        -> Result<DelResponse, DaemonError>;
    async fn check(
        &self,
        target: &DaemonTarget,
        req: CheckRequest,
    ) -> Result<CheckResponse, DaemonError>;
    async fn status(
        &self,
        target: &DaemonTarget,
        req: StatusRequest,
    ) -> Result<StatusResponse, DaemonError>;
    async fn gc(&self, target: &DaemonTarget, req: GcRequest) -> Result<GcResponse, DaemonError>;
}

/// The real daemon, reached over gRPC on its Unix socket.
#[derive(Debug, Clone)]
pub struct UdsDaemon {
    pub connect_timeout: Duration,
}

impl Default for UdsDaemon {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

impl UdsDaemon {
    async fn connect(&self, socket: &Path) -> Result<CniDaemonClient<Channel>, DaemonError> {
        let connecting = tailnet_cni_proto::uds::connect(socket, self.connect_timeout);
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(err)) => Err(classify_connect_error(socket, &err)),
            Err(_) => Err(DaemonError::ConnectTimeout {
                socket: socket.to_path_buf(),
                after: self.connect_timeout,
            }),
        }
    }

    /// Connects, then runs `call` under the target's call timeout.
    async fn call<T, F, Fut>(&self, target: &DaemonTarget, call: F) -> Result<T, DaemonError>
    where
        F: FnOnce(CniDaemonClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.connect(&target.socket).await?;
        match tokio::time::timeout(target.call_timeout, call(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(DaemonError::Rpc {
                socket: target.socket.clone(),
                status: Box::new(status),
            }),
            Err(_) => Err(DaemonError::CallTimeout {
                socket: target.socket.clone(),
                after: target.call_timeout,
            }),
        }
    }
}

impl Daemon for UdsDaemon {
    async fn add(
        &self,
        target: &DaemonTarget,
        req: AddRequest,
    ) -> Result<AddResponse, DaemonError> {
        self.call(target, |mut client| async move { client.add(req).await })
            .await
    }

    async fn del(
        &self,
        target: &DaemonTarget,
        req: DelRequest,
    ) -> Result<DelResponse, DaemonError> {
        self.call(target, |mut client| async move { client.del(req).await })
            .await
    }

    async fn check(
        &self,
        target: &DaemonTarget,
        req: CheckRequest,
    ) -> Result<CheckResponse, DaemonError> {
        self.call(target, |mut client| async move { client.check(req).await })
            .await
    }

    async fn status(
        &self,
        target: &DaemonTarget,
        req: StatusRequest,
    ) -> Result<StatusResponse, DaemonError> {
        self.call(target, |mut client| async move { client.status(req).await })
            .await
    }

    async fn gc(&self, target: &DaemonTarget, req: GcRequest) -> Result<GcResponse, DaemonError> {
        self.call(target, |mut client| async move { client.gc(req).await })
            .await
    }
}

/// Tells "nobody listens there" (socket file absent, or left behind by a
/// daemon that is gone) from other connect failures, by the I/O error at the
/// root of the transport error.
fn classify_connect_error(socket: &Path, err: &tonic::transport::Error) -> DaemonError {
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io_err) = cause.downcast_ref::<io::Error>() {
            if matches!(
                io_err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) {
                return DaemonError::NotRunning {
                    socket: socket.to_path_buf(),
                    source: io::Error::new(io_err.kind(), io_err.to_string()),
                };
            }
        }
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    DaemonError::Connect {
        socket: socket.to_path_buf(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(socket: PathBuf) -> DaemonTarget {
        DaemonTarget {
            socket,
            call_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_shim_waits_at_least_the_verbs_budget() {
        assert_eq!(call_timeout(Command::Del, None), budget::DEL.shim);
        assert_eq!(call_timeout(Command::Add, None), budget::ADD.shim);
        // A shorter timeoutSeconds would cut the daemon's work short.
        assert_eq!(
            call_timeout(Command::Del, Some(Duration::from_secs(1))),
            budget::DEL.shim
        );
        assert_eq!(
            call_timeout(Command::Check, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
    }

    #[tokio::test]
    async fn absent_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let err = UdsDaemon::default()
            .status(&target(socket.clone()), StatusRequest::default())
            .await
            .unwrap_err();
        assert!(matches!(err, DaemonError::NotRunning { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&socket.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stale_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        let err = UdsDaemon::default()
            .status(&target(socket), StatusRequest::default())
            .await
            .unwrap_err();
        assert!(matches!(err, DaemonError::NotRunning { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("silent.sock");
        // Accepts connections and never speaks.
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let held = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                streams.push(stream);
            }
        });
        let daemon = UdsDaemon {
            connect_timeout: Duration::from_millis(500),
        };
        let started = std::time::Instant::now();
        let err = daemon
            .status(
                &DaemonTarget {
                    socket,
                    call_timeout: Duration::from_millis(500),
                },
                StatusRequest::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                DaemonError::CallTimeout { .. }
                    | DaemonError::ConnectTimeout { .. }
                    | DaemonError::Connect { .. }
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        held.abort();
    }
}
