//! The gRPC service the shim talks to, on a Unix socket.
//!
//! The socket is created with mode 0600 inside a 0700 directory, and every
//! accepted connection's credentials (SO_PEERCRED) are checked: only the
//! allowed uids (root by default) may drive pod lifecycle.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use tailnet_cni_proto::v1::cni_daemon_server::{CniDaemon, CniDaemonServer};
use tailnet_cni_proto::v1::{
    AddRequest, AddResponse, CheckRequest, CheckResponse, DelRequest, DelResponse, GcRequest,
    GcResponse, ListPodsRequest, ListPodsResponse, StatusRequest, StatusResponse,
};
use tailnet_cni_proto::{cni_code, API_VERSION, CNI_CODE_METADATA, MIN_API_VERSION};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// A failure to report to the shim as a CNI error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// CNI error code (spec codes, or 100+ plugin-specific; see `cni_code`).
    pub code: u32,
    pub msg: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    fn into_status(self) -> Status {
        let grpc_code = match self.code {
            cni_code::TRY_AGAIN_LATER | cni_code::NOT_AVAILABLE => tonic::Code::Unavailable,
            cni_code::UNKNOWN_CONTAINER => tonic::Code::NotFound,
            cni_code::INVALID_CONFIG | cni_code::INVALID_ENV | cni_code::DECODE_FAILURE => {
                tonic::Code::InvalidArgument
            }
            cni_code::CHECK_FAILED => tonic::Code::FailedPrecondition,
            _ => tonic::Code::Internal,
        };
        let mut status = Status::new(grpc_code, self.msg);
        if let Ok(value) = self.code.to_string().parse() {
            status.metadata_mut().insert(CNI_CODE_METADATA, value);
        }
        status
    }
}

/// What the daemon does for each CNI command. Implemented by the pod manager;
/// the transport below only validates, authenticates and maps errors.
#[tonic::async_trait]
pub trait CniHandler: Send + Sync + 'static {
    async fn add(&self, req: AddRequest) -> Result<AddResponse, CniError>;
    async fn del(&self, req: DelRequest) -> Result<(), CniError>;
    async fn check(&self, req: CheckRequest) -> Result<(), CniError>;
    async fn status(&self) -> StatusResponse;
    async fn gc(&self, req: GcRequest) -> Result<Vec<String>, CniError>;
    async fn list_pods(&self) -> ListPodsResponse;
}

/// Refuses requests from a shim whose API is older than this daemon still
/// answers. Newer shims are accepted: fields they add are ignored here.
fn check_api_version(version: u32) -> Result<(), Status> {
    if version < MIN_API_VERSION {
        return Err(CniError::new(
            cni_code::INCOMPATIBLE_VERSION,
            format!(
                "shim speaks daemon API v{version}; this daemon answers v{MIN_API_VERSION}..v{API_VERSION}"
            ),
        )
        .into_status());
    }
    Ok(())
}

/// The tonic service: a thin adapter over a [`CniHandler`].
pub struct CniService<H> {
    handler: Arc<H>,
}

impl<H: CniHandler> CniService<H> {
    pub fn new(handler: Arc<H>) -> Self {
        Self { handler }
    }
}

#[tonic::async_trait]
impl<H: CniHandler> CniDaemon for CniService<H> {
    async fn add(&self, request: Request<AddRequest>) -> Result<Response<AddResponse>, Status> {
        let req = request.into_inner();
        check_api_version(req.api_version)?;
        let mut resp = self.handler.add(req).await.map_err(CniError::into_status)?;
        resp.api_version = API_VERSION;
        Ok(Response::new(resp))
    }

    async fn del(&self, request: Request<DelRequest>) -> Result<Response<DelResponse>, Status> {
        let req = request.into_inner();
        check_api_version(req.api_version)?;
        self.handler.del(req).await.map_err(CniError::into_status)?;
        Ok(Response::new(DelResponse {
            api_version: API_VERSION,
        }))
    }

    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let req = request.into_inner();
        check_api_version(req.api_version)?;
        self.handler
            .check(req)
            .await
            .map_err(CniError::into_status)?;
        Ok(Response::new(CheckResponse {
            api_version: API_VERSION,
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        check_api_version(request.get_ref().api_version)?;
        let mut resp = self.handler.status().await;
        resp.api_version = API_VERSION;
        Ok(Response::new(resp))
    }

    async fn gc(&self, request: Request<GcRequest>) -> Result<Response<GcResponse>, Status> {
        let req = request.into_inner();
        check_api_version(req.api_version)?;
        let released = self.handler.gc(req).await.map_err(CniError::into_status)?;
        Ok(Response::new(GcResponse {
            api_version: API_VERSION,
            released_container_ids: released,
        }))
    }

    async fn list_pods(
        &self,
        request: Request<ListPodsRequest>,
    ) -> Result<Response<ListPodsResponse>, Status> {
        check_api_version(request.get_ref().api_version)?;
        let mut resp = self.handler.list_pods().await;
        resp.api_version = API_VERSION;
        Ok(Response::new(resp))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot prepare socket directory {path}: {source}")]
    SocketDir { path: PathBuf, source: io::Error },
    #[error("cannot bind daemon socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds the daemon socket: parent directory 0700, socket 0600, any stale
/// socket from a previous run replaced.
pub fn bind_socket(path: &Path) -> Result<UnixListener, RpcError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| RpcError::SocketDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RpcError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let bind_err = |source| RpcError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Whether a connecting process may use the service.
fn peer_allowed(stream: &UnixStream, allowed_uids: &[u32]) -> bool {
    match stream.peer_cred() {
        Ok(cred) if allowed_uids.contains(&cred.uid()) => true,
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "refusing daemon socket connection from a non-allowed uid"
            );
            false
        }
        Err(error) => {
            warn!(%error, "refusing daemon socket connection: no peer credentials");
            false
        }
    }
}

/// Serves the CNI service on `listener` until `shutdown` resolves.
pub async fn serve<H: CniHandler>(
    listener: UnixListener,
    handler: Arc<H>,
    allowed_uids: Vec<u32>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RpcError> {
    let allowed = Arc::new(allowed_uids);
    let incoming = UnixListenerStream::new(listener).filter_map(move |conn| {
        let allowed = allowed.clone();
        async move {
            match conn {
                Ok(stream) if peer_allowed(&stream, &allowed) => Some(Ok::<_, io::Error>(stream)),
                Ok(_) => None,
                Err(error) => {
                    warn!(%error, "accept on daemon socket failed");
                    None
                }
            }
        }
    });
    info!("CNI service listening");
    tonic::transport::Server::builder()
        .add_service(CniDaemonServer::new(CniService::new(handler)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_error_carries_code_in_metadata() {
        let status = CniError::new(cni_code::AUTH_FAILURE, "minting failed").into_status();
        assert_eq!(status.code(), tonic::Code::Internal);
        let code = status
            .metadata()
            .get(CNI_CODE_METADATA)
            .and_then(|v| v.to_str().ok());
        assert_eq!(code, Some("101"));
        assert_eq!(status.message(), "minting failed");
    }

    #[test]
    fn try_again_maps_to_unavailable() {
        let status = CniError::new(cni_code::TRY_AGAIN_LATER, "starting").into_status();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn old_api_versions_are_refused() {
        assert!(check_api_version(0).is_err());
        assert!(check_api_version(API_VERSION).is_ok());
        assert!(check_api_version(API_VERSION + 5).is_ok());
    }

    #[tokio::test]
    async fn socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/daemon.sock");
        let _listener = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        // A second bind replaces the stale socket instead of failing.
        drop(_listener);
        bind_socket(&path).unwrap();
    }
}
