//! HTTP/2 over the Noise channel: registration, the streaming map poll,
//! endpoint updates.

use std::cell::RefCell;
use std::io::{self, Read};

use bytes::Bytes;
use h2::client::SendRequest;
use http::Request;
use tailnet_auth::Secret;
use tokio::task::JoinHandle;
use zstd::zstd_safe::DCtx;

use super::conn::{ConnError, Endpoint, NoiseStream};
use super::json;
use super::server_text::ServerText;
use super::tailcfg::{MapRequest, MapResponse, RegisterRequest, RegisterResponse};

/// Largest map message accepted (compressed or not): a netmap of many
/// thousands of peers fits comfortably.
const MAX_MESSAGE: usize = 64 << 20;
/// How much of an error body is read; only a short excerpt of it is kept.
const MAX_ERROR_BODY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("HTTP/2 with the control server: {0}")]
    H2(#[from] h2::Error),
    #[error("control server answered {path} with HTTP {status}: {body}")]
    Status {
        path: &'static str,
        status: u16,
        body: ServerText,
    },
    #[error("building the HTTP request: {0}")]
    Request(#[source] http::Error),
    #[error("encoding the {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("control server sent a malformed {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("control server sent a malformed zstd map message: {0}")]
    Zstd(#[source] std::io::Error),
    #[error("control server sent a response larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
    #[error("control server sent a zstd map message that inflates past {limit} bytes")]
    InflatesTooLarge { limit: usize },
    #[error("control server announced a map frame of {len} bytes")]
    FrameTooLarge { len: usize },
    #[error("map stream ended")]
    StreamEnded,
}

/// One HTTP/2 connection to the control server for one identity.
pub struct ControlConn {
    send: SendRequest<Bytes>,
    driver: JoinHandle<()>,
    authority: String,
}

impl Drop for ControlConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl ControlConn {
    pub async fn handshake(endpoint: &Endpoint, stream: NoiseStream) -> Result<Self, ClientError> {
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(8 << 20)
            .handshake::<_, Bytes>(stream)
            .await?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "control HTTP/2 connection ended");
            }
        });
        Ok(Self {
            send,
            driver,
            authority: endpoint.url.host_str().unwrap_or("control").to_string(),
        })
    }

    /// Sends `body` to `path`; `sent` is a secret the body carries, never
    /// repeated in the error should the server echo it.
    async fn post(
        &mut self,
        path: &'static str,
        body: Vec<u8>,
        sent: Option<&Secret>,
    ) -> Result<h2::RecvStream, ClientError> {
        let request = Request::post(format!("https://{}{path}", self.authority))
            .header("content-type", "application/json")
            .body(())
            .map_err(ClientError::Request)?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(Bytes::from(body), true)?;
        let response = response.await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status != 200 {
            let text = read_all(&mut body, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            return Err(ClientError::Status {
                path,
                status,
                body: ServerText::redacted(&text, sent),
            });
        }
        Ok(body)
    }

    pub async fn register(
        &mut self,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, ClientError> {
        let body = serde_json::to_vec(request).map_err(|source| ClientError::Encode {
            what: "register request",
            source,
        })?;
        let auth_key = request.auth.as_ref().map(|auth| &auth.auth_key);
        let mut stream = self.post("/machine/register", body, auth_key).await?;
        let bytes = read_all(&mut stream, MAX_MESSAGE).await?;
        json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            what: "register response",
            source,
        })
    }

    /// Starts the streaming map poll.
    pub async fn map_stream(&mut self, request: &MapRequest) -> Result<MapStream, ClientError> {
        let body = encode_map_request(request)?;
        let stream = self.post("/machine/map", body, None).await?;
        Ok(MapStream {
            stream,
            buffer: Vec::new(),
            compressed: !request.compress.is_empty(),
        })
    }

    /// A one-shot map request (endpoint or Hostinfo update); the answer is
    /// read and dropped.
    pub async fn update(&mut self, request: &MapRequest) -> Result<(), ClientError> {
        let body = encode_map_request(request)?;
        let mut stream = self.post("/machine/map", body, None).await?;
        read_all(&mut stream, MAX_MESSAGE).await?;
        Ok(())
    }
}

async fn read_all(stream: &mut h2::RecvStream, limit: usize) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk?;
        stream.flow_control().release_capacity(chunk.len())?;
        out.extend_from_slice(&chunk);
        if out.len() > limit {
            return Err(ClientError::ResponseTooLarge { limit });
        }
    }
    Ok(out)
}

/// The map long poll: messages framed as `u32 little-endian length · body`,
/// each body one zstd frame when compression was asked for.
pub struct MapStream {
    stream: h2::RecvStream,
    buffer: Vec<u8>,
    compressed: bool,
}

impl MapStream {
    pub async fn next(&mut self) -> Result<MapResponse, ClientError> {
        loop {
            if let Some(body) = take_frame(&mut self.buffer)? {
                release_spare(&mut self.buffer);
                return decode_map_message(&body, self.compressed, MAX_MESSAGE);
            }
            match self.stream.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    self.stream.flow_control().release_capacity(chunk.len())?;
                    self.buffer.extend_from_slice(&chunk);
                }
                None => return Err(ClientError::StreamEnded),
            }
        }
    }
}

/// Bytes of buffer a map stream keeps while part of a message waits.
const KEPT_BUFFER: usize = 16 << 10;

/// Gives back the buffer once a message is consumed: a pod's map stream
/// lives as long as the pod and is idle between messages, and the first
/// netmap (every peer) made it grow to 128 KiB per pod at 250 pods. With
/// the start of the next message already in it, it keeps room for that.
fn release_spare(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        *buffer = Vec::new();
    } else if buffer.capacity() > KEPT_BUFFER && buffer.len() <= KEPT_BUFFER {
        buffer.shrink_to(KEPT_BUFFER);
    }
}

/// Decodes one map message body: zstd-decompressed first when compression
/// was asked for, then JSON. Decompression stops past `limit` bytes: a few
/// KiB of zstd can expand to gigabytes.
pub fn decode_map_message(
    body: &[u8],
    compressed: bool,
    limit: usize,
) -> Result<MapResponse, ClientError> {
    let inflated;
    let bytes = if compressed {
        inflated = inflate(body, limit)?;
        &inflated[..]
    } else {
        body
    };
    json::from_slice(bytes).map_err(|source| ClientError::Decode {
        what: "map message",
        source,
    })
}

fn encode_map_request(request: &MapRequest) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(request).map_err(|source| ClientError::Encode {
        what: "map request",
        source,
    })
}

thread_local! {
    /// One decompression context per thread, reused: creating one for each
    /// message (about 100 KiB, initialised) cost more than decompressing an
    /// idle pod's small updates.
    static DECOMPRESSOR: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// Output room tried first for a frame that does not state its size, as a
/// multiple of the compressed size; it grows fourfold until `limit`.
const GUESSED_RATIO: usize = 8;
const MIN_GUESS: usize = 16 << 10;

/// Decompresses straight into the output with the thread's reused context,
/// which then keeps no window buffer: stream decoding left each thread's
/// context holding the largest netmap's window (2.5 MiB) for the daemon's
/// life. A frame that states its size gets exactly that room; otherwise
/// (as some servers send) the room is guessed and grown. What does not
/// decode within `limit` is handed to the stream decoder, which tells a
/// message too large from a broken one.
fn inflate(body: &[u8], limit: usize) -> Result<Vec<u8>, ClientError> {
    let mut room = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) if size > limit as u64 => {
            return Err(ClientError::InflatesTooLarge { limit })
        }
        Ok(Some(size)) => size as usize,
        Ok(None) | Err(_) => body
            .len()
            .saturating_mul(GUESSED_RATIO)
            .clamp(MIN_GUESS.min(limit), limit),
    };
    loop {
        if let Some(out) = inflate_into(body, room)? {
            return Ok(out);
        }
        if room >= limit {
            return inflate_streaming(body, limit);
        }
        // More frames than the first one's size, or a guess too small.
        room = room.saturating_mul(4).max(MIN_GUESS).min(limit);
    }
}

/// The whole of `body` if it decodes within `room` bytes.
fn inflate_into(body: &[u8], room: usize) -> Result<Option<Vec<u8>>, ClientError> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let context = match slot {
            Some(context) => context,
            None => slot.insert(DCtx::try_create().ok_or_else(out_of_memory)?),
        };
        let mut out = Vec::with_capacity(room);
        Ok(context.decompress(&mut out, body).ok().map(|_| out))
    })
}

/// Decompresses whatever frames `body` holds, stopping past `limit` bytes,
/// with a context of its own that is freed afterwards.
fn inflate_streaming(body: &[u8], limit: usize) -> Result<Vec<u8>, ClientError> {
    let decoder = zstd::stream::read::Decoder::new(body).map_err(ClientError::Zstd)?;
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    // Room for a typical ratio up front, rather than growing from a probe.
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    decoder
        .take(cap)
        .read_to_end(&mut out)
        .map_err(ClientError::Zstd)?;
    if out.len() > limit {
        return Err(ClientError::InflatesTooLarge { limit });
    }
    Ok(out)
}

fn out_of_memory() -> ClientError {
    ClientError::Zstd(io::Error::from(io::ErrorKind::OutOfMemory))
}

/// Splits one length-prefixed message off `buffer`, if complete.
pub fn take_frame(buffer: &mut Vec<u8>) -> Result<Option<Vec<u8>>, ClientError> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
    if len > MAX_MESSAGE {
        return Err(ClientError::FrameTooLarge { len });
    }
    if buffer.len() < 4 + len {
        return Ok(None);
    }
    let body = buffer[4..4 + len].to_vec();
    buffer.drain(..4 + len);
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_little_endian_length_prefixed() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(b"abc");
        buf.extend_from_slice(&2u32.to_le_bytes());
        buf.push(b'd');
        assert_eq!(take_frame(&mut buf).unwrap().unwrap(), b"abc");
        assert!(
            take_frame(&mut buf).unwrap().is_none(),
            "second frame incomplete"
        );
        buf.push(b'e');
        assert_eq!(take_frame(&mut buf).unwrap().unwrap(), b"de");
        assert!(buf.is_empty());
    }

    #[test]
    fn absurd_lengths_are_refused() {
        let mut buf = u32::MAX.to_le_bytes().to_vec();
        assert!(take_frame(&mut buf).is_err());
        assert!(matches!(
            take_frame(&mut buf),
            Err(ClientError::FrameTooLarge { len }) if len == u32::MAX as usize
        ));
    }

    #[test]
    fn zstd_bombs_are_cut_off() {
        // A decompression bomb: 64 MiB of one byte packs into a few KiB,
        // and used to be inflated whole before parsing.
        let bomb = zstd::stream::encode_all(&vec![b' '; 64 << 20][..], 3).unwrap();
        assert!(bomb.len() < 64 << 10, "bomb is {} bytes", bomb.len());
        let err = decode_map_message(&bomb, true, 1 << 20).unwrap_err();
        assert!(
            matches!(err, ClientError::InflatesTooLarge { limit } if limit == 1 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("inflates past"), "{err}");
        let packed = zstd::stream::encode_all(&br#"{"KeepAlive":true}"#[..], 3).unwrap();
        assert!(
            decode_map_message(&packed, true, 1 << 20)
                .unwrap()
                .keepalive
        );
        assert!(
            decode_map_message(b"{\"KeepAlive\":true}", false, 0)
                .unwrap()
                .keepalive
        );
    }

    #[test]
    fn a_consumed_large_message_gives_its_buffer_back() {
        let mut buffer = Vec::with_capacity(256 << 10);
        buffer.extend_from_slice(b"next message's start");
        release_spare(&mut buffer);
        assert!(buffer.capacity() <= KEPT_BUFFER, "{}", buffer.capacity());
        assert_eq!(buffer, b"next message's start");
        // A buffer still holding more than that is left alone.
        // A consumed buffer is freed whole: idle streams hold nothing.
        let mut consumed = Vec::with_capacity(4 << 10);
        consumed.extend_from_slice(b"x");
        consumed.clear();
        release_spare(&mut consumed);
        assert_eq!(consumed.capacity(), 0);
        let mut held = vec![7u8; KEPT_BUFFER + 1];
        held.reserve(64 << 10);
        let capacity = held.capacity();
        release_spare(&mut held);
        assert_eq!(held.capacity(), capacity);
    }

    /// Bytes that compress, but not to nothing: a netmap's worth of text.
    fn netmap_like(len: usize) -> Vec<u8> {
        const RECORD: &[u8] = br#"{"Key":"nodekey:","Addresses":[100.64.0.1/32]}"#;
        (0..len)
            .map(|i| RECORD[i % RECORD.len()] ^ ((i / 4096) as u8 & 7))
            .collect()
    }

    /// What the thread's decompression context holds now.
    fn kept_by_context() -> Option<usize> {
        DECOMPRESSOR.with_borrow(|slot| slot.as_ref().map(|context| context.sizeof()))
    }

    #[test]
    fn a_sized_message_decodes_without_keeping_a_window() {
        let plain = netmap_like(4 << 20);
        let packed = zstd::bulk::compress(&plain, 3).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&packed).unwrap(),
            Some(plain.len() as u64)
        );
        assert_eq!(inflate(&packed, 8 << 20).unwrap(), plain);
        // A stream decoder's context would hold the frame's window (MiBs).
        let kept = kept_by_context();
        assert!(kept.is_some_and(|bytes| bytes < 512 << 10), "{kept:?}");
        assert!(matches!(
            inflate(&packed, 1 << 20),
            Err(ClientError::InflatesTooLarge { limit }) if limit == 1 << 20
        ));
    }

    #[test]
    fn sizeless_and_multi_frame_messages_decode_without_keeping_a_window() {
        // As a server that stream-encodes sends them: no size in the frame,
        // and a ratio past the first guess.
        let plain = netmap_like(4 << 20);
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        for chunk in plain.chunks(1000) {
            std::io::Write::write_all(&mut encoder, chunk).unwrap();
        }
        let sizeless = encoder.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&sizeless).unwrap(),
            None
        );
        assert!(sizeless.len() * GUESSED_RATIO < plain.len());
        assert_eq!(inflate(&sizeless, 8 << 20).unwrap(), plain);
        let kept = kept_by_context();
        assert!(kept.is_some_and(|bytes| bytes < 512 << 10), "{kept:?}");

        let plain = netmap_like(300 << 10);

        let mut two = zstd::bulk::compress(&plain[..1000], 3).unwrap();
        two.extend(zstd::bulk::compress(&plain[1000..], 3).unwrap());
        assert_eq!(inflate(&two, 1 << 20).unwrap(), plain);
        assert!(matches!(
            inflate(&two, 200 << 10),
            Err(ClientError::InflatesTooLarge { .. })
        ));
    }

    #[test]
    fn a_message_after_a_broken_one_decodes_whole() {
        // The thread's decompression context is reused: what a cut-off or
        // oversized message left in it must not leak into the next.
        let json = br#"{"KeepAlive":true}"#;
        let packed = zstd::stream::encode_all(&json[..], 3).unwrap();
        let cut = &packed[..packed.len() - 3];
        assert!(matches!(
            decode_map_message(cut, true, 1 << 20),
            Err(ClientError::Zstd(_) | ClientError::Decode { .. })
        ));
        let bomb = zstd::stream::encode_all(&vec![b'x'; 4 << 20][..], 3).unwrap();
        assert!(matches!(
            decode_map_message(&bomb, true, 1 << 10),
            Err(ClientError::InflatesTooLarge { .. })
        ));
        for _ in 0..3 {
            assert!(
                decode_map_message(&packed, true, 1 << 20)
                    .unwrap()
                    .keepalive
            );
        }
    }

    #[test]
    fn zstd_messages_decode() {
        let json = br#"{"KeepAlive":true}"#;
        let packed = zstd::stream::encode_all(&json[..], 3).unwrap();
        let back = zstd::stream::decode_all(&packed[..]).unwrap();
        let msg: MapResponse = json::from_slice(&back).unwrap();
        assert!(msg.keepalive);
    }
}
