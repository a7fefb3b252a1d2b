//! Disco: Tailscale's path-discovery messages (Ping, Pong, CallMeMaybe).
//!
//! A disco packet is `magic "TS💬" · sender disco public key · nonce ·
//! NaCl box`, where the box (X25519 + XSalsa20-Poly1305, tag before
//! ciphertext) is sealed from the sender's disco private key to the
//! receiver's disco public key. Inside is `type · version · payload`.
//! The same bytes travel over UDP or inside DERP packets.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crypto_box::aead::{generic_array::GenericArray, AeadInPlace};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use rand::RngCore;

/// "TS" followed by U+1F4AC (speech balloon) in UTF-8.
pub const MAGIC: [u8; 6] = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
/// Length of a disco (X25519) key.
pub const KEY_LEN: usize = 32;
/// Length of the box nonce.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag that precedes the ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes before the box: magic, sender key, nonce.
pub const HEADER_LEN: usize = MAGIC.len() + KEY_LEN + NONCE_LEN;
/// Shortest packet that can hold a message: header, tag, type and version.
pub const MIN_PACKET_LEN: usize = HEADER_LEN + TAG_LEN + 2;

const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
const VERSION: u8 = 0;
const TX_ID_LEN: usize = 12;
/// One endpoint on the wire: IPv6 (or v4-mapped) address and port.
const ENDPOINT_LEN: usize = 16 + 2;
const PONG_LEN: usize = TX_ID_LEN + ENDPOINT_LEN;

/// A disco public key.
pub type DiscoPublic = [u8; KEY_LEN];

/// Why a disco packet or message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoError {
    /// The datagram lacks the disco magic or is too short to hold a sealed message.
    #[error("not a disco packet (no magic or shorter than {MIN_PACKET_LEN} bytes)")]
    NotDisco,
    /// The sealed box did not open: wrong key, or tampered with.
    #[error("disco box did not open (wrong key, or tampered)")]
    Decrypt,
    /// The sender's key in the packet is not the peer this shared key is for.
    #[error("disco packet is from a different sender than this shared key's peer")]
    UnexpectedSender,
    /// A message is shorter than its type requires.
    #[error("disco {message} message too short: {len} bytes")]
    Short {
        /// What was being decoded: the `header`, or a message by its type.
        message: &'static str,
        /// How many bytes it had.
        len: usize,
    },
    /// The message type byte is not one this codec knows.
    #[error("unknown disco message type {0:#04x}")]
    UnknownType(u8),
}

/// A transaction ID pairing a Ping with its Pong.
pub type TxId = [u8; TX_ID_LEN];

/// A disco message in plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A path probe.
    Ping(Ping),
    /// The answer to a ping.
    Pong(Pong),
    /// A request to ping the sender's endpoints.
    CallMeMaybe(CallMeMaybe),
}

/// Probes a path; the receiver answers with a [`Pong`] on the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// Pairs this ping with its pong.
    pub tx_id: TxId,
    /// The sender's node (WireGuard) public key; all zero when the sender
    /// did not include it (very old clients).
    pub node_key: [u8; 32],
    /// Zero bytes appended after the key, used to probe path MTU.
    pub padding: usize,
}

/// The answer to a [`Ping`]: where the ping appeared to come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// The ping's transaction ID.
    pub tx_id: TxId,
    /// The address the ping came from, as the receiver saw it.
    pub src: SocketAddr,
}

/// Asks the receiver to ping these endpoints of the sender (sent via DERP).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallMeMaybe {
    /// The sender's candidate addresses.
    pub endpoints: Vec<SocketAddr>,
}

impl Message {
    /// Length of the plaintext [`Message::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Message::Ping(ping) => TX_ID_LEN + KEY_LEN + ping.padding,
            Message::Pong(_) => PONG_LEN,
            Message::CallMeMaybe(cmm) => cmm.endpoints.len() * ENDPOINT_LEN,
        }
    }

    /// Appends the plaintext encoding (type, version 0, payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match self {
            Message::Ping(ping) => {
                out.extend_from_slice(&[TYPE_PING, VERSION]);
                out.extend_from_slice(&ping.tx_id);
                out.extend_from_slice(&ping.node_key);
                out.resize(out.len() + ping.padding, 0);
            }
            Message::Pong(pong) => {
                out.extend_from_slice(&[TYPE_PONG, VERSION]);
                out.extend_from_slice(&pong.tx_id);
                put_endpoint(out, pong.src);
            }
            Message::CallMeMaybe(cmm) => {
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE, VERSION]);
                for endpoint in &cmm.endpoints {
                    put_endpoint(out, *endpoint);
                }
            }
        }
    }

    /// Decodes a plaintext message. Trailing bytes beyond a message's fixed
    /// fields are ignored, as newer senders may append fields.
    pub fn decode(plaintext: &[u8]) -> Result<Message, DiscoError> {
        let [msg_type, version, payload @ ..] = plaintext else {
            return Err(DiscoError::Short {
                message: "header",
                len: plaintext.len(),
            });
        };
        match *msg_type {
            TYPE_PING => {
                let Some((tx_id, rest)) = payload.split_first_chunk::<TX_ID_LEN>() else {
                    return Err(DiscoError::Short {
                        message: "ping",
                        len: payload.len(),
                    });
                };
                let (node_key, padding) = match rest.split_first_chunk::<KEY_LEN>() {
                    Some((key, padding)) => (*key, padding.len()),
                    None => ([0u8; KEY_LEN], 0),
                };
                Ok(Message::Ping(Ping {
                    tx_id: *tx_id,
                    node_key,
                    padding,
                }))
            }
            TYPE_PONG => {
                let Some((tx_id, rest)) = payload.split_first_chunk::<TX_ID_LEN>() else {
                    return Err(DiscoError::Short {
                        message: "pong",
                        len: payload.len(),
                    });
                };
                let Some(src) = rest.first_chunk::<ENDPOINT_LEN>().map(read_endpoint) else {
                    return Err(DiscoError::Short {
                        message: "pong",
                        len: payload.len(),
                    });
                };
                Ok(Message::Pong(Pong { tx_id: *tx_id, src }))
            }
            TYPE_CALL_ME_MAYBE => {
                // A list that is not whole endpoints, or a future version,
                // is read as "no endpoints" rather than rejected, so the
                // message still triggers a path probe.
                if *version != VERSION || payload.len() % ENDPOINT_LEN != 0 {
                    return Ok(Message::CallMeMaybe(CallMeMaybe::default()));
                }
                let endpoints = payload
                    .chunks_exact(ENDPOINT_LEN)
                    .filter_map(|c| c.first_chunk::<ENDPOINT_LEN>().map(read_endpoint))
                    .collect();
                Ok(Message::CallMeMaybe(CallMeMaybe { endpoints }))
            }
            other => Err(DiscoError::UnknownType(other)),
        }
    }
}

fn put_endpoint(out: &mut Vec<u8>, addr: SocketAddr) {
    let octets = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    out.extend_from_slice(&octets);
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn read_endpoint(raw: &[u8; ENDPOINT_LEN]) -> SocketAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&raw[..16]);
    let ip = Ipv6Addr::from(octets);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    SocketAddr::new(ip, u16::from_be_bytes([raw[16], raw[17]]))
}

/// True when `packet` starts with the disco magic and is long enough to
/// carry a sender key and nonce.
pub fn looks_like_disco(packet: &[u8]) -> bool {
    packet.len() >= HEADER_LEN && packet[..MAGIC.len()] == MAGIC
}

/// The sender's disco public key, read without decrypting (to find the
/// cached [`SharedKey`] for it).
pub fn sender_key(packet: &[u8]) -> Option<DiscoPublic> {
    if !looks_like_disco(packet) {
        return None;
    }
    packet[MAGIC.len()..].first_chunk::<KEY_LEN>().copied()
}

/// The disco public key of a private key.
pub fn public_key(private: &[u8; KEY_LEN]) -> DiscoPublic {
    *SecretKey::from_bytes(*private).public_key().as_bytes()
}

/// The precomputed box between one local disco key and one peer's.
///
/// Building one costs an X25519 multiplication; sealing and opening with it
/// cost only the symmetric cipher, so engines cache one per (local, peer).
pub struct SharedKey {
    cipher: SalsaBox,
    local_public: DiscoPublic,
    peer_public: DiscoPublic,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKey")
            .field("local_public", &hex::encode(self.local_public))
            .field("peer_public", &hex::encode(self.peer_public))
            .finish_non_exhaustive()
    }
}

impl SharedKey {
    /// Derives the key shared by `local_private` and `peer_public`.
    pub fn new(local_private: &[u8; KEY_LEN], peer_public: &DiscoPublic) -> Self {
        let secret = SecretKey::from_bytes(*local_private);
        let local_public = *secret.public_key().as_bytes();
        SharedKey {
            cipher: SalsaBox::new(&PublicKey::from(*peer_public), &secret),
            local_public,
            peer_public: *peer_public,
        }
    }

    /// The local public key.
    pub fn local_public(&self) -> &DiscoPublic {
        &self.local_public
    }

    /// The peer's public key.
    pub fn peer_public(&self) -> &DiscoPublic {
        &self.peer_public
    }

    /// Seals `message` into a complete disco packet with a random nonce.
    pub fn seal(&self, message: &Message) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        self.seal_with_nonce(message, &nonce)
    }

    /// Seals with a caller-chosen nonce. A nonce must never repeat for one
    /// key pair; this exists for known-answer tests and deterministic replay.
    pub fn seal_with_nonce(&self, message: &Message, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
        let body_start = HEADER_LEN + TAG_LEN;
        let mut packet = Vec::with_capacity(body_start + message.encoded_len());
        packet.extend_from_slice(&MAGIC);
        packet.extend_from_slice(&self.local_public);
        packet.extend_from_slice(nonce);
        packet.resize(body_start, 0);
        message.encode(&mut packet);
        // Encrypting a buffer this size cannot fail: XSalsa20's keystream
        // limit is far beyond any Vec, and the buffer is a plain slice.
        if let Ok(tag) = self.cipher.encrypt_in_place_detached(
            GenericArray::from_slice(nonce),
            b"",
            &mut packet[body_start..],
        ) {
            packet[HEADER_LEN..body_start].copy_from_slice(&tag);
        }
        packet
    }

    /// Opens a packet sealed by this key's peer to this key's owner.
    pub fn open(&self, packet: &[u8]) -> Result<Message, DiscoError> {
        match sender_key(packet) {
            Some(sender) if sender == self.peer_public => self.open_unchecked(packet),
            Some(_) => Err(DiscoError::UnexpectedSender),
            None => Err(DiscoError::NotDisco),
        }
    }

    fn open_unchecked(&self, packet: &[u8]) -> Result<Message, DiscoError> {
        if packet.len() < HEADER_LEN + TAG_LEN {
            return Err(DiscoError::NotDisco);
        }
        let nonce = GenericArray::from_slice(&packet[MAGIC.len() + KEY_LEN..HEADER_LEN]);
        let tag = GenericArray::from_slice(&packet[HEADER_LEN..HEADER_LEN + TAG_LEN]);
        let mut plaintext = packet[HEADER_LEN + TAG_LEN..].to_vec();
        self.cipher
            .decrypt_in_place_detached(nonce, b"", &mut plaintext, tag)
            .map_err(|_| DiscoError::Decrypt)?;
        Message::decode(&plaintext)
    }
}

/// Seals `message` from `local_private` to `peer_public` (no key caching).
pub fn seal(
    local_private: &[u8; KEY_LEN],
    peer_public: &DiscoPublic,
    message: &Message,
) -> Vec<u8> {
    SharedKey::new(local_private, peer_public).seal(message)
}

/// Opens a disco packet addressed to `local_private`, returning the sender's
/// disco public key and the message (no key caching).
pub fn open(
    local_private: &[u8; KEY_LEN],
    packet: &[u8],
) -> Result<(DiscoPublic, Message), DiscoError> {
    let sender = sender_key(packet).ok_or(DiscoError::NotDisco)?;
    let message = SharedKey::new(local_private, &sender).open_unchecked(packet)?;
    Ok((sender, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: [u8; 32] = [0x11; 32];
    const BOB: [u8; 32] = [0x22; 32];
    const MALLORY: [u8; 32] = [0x33; 32];

    fn ping() -> Message {
        Message::Ping(Ping {
            tx_id: [7; 12],
            node_key: [0xab; 32],
            padding: 0,
        })
    }

    #[test]
    fn ping_encoding() {
        let mut out = Vec::new();
        ping().encode(&mut out);
        assert_eq!(out.len(), 2 + 12 + 32);
        assert_eq!(&out[..2], &[0x01, 0x00]);
        assert_eq!(&out[2..14], &[7; 12]);
        assert_eq!(&out[14..46], &[0xab; 32]);
        assert_eq!(Message::decode(&out), Ok(ping()));

        let padded = Message::Ping(Ping {
            tx_id: [1; 12],
            node_key: [2; 32],
            padding: 100,
        });
        let mut out = Vec::new();
        padded.encode(&mut out);
        assert_eq!(out.len(), padded.encoded_len());
        assert!(out[46..].iter().all(|b| *b == 0));
        assert_eq!(Message::decode(&out), Ok(padded));
    }

    #[test]
    fn ping_without_node_key_from_old_clients() {
        let mut raw = vec![0x01, 0x00];
        raw.extend_from_slice(&[9; 12]);
        assert_eq!(
            Message::decode(&raw),
            Ok(Message::Ping(Ping {
                tx_id: [9; 12],
                node_key: [0; 32],
                padding: 0
            }))
        );
        assert!(matches!(
            Message::decode(&raw[..13]),
            Err(DiscoError::Short { .. })
        ));
    }

    #[test]
    fn pong_v4_mapped_known_answer() {
        let pong = Message::Pong(Pong {
            tx_id: [0x5a; 12],
            src: "192.0.2.7:41641".parse().unwrap(),
        });
        let mut out = Vec::new();
        pong.encode(&mut out);
        let mut expected = vec![0x02, 0x00];
        expected.extend_from_slice(&[0x5a; 12]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]);
        expected.extend_from_slice(&[0xa2, 0xa9]); // 41641
        assert_eq!(out, expected);
        assert_eq!(Message::decode(&out), Ok(pong));

        // Trailing bytes from a newer sender are ignored.
        expected.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(Message::decode(&expected), Ok(Message::Pong(_))));
        assert!(matches!(
            Message::decode(&expected[..30]),
            Err(DiscoError::Short { .. })
        ));
    }

    #[test]
    fn pong_v6() {
        let src: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let pong = Message::Pong(Pong {
            tx_id: [1; 12],
            src,
        });
        let mut out = Vec::new();
        pong.encode(&mut out);
        assert_eq!(
            &out[14..30],
            &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(Message::decode(&out), Ok(pong));
    }

    #[test]
    fn call_me_maybe() {
        let cmm = Message::CallMeMaybe(CallMeMaybe {
            endpoints: vec![
                "10.1.2.3:41641".parse().unwrap(),
                "[fd00::5]:1".parse().unwrap(),
            ],
        });
        let mut out = Vec::new();
        cmm.encode(&mut out);
        assert_eq!(out.len(), 2 + 2 * 18);
        assert_eq!(&out[..2], &[0x03, 0x00]);
        assert_eq!(Message::decode(&out), Ok(cmm));

        let empty = Message::CallMeMaybe(CallMeMaybe::default());
        assert_eq!(Message::decode(&[0x03, 0x00]), Ok(empty.clone()));
        // Ragged lists and future versions read as empty, not as errors.
        assert_eq!(Message::decode(&out[..out.len() - 1]), Ok(empty.clone()));
        let mut v1 = out.clone();
        v1[1] = 1;
        assert_eq!(Message::decode(&v1), Ok(empty));
    }

    #[test]
    fn unknown_and_short() {
        assert_eq!(
            Message::decode(&[0x09, 0x00]),
            Err(DiscoError::UnknownType(9))
        );
        assert!(matches!(
            Message::decode(&[0x01]),
            Err(DiscoError::Short { .. })
        ));
        assert!(matches!(
            Message::decode(&[]),
            Err(DiscoError::Short { .. })
        ));
    }

    #[test]
    fn seal_open_round_trip() {
        let bob_public = public_key(&BOB);
        let packet = seal(&ALICE, &bob_public, &ping());
        assert!(looks_like_disco(&packet));
        assert_eq!(&packet[..6], &MAGIC);
        assert_eq!(&packet[6..38], &public_key(&ALICE));
        assert_eq!(packet.len(), HEADER_LEN + TAG_LEN + ping().encoded_len());
        assert_eq!(sender_key(&packet), Some(public_key(&ALICE)));

        let (sender, message) = open(&BOB, &packet).unwrap();
        assert_eq!(sender, public_key(&ALICE));
        assert_eq!(message, ping());

        // Random nonces: sealing twice gives different packets.
        assert_ne!(seal(&ALICE, &bob_public, &ping()), packet);
    }

    #[test]
    fn cached_shared_keys_interoperate() {
        let alice_to_bob = SharedKey::new(&ALICE, &public_key(&BOB));
        let bob_from_alice = SharedKey::new(&BOB, &public_key(&ALICE));
        let pong = Message::Pong(Pong {
            tx_id: [3; 12],
            src: "1.2.3.4:5".parse().unwrap(),
        });
        let packet = alice_to_bob.seal(&pong);
        assert_eq!(bob_from_alice.open(&packet), Ok(pong.clone()));
        assert_eq!(open(&BOB, &packet).map(|(_, m)| m), Ok(pong.clone()));
        // The reverse direction uses the same shared secret.
        let back = bob_from_alice.seal(&pong);
        assert_eq!(alice_to_bob.open(&back), Ok(pong));
        // A packet from someone else is refused before any decryption.
        let mallory_packet = seal(&MALLORY, &public_key(&BOB), &ping());
        assert_eq!(
            bob_from_alice.open(&mallory_packet),
            Err(DiscoError::UnexpectedSender)
        );
    }

    #[test]
    fn wrong_key_fails() {
        let packet = seal(&ALICE, &public_key(&BOB), &ping());
        assert_eq!(open(&MALLORY, &packet), Err(DiscoError::Decrypt));
    }

    #[test]
    fn tampering_fails() {
        let packet = seal(&ALICE, &public_key(&BOB), &ping());
        for at in [6, 40, HEADER_LEN, HEADER_LEN + TAG_LEN, packet.len() - 1] {
            let mut bad = packet.clone();
            bad[at] ^= 0x01;
            assert_eq!(
                open(&BOB, &bad),
                Err(DiscoError::Decrypt),
                "flipped byte {at}"
            );
        }
        assert_eq!(
            open(&BOB, &packet[..packet.len() - 1]),
            Err(DiscoError::Decrypt)
        );
        assert_eq!(
            open(&BOB, &packet[..HEADER_LEN + 3]),
            Err(DiscoError::NotDisco)
        );
        let mut no_magic = packet.clone();
        no_magic[0] = b'X';
        assert_eq!(open(&BOB, &no_magic), Err(DiscoError::NotDisco));
    }

    /// The crypto_box test vector from the NaCl distribution: checks the
    /// key agreement, cipher and the tag-then-ciphertext layout against an
    /// independent implementation.
    #[test]
    fn nacl_box_known_answer() {
        let alice_sk: [u8; 32] =
            hex_array("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let bob_pk: [u8; 32] =
            hex_array("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let nonce: [u8; 24] = hex_array("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37");
        let plaintext = hex::decode(concat!(
            "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc",
            "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31",
            "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde",
            "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f937763848645e0705",
        ))
        .unwrap();
        let expected_box = concat!(
            "f3ffc7703f9400e52a7dfb4b3d3305d9",
            "8e993b9f48681273c29650ba32fc76ce48332ea7164d96a4476fb8c531a1186a",
            "c0dfc17c98dce87b4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738",
            "b48eeee314a7cc8ab932164548e526ae90224368517acfeabd6bb3732bc0e9da",
            "99832b61ca01b6de56244a9e88d5f9b37973f622a43d14a6599b1f654cb45a74e355a5",
        );
        let key = SharedKey::new(&alice_sk, &bob_pk);
        let mut body = plaintext.clone();
        let tag = key
            .cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut body)
            .unwrap();
        let mut sealed = tag.to_vec();
        sealed.extend_from_slice(&body);
        assert_eq!(hex::encode(&sealed), expected_box);

        // A disco packet's box has that same tag-then-ciphertext layout.
        let message = Message::CallMeMaybe(CallMeMaybe::default());
        let packet = key.seal_with_nonce(&message, &nonce);
        let mut body = vec![0x03, 0x00];
        let tag = key
            .cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut body)
            .unwrap();
        assert_eq!(&packet[HEADER_LEN..HEADER_LEN + TAG_LEN], tag.as_slice());
        assert_eq!(&packet[HEADER_LEN + TAG_LEN..], &body[..]);
    }

    fn hex_array<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn debug_shows_no_secret() {
        let key = SharedKey::new(&ALICE, &public_key(&BOB));
        let text = format!("{key:?}");
        assert!(text.contains(&hex::encode(public_key(&ALICE))));
        assert!(!text.contains(&hex::encode(ALICE)));
    }
}
