//! The ts2021 Noise transport, sans I/O.
//!
//! Handshake: Noise_IK_25519_ChaChaPoly_BLAKE2s with the prologue
//! "Tailscale Control Protocol v<capver>", the client's machine key as its
//! static key and the server's key (from /key) as the responder's. `snow`
//! runs the handshake; the transport is framed here because Tailscale's
//! nonce is a big-endian counter where the Noise spec (and snow) use
//! little-endian.
//!
//! Frames: `type u8 · len u16 BE · body`. Initiation (101 bytes) carries the
//! capability version in place of the type; response 0x02, error 0x03,
//! record 0x04 (ciphertext + 16-byte tag), at most 4096 bytes a frame.

use bytes::{Buf, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use super::keys::{MachinePublic, PrivateKey};

pub const INITIATION_LEN: usize = 101;
pub const RESPONSE_LEN: usize = 51;
const MSG_INITIATION: u8 = 0x01;
const MSG_RESPONSE: u8 = 0x02;
const MSG_ERROR: u8 = 0x03;
const MSG_RECORD: u8 = 0x04;
const HEADER_LEN: usize = 3;
const TAG_LEN: usize = 16;
pub const MAX_FRAME: usize = 4096;
/// Plaintext that fits one record.
pub const MAX_PLAINTEXT: usize = MAX_FRAME - HEADER_LEN - TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("Noise handshake: {0}")]
    Handshake(String),
    #[error("control server refused the handshake: {0}")]
    Refused(String),
    #[error("unexpected frame type {0:#04x}")]
    UnexpectedFrame(u8),
    #[error("frame of {0} bytes exceeds the 4096-byte limit")]
    Oversized(usize),
    #[error("record failed authentication")]
    BadRecord,
    #[error("nonce counter exhausted")]
    NonceExhausted,
}

fn prologue(capver: u16) -> String {
    format!("Tailscale Control Protocol v{capver}")
}

/// A handshake in flight.
pub struct Initiator {
    state: snow::HandshakeState,
}

impl Initiator {
    /// Starts a handshake; returns the 101-byte initiation to send.
    pub fn start(
        machine: &PrivateKey,
        server: &MachinePublic,
        capver: u16,
    ) -> Result<(Self, [u8; INITIATION_LEN]), NoiseError> {
        let hs = |e: snow::Error| NoiseError::Handshake(e.to_string());
        let params = "Noise_IK_25519_ChaChaPoly_BLAKE2s".parse().map_err(hs)?;
        let private = machine.to_bytes();
        let prologue = prologue(capver);
        let mut state = snow::Builder::new(params)
            .local_private_key(&private)
            .map_err(hs)?
            .remote_public_key(&server.0)
            .map_err(hs)?
            .prologue(prologue.as_bytes())
            .map_err(hs)?
            .build_initiator()
            .map_err(hs)?;
        let mut msg = [0u8; INITIATION_LEN];
        msg[..2].copy_from_slice(&capver.to_be_bytes());
        msg[2] = MSG_INITIATION;
        msg[3..5].copy_from_slice(&96u16.to_be_bytes());
        let n = state.write_message(&[], &mut msg[5..]).map_err(hs)?;
        if n != 96 {
            return Err(NoiseError::Handshake(format!(
                "initiation body is {n} bytes, not 96"
            )));
        }
        Ok((Self { state }, msg))
    }

    /// Completes the handshake with the server's response frame (or reports
    /// the server's error frame).
    pub fn finish(mut self, frame: &[u8]) -> Result<Transport, NoiseError> {
        let hs = |e: snow::Error| NoiseError::Handshake(e.to_string());
        match frame.first() {
            Some(&MSG_RESPONSE) => {}
            Some(&MSG_ERROR) => {
                let text = String::from_utf8_lossy(frame.get(HEADER_LEN..).unwrap_or_default());
                return Err(NoiseError::Refused(text.into_owned()));
            }
            Some(&other) => return Err(NoiseError::UnexpectedFrame(other)),
            None => return Err(NoiseError::Handshake("empty response".into())),
        }
        if frame.len() != RESPONSE_LEN || u16::from_be_bytes([frame[1], frame[2]]) != 48 {
            return Err(NoiseError::Handshake(format!(
                "response frame is {} bytes",
                frame.len()
            )));
        }
        let mut payload = [0u8; 64];
        self.state
            .read_message(&frame[HEADER_LEN..], &mut payload)
            .map_err(hs)?;
        if !self.state.is_handshake_finished() {
            return Err(NoiseError::Handshake("handshake did not finish".into()));
        }
        let (c1, c2) = self.state.dangerously_get_raw_split();
        Ok(Transport {
            send: Cipher::new(c1),
            recv: Cipher::new(c2),
            inbound: BytesMut::new(),
        })
    }
}

struct Cipher {
    aead: ChaCha20Poly1305,
    counter: u64,
}

impl Cipher {
    fn new(key: [u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, NoiseError> {
        if self.counter == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Ok(*Nonce::from_slice(&nonce))
    }
}

/// The established channel: seals outgoing bytes into records and opens
/// incoming records, buffering partial frames.
pub struct Transport {
    send: Cipher,
    recv: Cipher,
    inbound: BytesMut,
}

impl Transport {
    /// Appends `plaintext` to `out` as one or more records.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            let nonce = self.send.next_nonce()?;
            let mut body = chunk.to_vec();
            self.send
                .aead
                .encrypt_in_place(&nonce, &[], &mut body)
                .map_err(|_| NoiseError::BadRecord)?;
            out.push(MSG_RECORD);
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(&body);
        }
        Ok(())
    }

    /// Feeds bytes read from the wire.
    pub fn push(&mut self, bytes: &[u8]) {
        self.inbound.extend_from_slice(bytes);
    }

    /// Opens the next complete record, if one is buffered.
    pub fn next_plaintext(&mut self) -> Result<Option<Vec<u8>>, NoiseError> {
        if self.inbound.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = self.inbound[0];
        let len = u16::from_be_bytes([self.inbound[1], self.inbound[2]]) as usize;
        if HEADER_LEN + len > MAX_FRAME {
            return Err(NoiseError::Oversized(HEADER_LEN + len));
        }
        if self.inbound.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.inbound.advance(HEADER_LEN);
        let mut body = self.inbound.split_to(len).to_vec();
        if self.inbound.is_empty() {
            // Between messages an idle session holds no receive buffer.
            self.inbound = BytesMut::new();
        }
        match kind {
            MSG_RECORD => {
                let nonce = self.recv.next_nonce()?;
                self.recv
                    .aead
                    .decrypt_in_place(&nonce, &[], &mut body)
                    .map_err(|_| NoiseError::BadRecord)?;
                Ok(Some(body))
            }
            MSG_ERROR => Err(NoiseError::Refused(
                String::from_utf8_lossy(&body).into_owned(),
            )),
            other => Err(NoiseError::UnexpectedFrame(other)),
        }
    }
}

#[cfg(test)]
pub(crate) use tests::pair as transport_pair;

#[cfg(test)]
mod tests {
    use super::*;

    /// A responder built from the same primitives, standing in for the
    /// control server.
    fn respond(
        server: &PrivateKey,
        initiation: &[u8; INITIATION_LEN],
        capver: u16,
    ) -> ([u8; RESPONSE_LEN], Transport) {
        let params = "Noise_IK_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
        let private = server.to_bytes();
        let prologue = prologue(capver);
        let mut state = snow::Builder::new(params)
            .local_private_key(&private)
            .unwrap()
            .prologue(prologue.as_bytes())
            .unwrap()
            .build_responder()
            .unwrap();
        assert_eq!(u16::from_be_bytes([initiation[0], initiation[1]]), capver);
        assert_eq!(initiation[2], MSG_INITIATION);
        let mut payload = [0u8; 64];
        state.read_message(&initiation[5..], &mut payload).unwrap();
        let mut response = [0u8; RESPONSE_LEN];
        response[0] = MSG_RESPONSE;
        response[1..3].copy_from_slice(&48u16.to_be_bytes());
        state.write_message(&[], &mut response[3..]).unwrap();
        let (c1, c2) = state.dangerously_get_raw_split();
        // The server sends with c2 and receives with c1.
        (
            response,
            Transport {
                send: Cipher::new(c2),
                recv: Cipher::new(c1),
                inbound: BytesMut::new(),
            },
        )
    }

    /// A client transport and the server's side of it.
    pub(crate) fn pair() -> (Transport, Transport) {
        let machine = PrivateKey::generate();
        let server = PrivateKey::generate();
        let (initiator, init) =
            Initiator::start(&machine, &MachinePublic(server.public()), 130).unwrap();
        let (response, server_side) = respond(&server, &init, 130);
        (initiator.finish(&response).unwrap(), server_side)
    }

    #[test]
    fn records_flow_both_ways_split_at_any_byte() {
        let (mut client, mut server) = pair();
        let big = vec![7u8; 10_000];
        let mut wire = Vec::new();
        client.seal(b"hello", &mut wire).unwrap();
        client.seal(&big, &mut wire).unwrap();
        // 1 record + 3 records of at most 4096 bytes.
        assert!(wire.chunks(MAX_FRAME).count() >= 3);
        let mut got = Vec::new();
        for byte in &wire {
            server.push(std::slice::from_ref(byte));
            while let Some(p) = server.next_plaintext().unwrap() {
                got.extend_from_slice(&p);
            }
        }
        assert_eq!(&got[..5], b"hello");
        assert_eq!(&got[5..], &big[..]);
        let mut back = Vec::new();
        server.seal(b"world", &mut back).unwrap();
        client.push(&back);
        assert_eq!(client.next_plaintext().unwrap().unwrap(), b"world");
    }

    #[test]
    fn a_drained_transport_holds_no_receive_buffer() {
        let (mut client, mut server) = pair();
        let mut wire = Vec::new();
        client.seal(b"first", &mut wire).unwrap();
        client.seal(b"second", &mut wire).unwrap();
        let (head, last) = wire.split_at(wire.len() - 1);
        server.push(head);
        assert_eq!(server.next_plaintext().unwrap().unwrap(), b"first");
        assert!(server.next_plaintext().unwrap().is_none());
        assert!(server.inbound.capacity() > 0, "a partial record is kept");
        server.push(last);
        assert_eq!(server.next_plaintext().unwrap().unwrap(), b"second");
        assert_eq!(server.inbound.capacity(), 0);
    }

    #[test]
    fn nonce_is_big_endian() {
        let mut cipher = Cipher::new([1; 32]);
        cipher.counter = 0x0102;
        let nonce = cipher.next_nonce().unwrap();
        assert_eq!(&nonce[..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn tampered_records_are_rejected() {
        let (mut client, mut server) = pair();
        let mut wire = Vec::new();
        client.seal(b"secret", &mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        server.push(&wire);
        assert!(matches!(
            server.next_plaintext(),
            Err(NoiseError::BadRecord)
        ));
    }

    #[test]
    fn wrong_server_key_fails_the_handshake() {
        let machine = PrivateKey::generate();
        let server = PrivateKey::generate();
        let impostor = PrivateKey::generate();
        let (_, init) = Initiator::start(&machine, &MachinePublic(server.public()), 130).unwrap();
        let params = "Noise_IK_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
        let private = impostor.to_bytes();
        let prologue = prologue(130);
        let mut state = snow::Builder::new(params)
            .local_private_key(&private)
            .unwrap()
            .prologue(prologue.as_bytes())
            .unwrap()
            .build_responder()
            .unwrap();
        let mut payload = [0u8; 64];
        assert!(state.read_message(&init[5..], &mut payload).is_err());
    }

    #[test]
    fn error_frames_carry_the_server_text() {
        let machine = PrivateKey::generate();
        let server = PrivateKey::generate();
        let (initiator, _) =
            Initiator::start(&machine, &MachinePublic(server.public()), 130).unwrap();
        let mut frame = vec![MSG_ERROR, 0, 4];
        frame.extend_from_slice(b"nope");
        match initiator.finish(&frame) {
            Err(NoiseError::Refused(text)) => assert_eq!(text, "nope"),
            Err(other) => panic!("expected Refused, got {other}"),
            Ok(_) => panic!("expected Refused, got a transport"),
        }
    }
}
