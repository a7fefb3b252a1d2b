//! Whether the daemon is ready to serve CNI calls.
//!
//! The installer shares the node's network namespace with the daemon
//! (`hostNetwork`), so the daemon's `/readyz` on loopback is the cheapest
//! reliable signal: it is what the kubelet's readiness probe reads, and it
//! answers 200 only once the daemon has recovered its pods and serves its
//! socket. Chaining before that would fail every new pod on the node.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The status line is all we read.
const MAX_RESPONSE_HEAD: usize = 256;

/// Why the daemon does not count as ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("daemon readiness at {addr} does not answer: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("daemon readiness at {addr} did not answer within {CHECK_TIMEOUT:?}")]
    TimedOut { addr: SocketAddr },
    #[error("daemon at {addr} is not ready (HTTP {status})")]
    Status { addr: SocketAddr, status: u16 },
    #[error("daemon readiness at {addr} sent no HTTP status line")]
    Malformed { addr: SocketAddr },
}

/// Succeeds when `GET /readyz` on `addr` answers 200.
pub async fn check(addr: SocketAddr) -> Result<(), NotReady> {
    match tokio::time::timeout(CHECK_TIMEOUT, status(addr)).await {
        Ok(Ok(200)) => Ok(()),
        Ok(Ok(status)) => Err(NotReady::Status { addr, status }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(NotReady::TimedOut { addr }),
    }
}

/// The status code of a minimal HTTP/1.0 `GET /readyz`.
async fn status(addr: SocketAddr) -> Result<u16, NotReady> {
    let unreachable = |source| NotReady::Unreachable { addr, source };
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(unreachable)?;
    let request = format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(unreachable)?;
    let mut head = Vec::with_capacity(MAX_RESPONSE_HEAD);
    let mut buf = [0u8; MAX_RESPONSE_HEAD];
    while !head.contains(&b'\n') && head.len() < MAX_RESPONSE_HEAD {
        let n = stream.read(&mut buf).await.map_err(unreachable)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head).ok_or(NotReady::Malformed { addr })
}

/// `HTTP/1.x NNN ...` → `NNN`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let mut fields = line.split(|&b| b == b' ');
    if !fields.next()?.starts_with(b"HTTP/") {
        return None;
    }
    std::str::from_utf8(fields.next()?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests;
