use super::*;
use crate::wg::offload::tests::{payload, tcp4, tcp6, DST4, SRC4};
use crate::wg::offload::{TcpCoalescer, TCP_ACK, VNET_HDR_LEN};

/// The one's complement sum the slow way: 16-bit words, folded as they go.
fn reference_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u32::from(pair[0]) << 8 | u32::from(pair.get(1).copied().unwrap_or(0));
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether the IPv4 header checksum and the transport checksum verify.
pub(crate) fn checksums_verify(packet: &[u8]) -> bool {
    let (v6, ip_len, protocol) = ip_header(packet).unwrap();
    let ip_ok = v6 || reference_sum(&packet[..ip_len]) == 0xffff;
    let l4 = &packet[ip_len..];
    let addrs = if v6 { &packet[8..40] } else { &packet[12..20] };
    let mut pseudo = addrs.to_vec();
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes()[2..]);
    pseudo.extend_from_slice(l4);
    ip_ok && reference_sum(&pseudo) == 0xffff
}

/// `packet` with another IPv4 identification (and header checksum).
fn with_ip_id(mut packet: Vec<u8>, id: u16) -> Vec<u8> {
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[10..12].fill(0);
    let sum = !reference_sum(&packet[..20]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// A UDP datagram 4000 -> 53 with a correct checksum.
fn udp4(payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&77u16.to_be_bytes());
    p[8] = 64;
    p[9] = IPPROTO_UDP;
    p[12..16].copy_from_slice(&SRC4);
    p[16..20].copy_from_slice(&DST4);
    let ip_sum = !reference_sum(&p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&53u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let mut pseudo = p[12..20].to_vec();
    pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
    pseudo.extend_from_slice(&p[24..26]);
    pseudo.extend_from_slice(&p[20..]);
    let sum = !reference_sum(&pseudo);
    p[26..28].copy_from_slice(&sum.to_be_bytes());
    p
}

/// What the device reads for a large segment: NEEDS_CSUM with the
/// transport checksum field left to the device (here: garbage).
fn gso_hdr(gso_type: u8, ip_len: u16, l4_len: u16, gso_size: u16, csum_offset: u16) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: ip_len + l4_len,
        gso_size,
        csum_start: ip_len,
        csum_offset,
    }
}

fn split(hdr: &VnetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
    let plan = SegmentPlan::new(hdr, frame).unwrap();
    let mut out = vec![0u8; 2048];
    let packets: Vec<Vec<u8>> = (0..plan.count())
        .map(|i| {
            let n = plan.write(frame, i, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect();
    assert_eq!(plan.write(frame, plan.count(), &mut out), None);
    packets
}

#[test]
fn wide_word_sum_equals_the_16_bit_sum() {
    // RFC 1071's example, then odd lengths and carries.
    let rfc = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(fold(sum_words(&rfc, 0)), 0xddf2);
    for len in 0..40 {
        let bytes: Vec<u8> = (0..len).map(|i| 0xff - (i as u8).wrapping_mul(7)).collect();
        assert_eq!(
            fold(sum_words(&bytes, 0)),
            reference_sum(&bytes),
            "{len} bytes"
        );
    }
}

#[test]
fn tcp4_segment_is_cut_as_the_kernel_would_send_it() {
    let data = payload(2500, 9);
    let flags = TCP_ACK | TCP_PSH | TCP_FIN;
    let mut frame = tcp4(70_000, flags, &data);
    frame[36..38].copy_from_slice(&[0xde, 0xad]);
    let packets = split(&gso_hdr(GSO_TCPV4, 20, 32, 1000, 16), &frame);
    let first_id = u16::from_be_bytes([frame[4], frame[5]]);
    let expected = [
        tcp4(70_000, TCP_ACK, &data[..1000]),
        tcp4(71_000, TCP_ACK, &data[1000..2000]),
        tcp4(72_000, flags, &data[2000..]),
    ];
    assert_eq!(packets.len(), expected.len());
    for (i, (got, want)) in packets.iter().zip(expected).enumerate() {
        assert_eq!(*got, with_ip_id(want, first_id + i as u16), "packet {i}");
        assert!(checksums_verify(got), "packet {i}");
    }
}

#[test]
fn a_coalesced_run_splits_back_into_its_packets() {
    let parts = [payload(1200, 1), payload(1200, 2), payload(700, 3)];
    let mut coalescer = TcpCoalescer::new();
    let mut originals = Vec::new();
    let mut seq = 9;
    for (i, part) in parts.iter().enumerate() {
        let flags = if i == 2 { TCP_ACK | TCP_PSH } else { TCP_ACK };
        originals.push(tcp6(seq, flags, part));
        assert!(coalescer.push(originals.last().unwrap()));
        seq += part.len() as u32;
    }
    let frame = coalescer.frame().unwrap().to_vec();
    let hdr = VnetHdr::parse(&frame).unwrap();
    assert_eq!(split(&hdr, &frame[VNET_HDR_LEN..]), originals);
}

#[test]
fn cwr_stays_on_the_first_packet_only() {
    let frame = tcp4(1, TCP_ACK | TCP_CWR, &payload(300, 0));
    let packets = split(&gso_hdr(GSO_TCPV4, 20, 32, 100, 16), &frame);
    let flags: Vec<u8> = packets.iter().map(|p| p[33]).collect();
    assert_eq!(flags, [TCP_ACK | TCP_CWR, TCP_ACK, TCP_ACK]);
    assert!(packets.iter().all(|p| checksums_verify(p)));
}

#[test]
fn udp_segment_is_cut_into_datagrams() {
    let data = payload(3000, 4);
    let mut frame = udp4(&data);
    frame[26..28].fill(0);
    let packets = split(&gso_hdr(GSO_UDP_L4, 20, 8, 1200, 6), &frame);
    let sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1228, 1228, 628]);
    for (i, got) in packets.iter().enumerate() {
        let chunk = &data[i * 1200..((i + 1) * 1200).min(3000)];
        assert_eq!(*got, with_ip_id(udp4(chunk), 77 + i as u16), "datagram {i}");
        assert!(checksums_verify(got), "datagram {i}");
    }
}

#[test]
fn a_partial_checksum_is_completed() {
    let want = tcp4(5, TCP_ACK, &payload(333, 1));
    let mut packet = want.clone();
    // The device leaves the pseudo-header sum in the field.
    let mut pseudo = packet[12..20].to_vec();
    pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&((packet.len() - 20) as u16).to_be_bytes());
    packet[36..38].copy_from_slice(&reference_sum(&pseudo).to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    complete_checksum(&hdr, &mut packet).unwrap();
    assert_eq!(packet, want);

    let out_of_bounds = VnetHdr {
        csum_offset: 400,
        ..hdr
    };
    assert_eq!(
        complete_checksum(&out_of_bounds, &mut packet),
        Err(SegmentError::ChecksumOutOfBounds)
    );
    let plain = VnetHdr::default();
    complete_checksum(&plain, &mut packet).unwrap();
    assert_eq!(packet, want, "a plain packet is left alone");
}

#[test]
fn frames_that_disagree_with_their_header_are_refused() {
    let tcp = tcp4(1, TCP_ACK, &payload(3000, 0));
    let udp = udp4(&payload(3000, 0));
    let cases = [
        (
            gso_hdr(GSO_TCPV6, 20, 32, 1000, 16),
            &tcp[..],
            SegmentError::Malformed,
        ),
        (
            gso_hdr(GSO_TCPV4, 20, 8, 1000, 6),
            &udp[..],
            SegmentError::Malformed,
        ),
        (
            gso_hdr(GSO_TCPV4, 20, 32, 0, 16),
            &tcp[..],
            SegmentError::Malformed,
        ),
        (
            gso_hdr(GSO_TCPV4, 20, 32, 1000, 16),
            &tcp[..52],
            SegmentError::Malformed,
        ),
        (
            gso_hdr(GSO_TCPV4, 20, 32, 1000, 16),
            &tcp[..30],
            SegmentError::Malformed,
        ),
        (
            gso_hdr(3, 20, 8, 1000, 6),
            &udp[..],
            SegmentError::UnknownGso(3),
        ),
    ];
    for (hdr, frame, err) in cases {
        assert_eq!(SegmentPlan::new(&hdr, frame), Err(err), "{hdr:?}");
    }
}

#[test]
fn garbage_is_refused_or_cut_without_panicking() {
    let mut out = [0u8; 1500];
    let mut state = 0x1234_5678u32;
    for round in 0..2000 {
        let len = round % 200;
        let frame: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        for gso_type in [GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4] {
            let hdr = gso_hdr(gso_type, 20, 20, (state % 64) as u16, 16);
            if let Ok(plan) = SegmentPlan::new(&hdr, &frame) {
                for i in 0..plan.count() {
                    assert!(plan.write(&frame, i, &mut out).is_some());
                }
            }
        }
    }
}

#[test]
fn the_splitter_hands_out_a_frame_read_across_two_buffers() {
    let data = payload(4000, 7);
    let frame = tcp4(1, TCP_ACK, &data);
    let hdr = gso_hdr(GSO_TCPV4, 20, 32, 1000, 16);
    let mut splitter = Splitter::new();
    assert!(!splitter.has_pending());
    // As a read would: the caller's buffer first, the splitter's room after.
    let mut head = vec![0u8; 1500];
    head.copy_from_slice(&frame[..1500]);
    let room = splitter.read_room(head.len());
    room[..frame.len() - 1500].copy_from_slice(&frame[1500..]);
    splitter.load(&hdr, &head, frame.len()).unwrap();
    let mut got = Vec::new();
    while let Some(n) = splitter.next_into(&mut head) {
        got.push(head[..n].to_vec());
    }
    assert_eq!(got, split(&hdr, &frame));
    assert!(!splitter.has_pending());

    // A buffer too small for a packet drops the rest of the frame.
    splitter.read_room(0)[..frame.len()].copy_from_slice(&frame);
    splitter.load(&hdr, &[], frame.len()).unwrap();
    assert_eq!(splitter.next_into(&mut [0u8; 100]), None);
    assert!(!splitter.has_pending());

    // A length beyond the buffer was cut short by the kernel.
    assert_eq!(
        splitter.load(&hdr, &[], MAX_FRAME_LEN + 1),
        Err(SegmentError::Malformed)
    );
    splitter.release();
    assert!(!splitter.has_pending());
}
