//! DERP relay protocol core (sans-IO).
//!
//! A DERP stream is a sequence of frames: `type u8 · length u32 BE · payload`.
//! This module encodes and decodes those frames and seals/opens the two boxed
//! handshake frames (ClientInfo, ServerInfo). It does no I/O: callers feed it
//! bytes read from a stream and write the bytes it returns.

use crypto_box::aead::{generic_array::GenericArray, Aead};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Magic that opens the ServerKey frame: "DERP" followed by U+1F511 (key).
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91];
/// Protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// Bytes of a frame header (type + length).
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest packet payload the server relays.
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// Largest frame a client accepts; anything bigger means a broken stream.
pub const MAX_FRAME_SIZE: usize = 1 << 20;
/// Length of a node (X25519) public key.
pub const KEY_LEN: usize = 32;
/// Length of a NaCl box nonce.
pub const NONCE_LEN: usize = 24;

/// Frame type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Server to client, first: the magic and the server's public key.
    ServerKey = 0x01,
    /// Client to server: its public key and its sealed [`ClientInfo`].
    ClientInfo = 0x02,
    /// Server to client: the sealed [`ServerInfo`], ending the handshake.
    ServerInfo = 0x03,
    /// Client to server: a packet for another node.
    SendPacket = 0x04,
    /// Server to client: a packet from another node.
    RecvPacket = 0x05,
    /// Server to client: nothing to say, the stream is alive.
    KeepAlive = 0x06,
    /// Client to server: whether this is the client's home relay.
    NotePreferred = 0x07,
    /// Server to client: a peer that sent to this client has left.
    PeerGone = 0x08,
    /// Server to client: a peer has connected.
    PeerPresent = 0x09,
    /// Either way: asks for a [`FrameType::Pong`] with the same data.
    Ping = 0x12,
    /// Either way: the answer to a ping.
    Pong = 0x13,
    /// Server to client: a problem on the server, or that it cleared.
    Health = 0x14,
    /// Server to client: the server is restarting; when to reconnect.
    Restarting = 0x15,
}

impl FrameType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::ServerKey,
            0x02 => Self::ClientInfo,
            0x03 => Self::ServerInfo,
            0x04 => Self::SendPacket,
            0x05 => Self::RecvPacket,
            0x06 => Self::KeepAlive,
            0x07 => Self::NotePreferred,
            0x08 => Self::PeerGone,
            0x09 => Self::PeerPresent,
            0x12 => Self::Ping,
            0x13 => Self::Pong,
            0x14 => Self::Health,
            0x15 => Self::Restarting,
            _ => return None,
        })
    }
}

/// Errors decoding or opening DERP frames.
#[derive(Debug, thiserror::Error)]
pub enum DerpError {
    /// A frame header states a length above the limit.
    #[error("DERP frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The stated length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A packet to frame is larger than [`MAX_PACKET_SIZE`].
    #[error("DERP packet of {len} bytes exceeds the {MAX_PACKET_SIZE}-byte limit")]
    PacketTooLarge {
        /// The packet's length.
        len: usize,
    },
    /// A frame's payload is shorter than its type requires.
    #[error("DERP {frame:?} frame too short: {len} bytes")]
    Truncated {
        /// The frame's type.
        frame: FrameType,
        /// The payload's length.
        len: usize,
    },
    /// The ServerKey frame does not start with [`MAGIC`].
    #[error("DERP ServerKey frame lacks the protocol magic")]
    BadMagic,
    /// A sealed handshake frame did not open: wrong key or corrupted.
    #[error("DERP {frame:?} box could not be opened (wrong key or corrupted)")]
    BoxOpen {
        /// The frame's type.
        frame: FrameType,
    },
    /// An opened handshake frame does not hold the JSON expected.
    #[error("DERP {frame:?} JSON invalid: {source}")]
    Json {
        /// The frame that held it.
        frame: FrameType,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Sealing a handshake frame failed.
    #[error("DERP {frame:?} box could not be sealed")]
    BoxSeal {
        /// The frame's type.
        frame: FrameType,
    },
}

/// A 32-byte node public key as carried in DERP frames.
pub type NodeKey = [u8; KEY_LEN];

/// Why the server says a peer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerGoneReason {
    /// The peer disconnected from the server.
    Disconnected,
    /// The server does not know the peer.
    NotHere,
    /// A reason code this implementation does not know.
    Other(u8),
}

/// A decoded frame borrowing from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The server's first frame.
    ServerKey {
        /// The server's public key.
        server_key: NodeKey,
    },
    /// Sealed ClientInfo; servers open it with [`open_client_info`].
    ClientInfo {
        /// The client's public key.
        client_key: NodeKey,
        /// The sealed [`ClientInfo`].
        sealed: &'a [u8],
    },
    /// Sealed ServerInfo; clients open it with [`open_server_info`].
    ServerInfo {
        /// The sealed [`ServerInfo`].
        sealed: &'a [u8],
    },
    /// A packet for another node.
    SendPacket {
        /// The node to relay it to.
        dst: NodeKey,
        /// The packet.
        packet: &'a [u8],
    },
    /// A packet from another node.
    RecvPacket {
        /// The node that sent it.
        src: NodeKey,
        /// The packet.
        packet: &'a [u8],
    },
    /// Nothing to say; the stream is alive.
    KeepAlive,
    /// Whether the sender's relay is its home.
    NotePreferred {
        /// True when this is the client's home relay.
        preferred: bool,
    },
    /// A peer this client talked to has left.
    PeerGone {
        /// The peer.
        peer: NodeKey,
        /// Why the server says it is gone.
        reason: PeerGoneReason,
    },
    /// A peer has connected.
    PeerPresent {
        /// The peer.
        peer: NodeKey,
    },
    /// Asks for a pong with the same data.
    Ping {
        /// Opaque bytes to echo.
        data: [u8; 8],
    },
    /// The answer to a ping.
    Pong {
        /// The ping's data.
        data: [u8; 8],
    },
    /// Empty text clears a previously reported problem.
    Health {
        /// The problem, as text.
        problem: &'a str,
    },
    /// The server is restarting.
    Restarting {
        /// How long to wait before the first reconnect.
        reconnect_in_ms: u32,
        /// How long to keep trying to reconnect.
        try_for_ms: u32,
    },
    /// A type this implementation does not handle (mesh frames, future ones).
    Unknown {
        /// The type byte.
        frame_type: u8,
        /// The undecoded payload.
        payload: &'a [u8],
    },
}

/// Split one frame off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the frame and the number
/// of bytes it occupied.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DerpError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME_SIZE {
        return Err(DerpError::FrameTooLarge {
            len,
            max: MAX_FRAME_SIZE,
        });
    }
    let total = FRAME_HEADER_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[FRAME_HEADER_LEN..total];
    Ok(Some((parse_payload(buf[0], payload)?, total)))
}

/// How many bytes the frame at the front of `buf` needs in total, once its
/// header is complete; lets a reader size its buffer before the body arrives.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < FRAME_HEADER_LEN {
        return None;
    }
    Some(FRAME_HEADER_LEN + u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize)
}

fn key_at(payload: &[u8], frame: FrameType) -> Result<NodeKey, DerpError> {
    payload
        .get(..KEY_LEN)
        .and_then(|k| k.try_into().ok())
        .ok_or(DerpError::Truncated {
            frame,
            len: payload.len(),
        })
}

fn eight_bytes(payload: &[u8], frame: FrameType) -> Result<[u8; 8], DerpError> {
    payload
        .get(..8)
        .and_then(|k| k.try_into().ok())
        .ok_or(DerpError::Truncated {
            frame,
            len: payload.len(),
        })
}

fn parse_payload(type_byte: u8, payload: &[u8]) -> Result<Frame<'_>, DerpError> {
    let Some(ft) = FrameType::from_byte(type_byte) else {
        return Ok(Frame::Unknown {
            frame_type: type_byte,
            payload,
        });
    };
    let truncated = DerpError::Truncated {
        frame: ft,
        len: payload.len(),
    };
    Ok(match ft {
        FrameType::ServerKey => {
            if payload.len() < MAGIC.len() + KEY_LEN {
                return Err(truncated);
            }
            if payload[..MAGIC.len()] != MAGIC {
                return Err(DerpError::BadMagic);
            }
            Frame::ServerKey {
                server_key: key_at(&payload[MAGIC.len()..], ft)?,
            }
        }
        FrameType::ClientInfo => {
            let client_key = key_at(payload, ft)?;
            Frame::ClientInfo {
                client_key,
                sealed: &payload[KEY_LEN..],
            }
        }
        FrameType::ServerInfo => Frame::ServerInfo { sealed: payload },
        FrameType::SendPacket => {
            let dst = key_at(payload, ft)?;
            Frame::SendPacket {
                dst,
                packet: &payload[KEY_LEN..],
            }
        }
        FrameType::RecvPacket => {
            let src = key_at(payload, ft)?;
            Frame::RecvPacket {
                src,
                packet: &payload[KEY_LEN..],
            }
        }
        FrameType::KeepAlive => Frame::KeepAlive,
        FrameType::NotePreferred => {
            let b = *payload.first().ok_or(truncated)?;
            Frame::NotePreferred { preferred: b != 0 }
        }
        FrameType::PeerGone => {
            let peer = key_at(payload, ft)?;
            // Older servers send no reason byte: that means "disconnected".
            let reason = match payload.get(KEY_LEN).copied().unwrap_or(0) {
                0 => PeerGoneReason::Disconnected,
                1 => PeerGoneReason::NotHere,
                other => PeerGoneReason::Other(other),
            };
            Frame::PeerGone { peer, reason }
        }
        FrameType::PeerPresent => Frame::PeerPresent {
            peer: key_at(payload, ft)?,
        },
        FrameType::Ping => Frame::Ping {
            data: eight_bytes(payload, ft)?,
        },
        FrameType::Pong => Frame::Pong {
            data: eight_bytes(payload, ft)?,
        },
        FrameType::Health => Frame::Health {
            // Health text is informational: keep what is valid UTF-8.
            problem: match std::str::from_utf8(payload) {
                Ok(s) => s,
                Err(e) => std::str::from_utf8(&payload[..e.valid_up_to()]).unwrap_or(""),
            },
        },
        FrameType::Restarting => {
            if payload.len() < 8 {
                return Err(truncated);
            }
            Frame::Restarting {
                reconnect_in_ms: u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]),
                try_for_ms: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
            }
        }
    })
}

/// Append a frame header for `payload_len` bytes of type `ft` to `out`.
pub fn write_header(out: &mut Vec<u8>, ft: FrameType, payload_len: usize) {
    out.push(ft as u8);
    // Callers bound payloads far below 4 GiB (MAX_FRAME_SIZE).
    out.extend_from_slice(&(payload_len as u32).to_be_bytes());
}

/// Append a complete frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, ft: FrameType, payload: &[u8]) {
    write_header(out, ft, payload.len());
    out.extend_from_slice(payload);
}

/// Append a SendPacket frame (client → server) to `out`.
pub fn encode_send_packet(
    out: &mut Vec<u8>,
    dst: &NodeKey,
    packet: &[u8],
) -> Result<(), DerpError> {
    if packet.len() > MAX_PACKET_SIZE {
        return Err(DerpError::PacketTooLarge { len: packet.len() });
    }
    write_header(out, FrameType::SendPacket, KEY_LEN + packet.len());
    out.extend_from_slice(dst);
    out.extend_from_slice(packet);
    Ok(())
}

/// Append a RecvPacket frame (server → client) to `out`.
pub fn encode_recv_packet(
    out: &mut Vec<u8>,
    src: &NodeKey,
    packet: &[u8],
) -> Result<(), DerpError> {
    if packet.len() > MAX_PACKET_SIZE {
        return Err(DerpError::PacketTooLarge { len: packet.len() });
    }
    write_header(out, FrameType::RecvPacket, KEY_LEN + packet.len());
    out.extend_from_slice(src);
    out.extend_from_slice(packet);
    Ok(())
}

/// Append a ServerKey frame to `out`.
pub fn encode_server_key(out: &mut Vec<u8>, server_key: &NodeKey) {
    write_header(out, FrameType::ServerKey, MAGIC.len() + KEY_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(server_key);
}

/// Append a NotePreferred frame to `out`.
pub fn encode_note_preferred(out: &mut Vec<u8>, preferred: bool) {
    encode_frame(out, FrameType::NotePreferred, &[u8::from(preferred)]);
}

/// Append a Pong answering a Ping's data to `out`.
pub fn encode_pong(out: &mut Vec<u8>, data: &[u8; 8]) {
    encode_frame(out, FrameType::Pong, data);
}

/// Append a Ping frame to `out`.
pub fn encode_ping(out: &mut Vec<u8>, data: &[u8; 8]) {
    encode_frame(out, FrameType::Ping, data);
}

/// Append a PeerGone frame to `out`.
pub fn encode_peer_gone(out: &mut Vec<u8>, peer: &NodeKey, reason: PeerGoneReason) {
    let reason = match reason {
        PeerGoneReason::Disconnected => 0,
        PeerGoneReason::NotHere => 1,
        PeerGoneReason::Other(b) => b,
    };
    write_header(out, FrameType::PeerGone, KEY_LEN + 1);
    out.extend_from_slice(peer);
    out.push(reason);
}

/// JSON sealed inside ClientInfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClientInfo {
    /// The protocol version the client speaks.
    #[serde(default)]
    pub version: u32,
    /// True when the client answers server pings.
    #[serde(rename = "CanAckPings", default)]
    pub can_ack_pings: bool,
    /// True when the client is a prober, connecting only to check the server.
    #[serde(
        rename = "IsProber",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub is_prober: bool,
}

/// JSON sealed inside ServerInfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServerInfo {
    /// The protocol version the server speaks.
    #[serde(default)]
    pub version: u32,
    /// The rate, in bytes per second, the server says it accepts; zero when it states none.
    #[serde(
        rename = "TokenBucketBytesPerSecond",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_per_second: u64,
    /// The burst, in bytes, the server allows above that rate; zero when it states none.
    #[serde(
        rename = "TokenBucketBytesBurst",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_burst: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// NaCl box: random nonce · tag · ciphertext.
fn seal(
    own_private: &[u8; 32],
    their_public: &[u8; 32],
    plaintext: &[u8],
    frame: FrameType,
) -> Result<Vec<u8>, DerpError> {
    let sbox = SalsaBox::new(
        &PublicKey::from(*their_public),
        &SecretKey::from(*own_private),
    );
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let ct = sbox
        .encrypt(GenericArray::from_slice(&nonce), plaintext)
        .map_err(|_| DerpError::BoxSeal { frame })?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(
    own_private: &[u8; 32],
    their_public: &[u8; 32],
    sealed: &[u8],
    frame: FrameType,
) -> Result<Vec<u8>, DerpError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(DerpError::Truncated {
            frame,
            len: sealed.len(),
        });
    }
    let sbox = SalsaBox::new(
        &PublicKey::from(*their_public),
        &SecretKey::from(*own_private),
    );
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    sbox.decrypt(GenericArray::from_slice(nonce), ct)
        .map_err(|_| DerpError::BoxOpen { frame })
}

/// The X25519 public key of a private key.
pub fn public_key(private: &[u8; 32]) -> NodeKey {
    *SecretKey::from(*private).public_key().as_bytes()
}

/// Append a ClientInfo frame: our node key, then `{"version":2,"CanAckPings":true}`
/// sealed from our node private key to the server key.
pub fn encode_client_info(
    out: &mut Vec<u8>,
    node_private: &[u8; 32],
    server_key: &NodeKey,
) -> Result<(), DerpError> {
    let info = ClientInfo {
        version: PROTOCOL_VERSION,
        can_ack_pings: true,
        is_prober: false,
    };
    let json = serde_json::to_vec(&info).map_err(|source| DerpError::Json {
        frame: FrameType::ClientInfo,
        source,
    })?;
    let sealed = seal(node_private, server_key, &json, FrameType::ClientInfo)?;
    write_header(out, FrameType::ClientInfo, KEY_LEN + sealed.len());
    out.extend_from_slice(&public_key(node_private));
    out.extend_from_slice(&sealed);
    Ok(())
}

/// Open a ServerInfo box (server → client).
pub fn open_server_info(
    node_private: &[u8; 32],
    server_key: &NodeKey,
    sealed: &[u8],
) -> Result<ServerInfo, DerpError> {
    let json = open(node_private, server_key, sealed, FrameType::ServerInfo)?;
    serde_json::from_slice(&json).map_err(|source| DerpError::Json {
        frame: FrameType::ServerInfo,
        source,
    })
}

/// Open a ClientInfo box (server side, used by relays and tests).
pub fn open_client_info(
    server_private: &[u8; 32],
    client_key: &NodeKey,
    sealed: &[u8],
) -> Result<ClientInfo, DerpError> {
    let json = open(server_private, client_key, sealed, FrameType::ClientInfo)?;
    serde_json::from_slice(&json).map_err(|source| DerpError::Json {
        frame: FrameType::ClientInfo,
        source,
    })
}

/// Append a ServerInfo frame sealed from the server key to the client (server side).
pub fn encode_server_info(
    out: &mut Vec<u8>,
    server_private: &[u8; 32],
    client_key: &NodeKey,
    info: &ServerInfo,
) -> Result<(), DerpError> {
    let json = serde_json::to_vec(info).map_err(|source| DerpError::Json {
        frame: FrameType::ServerInfo,
        source,
    })?;
    let sealed = seal(server_private, client_key, &json, FrameType::ServerInfo)?;
    encode_frame(out, FrameType::ServerInfo, &sealed);
    Ok(())
}

#[cfg(test)]
mod tests;
