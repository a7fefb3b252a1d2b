//! The packet path's own demultiplexing: which datagrams go to WireGuard,
//! disco or STUN, what the engine reads from a packet's addresses before
//! routing it, and the longest-prefix routing table.
//!
//! Asserts: no panic; the engine's WireGuard test and the shared socket's
//! classifier agree; a datagram the engine hands on parses (or is refused)
//! by boringtun without panicking, and a handshake initiation opens only
//! with our key; the quick address read agrees with the full IP parser;
//! routing picks the longest matching prefix, first listed on ties.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet as WgPacket, Tunn};
use boringtun::x25519::{PublicKey, StaticSecret};
use libfuzzer_sys::fuzz_target;
use tailnet_cni_fuzz::Reader;
use tailnet_cnid::wg::routing::{packet_addrs, prefix_contains, AllowedIps};
use tailnet_wire::disco::looks_like_disco;
use tailnet_wire::packet::Packet;
use tailnet_wire::demux::{classify, looks_like_wireguard, PacketKind};
use tailnet_wire::stun::is_stun;

const NODE: [u8; 32] = [0x88; 32];

/// Input layout: a count byte and that many routes (family byte, 16
/// address bytes, prefix length), a count byte and that many lookups
/// (family byte, 16 address bytes), then the datagram.
struct Input<'a> {
    routes: Vec<(bool, [u8; 16], u8)>,
    lookups: Vec<(bool, [u8; 16])>,
    datagram: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Self {
        let mut r = Reader::new(data);
        let routes = (0..r.u8() % 33)
            .map(|_| (r.u8() % 2 == 1, r.array(), r.u8()))
            .collect();
        let lookups = (0..r.u8() % 17)
            .map(|_| (r.u8() % 2 == 1, r.array()))
            .collect();
        Input {
            routes,
            lookups,
            datagram: r.rest(),
        }
    }
}

fn addr(v6: bool, bytes: [u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// Independent prefix test: compare the leading `len` bits.
fn within(prefix: IpAddr, len: u8, ip: IpAddr) -> bool {
    let (p, a, bits) = match (prefix, ip) {
        (IpAddr::V4(p), IpAddr::V4(a)) => (
            u128::from(u32::from(p)) << 96,
            u128::from(u32::from(a)) << 96,
            32,
        ),
        (IpAddr::V6(p), IpAddr::V6(a)) => (u128::from(p), u128::from(a), 128),
        _ => return false,
    };
    let len = u32::from(len).min(bits);
    len == 0 || (p ^ a) >> (128 - len) == 0
}

fuzz_target!(|data: &[u8]| {
    let input = Input::read(data);
    let datagram = input.datagram;

    // Demultiplexing of the shared UDP socket.
    let kind = classify(datagram);
    if looks_like_wireguard(datagram) {
        // A STUN-looking datagram is STUN only as a Binding message (byte
        // 1 is 0x01), which WireGuard's zero bytes rule out.
        assert!(!looks_like_disco(datagram));
        assert!(!is_stun(datagram) || datagram[1] != 0x01);
        assert_eq!(kind, PacketKind::WireGuard);
        // What the engine does next with such a datagram.
        let secret = StaticSecret::from(NODE);
        let public = PublicKey::from(&secret);
        if let Ok(WgPacket::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) {
            // Only an initiation built for our key could open: random bytes never do.
            let _ = parse_handshake_anon(&secret, &public, &init);
        }
    } else {
        assert_ne!(kind, PacketKind::WireGuard);
    }

    // The quick read of a packet's addresses against the full parser.
    let quick = packet_addrs(datagram);
    if let Ok(packet) = Packet::parse(datagram) {
        assert_eq!(quick, Some((packet.src, packet.dst)));
    }
    if let Some((src, dst)) = quick {
        assert_eq!(src.is_ipv4(), dst.is_ipv4());
        assert_eq!(src.is_ipv4(), datagram[0] >> 4 == 4);
    }

    // Longest-prefix routing.
    let entries: Vec<(IpAddr, u8, usize)> = input
        .routes
        .iter()
        .enumerate()
        .map(|(i, &(v6, bytes, len))| {
            // Control's prefixes are validated before they reach the table.
            (addr(v6, bytes), len % if v6 { 129 } else { 33 }, i)
        })
        .collect();
    let table = AllowedIps::from_entries(entries.clone());
    assert_eq!(table.len(), entries.len());
    let mut targets: Vec<IpAddr> = input.lookups.iter().map(|&(v6, b)| addr(v6, b)).collect();
    targets.extend(entries.iter().map(|e| e.0));
    targets.extend(quick.map(|(_, dst)| dst));
    for ip in targets {
        let expected = entries
            .iter()
            .filter(|(p, len, _)| within(*p, *len, ip))
            .fold(None::<&(IpAddr, u8, usize)>, |best, e| match best {
                Some(b) if b.1 >= e.1 => Some(b),
                _ => Some(e),
            })
            .map(|e| e.2);
        for (p, len, _) in &entries {
            assert_eq!(prefix_contains(*p, *len, ip), within(*p, *len, ip));
        }
        assert_eq!(table.lookup(ip).copied(), expected, "lookup {ip}");
    }
});
