//! Segmentation in userspace, without I/O: a TUN with TSO/USO on (see
//! `TUNSETOFFLOAD` in [`crate::wg::packet_fd`]) hands over one large TCP
//! or UDP segment with a virtio-net header; it is cut here into the
//! packets the kernel would have put on the wire, each encrypted as one
//! WireGuard datagram.
//!
//! As the kernel's own GSO does: every packet repeats the headers; IPv4
//! identification counts up from the first; lengths are per packet; the
//! TCP sequence number advances by the segment size; FIN and PSH stay only
//! on the last packet and CWR only on the first; every checksum is
//! computed in full (the receiving stack verifies them).

use super::{
    fold, sum_words, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, TCP_FIN, TCP_PSH,
};

/// IP payload length of the largest frame a TUN hands over (the IPv6
/// payload length field bounds it), plus the IPv6 header.
pub const MAX_FRAME_LEN: usize = 40 + 65_535;

const TCP_CWR: u8 = 0x80;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Why a frame read from the device cannot be made into packets. The frame
/// is dropped; the sender's stack retransmits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("virtio-net GSO type {0} is not one the device was offered")]
    UnknownGso(u8),
    #[error("headers do not match the virtio-net header or are cut short")]
    Malformed,
    #[error("checksum position lies outside the packet")]
    ChecksumOutOfBounds,
}

/// Transport of a segmented frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// How a large frame is cut: where its headers end and how many payload
/// bytes each packet carries. Computed once per frame, then
/// [`Self::write`] builds packet after packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentPlan {
    transport: Transport,
    v6: bool,
    /// Bytes of the IP header (the transport header starts here).
    ip_len: usize,
    /// Bytes of the IP and transport headers each packet repeats.
    hdr_len: usize,
    /// Payload bytes per packet; the last may carry fewer.
    gso_size: usize,
    /// Bytes of the whole frame (without the virtio-net header).
    frame_len: usize,
}

impl SegmentPlan {
    /// The plan for `frame`, read behind `hdr`, which must ask for
    /// segmentation (TCPv4, TCPv6 or UDP). The headers are taken from the
    /// packet itself; the virtio-net header only has to agree with them.
    pub fn new(hdr: &VnetHdr, frame: &[u8]) -> Result<Self, SegmentError> {
        let (transport, want_v6) = match hdr.gso_type {
            GSO_TCPV4 => (Transport::Tcp, Some(false)),
            GSO_TCPV6 => (Transport::Tcp, Some(true)),
            GSO_UDP_L4 => (Transport::Udp, None),
            other => return Err(SegmentError::UnknownGso(other)),
        };
        let (v6, ip_len, protocol) = ip_header(frame).ok_or(SegmentError::Malformed)?;
        let want_protocol = match transport {
            Transport::Tcp => IPPROTO_TCP,
            Transport::Udp => IPPROTO_UDP,
        };
        if want_v6.is_some_and(|want| want != v6) || protocol != want_protocol {
            return Err(SegmentError::Malformed);
        }
        let l4_len = match transport {
            Transport::Tcp => {
                usize::from(frame.get(ip_len + 12).ok_or(SegmentError::Malformed)? >> 4) * 4
            }
            Transport::Udp => 8,
        };
        let hdr_len = ip_len + l4_len;
        let gso_size = usize::from(hdr.gso_size);
        if l4_len < 8 || frame.len() <= hdr_len || gso_size == 0 {
            return Err(SegmentError::Malformed);
        }
        Ok(Self {
            transport,
            v6,
            ip_len,
            hdr_len,
            gso_size,
            frame_len: frame.len(),
        })
    }

    /// Packets the frame is cut into.
    pub fn count(&self) -> usize {
        (self.frame_len - self.hdr_len).div_ceil(self.gso_size)
    }

    /// Write packet `index` of `frame` (the frame the plan was made for)
    /// into `out`; its length, or `None` past the last packet or when
    /// `out` is too small.
    pub fn write(&self, frame: &[u8], index: usize, out: &mut [u8]) -> Option<usize> {
        let frame = frame.get(..self.frame_len)?;
        let start = self.hdr_len + index.checked_mul(self.gso_size)?;
        if start >= frame.len() {
            return None;
        }
        let end = (start + self.gso_size).min(frame.len());
        let last = end == frame.len();
        let len = self.hdr_len + end - start;
        let out = out.get_mut(..len)?;
        out[..self.hdr_len].copy_from_slice(&frame[..self.hdr_len]);
        out[self.hdr_len..].copy_from_slice(&frame[start..end]);

        let l4_total = len - self.ip_len;
        if self.v6 {
            out[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
        } else {
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            let id = u16::from_be_bytes([frame[4], frame[5]]).wrapping_add(index as u16);
            out[4..6].copy_from_slice(&id.to_be_bytes());
            out[10..12].fill(0);
            let sum = !fold(sum_words(&out[..self.ip_len], 0));
            out[10..12].copy_from_slice(&sum.to_be_bytes());
        }

        let check = match self.transport {
            Transport::Tcp => {
                let seq_at = self.ip_len + 4;
                let first_seq = u32::from_be_bytes([
                    frame[seq_at],
                    frame[seq_at + 1],
                    frame[seq_at + 2],
                    frame[seq_at + 3],
                ]);
                let seq = first_seq.wrapping_add((index * self.gso_size) as u32);
                out[seq_at..seq_at + 4].copy_from_slice(&seq.to_be_bytes());
                let flags = &mut out[self.ip_len + 13];
                if !last {
                    *flags &= !(TCP_FIN | TCP_PSH);
                }
                if index > 0 {
                    *flags &= !TCP_CWR;
                }
                self.ip_len + 16
            }
            Transport::Udp => {
                out[self.ip_len + 4..self.ip_len + 6]
                    .copy_from_slice(&(l4_total as u16).to_be_bytes());
                self.ip_len + 6
            }
        };
        out[check..check + 2].fill(0);
        let protocol = match self.transport {
            Transport::Tcp => IPPROTO_TCP,
            Transport::Udp => IPPROTO_UDP,
        };
        let pseudo = pseudo_header_sum(out, self.v6, protocol, l4_total);
        let mut sum = !fold(sum_words(&out[self.ip_len..], pseudo));
        if self.transport == Transport::Udp && sum == 0 {
            // Zero means "no checksum" in UDP; its one's complement twin.
            sum = 0xffff;
        }
        out[check..check + 2].copy_from_slice(&sum.to_be_bytes());
        Some(len)
    }
}

/// Finish a single packet the device read with `NEEDS_CSUM` and no
/// segmentation: the field at `csum_start + csum_offset` holds the
/// pseudo-header sum, and the sum from `csum_start` on completes it. A
/// packet that needs nothing is left as it is.
pub fn complete_checksum(hdr: &VnetHdr, packet: &mut [u8]) -> Result<(), SegmentError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > packet.len() {
        return Err(SegmentError::ChecksumOutOfBounds);
    }
    let sum = !fold(sum_words(&packet[start..], 0));
    packet[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Version, header length and transport protocol: IPv4 with or without
/// options, or IPv6 without extension headers (the transport header must
/// follow directly for the checksum's pseudo-header to hold).
fn ip_header(frame: &[u8]) -> Option<(bool, usize, u8)> {
    match frame.first()? >> 4 {
        4 => {
            let ihl = usize::from(frame[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([*frame.get(6)?, *frame.get(7)?]);
            // A fragment has no transport header to repeat.
            if ihl < 20 || frame.len() < ihl || frag & 0x3fff != 0 {
                return None;
            }
            Some((false, ihl, frame[9]))
        }
        6 if frame.len() >= 40 => Some((true, 40, frame[6])),
        _ => None,
    }
}

/// The pseudo-header sum (addresses, protocol, transport length).
fn pseudo_header_sum(packet: &[u8], v6: bool, protocol: u8, l4_len: usize) -> u64 {
    let addrs = if v6 { &packet[8..40] } else { &packet[12..20] };
    sum_words(addrs, u64::from(protocol) + l4_len as u64)
}

/// A frame read from the device and the packets still to hand out of it.
/// The buffer is lent to the read (see [`Self::read_room`]) so a large
/// frame lands in place; it is freed with [`Self::release`].
#[derive(Default)]
pub struct Splitter {
    frame: Vec<u8>,
    plan: Option<SegmentPlan>,
    next: usize,
    /// Frames loaded so far.
    frames_cut: u64,
}

impl Splitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether packets of a frame are still to be handed out.
    pub fn has_pending(&self) -> bool {
        self.plan.is_some()
    }

    /// The buffer a read fills after the first `head` bytes, which go to
    /// the caller's own buffer: a frame too big for that one continues
    /// here, at the same offset as in the frame.
    pub fn read_room(&mut self, head: usize) -> &mut [u8] {
        let size = MAX_FRAME_LEN.max(head);
        if self.frame.len() < size {
            self.frame.resize(size, 0);
        }
        &mut self.frame[head..]
    }

    /// Take the frame a read left in `head` (the caller's buffer, full)
    /// and in [`Self::read_room`] after it, `len` bytes in all, to be cut
    /// as `hdr` says. Nothing is pending when it fails.
    pub fn load(&mut self, hdr: &VnetHdr, head: &[u8], len: usize) -> Result<(), SegmentError> {
        self.plan = None;
        let head_len = head.len().min(len);
        if len > self.frame.len() {
            return Err(SegmentError::Malformed);
        }
        self.frame[..head_len].copy_from_slice(&head[..head_len]);
        let plan = SegmentPlan::new(hdr, &self.frame[..len])?;
        self.plan = Some(plan);
        self.next = 0;
        self.frames_cut += 1;
        Ok(())
    }

    /// Frames loaded (and cut) so far.
    pub fn frames_cut(&self) -> u64 {
        self.frames_cut
    }

    /// Write the next packet into `out`; `None` when none is pending. A
    /// packet `out` cannot hold ends the frame (its packets are dropped).
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let plan = self.plan?;
        let written = plan.write(&self.frame, self.next, out);
        self.next += 1;
        if written.is_none() || self.next >= plan.count() {
            self.plan = None;
        }
        written
    }

    /// Drop what is pending and free the buffer (a quiet device holds
    /// none).
    pub fn release(&mut self) {
        self.plan = None;
        self.frame = Vec::new();
    }
}

#[cfg(test)]
#[path = "segment_tests.rs"]
pub(crate) mod tests;
