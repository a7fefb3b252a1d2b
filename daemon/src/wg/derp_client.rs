//! DERP client: the I/O edge around `tailnet_wire::derp`.
//!
//! [`connect`] dials one relay node (TLS or plain TCP), upgrades
//! `GET /derp` to the DERP stream and runs the key exchange. [`DerpLink`]
//! keeps one identity's connection to one region alive: it reconnects with
//! backoff, answers Pings, and moves packets between the relay and the
//! engine through bounded queues.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tailnet_wire::derp::{self, Frame, NodeKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

use super::config::{DerpNodeConfig, DerpRegionConfig};

/// Time allowed for dialing, TLS and the DERP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers send a KeepAlive about every 60 s; silence for twice that is a dead link.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const HTTP_HEAD_LIMIT: usize = 8 << 10;
// Buffers start small and grow to the largest frame seen: idle links stay cheap.
const INITIAL_READ_BUF: usize = 4 << 10;
const BUSY_READ_BUF: usize = 64 << 10;
/// Coalesce queued packets into one write up to this many bytes.
const WRITE_BATCH_BYTES: usize = 64 << 10;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

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

/// Reads DERP frames from a stream, reusing one growable buffer.
pub struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the last returned frame, released on the next read.
    consumed: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: vec![0; INITIAL_READ_BUF],
            start: 0,
            end: 0,
            consumed: 0,
        }
    }

    async fn fill(&mut self, need_total: usize) -> Result<(), DerpClientError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need_total > self.buf.len() {
            self.buf.resize(need_total, 0);
        }
        let space = self.buf.len() - self.end;
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(DerpClientError::Closed);
        }
        self.end += n;
        // A read that filled every free byte means a busy link: read more per call.
        if n == space && self.buf.len() < BUSY_READ_BUF {
            let grown = (self.buf.len() * 2).min(BUSY_READ_BUF);
            self.buf.resize(grown, 0);
        }
        Ok(())
    }

    /// Read the HTTP response head; bytes after it stay buffered for frames.
    /// Returns the status line.
    pub async fn read_http_head(&mut self) -> Result<String, DerpClientError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(pos) = avail.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&avail[..pos])
                    .map_err(|_| DerpClientError::BadHttpResponse)?;
                let status = head.lines().next().unwrap_or_default().to_owned();
                self.start += pos + 4;
                return Ok(status);
            }
            if avail.len() >= HTTP_HEAD_LIMIT {
                return Err(DerpClientError::BadHttpResponse);
            }
            let want = self.end - self.start + 1024;
            self.fill(want.min(HTTP_HEAD_LIMIT)).await?;
        }
    }

    /// Read the next frame. Cancel-safe only between frames is not needed:
    /// the link drives it from one task.
    pub async fn next_frame(&mut self) -> Result<Frame<'_>, DerpClientError> {
        self.start += std::mem::take(&mut self.consumed);
        loop {
            let avail = &self.buf[self.start..self.end];
            match derp::frame_len(avail) {
                Some(total) if total > derp::MAX_FRAME_SIZE + derp::FRAME_HEADER_LEN => {
                    return Err(derp::DerpError::FrameTooLarge {
                        len: total,
                        max: derp::MAX_FRAME_SIZE,
                    }
                    .into());
                }
                Some(total) if avail.len() >= total => break,
                Some(total) => self.fill(total).await?,
                None => self.fill(derp::FRAME_HEADER_LEN).await?,
            }
        }
        let (frame, used) =
            derp::decode_frame(&self.buf[self.start..self.end])?.ok_or(DerpClientError::Closed)?;
        self.consumed = used;
        Ok(frame)
    }
}

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

fn tls_config(insecure: bool) -> Result<Arc<rustls::ClientConfig>, DerpClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
            .with_no_client_auth()
    } else {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // Relays may share a port with an HTTP/2 control server: ask for HTTP/1.1,
    // the only protocol the Upgrade handshake works on.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any certificate: used only for nodes marked `InsecureForTests`.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn dial(node: &DerpNodeConfig) -> Result<Box<dyn DerpStream>, DerpClientError> {
    let mut last_err = None;
    for addr in resolve(node).await? {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                // Relay traffic is latency-sensitive and already batched by us.
                let _ = tcp.set_nodelay(true);
                if node.plain_http {
                    return Ok(Box::new(tcp));
                }
                let name = rustls::pki_types::ServerName::try_from(node.host_name.clone())
                    .map_err(|_| DerpClientError::ServerName(node.host_name.clone()))?;
                let connector =
                    tokio_rustls::TlsConnector::from(tls_config(node.insecure_for_tests)?);
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

/// Dial `node`, upgrade to DERP and authenticate as `node_private`.
pub async fn connect(
    node: &DerpNodeConfig,
    node_private: &[u8; 32],
) -> Result<DerpConnection, DerpClientError> {
    let timed_out = |stage| DerpClientError::Timeout {
        node: node.name.clone(),
        stage,
    };
    let stream = timeout(CONNECT_TIMEOUT, dial(node))
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

fn frame_name(frame: &Frame<'_>) -> String {
    match frame {
        Frame::Unknown { frame_type, .. } => format!("frame type {frame_type:#04x}"),
        other => {
            let dbg = format!("{other:?}");
            dbg.split([' ', '{']).next().unwrap_or_default().to_owned()
        }
    }
}

/// A packet for the relay to deliver to `dst`.
#[derive(Debug)]
pub struct DerpOutbound {
    pub dst: NodeKey,
    pub packet: Vec<u8>,
}

/// A packet the relay delivered from `src`.
#[derive(Debug)]
pub struct DerpInbound {
    pub region: u16,
    pub src: NodeKey,
    pub packet: Vec<u8>,
}

/// Whether a pod's home relay can deliver to it yet. Peers send their first
/// handshake to a pod's home region, and a relay drops packets for a client
/// that has not connected, so a pod is reachable only once this is
/// `Connected` (or the DERP map has no relay at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeRelay {
    /// No DERP map yet.
    Unknown,
    /// The DERP map has no relay region: nothing to wait for.
    Absent,
    Connecting,
    Connected,
}

/// One identity's connection to one DERP region, kept alive by a task.
/// Dropping it closes the connection.
pub struct DerpLink {
    region: u16,
    outbound: mpsc::Sender<DerpOutbound>,
    task: JoinHandle<()>,
}

impl DerpLink {
    /// `home` is given for the pod's home region: the link reports its
    /// connection state there.
    pub fn spawn(
        region: DerpRegionConfig,
        node_private: [u8; 32],
        home: Option<Arc<watch::Sender<HomeRelay>>>,
        inbound: mpsc::Sender<DerpInbound>,
        queue: usize,
    ) -> Self {
        let (outbound, rx) = mpsc::channel(queue.max(1));
        let region_id = region.region_id;
        let task = tokio::spawn(run_link(region, node_private, home, inbound, rx));
        Self {
            region: region_id,
            outbound,
            task,
        }
    }

    pub fn region(&self) -> u16 {
        self.region
    }

    /// Queue a packet. Relays are datagram transports: when the queue is full
    /// (link down or slow) the packet is dropped rather than stalling the pod,
    /// and WireGuard's own retransmission takes over. Returns whether queued.
    pub fn try_send(&self, dst: NodeKey, packet: Vec<u8>) -> bool {
        self.outbound.try_send(DerpOutbound { dst, packet }).is_ok()
    }
}

impl Drop for DerpLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_link(
    region: DerpRegionConfig,
    node_private: [u8; 32],
    home: Option<Arc<watch::Sender<HomeRelay>>>,
    inbound: mpsc::Sender<DerpInbound>,
    mut outbound: mpsc::Receiver<DerpOutbound>,
) {
    let region_id = region.region_id;
    // The home flag is sent at connect time and tells the relay to keep us
    // as the region's preferred connection.
    let preferred = home.is_some();
    let report = |state| {
        if let Some(home) = &home {
            home.send_replace(state);
        }
    };
    report(HomeRelay::Connecting);
    let mut backoff = BACKOFF_MIN;
    let mut node_index = 0usize;
    loop {
        let nodes: Vec<&DerpNodeConfig> = region.nodes.iter().filter(|n| !n.stun_only).collect();
        if nodes.is_empty() {
            warn!(region = region_id, error = %DerpClientError::NoNode { region: region_id }, "DERP link idle");
            return;
        }
        let node = nodes[node_index % nodes.len()];
        let started = Instant::now();
        match connect(node, &node_private).await {
            Ok(conn) => {
                info!(region = region_id, node = %conn.node, "DERP connected");
                report(HomeRelay::Connected);
                let mut restart_hint = None;
                let result = serve(
                    conn,
                    region_id,
                    preferred,
                    &inbound,
                    &mut outbound,
                    &mut restart_hint,
                )
                .await;
                match result {
                    Ok(()) => return, // The engine dropped its side.
                    Err(e) => {
                        report(HomeRelay::Connecting);
                        warn!(region = region_id, node = %node.name, error = %e, "DERP connection lost")
                    }
                }
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = BACKOFF_MIN;
                }
                if let Some(wait) = restart_hint {
                    // The server said when it will be back: wait that long, then retry promptly.
                    tokio::time::sleep(wait).await;
                    backoff = BACKOFF_MIN;
                    continue;
                }
            }
            Err(e) => {
                warn!(region = region_id, node = %node.name, error = %e, "DERP connect failed");
                node_index += 1;
            }
        }
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        // Packets queued while down are stale by now; WireGuard will resend.
        while outbound.try_recv().is_ok() {}
    }
}

/// Run an established connection until it fails (Err) or the engine side
/// goes away (Ok).
async fn serve(
    conn: DerpConnection,
    region: u16,
    preferred: bool,
    inbound: &mpsc::Sender<DerpInbound>,
    outbound: &mut mpsc::Receiver<DerpOutbound>,
    restart_hint: &mut Option<Duration>,
) -> Result<(), DerpClientError> {
    let DerpConnection {
        mut reader,
        mut writer,
        node,
        ..
    } = conn;
    // Pongs must go out through the writer; a tiny queue between the halves.
    let (pong_tx, mut pong_rx) = mpsc::channel::<[u8; 8]>(8);

    if preferred {
        let mut out = Vec::with_capacity(6);
        derp::encode_note_preferred(&mut out, true);
        writer.write_all(&out).await?;
        writer.flush().await?;
    }

    let read_side = async {
        loop {
            let frame = timeout(READ_TIMEOUT, reader.next_frame())
                .await
                .map_err(|_| DerpClientError::Timeout {
                    node: node.clone(),
                    stage: "read",
                })??;
            match frame {
                Frame::RecvPacket { src, packet } => {
                    let msg = DerpInbound {
                        region,
                        src,
                        packet: packet.to_vec(),
                    };
                    if inbound.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
                Frame::Ping { data } => {
                    // Only the latest pings matter; dropping one on overload is fine.
                    let _ = pong_tx.try_send(data);
                }
                Frame::KeepAlive | Frame::Pong { .. } | Frame::PeerPresent { .. } => {}
                Frame::PeerGone { peer, reason } => {
                    debug!(region, peer = %hex::encode(&peer[..4]), ?reason, "DERP peer gone");
                }
                Frame::Health { problem } => {
                    if problem.is_empty() {
                        debug!(region, "DERP health ok");
                    } else {
                        warn!(region, problem, "DERP server reports a problem");
                    }
                }
                Frame::Restarting {
                    reconnect_in_ms,
                    try_for_ms,
                } => {
                    info!(
                        region,
                        reconnect_in_ms, try_for_ms, "DERP server restarting"
                    );
                    *restart_hint = Some(Duration::from_millis(
                        u64::from(reconnect_in_ms).min(60_000),
                    ));
                }
                other => debug!(region, frame = %frame_name(&other), "ignoring DERP frame"),
            }
        }
    };

    let write_side = async {
        let mut out = Vec::with_capacity(INITIAL_READ_BUF);
        loop {
            out.clear();
            tokio::select! {
                msg = outbound.recv() => {
                    let Some(msg) = msg else { return Ok::<(), DerpClientError>(()) };
                    append_packet(&mut out, &msg);
                    // Coalesce whatever else is queued into the same write.
                    while out.len() < WRITE_BATCH_BYTES {
                        match outbound.try_recv() {
                            Ok(msg) => append_packet(&mut out, &msg),
                            Err(_) => break,
                        }
                    }
                }
                Some(data) = pong_rx.recv() => derp::encode_pong(&mut out, &data),
            }
            writer.write_all(&out).await?;
            writer.flush().await?;
        }
    };

    tokio::select! {
        r = read_side => r,
        r = write_side => r,
    }
}

fn append_packet(out: &mut Vec<u8>, msg: &DerpOutbound) {
    if let Err(e) = derp::encode_send_packet(out, &msg.dst, &msg.packet) {
        debug!(error = %e, "dropping packet too large for DERP");
    }
}

/// Helpers for tests elsewhere in the crate that act as raw relay clients.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) enum Received {
        Packet(NodeKey, Vec<u8>),
        Other,
    }

    pub(crate) async fn next<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Received {
        match reader.next_frame().await.expect("relay frame") {
            Frame::RecvPacket { src, packet } => Received::Packet(src, packet.to_vec()),
            _ => Received::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_reader_handles_split_and_coalesced_frames() {
        let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n\r\n".to_vec();
        derp::encode_server_key(&mut bytes, &[7; 32]);
        derp::encode_recv_packet(&mut bytes, &[8; 32], &vec![0xab; 40_000]).unwrap();
        derp::encode_frame(&mut bytes, derp::FrameType::KeepAlive, &[]);
        let (mut client, mut server) = tokio::io::duplex(1000);
        let feeder = tokio::spawn(async move {
            // Dribble the bytes in odd-sized pieces.
            for chunk in bytes.chunks(777) {
                server.write_all(chunk).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(&mut client);
        let status = reader.read_http_head().await.unwrap();
        assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
        assert_eq!(
            reader.next_frame().await.unwrap(),
            Frame::ServerKey {
                server_key: [7; 32]
            }
        );
        match reader.next_frame().await.unwrap() {
            Frame::RecvPacket { src, packet } => {
                assert_eq!(src, [8; 32]);
                assert_eq!(packet.len(), 40_000);
                assert!(packet.iter().all(|b| *b == 0xab));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(reader.next_frame().await.unwrap(), Frame::KeepAlive);
        feeder.await.unwrap();
        assert!(matches!(
            reader.next_frame().await,
            Err(DerpClientError::Closed)
        ));
    }

    #[tokio::test]
    async fn connect_refuses_non_101() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let node = test_node(addr);
        match connect(&node, &[1; 32]).await {
            Err(DerpClientError::UpgradeRefused { status_line }) => {
                assert!(status_line.contains("404"))
            }
            other => panic!("expected refusal, got {:?}", other.map(|c| c.node)),
        }
    }

    /// A self-signed certificate for "localhost" (DER chain, PKCS#8 DER key),
    /// made with the openssl CLI; None when openssl is missing.
    fn self_signed_localhost() -> Option<(Vec<rustls::pki_types::CertificateDer<'static>>, Vec<u8>)>
    {
        let dir = tempfile::tempdir().unwrap();
        let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
        let run = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let ok = run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &path("key.pem"),
            "-out",
            &path("cert.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ]) && run(&[
            "x509",
            "-in",
            &path("cert.pem"),
            "-outform",
            "DER",
            "-out",
            &path("cert.der"),
        ]) && run(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &path("key.pem"),
            "-outform",
            "DER",
            "-out",
            &path("key.der"),
        ]);
        if !ok {
            return None;
        }
        let cert = std::fs::read(path("cert.der")).unwrap();
        let key = std::fs::read(path("key.der")).unwrap();
        Some((vec![cert.into()], key))
    }

    #[tokio::test]
    async fn tls_relay_accepted_only_when_node_is_insecure_for_tests() {
        let Some((chain, key)) = self_signed_localhost() else {
            eprintln!("skipping: openssl CLI unavailable");
            return;
        };
        let relay = crate::wg::local_relay::LocalRelay::start_tls(
            "127.0.0.1:0".parse().unwrap(),
            chain,
            key,
        )
        .await
        .unwrap();
        let mut node = test_node(relay.addr());
        node.plain_http = false;
        node.insecure_for_tests = true;
        let conn = connect(&node, &[3; 32])
            .await
            .expect("TLS connect with verification off");
        assert_ne!(conn.server_key, [0; 32]);

        // The same self-signed relay is refused once verification is on.
        node.insecure_for_tests = false;
        match connect(&node, &[4; 32]).await {
            Err(DerpClientError::Connect { source, .. }) => {
                assert!(
                    source.to_string().to_lowercase().contains("certificate"),
                    "{source}"
                )
            }
            other => panic!(
                "expected a certificate error, got {:?}",
                other.map(|c| c.node)
            ),
        }
    }

    pub(crate) fn test_node(addr: SocketAddr) -> DerpNodeConfig {
        let SocketAddr::V4(v4) = addr else {
            panic!("v4 only")
        };
        DerpNodeConfig {
            name: "test".into(),
            host_name: "localhost".into(),
            ipv4: Some(*v4.ip()),
            ipv6: None,
            derp_port: v4.port(),
            stun_port: 0,
            insecure_for_tests: true,
            stun_only: false,
            plain_http: true,
        }
    }
}
