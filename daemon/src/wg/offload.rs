//! Offloads on a TUN opened with `IFF_VNET_HDR`, without I/O: the
//! virtio-net header in front of every packet, and GRO in userspace, which
//! joins consecutive TCP segments of one flow into one large segment the
//! kernel takes in a single write (and cuts again only if it forwards it).
//!
//! Joining follows the kernel's own TCP GRO rules: same addresses and
//! ports, next sequence number, same IP header fields, same TCP header
//! except the sequence number, plain ACK (a PSH may end a run), equal
//! payload sizes but a shorter last one. The joined segment is marked
//! `NEEDS_CSUM`: its TCP checksum field holds the pseudo-header sum and
//! the checksum is never computed over the payload (the packets were
//! authenticated by WireGuard), which is what the kernel does with a
//! segment GRO built.
//!
//! The other direction, a large segment read from a TUN with TSO/USO
//! cut into packets, is [`segment`].

pub(crate) mod segment;

pub use segment::{complete_checksum, SegmentError, SegmentPlan, Splitter, MAX_FRAME_LEN};

/// Bytes of `struct virtio_net_hdr` (without `num_buffers`, which a TUN
/// only adds after TUNSETVNETHDRSZ).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` on is still to be computed.
const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values (linux/virtio_net.h).
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;

/// An IP packet (total length field) holds at most this many bytes.
const MAX_JOINED_LEN: usize = 65_535;
/// Segments joined at most, as the kernel's GRO does (`MAX_GRO_SKBS`).
const MAX_SEGMENTS: usize = 64;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;

/// The header a TUN reads in front of a packet (`struct virtio_net_hdr`;
/// legacy headers are in the host's byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Bytes of the headers every segment repeats (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed part starts.
    pub csum_start: u16,
    /// Where the checksum field is, counted from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decode the header at the start of a read; `None` when short.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let hdr = bytes.get(..VNET_HDR_LEN)?;
        let field = |at: usize| u16::from_ne_bytes([hdr[at], hdr[at + 1]]);
        Some(Self {
            flags: hdr[0],
            gso_type: hdr[1],
            hdr_len: field(2),
            gso_size: field(4),
            csum_start: field(6),
            csum_offset: field(8),
        })
    }

    /// The header's bytes as the device takes them.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut out = [0; VNET_HDR_LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        for (at, value) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
        ] {
            out[at..at + 2].copy_from_slice(&value.to_ne_bytes());
        }
        out
    }

    /// Whether the packet behind it is a large segment to be cut.
    pub fn is_segmented(&self) -> bool {
        self.gso_type != GSO_NONE
    }

    /// Whether the packet behind it is one plain, complete IP packet: no
    /// segmentation and no checksum left to compute. A TUN without
    /// TUNSETOFFLOAD only reads such packets.
    pub fn is_plain(&self) -> bool {
        self.gso_type == GSO_NONE && self.flags & F_NEEDS_CSUM == 0
    }
}

/// The header for a packet written as it is.
pub const PLAIN_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Where a TCP segment's fields are, and what must match for joining.
#[derive(Debug, Clone, Copy)]
struct Segment {
    v6: bool,
    ip_len: usize,
    tcp_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

/// Parse `packet` as a TCP segment that may be joined: IPv4 without
/// options or fragmentation, or IPv6 without extension headers, a payload,
/// and only ACK (and PSH) set.
fn segment(packet: &[u8]) -> Option<Segment> {
    let (v6, ip_len, total) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
            let frag = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
            // MF or a fragment offset: a fragment, never joined.
            if ihl != 20 || frag & 0x3fff != 0 || *packet.get(9)? != 6 {
                return None;
            }
            (false, ihl, total)
        }
        6 => {
            let payload = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
            if *packet.get(6)? != 6 {
                return None;
            }
            (true, 40, 40 + payload)
        }
        _ => return None,
    };
    if total != packet.len() {
        return None;
    }
    let tcp = packet.get(ip_len..)?;
    let tcp_len = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    if tcp_len < 20 || tcp.len() <= tcp_len {
        return None;
    }
    if flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    // ECE/CWR ask the receiver to see this very segment.
    if flags & 0xc0 != 0 {
        return None;
    }
    Some(Segment {
        v6,
        ip_len,
        tcp_len,
        payload: tcp.len() - tcp_len,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags,
    })
}

/// Whether two segments' headers agree on everything but lengths,
/// checksums, IPv4 identification, sequence number and PSH.
fn same_flow(held: &[u8], held_seg: &Segment, packet: &[u8], seg: &Segment) -> bool {
    if held_seg.v6 != seg.v6 || held_seg.tcp_len != seg.tcp_len {
        return false;
    }
    let ip_same = if seg.v6 {
        // Version, traffic class, flow label; next header, hop limit,
        // addresses.
        held[..4] == packet[..4] && held[6..40] == packet[6..40]
    } else {
        // Version, IHL, TOS (with ECN); flags; TTL, protocol; addresses.
        held[..2] == packet[..2]
            && held[6..7] == packet[6..7]
            && held[8..10] == packet[8..10]
            && held[12..20] == packet[12..20]
    };
    let (h, p) = (&held[held_seg.ip_len..], &packet[seg.ip_len..]);
    // Ports; ack number, data offset; window; urgent pointer and options.
    ip_same
        && h[..4] == p[..4]
        && h[8..13] == p[8..13]
        && h[14..16] == p[14..16]
        && h[18..seg.tcp_len] == p[18..seg.tcp_len]
        && (h[13] & !TCP_PSH) == (p[13] & !TCP_PSH)
}

/// The segment being built: a virtio-net header and the first packet, with
/// the payload of each joined one appended.
pub struct TcpCoalescer {
    frame: Vec<u8>,
    /// The first segment's layout; `None` while nothing is held.
    first: Option<Segment>,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    segments: usize,
    /// No segment may follow (a shorter one or a PSH ended the run).
    closed: bool,
}

impl Default for TcpCoalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpCoalescer {
    pub fn new() -> Self {
        Self {
            frame: Vec::new(),
            first: None,
            next_seq: 0,
            segments: 0,
            closed: false,
        }
    }

    /// Whether a segment is held (to be written with [`Self::frame`]).
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Hold `packet` or join it to the held segment. False when it can do
    /// neither: the caller writes the held frame, clears, and pushes again
    /// (or writes a packet that cannot be held with [`PLAIN_VNET_HDR`]).
    pub fn push(&mut self, packet: &[u8]) -> bool {
        let Some(seg) = segment(packet) else {
            return false;
        };
        let Some(first) = self.first else {
            self.frame.clear();
            // Once per buffer: joined segments then never reallocate.
            self.frame.reserve(VNET_HDR_LEN + MAX_JOINED_LEN);
            self.frame.extend_from_slice(&PLAIN_VNET_HDR);
            self.frame.extend_from_slice(packet);
            self.first = Some(seg);
            self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
            self.segments = 1;
            self.closed = seg.flags & TCP_PSH != 0;
            return true;
        };
        let held = &self.frame[VNET_HDR_LEN..];
        let fits = !self.closed
            && self.segments < MAX_SEGMENTS
            && seg.seq == self.next_seq
            && seg.payload <= first.payload
            && held.len() + seg.payload <= MAX_JOINED_LEN
            && same_flow(held, &first, packet, &seg);
        if !fits {
            return false;
        }
        self.frame
            .extend_from_slice(&packet[seg.ip_len + seg.tcp_len..]);
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        self.segments += 1;
        if seg.flags & TCP_PSH != 0 {
            // The joined segment carries the PSH of its last part.
            self.frame[VNET_HDR_LEN + first.ip_len + 13] |= TCP_PSH;
            self.closed = true;
        }
        self.closed |= seg.payload < first.payload;
        true
    }

    /// The held segment with its virtio-net header, ready to write: a
    /// single packet as it came, a joined one with fixed lengths and a GSO
    /// header. `None` when nothing is held.
    pub fn frame(&mut self) -> Option<&[u8]> {
        let first = self.first?;
        if self.segments > 1 {
            self.finish_joined(&first);
        }
        Some(&self.frame)
    }

    /// Forget the held segment (after it was written).
    pub fn clear(&mut self) {
        self.first = None;
        self.frame.clear();
    }

    /// Forget the held segment and free the buffer.
    pub fn release(&mut self) {
        self.clear();
        self.frame = Vec::new();
    }

    fn finish_joined(&mut self, first: &Segment) {
        let packet = &mut self.frame[VNET_HDR_LEN..];
        let total = packet.len();
        let ip_len = first.ip_len;
        let tcp_total = total - ip_len;
        if first.v6 {
            packet[4..6].copy_from_slice(&(tcp_total as u16).to_be_bytes());
        } else {
            packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            packet[10..12].fill(0);
            let sum = !fold(sum_words(&packet[..20], 0));
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        let pseudo = fold(pseudo_header_sum(packet, first.v6, tcp_total));
        let check = ip_len + 16;
        packet[check..check + 2].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if first.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: (ip_len + first.tcp_len) as u16,
            gso_size: first.payload as u16,
            csum_start: ip_len as u16,
            csum_offset: 16,
        };
        self.frame[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    }
}

/// One's complement sum of `bytes` as big-endian 16-bit words onto `sum`,
/// unfolded. Taken four bytes at a time: as 2^16 is 1 modulo 0xffff, a
/// 32-bit word adds the same as its two halves, in half the steps.
fn sum_words(bytes: &[u8], mut sum: u64) -> u64 {
    let mut words = bytes.chunks_exact(4);
    for word in &mut words {
        sum += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut rest = words.remainder().chunks_exact(2);
    for word in &mut rest {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP pseudo-header sum (addresses, protocol, TCP length).
fn pseudo_header_sum(packet: &[u8], v6: bool, tcp_len: usize) -> u64 {
    let addrs = if v6 { &packet[8..40] } else { &packet[12..20] };
    sum_words(addrs, 6 + tcp_len as u64)
}

#[cfg(test)]
#[path = "offload_tests.rs"]
pub(crate) mod tests;
