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
    /// The buffer is empty.
    #[error("empty packet")]
    Empty,
    /// The version nibble is neither 4 nor 6; holds it.
    #[error("unsupported IP version {0}")]
    UnknownVersion(u8),
    /// The buffer ends before a header does, or before the length the IP header states.
    #[error("{layer} header truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Which header: `IPv4`, `IPv6`, an extension header, `TCP`, ...
        layer: &'static str,
        /// Bytes the header needs.
        needed: usize,
        /// Bytes the buffer has for it.
        available: usize,
    },
    /// A length field below its header's minimum, or too many IPv6 extension headers.
    #[error("{layer} header malformed: {detail}")]
    Malformed {
        /// Which header.
        layer: &'static str,
        /// What is wrong with it.
        detail: &'static str,
    },
}

/// IP version of a parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// TCP control flags (the low byte of the flags field).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN: the sender is done sending.
    pub const FIN: u8 = 0x01;
    /// SYN: synchronise sequence numbers (opens a connection).
    pub const SYN: u8 = 0x02;
    /// RST: reset the connection.
    pub const RST: u8 = 0x04;
    /// PSH: push buffered data to the application.
    pub const PSH: u8 = 0x08;
    /// ACK: the acknowledgment number is valid.
    pub const ACK: u8 = 0x10;

    /// True when FIN is set.
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    /// True when SYN is set.
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    /// True when RST is set.
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    /// True when ACK is set.
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
    /// An echo request (ping).
    EchoRequest {
        /// Identifier pairing requests and replies.
        id: u16,
        /// Sequence number within the identifier.
        seq: u16,
    },
    /// An echo reply (pong).
    EchoReply {
        /// The identifier of the request answered.
        id: u16,
        /// The sequence number of the request answered.
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
    /// TCP, with its ports and flags.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// The segment's control flags.
        flags: TcpFlags,
    },
    /// UDP, with its ports.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// SCTP, with the ports of its common header.
    Sctp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMPv4 or ICMPv6.
    Icmp {
        /// What the message is.
        kind: IcmpKind,
        /// The ICMP code field.
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

#[cfg(test)]
pub(crate) mod build;

#[cfg(test)]
mod tests;
