//! Builders of well-formed packets for tests across the crate.

use super::*;

/// Checksums are left zero: the parser does not verify them.
pub fn ip(src: IpAddr, dst: IpAddr, protocol: u8, transport: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + transport.len();
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(transport);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0x60, 0, 0, 0, 0, 0, protocol, 64];
            p[4..6].copy_from_slice(&(transport.len() as u16).to_be_bytes());
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(transport);
            p
        }
        _ => panic!("mixed address families"),
    }
}

pub fn tcp_header(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst_port.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

pub fn udp_header(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 8];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst_port.to_be_bytes());
    t[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    t.extend_from_slice(payload);
    t
}

pub fn icmp_header(icmp_type: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut t = vec![icmp_type, 0, 0, 0];
    t.extend_from_slice(&id.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t
}

pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    ip(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        proto::TCP,
        &tcp_header(sport, dport, flags),
    )
}

pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    ip(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        proto::UDP,
        &udp_header(sport, dport, b"data"),
    )
}

/// Echo request or reply; picks ICMPv4 or ICMPv6 type numbers by family.
pub fn echo(src: &str, dst: &str, request: bool, id: u16) -> Vec<u8> {
    let src: IpAddr = src.parse().unwrap();
    let (protocol, icmp_type) = match (src.is_ipv4(), request) {
        (true, true) => (proto::ICMPV4, 8),
        (true, false) => (proto::ICMPV4, 0),
        (false, true) => (proto::ICMPV6, 128),
        (false, false) => (proto::ICMPV6, 129),
    };
    ip(
        src,
        dst.parse().unwrap(),
        protocol,
        &icmp_header(icmp_type, id, 1),
    )
}
