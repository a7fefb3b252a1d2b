//! The gRPC contract between the `tailnet-cni` shim and the `tailnet-cnid`
//! daemon. See `proto/tailnetcni/v1/cni.proto` for the compatibility rules.
//! Also what both sides must agree on outside the wire: how container ids and
//! interface names are validated, how long each verb may take, and how
//! files are replaced atomically.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod atomic_file;
pub mod budget;
pub mod selection;
pub mod validate;

pub use atomic_file::{atomic_write, AtomicWriteError};

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("tailnetcni.v1");
}

/// The API version this build speaks.
pub const API_VERSION: u32 = 1;
/// The oldest API version this build still answers.
pub const MIN_API_VERSION: u32 = 1;

/// gRPC metadata key in which the daemon puts the CNI error code (decimal)
/// of a failed call, so the shim can report the spec's code.
pub const CNI_CODE_METADATA: &str = "tailnet-cni-code";

/// CNI error codes (spec 1.1.0, "Error" section), shared by shim and daemon.
pub mod cni_code {
    /// The runtime and plugin disagree on the CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The network configuration has a field the plugin does not support.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A required environment variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    /// An I/O operation failed, such as reading the network configuration.
    pub const IO_FAILURE: u32 = 5;
    /// The network configuration or another input could not be decoded.
    pub const DECODE_FAILURE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient failure; the runtime should retry the call later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin cannot serve ADD requests now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The plugin cannot serve ADD requests now, and existing pods may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin-specific: the control server refused or failed registration.
    pub const CONTROL_FAILURE: u32 = 100;
    /// Plugin-specific: minting an auth key failed.
    pub const AUTH_FAILURE: u32 = 101;
    /// Plugin-specific: setting up the pod's interfaces failed.
    pub const PLUMBING_FAILURE: u32 = 102;
    /// Plugin-specific: CHECK found the pod's setup drifted.
    pub const CHECK_FAILED: u32 = 103;
}

/// Connecting to the daemon's Unix socket, for the shim and the status CLI.
pub mod uds {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use hyper_util::rt::TokioIo;
    use tonic::transport::{Channel, Endpoint};

    use crate::v1::cni_daemon_client::CniDaemonClient;

    /// Opens a gRPC channel over the Unix socket at `path`, giving up after
    /// `connect_timeout`. The URI is a placeholder: the connector ignores it.
    pub async fn connect(
        path: &Path,
        connect_timeout: Duration,
    ) -> Result<CniDaemonClient<Channel>, tonic::transport::Error> {
        let path: PathBuf = path.to_path_buf();
        let channel = Endpoint::from_static("http://daemon.invalid")
            .connect_timeout(connect_timeout)
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await?;
        Ok(CniDaemonClient::new(channel))
    }
}
