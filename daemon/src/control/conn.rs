//! Connections to the control server: plain TCP or TLS, the `/key` fetch,
//! the `/ts2021` upgrade, and the Noise channel as an async byte stream.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;
use url::Url;

use super::json;
use super::keys::{MachinePublic, PrivateKey};
use super::noise::{Initiator, NoiseError, Transport, RESPONSE_LEN};
use super::tailcfg::{KeyResponse, CAPABILITY_VERSION};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Early-payload magic: the server may send JSON before HTTP/2 starts.
const EARLY_MAGIC: [u8; 5] = [0xff, 0xff, 0xff, b'T', b'S'];
const MAX_EARLY_PAYLOAD: usize = 10 << 20;
/// The `/key` answer is two short keys in JSON (about 200 bytes); the bound
/// leaves room for chunked framing and extra fields, not for a server that
/// streams without end.
pub const MAX_KEY_BODY: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("control server {url} unreachable: {source}")]
    Unreachable { url: String, source: io::Error },
    #[error("TLS with control server {url}: {reason}")]
    Tls {
        url: String,
        /// The cause in words (an unknown CA, a wrong name, ...).
        reason: String,
        #[source]
        source: io::Error,
    },
    #[error("control server {url}: {msg}")]
    Protocol { url: String, msg: String },
    #[error("control server {url}: {source}")]
    Noise { url: String, source: NoiseError },
    #[error("control server {url}: {what} exceeds {limit} bytes")]
    TooLarge {
        url: String,
        what: &'static str,
        limit: usize,
    },
}

/// Anything the control connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where the control server is and how to speak TLS to it.
#[derive(Clone)]
pub struct Endpoint {
    pub url: Url,
    pub tls: Arc<rustls::ClientConfig>,
    /// The extra CA bundle `tls` trusts, named in certificate errors.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Endpoint {
    fn host(&self) -> String {
        self.url.host_str().unwrap_or_default().to_string()
    }

    fn https(&self) -> bool {
        self.url.scheme() == "https"
    }

    fn port(&self) -> u16 {
        self.url
            .port_or_known_default()
            .unwrap_or(if self.https() { 443 } else { 80 })
    }

    fn host_header(&self) -> String {
        match self.url.port() {
            Some(port) => format!("{}:{port}", self.host()),
            None => self.host(),
        }
    }

    fn unreachable(&self, source: io::Error) -> ConnError {
        ConnError::Unreachable {
            url: self.url.to_string(),
            source,
        }
    }

    fn protocol(&self, msg: impl Into<String>) -> ConnError {
        ConnError::Protocol {
            url: self.url.to_string(),
            msg: msg.into(),
        }
    }

    async fn dial(&self) -> Result<Box<dyn Io>, ConnError> {
        let unreachable = |source| self.unreachable(source);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host(), self.port())),
        )
        .await
        .map_err(|_| unreachable(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(unreachable)?;
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "cannot disable Nagle on the control connection; it still works");
        }
        if !self.https() {
            return Ok(Box::new(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(self.host())
            .map_err(|e| self.protocol(format!("bad host name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| ConnError::Tls {
                url: self.url.to_string(),
                reason: super::tls::explain_handshake_error(
                    &source,
                    &self.host(),
                    self.ca_file.as_deref(),
                ),
                source,
            })?;
        Ok(Box::new(tls))
    }

    /// Reads an HTTP/1.1 response head; returns (status, leftover bytes).
    async fn read_head(&self, io: &mut Box<dyn Io>) -> Result<(u16, String, Vec<u8>), ConnError> {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| self.protocol("malformed HTTP status line"))?;
                return Ok((status, head, buf[end + 4..].to_vec()));
            }
            if buf.len() > 64 << 10 {
                return Err(self.protocol("HTTP response head too large"));
            }
            let n = io
                .read(&mut chunk)
                .await
                .map_err(|source| self.unreachable(source))?;
            if n == 0 {
                return Err(self.protocol("connection closed before the HTTP response"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `GET /key`: the server's Noise public key.
    pub async fn fetch_server_key(&self) -> Result<MachinePublic, ConnError> {
        let mut io = self.dial().await?;
        let request = format!(
            "GET /key?v={CAPABILITY_VERSION} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tailnet-cni\r\nConnection: close\r\n\r\n",
            self.host_header()
        );
        io.write_all(request.as_bytes())
            .await
            .map_err(|source| self.unreachable(source))?;
        let (status, head, mut body) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.read_head(&mut io))
                .await
                .map_err(|_| self.protocol("timed out reading /key"))??;
        if status != 200 {
            return Err(self.protocol(format!("/key answered HTTP {status}")));
        }
        // The server closes after the body. A body cut short by a timeout or a
        // failed read does not decode, and decoding below says so.
        match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_bounded(&mut io, &mut body, MAX_KEY_BODY),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(BodyError::TooLarge)) => {
                return Err(ConnError::TooLarge {
                    url: self.url.to_string(),
                    what: "the /key response",
                    limit: MAX_KEY_BODY,
                })
            }
            Ok(Err(BodyError::Io(error))) => debug!(%error, "reading the /key body failed"),
            Err(_) => debug!("timed out reading the /key body"),
        }
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(&body).ok_or_else(|| self.protocol("bad chunked /key body"))?
        } else {
            body
        };
        let key: KeyResponse = json::from_slice(&body)
            .map_err(|e| self.protocol(format!("/key is not the JSON key response: {e}")))?;
        MachinePublic::parse(&key.publickey)
            .map_err(|e| self.protocol(format!("/key has no usable publicKey: {e}")))
    }

    /// Upgrades a new connection to the Noise channel, authenticated with
    /// `machine`. Returns the channel and the early payload, if any.
    pub async fn upgrade(
        &self,
        machine: &PrivateKey,
        server: &MachinePublic,
    ) -> Result<(NoiseStream, Option<Vec<u8>>), ConnError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.upgrade_inner(machine, server))
            .await
            .map_err(|_| self.protocol("timed out upgrading to the control protocol"))?
    }

    async fn upgrade_inner(
        &self,
        machine: &PrivateKey,
        server: &MachinePublic,
    ) -> Result<(NoiseStream, Option<Vec<u8>>), ConnError> {
        let noise = |source| ConnError::Noise {
            url: self.url.to_string(),
            source,
        };
        let (initiator, init) =
            Initiator::start(machine, server, CAPABILITY_VERSION).map_err(noise)?;
        let mut io = self.dial().await?;
        let request = format!(
            "POST /ts2021 HTTP/1.1\r\nHost: {}\r\nUser-Agent: tailnet-cni\r\nUpgrade: tailscale-control-protocol\r\n\
             Connection: upgrade\r\nX-Tailscale-Handshake: {}\r\nContent-Length: 0\r\n\r\n",
            self.host_header(),
            base64::engine::general_purpose::STANDARD.encode(init)
        );
        io.write_all(request.as_bytes())
            .await
            .map_err(|source| self.unreachable(source))?;
        let (status, head, mut rest) = self.read_head(&mut io).await?;
        if status != 101 {
            let first = head.lines().next().unwrap_or_default().to_string();
            return Err(self.protocol(format!("/ts2021 upgrade refused: {first}")));
        }
        while rest.len() < 3
            || (rest[0] == 0x03 && rest.len() < 3 + u16::from_be_bytes([rest[1], rest[2]]) as usize)
            || (rest[0] != 0x03 && rest.len() < RESPONSE_LEN)
        {
            let mut chunk = [0u8; 512];
            let n = io
                .read(&mut chunk)
                .await
                .map_err(|source| self.unreachable(source))?;
            if n == 0 {
                return Err(self.protocol("connection closed during the Noise handshake"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        let frame_len = if rest[0] == 0x03 {
            3 + u16::from_be_bytes([rest[1], rest[2]]) as usize
        } else {
            RESPONSE_LEN
        };
        let mut transport = initiator.finish(&rest[..frame_len]).map_err(noise)?;
        transport.push(&rest[frame_len..]);
        let mut stream = NoiseStream::new(io, transport);
        let early = stream
            .read_early_payload()
            .await
            .map_err(|source| self.unreachable(source))?;
        Ok((stream, early))
    }
}

enum BodyError {
    TooLarge,
    Io(io::Error),
}

/// Appends the rest of `io` to `body` until end of stream, refusing to hold
/// more than `limit` bytes in all.
async fn read_bounded<R: AsyncRead + Unpin>(
    io: &mut R,
    body: &mut Vec<u8>,
    limit: usize,
) -> Result<(), BodyError> {
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    // One byte past the limit tells "exactly at the limit" from "more".
    let room = (limit - body.len()) as u64 + 1;
    io.take(room)
        .read_to_end(body)
        .await
        .map_err(BodyError::Io)?;
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(())
}

/// Joins a `Transfer-Encoding: chunked` body; `None` when it is malformed.
pub fn dechunk(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// The Noise channel as a byte stream, for HTTP/2 to run over.
pub struct NoiseStream {
    io: Box<dyn Io>,
    transport: Transport,
    /// Decrypted bytes not yet read.
    plaintext: Vec<u8>,
    plaintext_pos: usize,
    /// Sealed bytes not yet written.
    outbound: Vec<u8>,
    outbound_pos: usize,
}

/// How much one read from the connection takes. The buffer lives on the
/// stack of the read, not in the stream: an idle pod's session holds no
/// read buffer between messages.
const READ_CHUNK: usize = 8192;

impl NoiseStream {
    fn new(io: Box<dyn Io>, transport: Transport) -> Self {
        Self {
            io,
            transport,
            plaintext: Vec::new(),
            plaintext_pos: 0,
            outbound: Vec::new(),
            outbound_pos: 0,
        }
    }

    /// Consumes the optional early payload; other bytes stay readable.
    async fn read_early_payload(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut head = [0u8; 9];
        self.read_exact(&mut head[..5]).await?;
        if head[..5] != EARLY_MAGIC {
            self.unread(&head[..5]);
            return Ok(None);
        }
        self.read_exact(&mut head[5..9]).await?;
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if len > MAX_EARLY_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "early payload too large",
            ));
        }
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload).await?;
        Ok(Some(payload))
    }

    fn unread(&mut self, bytes: &[u8]) {
        let mut joined = bytes.to_vec();
        joined.extend_from_slice(&self.plaintext[self.plaintext_pos..]);
        self.plaintext = joined;
        self.plaintext_pos = 0;
    }

    fn poll_flush_outbound(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outbound_pos < self.outbound.len() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.outbound[self.outbound_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outbound_pos += n;
        }
        // Writes are rare on an idle session: its memory goes back rather
        // than waiting for the next one.
        self.outbound = Vec::new();
        self.outbound_pos = 0;
        Poll::Ready(Ok(()))
    }
}

fn invalid(e: NoiseError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for NoiseStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.plaintext_pos < this.plaintext.len() {
                let n = buf
                    .remaining()
                    .min(this.plaintext.len() - this.plaintext_pos);
                buf.put_slice(&this.plaintext[this.plaintext_pos..this.plaintext_pos + n]);
                this.plaintext_pos += n;
                if this.plaintext_pos == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.plaintext_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(record) = this.transport.next_plaintext().map_err(invalid)? {
                this.plaintext = record;
                this.plaintext_pos = 0;
                continue;
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut raw = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.transport.push(raw.filled());
        }
    }
}

impl AsyncWrite for NoiseStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Backpressure: at most one batch of sealed records waits.
        ready!(this.poll_flush_outbound(cx))?;
        let take = buf.len().min(16 * super::noise::MAX_PLAINTEXT);
        this.transport
            .seal(&buf[..take], &mut this.outbound)
            .map_err(invalid)?;
        // Start writing now; what does not fit waits for the next call.
        if let Poll::Ready(Err(e)) = this.poll_flush_outbound(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_outbound(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_outbound(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffers() {
        let (near, mut far) = tokio::io::duplex(64 << 10);
        let (client, mut server) = super::super::noise::transport_pair();
        let mut stream = NoiseStream::new(Box::new(near), client);

        stream.write_all(&[1u8; 5000]).await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(stream.outbound.capacity(), 0);
        let mut wire = vec![0u8; 64 << 10];
        let n = far.read(&mut wire).await.unwrap();
        server.push(&wire[..n]);
        let mut got = Vec::new();
        while let Some(record) = server.next_plaintext().unwrap() {
            got.extend_from_slice(&record);
        }
        assert_eq!(got, [1u8; 5000]);

        let mut sealed = Vec::new();
        server.seal(&[2u8; 6000], &mut sealed).unwrap();
        far.write_all(&sealed).await.unwrap();
        let mut back = vec![0u8; 6000];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [2u8; 6000]);
        assert_eq!(stream.plaintext.capacity(), 0);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_none());
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_limit_and_no_further() {
        let mut body = b"ab".to_vec();
        let mut rest: &[u8] = b"cd";
        assert!(read_bounded(&mut rest, &mut body, 4).await.is_ok());
        assert_eq!(body, b"abcd");

        let mut body = b"ab".to_vec();
        let mut rest: &[u8] = b"cde";
        assert!(matches!(
            read_bounded(&mut rest, &mut body, 4).await,
            Err(BodyError::TooLarge)
        ));
        assert!(
            body.len() <= 5,
            "read {} bytes past a 4-byte limit",
            body.len()
        );
    }

    /// A server that answers `/key` with an endless body is cut off at the
    /// bound instead of being buffered until the timeout.
    #[tokio::test]
    async fn an_endless_key_response_is_refused_at_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            // The request is not looked at; only the endless answer matters.
            drop(conn.read(&mut request).await);
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.ok();
            let chunk = vec![b' '; 64 << 10];
            // Until the client hangs up.
            while conn.write_all(&chunk).await.is_ok() {}
        });
        let endpoint = Endpoint {
            url: Url::parse(&format!("http://{addr}")).unwrap(),
            tls: super::super::tls::client_config(None).unwrap(),
            ca_file: None,
        };
        let result = tokio::time::timeout(Duration::from_secs(5), endpoint.fetch_server_key())
            .await
            .expect("the bound ends the read long before the timeout");
        match result {
            Err(ConnError::TooLarge { limit, .. }) => assert_eq!(limit, MAX_KEY_BODY),
            other => panic!("expected the size bound, got {other:?}"),
        }
        server.abort();
    }
}
