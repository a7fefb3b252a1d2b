//! Zero-copy IPv4/IPv6 packet header parsing.
//!
//! [`Packet::parse`] reads just enough of a raw IP packet (as it comes out of
//! a TUN device or out of a WireGuard tunnel) to route and filter it: IP
//! version, addresses, upper-layer protocol, ports, TCP flags, ICMP type and
//! whether it is a non-first fragment. It borrows the input, never copies the
//! payload, and rejects truncated or malformed headers with an error instead
//! of panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IANA protocol numbers used by the parser and the packet filter.
pub mod proto {
    /// IPv6 hop-by-hop options extension header.
    pub const HOP_BY_HOP: u8 = 0;
    /// Internet Control Message Protocol (IPv4).
    pub const ICMPV4: u8 = 1;
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
    /// User Datagram Protocol.
    pub const UDP: u8 = 17;
    /// IPv6 routing extension header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment extension header.
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating Security Payload (opaque: ends header parsing).
    pub const ESP: u8 = 50;
    /// Authentication Header.
    pub const AH: u8 = 51;
    /// Internet Control Message Protocol for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const NO_NEXT_HEADER: u8 = 59;
    /// IPv6 destination options extension header.
    pub const DESTINATION_OPTIONS: u8 = 60;
    /// Stream Control Transmission Protocol.
    pub const SCTP: u8 = 132;
}

const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_MIN_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const SCTP_COMMON_HEADER: usize = 12;
const ICMP_HEADER: usize = 8;
/// Bound on chained IPv6 extension headers; real traffic uses one or two.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Why a buffer is not a parseable IP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unsupported IP version {0}")]
    UnknownVersion(u8),
    #[error("{layer} header truncated: need {needed} bytes, have {available}")]
    Truncated {
        layer: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{layer} header malformed: {detail}")]
    Malformed {
        layer: &'static str,
        detail: &'static str,
    },
}

/// IP version of a parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

/// TCP control flags (the low byte of the flags field).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
    /// A connection-opening segment: SYN without ACK.
    pub fn is_initial_syn(self) -> bool {
        self.syn() && !self.ack()
    }
}

impl std::fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::SYN, "SYN"),
            (Self::ACK, "ACK"),
            (Self::FIN, "FIN"),
            (Self::RST, "RST"),
            (Self::PSH, "PSH"),
        ];
        let mut first = true;
        f.write_str("TcpFlags(")?;
        for (bit, name) in names {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// What an ICMP (v4 or v6) message is, as far as routing and filtering care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcmpKind {
    EchoRequest {
        id: u16,
        seq: u16,
    },
    EchoReply {
        id: u16,
        seq: u16,
    },
    /// An error report about another packet (unreachable, time exceeded,
    /// parameter problem, and for IPv6 packet too big); carries the type.
    Error(u8),
    /// Any other message type (router/neighbour discovery, timestamps, ...).
    Other(u8),
}

/// The upper-layer header of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Sctp {
        src_port: u16,
        dst_port: u16,
    },
    Icmp {
        kind: IcmpKind,
        code: u8,
    },
    /// A fragment other than the first: it carries no upper-layer header.
    NonFirstFragment,
    /// A protocol this parser does not look inside.
    Other,
}

/// A parsed view of one IP packet, borrowing the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    bytes: &'a [u8],
    transport_offset: usize,
    /// IP version.
    pub version: IpVersion,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Upper-layer protocol number, after any IPv6 extension headers.
    pub protocol: u8,
    /// The decoded upper-layer header.
    pub transport: Transport,
    /// True when this packet is one fragment (first or not) of a larger one.
    pub fragmented: bool,
}

impl<'a> Packet<'a> {
    /// Parses the IP and upper-layer headers of `buf`.
    ///
    /// Bytes beyond the length stated in the IP header (link padding) are
    /// ignored; a stated length beyond the buffer is an error.
    pub fn parse(buf: &'a [u8]) -> Result<Self, PacketError> {
        let first = *buf.first().ok_or(PacketError::Empty)?;
        match first >> 4 {
            4 => Self::parse_v4(buf),
            6 => Self::parse_v6(buf),
            v => Err(PacketError::UnknownVersion(v)),
        }
    }

    fn parse_v4(buf: &'a [u8]) -> Result<Self, PacketError> {
        need("IPv4", buf, IPV4_MIN_HEADER)?;
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        if header_len < IPV4_MIN_HEADER {
            return Err(PacketError::Malformed {
                layer: "IPv4",
                detail: "header length below 20 bytes",
            });
        }
        need("IPv4", buf, header_len)?;
        let total_len = usize::from(be16(buf, 2));
        if total_len < header_len {
            return Err(PacketError::Malformed {
                layer: "IPv4",
                detail: "total length shorter than header",
            });
        }
        need("IPv4", buf, total_len)?;
        let bytes = &buf[..total_len];

        let frag_field = be16(bytes, 6);
        let more_fragments = frag_field & 0x2000 != 0;
        let fragment_offset = frag_field & 0x1fff;
        let protocol = bytes[9];
        let src = IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]));
        let dst = IpAddr::V4(Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]));

        let transport = if fragment_offset != 0 {
            Transport::NonFirstFragment
        } else {
            parse_transport(protocol, IpVersion::V4, &bytes[header_len..])?
        };
        Ok(Packet {
            bytes,
            transport_offset: header_len,
            version: IpVersion::V4,
            src,
            dst,
            protocol,
            transport,
            fragmented: more_fragments || fragment_offset != 0,
        })
    }

    fn parse_v6(buf: &'a [u8]) -> Result<Self, PacketError> {
        need("IPv6", buf, IPV6_HEADER)?;
        let total_len = IPV6_HEADER + usize::from(be16(buf, 4));
        need("IPv6", buf, total_len)?;
        let bytes = &buf[..total_len];
        let src = IpAddr::V6(Ipv6Addr::from(array16(&bytes[8..24])));
        let dst = IpAddr::V6(Ipv6Addr::from(array16(&bytes[24..40])));

        let mut next = bytes[6];
        let mut offset = IPV6_HEADER;
        let mut fragmented = false;
        let mut non_first_fragment = false;
        for _ in 0..MAX_EXTENSION_HEADERS {
            let ext = &bytes[offset..];
            let ext_len = match next {
                proto::HOP_BY_HOP | proto::ROUTING | proto::DESTINATION_OPTIONS => {
                    need("IPv6 extension", ext, 2)?;
                    (usize::from(ext[1]) + 1) * 8
                }
                proto::FRAGMENT => {
                    need("IPv6 fragment", ext, 8)?;
                    let field = be16(ext, 2);
                    fragmented = true;
                    non_first_fragment = field >> 3 != 0;
                    8
                }
                proto::AH => {
                    need("IPv6 AH", ext, 2)?;
                    (usize::from(ext[1]) + 2) * 4
                }
                _ => break,
            };
            need("IPv6 extension", ext, ext_len)?;
            next = ext[0];
            offset += ext_len;
            // A later fragment carries fragment data, not the headers its
            // Next Header names: there is nothing more to parse.
            if non_first_fragment {
                break;
            }
        }
        if !non_first_fragment && is_extension_header(next) {
            return Err(PacketError::Malformed {
                layer: "IPv6",
                detail: "too many extension headers",
            });
        }

        let transport = if non_first_fragment {
            Transport::NonFirstFragment
        } else {
            parse_transport(next, IpVersion::V6, &bytes[offset..])?
        };
        Ok(Packet {
            bytes,
            transport_offset: offset,
            version: IpVersion::V6,
            src,
            dst,
            protocol: next,
            transport,
            fragmented,
        })
    }

    /// The packet's bytes, trimmed to the length its IP header states.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The bytes from the upper-layer header on (after IPv6 extensions).
    pub fn transport_bytes(&self) -> &'a [u8] {
        &self.bytes[self.transport_offset..]
    }

    /// Source and destination ports for TCP, UDP and SCTP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port }
            | Transport::Sctp { src_port, dst_port } => Some((src_port, dst_port)),
            _ => None,
        }
    }

    /// True for fragments after the first, which carry no ports.
    pub fn is_non_first_fragment(&self) -> bool {
        self.transport == Transport::NonFirstFragment
    }

    /// TCP flags, when this is a TCP segment.
    pub fn tcp_flags(&self) -> Option<TcpFlags> {
        match self.transport {
            Transport::Tcp { flags, .. } => Some(flags),
            _ => None,
        }
    }
}

fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        proto::HOP_BY_HOP
            | proto::ROUTING
            | proto::FRAGMENT
            | proto::AH
            | proto::DESTINATION_OPTIONS
    )
}

fn parse_transport(protocol: u8, version: IpVersion, t: &[u8]) -> Result<Transport, PacketError> {
    Ok(match protocol {
        proto::TCP => {
            need("TCP", t, TCP_MIN_HEADER)?;
            let data_offset = usize::from(t[12] >> 4) * 4;
            if data_offset < TCP_MIN_HEADER {
                return Err(PacketError::Malformed {
                    layer: "TCP",
                    detail: "data offset below 20 bytes",
                });
            }
            need("TCP", t, data_offset)?;
            Transport::Tcp {
                src_port: be16(t, 0),
                dst_port: be16(t, 2),
                flags: TcpFlags(t[13]),
            }
        }
        proto::UDP => {
            need("UDP", t, UDP_HEADER)?;
            Transport::Udp {
                src_port: be16(t, 0),
                dst_port: be16(t, 2),
            }
        }
        proto::SCTP => {
            need("SCTP", t, SCTP_COMMON_HEADER)?;
            Transport::Sctp {
                src_port: be16(t, 0),
                dst_port: be16(t, 2),
            }
        }
        proto::ICMPV4 if version == IpVersion::V4 => parse_icmp(t, icmpv4_kind)?,
        proto::ICMPV6 if version == IpVersion::V6 => parse_icmp(t, icmpv6_kind)?,
        _ => Transport::Other,
    })
}

fn parse_icmp(t: &[u8], classify: fn(u8, u16, u16) -> IcmpKind) -> Result<Transport, PacketError> {
    need("ICMP", t, ICMP_HEADER)?;
    Ok(Transport::Icmp {
        kind: classify(t[0], be16(t, 4), be16(t, 6)),
        code: t[1],
    })
}

fn icmpv4_kind(icmp_type: u8, id: u16, seq: u16) -> IcmpKind {
    match icmp_type {
        0 => IcmpKind::EchoReply { id, seq },
        8 => IcmpKind::EchoRequest { id, seq },
        // Destination unreachable, source quench, time exceeded, parameter problem.
        3 | 4 | 11 | 12 => IcmpKind::Error(icmp_type),
        other => IcmpKind::Other(other),
    }
}

fn icmpv6_kind(icmp_type: u8, id: u16, seq: u16) -> IcmpKind {
    match icmp_type {
        128 => IcmpKind::EchoRequest { id, seq },
        129 => IcmpKind::EchoReply { id, seq },
        // Unreachable, packet too big, time exceeded, parameter problem.
        1..=4 => IcmpKind::Error(icmp_type),
        other => IcmpKind::Other(other),
    }
}

fn need(layer: &'static str, buf: &[u8], needed: usize) -> Result<(), PacketError> {
    if buf.len() < needed {
        Err(PacketError::Truncated {
            layer,
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Reads a big-endian u16; callers have checked the bounds with [`need`].
fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn array16(s: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(s);
    a
}

/// Builders of well-formed packets for tests across the crate.
#[cfg(test)]
pub(crate) mod build {
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
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn ipv4_tcp_syn() {
        let p = tcp("100.64.0.1", 40000, "100.64.0.2", 22, TcpFlags::SYN);
        let pkt = Packet::parse(&p).unwrap();
        assert_eq!(pkt.version, IpVersion::V4);
        assert_eq!(pkt.src, "100.64.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(pkt.dst, "100.64.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(pkt.protocol, proto::TCP);
        assert_eq!(pkt.ports(), Some((40000, 22)));
        let flags = pkt.tcp_flags().unwrap();
        assert!(flags.is_initial_syn());
        assert!(!flags.ack() && !flags.fin() && !flags.rst());
        assert!(!pkt.fragmented);
        assert_eq!(pkt.transport_bytes().len(), 20);
    }

    #[test]
    fn tcp_flag_combinations() {
        for (bits, syn, ack, fin, rst, initial) in [
            (
                TcpFlags::SYN | TcpFlags::ACK,
                true,
                true,
                false,
                false,
                false,
            ),
            (
                TcpFlags::ACK | TcpFlags::FIN,
                false,
                true,
                true,
                false,
                false,
            ),
            (TcpFlags::RST, false, false, false, true, false),
            (TcpFlags::SYN, true, false, false, false, true),
        ] {
            let p = tcp("fd7a:115c:a1e0::1", 1, "fd7a:115c:a1e0::2", 2, bits);
            let f = Packet::parse(&p).unwrap().tcp_flags().unwrap();
            assert_eq!(
                (f.syn(), f.ack(), f.fin(), f.rst(), f.is_initial_syn()),
                (syn, ack, fin, rst, initial),
                "flags {bits:#x}"
            );
        }
        assert_eq!(
            format!("{:?}", TcpFlags(TcpFlags::SYN | TcpFlags::ACK)),
            "TcpFlags(SYN|ACK)"
        );
    }

    #[test]
    fn ipv6_udp() {
        let p = udp("fd7a:115c:a1e0::1", 5353, "fd7a:115c:a1e0::2", 53);
        let pkt = Packet::parse(&p).unwrap();
        assert_eq!(pkt.version, IpVersion::V6);
        assert_eq!(pkt.dst, "fd7a:115c:a1e0::2".parse::<IpAddr>().unwrap());
        assert_eq!(
            pkt.transport,
            Transport::Udp {
                src_port: 5353,
                dst_port: 53
            }
        );
        assert_eq!(&pkt.transport_bytes()[8..], b"data");
    }

    #[test]
    fn icmp_echo_both_families() {
        let p = echo("100.64.0.1", "100.64.0.2", true, 77);
        let pkt = Packet::parse(&p).unwrap();
        assert_eq!(
            pkt.transport,
            Transport::Icmp {
                kind: IcmpKind::EchoRequest { id: 77, seq: 1 },
                code: 0
            }
        );
        assert_eq!(pkt.ports(), None);

        let p = echo("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2", false, 9);
        let pkt = Packet::parse(&p).unwrap();
        assert_eq!(pkt.protocol, proto::ICMPV6);
        assert_eq!(
            pkt.transport,
            Transport::Icmp {
                kind: IcmpKind::EchoReply { id: 9, seq: 1 },
                code: 0
            }
        );
    }

    #[test]
    fn icmp_errors_and_cross_family_numbers() {
        let unreachable = ip(
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            proto::ICMPV4,
            &icmp_header(3, 0, 0),
        );
        assert_eq!(
            Packet::parse(&unreachable).unwrap().transport,
            Transport::Icmp {
                kind: IcmpKind::Error(3),
                code: 0
            }
        );
        let too_big = ip(
            "fd7a:115c:a1e0::1".parse().unwrap(),
            "fd7a:115c:a1e0::2".parse().unwrap(),
            proto::ICMPV6,
            &icmp_header(2, 0, 0),
        );
        assert_eq!(
            Packet::parse(&too_big).unwrap().transport,
            Transport::Icmp {
                kind: IcmpKind::Error(2),
                code: 0
            }
        );
        // ICMPv6 carried in IPv4 is not ICMP for that packet.
        let odd = ip(
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            proto::ICMPV6,
            &icmp_header(128, 0, 0),
        );
        assert_eq!(Packet::parse(&odd).unwrap().transport, Transport::Other);
    }

    #[test]
    fn trailing_padding_is_trimmed() {
        let mut p = udp("100.64.0.1", 1, "100.64.0.2", 2);
        let len = p.len();
        p.extend_from_slice(&[0xee; 6]);
        let pkt = Packet::parse(&p).unwrap();
        assert_eq!(pkt.bytes().len(), len);
    }

    #[test]
    fn ipv4_options_shift_transport() {
        let mut p = tcp("100.64.0.1", 1000, "100.64.0.2", 80, TcpFlags::ACK);
        // Grow the header to 24 bytes with one NOP-padded option word.
        p[0] = 0x46;
        p.splice(20..20, [1u8, 1, 1, 0]);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let pkt = Packet::parse(&p).unwrap();
        assert_eq!(pkt.ports(), Some((1000, 80)));
    }

    #[test]
    fn ipv4_fragments() {
        let mut first = udp("100.64.0.1", 1, "100.64.0.2", 2);
        first[6] = 0x20; // MF, offset 0
        let pkt = Packet::parse(&first).unwrap();
        assert!(pkt.fragmented);
        assert_eq!(pkt.ports(), Some((1, 2)));

        let mut later = ip(
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            proto::UDP,
            &[0xab; 3],
        );
        later[6] = 0x00;
        later[7] = 0xb9; // offset 185 * 8, no MF: the last fragment
        let pkt = Packet::parse(&later).unwrap();
        assert!(pkt.fragmented);
        assert!(pkt.is_non_first_fragment());
        assert_eq!(pkt.ports(), None);
        assert_eq!(pkt.protocol, proto::UDP);
    }

    fn v6_with_ext(chain: &[(u8, Vec<u8>)], last_proto: u8, transport: &[u8]) -> Vec<u8> {
        // chain: (header type, header bytes without the next-header byte)
        let mut body = Vec::new();
        for (i, (_, ext)) in chain.iter().enumerate() {
            let next = chain.get(i + 1).map(|c| c.0).unwrap_or(last_proto);
            body.push(next);
            body.extend_from_slice(ext);
        }
        body.extend_from_slice(transport);
        let first = chain.first().map(|c| c.0).unwrap_or(last_proto);
        ip(
            "fd7a:115c:a1e0::1".parse().unwrap(),
            "fd7a:115c:a1e0::2".parse().unwrap(),
            first,
            &body,
        )
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let hop_by_hop = (proto::HOP_BY_HOP, vec![0, 1, 4, 0, 0, 0, 0]); // 8 bytes, PadN
        let dest_opts = (
            proto::DESTINATION_OPTIONS,
            vec![1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ); // 16 bytes
        let p = v6_with_ext(
            &[hop_by_hop, dest_opts],
            proto::TCP,
            &tcp_header(5, 443, TcpFlags::SYN),
        );
        let pkt = Packet::parse(&p).unwrap();
        assert_eq!(pkt.protocol, proto::TCP);
        assert_eq!(pkt.ports(), Some((5, 443)));
        assert!(!pkt.fragmented);
    }

    #[test]
    fn ipv6_fragment_header() {
        let first = (proto::FRAGMENT, vec![0, 0x00, 0x01, 0, 0, 0, 7]); // offset 0, M=1
        let p = v6_with_ext(&[first], proto::UDP, &udp_header(7, 8, b""));
        let pkt = Packet::parse(&p).unwrap();
        assert!(pkt.fragmented);
        assert_eq!(pkt.ports(), Some((7, 8)));

        let later = (proto::FRAGMENT, vec![0, 0x05, 0x00, 0, 0, 0, 7]); // offset 160
        let p = v6_with_ext(&[later], proto::UDP, &[0xcc; 5]);
        let pkt = Packet::parse(&p).unwrap();
        assert!(pkt.is_non_first_fragment());
        assert_eq!(pkt.protocol, proto::UDP);
    }

    #[test]
    fn later_ipv6_fragments_are_not_parsed_past_the_fragment_header() {
        // Found by the packet_filter fuzz target: the fragmentable part may
        // start with a Destination Options header, whose bytes are only in
        // the first fragment; later fragments were refused as truncated.
        let later = (proto::FRAGMENT, vec![0, 0x05, 0x00, 0, 0, 0, 7]); // offset 160
        let p = v6_with_ext(&[later], proto::DESTINATION_OPTIONS, &[0xcc; 3]);
        let pkt = Packet::parse(&p).unwrap();
        assert!(pkt.is_non_first_fragment());
        assert!(pkt.fragmented);
        assert_eq!(pkt.protocol, proto::DESTINATION_OPTIONS);
        assert_eq!(pkt.transport_bytes(), &[0xcc; 3]);
    }

    #[test]
    fn ipv6_extension_loop_is_bounded() {
        let chain: Vec<(u8, Vec<u8>)> = (0..MAX_EXTENSION_HEADERS + 1)
            .map(|_| (proto::DESTINATION_OPTIONS, vec![0, 1, 4, 0, 0, 0, 0]))
            .collect();
        let p = v6_with_ext(&chain, proto::UDP, &udp_header(1, 2, b""));
        assert!(matches!(
            Packet::parse(&p),
            Err(PacketError::Malformed { .. })
        ));
    }

    #[test]
    fn other_protocols_parse_without_ports() {
        let gre = ip(
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            47,
            &[0; 4],
        );
        let pkt = Packet::parse(&gre).unwrap();
        assert_eq!(pkt.protocol, 47);
        assert_eq!(pkt.transport, Transport::Other);
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(Packet::parse(&[]), Err(PacketError::Empty));
        assert_eq!(
            Packet::parse(&[0x20; 40]),
            Err(PacketError::UnknownVersion(2))
        );

        let mut short_ihl = udp("100.64.0.1", 1, "100.64.0.2", 2);
        short_ihl[0] = 0x44;
        assert!(matches!(
            Packet::parse(&short_ihl),
            Err(PacketError::Malformed { .. })
        ));

        let mut long_total = udp("100.64.0.1", 1, "100.64.0.2", 2);
        long_total[3] += 1;
        assert!(matches!(
            Packet::parse(&long_total),
            Err(PacketError::Truncated { .. })
        ));

        let mut bad_offset = tcp("100.64.0.1", 1, "100.64.0.2", 2, TcpFlags::SYN);
        bad_offset[20 + 12] = 4 << 4;
        assert!(matches!(
            Packet::parse(&bad_offset),
            Err(PacketError::Malformed { .. })
        ));

        let mut v6_long = udp("fd7a:115c:a1e0::1", 1, "fd7a:115c:a1e0::2", 2);
        v6_long[5] += 1;
        assert!(matches!(
            Packet::parse(&v6_long),
            Err(PacketError::Truncated { .. })
        ));
    }

    /// Every prefix of a valid packet either parses or errors, never panics,
    /// and a prefix shorter than the stated length never parses.
    #[test]
    fn every_truncation_is_rejected() {
        let samples = [
            tcp("100.64.0.1", 1, "100.64.0.2", 2, TcpFlags::SYN),
            udp("fd7a:115c:a1e0::1", 1, "fd7a:115c:a1e0::2", 2),
            echo("100.64.0.1", "100.64.0.2", true, 3),
            echo("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2", false, 3),
        ];
        for sample in samples {
            assert!(Packet::parse(&sample).is_ok());
            for cut in 0..sample.len() {
                assert!(
                    Packet::parse(&sample[..cut]).is_err(),
                    "prefix {cut} of {sample:02x?}"
                );
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a11);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = rng.gen_range(0..120);
            let mut buf = vec![0u8; len];
            rng.fill_bytes(&mut buf);
            // Bias toward plausible headers so deeper paths get exercised.
            if len > 0 && rng.gen_bool(0.5) {
                buf[0] = if rng.gen_bool(0.5) { 0x45 } else { 0x60 };
                if len > 6 && rng.gen_bool(0.5) {
                    let stated = (len as u16).saturating_sub(if buf[0] == 0x45 { 0 } else { 40 });
                    let at = if buf[0] == 0x45 { 2 } else { 4 };
                    buf[at..at + 2].copy_from_slice(&stated.to_be_bytes());
                }
            }
            if let Ok(pkt) = Packet::parse(&buf) {
                parsed += 1;
                assert!(pkt.bytes().len() <= buf.len());
                assert!(pkt.transport_bytes().len() <= pkt.bytes().len());
            }
        }
        assert!(parsed > 0, "the biased inputs should parse sometimes");
    }

    #[test]
    fn mutated_packets_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let base = [
            tcp("100.64.0.1", 1, "100.64.0.2", 2, TcpFlags::SYN),
            udp("fd7a:115c:a1e0::1", 1, "fd7a:115c:a1e0::2", 2),
        ];
        for _ in 0..20_000 {
            let mut p = base[rng.gen_range(0..base.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..p.len());
                p[at] = rng.gen();
            }
            if let Ok(pkt) = Packet::parse(&p) {
                assert!(pkt.bytes().len() <= p.len());
                assert_eq!(
                    pkt.ports().is_some(),
                    matches!(pkt.protocol, proto::TCP | proto::UDP | proto::SCTP)
                        && !pkt.is_non_first_fragment()
                );
            }
        }
    }
}
