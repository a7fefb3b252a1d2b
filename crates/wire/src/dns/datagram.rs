//! DNS over the pod's packet device: the UDP datagram of a query taken out
//! of an IP packet, and an answer wrapped back into one addressed to the
//! client, with valid IPv4 header and UDP checksums (IPv6 requires the
//! latter).

use std::net::{IpAddr, SocketAddr};

use crate::packet::{proto, Packet, Transport};

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;
/// Hop limit of answers: they only cross the pod's own link.
const HOP_LIMIT: u8 = 64;

/// A UDP datagram the pod sent: who sent it, where to, and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The address and port it was sent to.
    pub server: SocketAddr,
    /// The UDP payload (the DNS message).
    pub payload: &'a [u8],
}

impl<'a> UdpDatagram<'a> {
    /// The datagram of a whole (unfragmented) UDP packet; `None` for
    /// anything else or a UDP length that disagrees with the packet.
    pub fn from_packet(packet: &Packet<'a>) -> Option<Self> {
        let Transport::Udp { src_port, dst_port } = packet.transport else {
            return None;
        };
        if packet.fragmented {
            return None;
        }
        let udp = packet.transport_bytes();
        let stated = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
        if stated < UDP_HEADER || stated > udp.len() {
            return None;
        }
        Some(Self {
            client: SocketAddr::new(packet.src, src_port),
            server: SocketAddr::new(packet.dst, dst_port),
            payload: &udp[UDP_HEADER..stated],
        })
    }
}

/// The IP packet that carries `payload` from `from` to `to` over UDP;
/// `None` when the families differ or the payload cannot fit one packet.
pub fn udp_packet(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let udp_len = u16::try_from(UDP_HEADER + payload.len()).ok()?;
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut sum = Checksum::default();
    match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = u16::try_from(IPV4_HEADER + udp.len()).ok()?;
            sum.add(&src.octets());
            sum.add(&dst.octets());
            sum.add(&[0, proto::UDP]);
            sum.add(&udp_len.to_be_bytes());
            sum.add(&udp);
            put_udp_checksum(&mut udp, sum.finish());
            let mut ip = Vec::with_capacity(usize::from(total));
            ip.extend_from_slice(&[0x45, 0]);
            ip.extend_from_slice(&total.to_be_bytes());
            // Id 0 with DF set: RFC 6864 allows it for atomic datagrams.
            ip.extend_from_slice(&[0, 0, 0x40, 0, HOP_LIMIT, proto::UDP, 0, 0]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            let mut header_sum = Checksum::default();
            header_sum.add(&ip);
            ip[10..12].copy_from_slice(&header_sum.finish().to_be_bytes());
            ip.extend_from_slice(&udp);
            Some(ip)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            sum.add(&src.octets());
            sum.add(&dst.octets());
            sum.add(&u32::from(udp_len).to_be_bytes());
            sum.add(&[0, 0, 0, proto::UDP]);
            sum.add(&udp);
            put_udp_checksum(&mut udp, sum.finish());
            let mut ip = Vec::with_capacity(IPV6_HEADER + udp.len());
            ip.extend_from_slice(&[0x60, 0, 0, 0]);
            ip.extend_from_slice(&udp_len.to_be_bytes());
            ip.extend_from_slice(&[proto::UDP, HOP_LIMIT]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            ip.extend_from_slice(&udp);
            Some(ip)
        }
        _ => None,
    }
}

/// A computed zero is sent as all ones (zero means "no checksum").
fn put_udp_checksum(udp: &mut [u8], sum: u16) {
    let sum = if sum == 0 { 0xffff } else { sum };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum (RFC 1071) over pieces of even length, except
/// possibly the last.
#[derive(Default)]
struct Checksum(u64);

impl Checksum {
    fn add(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(2);
        for word in &mut words {
            self.0 += u64::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            self.0 += u64::from(u16::from_be_bytes([*last, 0]));
        }
    }

    fn finish(self) -> u16 {
        let mut sum = self.0;
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        // Folded to 16 bits above.
        !(sum as u16)
    }
}
