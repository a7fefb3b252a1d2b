//! A minimal single-node DERP relay over plain HTTP, for tests and local
//! debugging: it runs the server side of the handshake, forwards SendPacket
//! frames to the client holding the destination key, and greets each client
//! with a Ping to check that Pongs come back. No mesh, no rate limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tailnet_wire::derp::{self, Frame, NodeKey};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::derp_client::FrameReader;

const GREETING_PING: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const CLIENT_QUEUE: usize = 1024;

type Clients = Arc<Mutex<HashMap<NodeKey, mpsc::Sender<Vec<u8>>>>>;

pub struct LocalRelay {
    addr: SocketAddr,
    task: JoinHandle<()>,
    clients: Clients,
    pongs: Arc<AtomicUsize>,
}

impl LocalRelay {
    /// Listen on `bind` (use port 0 for any free port) and serve plain HTTP
    /// until dropped.
    pub async fn start(bind: SocketAddr) -> std::io::Result<Self> {
        Self::start_inner(bind, None).await
    }

    /// Like [`LocalRelay::start`], but serve HTTPS with the given DER
    /// certificate chain and PKCS#8 key, as real relays do.
    pub async fn start_tls(
        bind: SocketAddr,
        cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key_pkcs8_der: Vec<u8>,
    ) -> std::io::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pkcs8_der.into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(cert_chain, key))
            .map_err(std::io::Error::other)?;
        Self::start_inner(
            bind,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_inner(
        bind: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let mut server_private = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut server_private);
        let clients: Clients = Arc::default();
        let pongs = Arc::new(AtomicUsize::new(0));
        let (c, p) = (clients.clone(), pongs.clone());
        let task = tokio::spawn(async move {
            // Client tasks live in the set so dropping the relay ends them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                if let Err(error) = sock.set_nodelay(true) {
                    debug!(%error, "cannot disable Nagle on a relay client; it still works");
                }
                let (c, p) = (c.clone(), p.clone());
                match tls.clone() {
                    None => {
                        connections.spawn(serve_client(sock, server_private, c, p));
                    }
                    Some(acceptor) => {
                        connections.spawn(async move {
                            match acceptor.accept(sock).await {
                                Ok(stream) => serve_client(stream, server_private, c, p).await,
                                Err(e) => debug!(error = %e, "relay: TLS accept failed"),
                            }
                        });
                    }
                }
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            task,
            clients,
            pongs,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Pongs received that echo the relay's greeting Ping.
    pub fn pongs(&self) -> usize {
        self.pongs.load(Ordering::Relaxed)
    }

    /// Node keys currently connected.
    pub fn connected(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Drop for LocalRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_client<S: AsyncRead + AsyncWrite + Send + 'static>(
    sock: S,
    server_private: [u8; 32],
    clients: Clients,
    pongs: Arc<AtomicUsize>,
) {
    let (read, mut write) = tokio::io::split(sock);
    let mut reader = FrameReader::new(read);
    // A request head ends with the same blank line as a response head.
    let Ok(request_line) = reader.read_http_head().await else {
        return;
    };
    if !request_line.starts_with("GET /derp ") {
        // The connection closes either way; a client gone already misses nothing.
        write
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await
            .ok();
        return;
    }
    let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\n\r\n".to_vec();
    derp::encode_server_key(&mut out, &derp::public_key(&server_private));
    if write.write_all(&out).await.is_err() {
        return;
    }
    let client_key = match reader.next_frame().await {
        Ok(Frame::ClientInfo { client_key, sealed }) => {
            match derp::open_client_info(&server_private, &client_key, sealed) {
                Ok(info) if info.version >= 2 => client_key,
                Ok(info) => {
                    debug!(version = info.version, "relay: client protocol too old");
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "relay: bad ClientInfo");
                    return;
                }
            }
        }
        _ => return,
    };
    let mut out = Vec::new();
    let info = derp::ServerInfo {
        version: derp::PROTOCOL_VERSION,
        ..Default::default()
    };
    if derp::encode_server_info(&mut out, &server_private, &client_key, &info).is_err() {
        return;
    }
    derp::encode_ping(&mut out, &GREETING_PING);
    if write.write_all(&out).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
    if let Ok(mut map) = clients.lock() {
        map.insert(client_key, tx.clone());
    }
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    loop {
        match reader.next_frame().await {
            Ok(Frame::SendPacket { dst, packet }) => {
                let mut frame = Vec::with_capacity(packet.len() + 40);
                if derp::encode_recv_packet(&mut frame, &client_key, packet).is_err() {
                    continue;
                }
                let peer = clients.lock().ok().and_then(|c| c.get(&dst).cloned());
                if let Some(peer) = peer {
                    // Like a real relay: drop rather than stall the sender.
                    peer.try_send(frame).ok();
                }
            }
            Ok(Frame::Pong {
                data: GREETING_PING,
            }) => {
                pongs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Ok(mut map) = clients.lock() {
        // A newer connection with the same key may have replaced this one.
        if map
            .get(&client_key)
            .is_some_and(|current| current.same_channel(&tx))
        {
            map.remove(&client_key);
        }
    }
    writer.abort();
}
