//! Disco packets (UDP or relayed): the box and the message inside.
//!
//! Asserts: no panic; a decoded message re-encodes to bytes that decode to
//! the same message; a message sealed with fixed keys opens to itself with
//! the receiver's key and is refused with anyone else's or after any
//! tampering; arbitrary packets never open; the sender key is read only
//! from packets that look like disco.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tailnet_cni_fuzz::Reader;
use tailnet_wire::disco::{
    self, looks_like_disco, sender_key, CallMeMaybe, Message, Ping, Pong, SharedKey, HEADER_LEN,
    NONCE_LEN,
};

const ALICE: [u8; 32] = [0x55; 32];
const BOB: [u8; 32] = [0x66; 32];
const MALLORY: [u8; 32] = [0x77; 32];

/// Input layout: a counted packet (as it arrives), a nonce, a tamper
/// position and mask, a flag byte (bit 0: also use the uncached `open`,
/// which costs an X25519 operation per call), then the message to seal: a
/// type byte and fields.
struct Input<'a> {
    packet: &'a [u8],
    nonce: [u8; NONCE_LEN],
    tamper: (u16, u8),
    uncached: bool,
    message: Message,
}

/// The cached box keys, built once: X25519 is the slow part of a run.
struct Keys {
    bob_hears_alice: SharedKey,
    alice_to_bob: SharedKey,
    mallory_hears_alice: SharedKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        bob_hears_alice: SharedKey::new(&BOB, &disco::public_key(&ALICE)),
        alice_to_bob: SharedKey::new(&ALICE, &disco::public_key(&BOB)),
        mallory_hears_alice: SharedKey::new(&MALLORY, &disco::public_key(&ALICE)),
    })
}

/// Endpoints travel as 16 bytes: v4 addresses as v4-mapped v6.
fn endpoint(ip: [u8; 16], port: u16) -> SocketAddr {
    let ip = Ipv6Addr::from(ip);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        None => SocketAddr::new(IpAddr::V6(ip), port),
    }
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Self {
        let mut r = Reader::new(data);
        let packet = r.counted();
        let nonce = r.array();
        let tamper = (r.u16(), r.u8());
        let uncached = r.u8() & 1 == 1;
        let message = match r.u8() % 3 {
            0 => Message::Ping(Ping {
                tx_id: r.array(),
                node_key: r.array(),
                padding: usize::from(r.u16() % 1500),
            }),
            1 => Message::Pong(Pong {
                tx_id: r.array(),
                src: endpoint(r.array(), r.u16()),
            }),
            _ => {
                let mut endpoints = Vec::new();
                while !r.is_empty() && endpoints.len() < 64 {
                    endpoints.push(endpoint(r.array(), r.u16()));
                }
                Message::CallMeMaybe(CallMeMaybe { endpoints })
            }
        };
        Input {
            packet,
            nonce,
            tamper,
            uncached,
            message,
        }
    }
}

fn round_trip(message: &Message) {
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    assert_eq!(bytes.len(), message.encoded_len());
    assert_eq!(Message::decode(&bytes).as_ref(), Ok(message));
}

fuzz_target!(|data: &[u8]| {
    let input = Input::read(data);
    let packet = input.packet;

    // Plaintext decoding of arbitrary bytes.
    if let Ok(message) = Message::decode(packet) {
        round_trip(&message);
    }

    // Packets from the wire.
    let key = sender_key(packet);
    assert_eq!(key.is_some(), looks_like_disco(packet));
    let keys = keys();
    let bob_hears_alice = &keys.bob_hears_alice;
    if let Ok(message) = bob_hears_alice.open(packet) {
        // Only a packet Alice sealed (a seed) can open.
        assert_eq!(key, Some(*bob_hears_alice.peer_public()));
        round_trip(&message);
    }
    if input.uncached {
        if let Ok((sender, message)) = disco::open(&BOB, packet) {
            assert_eq!(Some(sender), key);
            round_trip(&message);
        }
    }

    // Sealed messages open only for their receiver, only untouched.
    let message = input.message;
    round_trip(&message);
    let sealed = keys.alice_to_bob.seal_with_nonce(&message, &input.nonce);
    assert!(looks_like_disco(&sealed));
    assert_eq!(sender_key(&sealed), Some(*keys.alice_to_bob.local_public()));
    assert_eq!(bob_hears_alice.open(&sealed).as_ref(), Ok(&message));
    assert!(keys.mallory_hears_alice.open(&sealed).is_err());
    if input.uncached {
        assert_eq!(
            disco::open(&BOB, &sealed).map(|(_, m)| m).as_ref(),
            Ok(&message)
        );
        assert!(disco::open(&MALLORY, &sealed).is_err());
    }
    // Any change after the magic and the sender key breaks the box.
    let (at, xor) = input.tamper;
    let mut bad = sealed.clone();
    let from = HEADER_LEN - NONCE_LEN;
    let at = from + usize::from(at) % (bad.len() - from);
    bad[at] ^= xor | 1;
    assert!(bob_hears_alice.open(&bad).is_err());
});
