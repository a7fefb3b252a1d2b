//! DERP client: the I/O edge around `tailnet_wire::derp`.
//!
//! [`connect`] dials one relay node (TLS or plain TCP), upgrades
//! `GET /derp` to the DERP stream and runs the key exchange; frames are
//! read by [`FrameReader`] (`frames`), TLS is set up in `tls`. [`DerpLink`]
//! (`link`) keeps one identity's connection to one region alive.

mod frames;
mod link;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tailnet_wire::derp::{self, Frame, NodeKey};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

use super::config::DerpNodeConfig;

pub use frames::FrameReader;
pub use link::{DerpInbound, DerpLink, DerpOutbound, HomeRelay, LinkSettings};
pub use tls::RelayTrust;

/// Time allowed for dialing, TLS and the DERP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DerpClientError {
    #[error("DERP region {region} has no relay node (only STUN nodes or none)")]
    NoNode { region: u16 },
    #[error("resolving DERP host {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("DERP host {host} resolved to no address")]
    NoAddress { host: String },
    #[error("connecting to DERP node {node} at {addr}: {source}")]
    Connect {
        node: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("DERP node {node}: timed out during {stage}")]
    Timeout { node: String, stage: &'static str },
    #[error("DERP upgrade refused: {status_line:?}")]
    UpgradeRefused { status_line: String },
    #[error("DERP HTTP response head too large or malformed")]
    BadHttpResponse,
    #[error("DERP protocol: {0}")]
    Protocol(#[from] derp::DerpError),
    #[error("DERP server sent {got} before {expected}")]
    UnexpectedFrame { expected: &'static str, got: String },
    #[error("DERP stream I/O: {0}")]
    Io(#[from] io::Error),
    #[error("DERP server closed the connection")]
    Closed,
}

/// Any byte stream the relay protocol can run over (TCP or TLS over TCP).
pub trait DerpStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> DerpStream for T {}

/// An established, authenticated relay connection.
pub struct DerpConnection {
    pub reader: FrameReader<tokio::io::ReadHalf<Box<dyn DerpStream>>>,
    pub writer: tokio::io::WriteHalf<Box<dyn DerpStream>>,
    pub server_key: NodeKey,
    pub node: String,
}

async fn resolve(node: &DerpNodeConfig) -> Result<Vec<SocketAddr>, DerpClientError> {
    let port = node.effective_derp_port();
    let mut addrs = Vec::new();
    if let Some(v4) = node.ipv4 {
        addrs.push(SocketAddr::from((v4, port)));
    }
    if let Some(v6) = node.ipv6 {
        addrs.push(SocketAddr::from((v6, port)));
    }
    if addrs.is_empty() {
        let host = node.host_name.clone();
        addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| DerpClientError::Resolve {
                host: host.clone(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(DerpClientError::NoAddress { host });
        }
    }
    Ok(addrs)
}

async fn dial(
    node: &DerpNodeConfig,
    trust: &RelayTrust,
) -> Result<Box<dyn DerpStream>, DerpClientError> {
    let mut last_err = None;
    for addr in resolve(node).await? {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                // Relay traffic is latency-sensitive and already batched by us.
                if let Err(error) = tcp.set_nodelay(true) {
                    debug!(%error, "cannot disable Nagle on the DERP connection; it still works");
                }
                if node.plain_http {
                    return Ok(Box::new(tcp));
                }
                let name = rustls::pki_types::ServerName::try_from(node.host_name.clone())
                    .map_err(|_| DerpClientError::ServerName(node.host_name.clone()))?;
                let connector =
                    tokio_rustls::TlsConnector::from(trust.config(node.insecure_for_tests)?);
                let tls = connector.connect(name, tcp).await.map_err(|source| {
                    DerpClientError::Connect {
                        node: node.name.clone(),
                        addr,
                        source,
                    }
                })?;
                return Ok(Box::new(tls));
            }
            Err(source) => {
                last_err = Some(DerpClientError::Connect {
                    node: node.name.clone(),
                    addr,
                    source,
                })
            }
        }
    }
    Err(last_err.unwrap_or_else(|| DerpClientError::NoAddress {
        host: node.host_name.clone(),
    }))
}

/// Dial `node` (verifying its certificate against `trust`), upgrade to
/// DERP and authenticate as `node_private`.
pub async fn connect(
    node: &DerpNodeConfig,
    trust: &RelayTrust,
    node_private: &[u8; 32],
) -> Result<DerpConnection, DerpClientError> {
    let timed_out = |stage| DerpClientError::Timeout {
        node: node.name.clone(),
        stage,
    };
    let stream = timeout(CONNECT_TIMEOUT, dial(node, trust))
        .await
        .map_err(|_| timed_out("dial"))??;
    timeout(CONNECT_TIMEOUT, handshake(stream, node, node_private))
        .await
        .map_err(|_| timed_out("handshake"))?
}

async fn handshake(
    stream: Box<dyn DerpStream>,
    node: &DerpNodeConfig,
    node_private: &[u8; 32],
) -> Result<DerpConnection, DerpClientError> {
    let (read, mut writer) = tokio::io::split(stream);
    let request = format!(
        "GET /derp HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: DERP\r\nUser-Agent: tailnet-cni\r\n\r\n",
        node.host_name
    );
    writer.write_all(request.as_bytes()).await?;
    writer.flush().await?;

    let mut reader = FrameReader::new(read);
    let status = reader.read_http_head().await?;
    let code = status.split_whitespace().nth(1);
    if code != Some("101") {
        return Err(DerpClientError::UpgradeRefused {
            status_line: status,
        });
    }

    let server_key = match reader.next_frame().await? {
        Frame::ServerKey { server_key } => server_key,
        other => {
            return Err(DerpClientError::UnexpectedFrame {
                expected: "ServerKey",
                got: frame_name(&other),
            })
        }
    };
    let mut out = Vec::with_capacity(128);
    derp::encode_client_info(&mut out, node_private, &server_key)?;
    writer.write_all(&out).await?;
    writer.flush().await?;

    let info = match reader.next_frame().await? {
        Frame::ServerInfo { sealed } => derp::open_server_info(node_private, &server_key, sealed)?,
        other => {
            return Err(DerpClientError::UnexpectedFrame {
                expected: "ServerInfo",
                got: frame_name(&other),
            })
        }
    };
    debug!(node = %node.name, server_version = info.version, "DERP connection established");
    Ok(DerpConnection {
        reader,
        writer,
        server_key,
        node: node.name.clone(),
    })
}

pub(super) fn frame_name(frame: &Frame<'_>) -> String {
    match frame {
        Frame::Unknown { frame_type, .. } => format!("frame type {frame_type:#04x}"),
        other => {
            let dbg = format!("{other:?}");
            dbg.split([' ', '{']).next().unwrap_or_default().to_owned()
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support;
