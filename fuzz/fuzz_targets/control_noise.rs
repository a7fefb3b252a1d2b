//! The ts2021 Noise transport: handshake response and record framing.
//!
//! A real handshake with fixed machine and server keys (the server side is
//! an independent implementation from the same primitives: snow for the
//! handshake, ChaCha20-Poly1305 with a big-endian counter nonce for the
//! records). The input then interleaves genuine server records with
//! attacker bytes, tampered records and error frames, delivered in chunks
//! of fuzzed sizes.
//!
//! Asserts: no panic; a forged handshake response is refused; while the
//! stream holds only genuine records, the client opens exactly the
//! plaintexts sealed, in order, whatever the chunking; a tampered record is
//! never opened; everything the client seals is at most 4096 bytes a frame
//! and opens to the bytes given (round trip through the independent side).
#![no_main]

use std::sync::OnceLock;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use libfuzzer_sys::fuzz_target;
use tailnet_cni_fuzz::{chunks, Reader};
use tailnet_cnid::control::keys::{MachinePublic, PrivateKey};
use tailnet_cnid::control::noise::{
    Initiator, NoiseError, INITIATION_LEN, MAX_FRAME, MAX_PLAINTEXT, RESPONSE_LEN,
};

const MACHINE: [u8; 32] = [0x11; 32];
const SERVER: [u8; 32] = [0x22; 32];

/// One step of the input.
#[derive(Debug)]
enum Op<'a> {
    /// A genuine record from the server.
    Record(&'a [u8]),
    /// Bytes from someone without the keys.
    Raw(&'a [u8]),
    /// A genuine record with one byte flipped.
    Tampered {
        plaintext: &'a [u8],
        at: u16,
        xor: u8,
    },
    /// An error frame.
    Error(&'a [u8]),
    /// The client seals; the server side opens.
    ClientSends(&'a [u8]),
}

/// Input layout (see `Reader`): capability version u16; a flag byte, odd
/// when a counted forged handshake response follows; counted chunk sizes;
/// then operations, each a tag byte and a counted payload (Tampered adds a
/// u16 position and an xor byte before it).
struct Input<'a> {
    capver: u16,
    forged_response: Option<&'a [u8]>,
    cuts: &'a [u8],
    ops: Vec<Op<'a>>,
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Self {
        let mut r = Reader::new(data);
        let capver = r.u16();
        let forged_response = (r.u8() % 2 == 1).then(|| r.counted());
        let cuts = r.counted();
        let mut ops = Vec::new();
        while !r.is_empty() && ops.len() < 64 {
            ops.push(match r.u8() % 5 {
                0 => Op::Record(r.counted()),
                1 => Op::Raw(r.counted()),
                2 => {
                    let (at, xor) = (r.u16(), r.u8());
                    Op::Tampered {
                        plaintext: r.counted(),
                        at,
                        xor,
                    }
                }
                3 => Op::Error(r.counted()),
                _ => Op::ClientSends(r.counted()),
            });
        }
        Input {
            capver,
            forged_response,
            cuts,
            ops,
        }
    }
}

/// The server half: sends with the second split key, receives with the first.
struct Server {
    send: ChaCha20Poly1305,
    send_counter: u64,
    recv: ChaCha20Poly1305,
    recv_counter: u64,
}

fn nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    *Nonce::from_slice(&nonce)
}

impl Server {
    fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let mut body = plaintext.to_vec();
        self.send
            .encrypt_in_place(&nonce(self.send_counter), &[], &mut body)
            .expect("sealing a small record");
        self.send_counter += 1;
        let mut frame = vec![0x04];
        frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn open(&mut self, frame: &[u8]) -> Vec<u8> {
        assert_eq!(frame[0], 0x04, "client sent a non-record frame");
        let len = usize::from(u16::from_be_bytes([frame[1], frame[2]]));
        assert_eq!(frame.len(), 3 + len);
        let mut body = frame[3..].to_vec();
        self.recv
            .decrypt_in_place(&nonce(self.recv_counter), &[], &mut body)
            .expect("the client's record opens on the server");
        self.recv_counter += 1;
        body
    }
}

fn respond(initiation: &[u8; INITIATION_LEN], capver: u16) -> ([u8; RESPONSE_LEN], Server) {
    let params = "Noise_IK_25519_ChaChaPoly_BLAKE2s"
        .parse()
        .expect("pattern name");
    let prologue = format!("Tailscale Control Protocol v{capver}");
    let mut state = snow::Builder::new(params)
        .local_private_key(&SERVER)
        .and_then(|b| b.prologue(prologue.as_bytes()))
        .and_then(|b| b.build_responder())
        .expect("responder");
    assert_eq!(u16::from_be_bytes([initiation[0], initiation[1]]), capver);
    assert_eq!(initiation[2], 0x01);
    let mut payload = [0u8; 64];
    state
        .read_message(&initiation[5..], &mut payload)
        .expect("our initiation is valid");
    let mut response = [0u8; RESPONSE_LEN];
    response[0] = 0x02;
    response[1..3].copy_from_slice(&48u16.to_be_bytes());
    state
        .write_message(&[], &mut response[3..])
        .expect("response");
    let (c1, c2) = state.dangerously_get_raw_split();
    let server = Server {
        send: ChaCha20Poly1305::new(Key::from_slice(&c2)),
        send_counter: 0,
        recv: ChaCha20Poly1305::new(Key::from_slice(&c1)),
        recv_counter: 0,
    };
    (response, server)
}

fuzz_target!(|data: &[u8]| {
    let input = Input::read(data);
    let machine = PrivateKey::from_bytes(MACHINE);
    static SERVER_PUBLIC: OnceLock<[u8; 32]> = OnceLock::new();
    let server_public =
        MachinePublic(*SERVER_PUBLIC.get_or_init(|| PrivateKey::from_bytes(SERVER).public()));
    let (initiator, initiation) =
        Initiator::start(&machine, &server_public, input.capver).expect("handshake starts");
    let (response, mut server) = respond(&initiation, input.capver);

    if let Some(forged) = input.forged_response {
        if forged != &response[..] {
            assert!(
                initiator.finish(forged).is_err(),
                "a forged handshake response was accepted"
            );
            return;
        }
    }
    let mut client = initiator.finish(&response).expect("genuine response");

    let mut wire = Vec::new();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let mut genuine = true;
    for op in &input.ops {
        match op {
            Op::Record(plaintext) => {
                let plaintext = &plaintext[..plaintext.len().min(MAX_PLAINTEXT)];
                wire.extend_from_slice(&server.seal(plaintext));
                expected.push(plaintext.to_vec());
            }
            Op::Raw(bytes) => {
                wire.extend_from_slice(bytes);
                genuine = false;
            }
            Op::Tampered { plaintext, at, xor } => {
                let plaintext = &plaintext[..plaintext.len().min(MAX_PLAINTEXT)];
                let mut frame = server.seal(plaintext);
                // Flip a byte of the body (header damage is Raw's business).
                let body = frame.len() - 3;
                frame[3 + usize::from(*at) % body] ^= *xor | 1;
                wire.extend_from_slice(&frame);
                genuine = false;
            }
            Op::Error(text) => {
                let text = &text[..text.len().min(MAX_FRAME - 3)];
                wire.push(0x03);
                wire.extend_from_slice(&(text.len() as u16).to_be_bytes());
                wire.extend_from_slice(text);
                genuine = false;
            }
            Op::ClientSends(plaintext) => {
                let mut sealed = Vec::new();
                client.seal(plaintext, &mut sealed).expect("sealing");
                let mut opened = Vec::new();
                let mut rest = &sealed[..];
                while !rest.is_empty() {
                    let len = 3 + usize::from(u16::from_be_bytes([rest[1], rest[2]]));
                    assert!(len <= MAX_FRAME, "client frame over 4096 bytes");
                    opened.extend_from_slice(&server.open(&rest[..len]));
                    rest = &rest[len..];
                }
                assert_eq!(&opened[..], *plaintext);
            }
        }
    }

    let mut opened = Vec::new();
    let mut failed = None;
    'feed: for chunk in chunks(&wire, input.cuts) {
        client.push(chunk);
        loop {
            match client.next_plaintext() {
                Ok(Some(plaintext)) => opened.push(plaintext),
                Ok(None) => break,
                Err(error) => {
                    failed = Some(error);
                    break 'feed;
                }
            }
        }
    }
    if genuine {
        assert!(failed.is_none(), "genuine stream failed: {failed:?}");
        assert_eq!(opened, expected);
    } else {
        // Whatever opened is a prefix of what the server sealed: a tampered
        // or injected record never yields plaintext.
        assert!(opened.len() <= expected.len());
        assert_eq!(opened[..], expected[..opened.len()]);
        if let Some(NoiseError::Oversized(len)) = failed {
            assert!(len > MAX_FRAME);
        }
    }
});
