use super::*;

pub(crate) const SRC4: [u8; 4] = [100, 64, 0, 1];
pub(crate) const DST4: [u8; 4] = [100, 64, 0, 2];

/// A TCP segment with correct checksums, as a peer's stack sends it.
pub(crate) fn tcp4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 32 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes()); // varying IP ID
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&SRC4);
    p[16..20].copy_from_slice(&DST4);
    let ip_sum = !fold(sum_words(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    fill_tcp(&mut p[20..], seq, flags, payload);
    let sum = !fold(sum_words(
        &p[20..],
        pseudo_header_sum(&p, false, total - 20),
    ));
    p[36..38].copy_from_slice(&sum.to_be_bytes());
    p
}

pub(crate) fn tcp6(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let tcp_total = 32 + payload.len();
    let mut p = vec![0u8; 40 + tcp_total];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(tcp_total as u16).to_be_bytes());
    p[6] = 6;
    p[7] = 64;
    p[8..24].copy_from_slice(&[
        0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ]);
    p[24..40].copy_from_slice(&[
        0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    ]);
    fill_tcp(&mut p[40..], seq, flags, payload);
    let sum = !fold(sum_words(&p[40..], pseudo_header_sum(&p, true, tcp_total)));
    p[56..58].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Ports 5201 -> 40000, a timestamp option, a fixed ack and window.
fn fill_tcp(tcp: &mut [u8], seq: u32, flags: u8, payload: &[u8]) {
    tcp[0..2].copy_from_slice(&5201u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&7777u32.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    tcp[32..].copy_from_slice(payload);
}

pub(crate) fn payload(n: usize, tag: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

fn ne16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

/// What the kernel does with a NEEDS_CSUM packet: sum from csum_start on
/// (the field holds the pseudo-header sum) and store the complement.
fn complete_checksum(frame: &[u8]) -> Vec<u8> {
    let start = usize::from(ne16(&frame[6..8]));
    let offset = usize::from(ne16(&frame[8..10]));
    let mut packet = frame[VNET_HDR_LEN..].to_vec();
    let sum = !fold(sum_words(&packet[start..], 0));
    packet[start + offset..start + offset + 2].copy_from_slice(&sum.to_be_bytes());
    packet
}

#[test]
fn consecutive_segments_join_into_one_gso_frame() {
    let parts = [
        payload(1000, 1),
        payload(1000, 2),
        payload(1000, 3),
        payload(400, 4),
    ];
    let mut coalescer = TcpCoalescer::new();
    let mut seq = 1_000_000;
    for part in &parts {
        assert!(coalescer.push(&tcp4(seq, TCP_ACK, part)));
        seq += part.len() as u32;
    }
    let frame = coalescer.frame().unwrap().to_vec();
    let hdr = VnetHdr::parse(&frame).unwrap();
    assert_eq!(hdr.gso_type, GSO_TCPV4);
    assert_eq!(hdr.flags, F_NEEDS_CSUM);
    assert_eq!(ne16(&frame[2..4]), 52, "hdr_len: IP and TCP headers");
    assert_eq!(ne16(&frame[4..6]), 1000, "gso_size: the first payload");
    assert_eq!(ne16(&frame[6..8]), 20, "csum_start: the TCP header");
    assert_eq!(ne16(&frame[8..10]), 16, "csum_offset: TCP's checksum field");
    let joined: Vec<u8> = parts.concat();
    // The same segment as the peer's stack would have built it at once.
    let expected = tcp4(1_000_000, TCP_ACK, &joined);
    let mut got = complete_checksum(&frame);
    // The IP ID stays the first segment's.
    assert_eq!(got[4..6], expected[4..6]);
    assert_eq!(sum_words(&got[..20], 0) % 0xffff, 0, "IP checksum verifies");
    got[10..12].copy_from_slice(&expected[10..12]);
    assert_eq!(got, expected);
}

#[test]
fn ipv6_segments_join_too() {
    let parts = [payload(1200, 1), payload(1200, 2)];
    let mut coalescer = TcpCoalescer::new();
    assert!(coalescer.push(&tcp6(5, TCP_ACK, &parts[0])));
    assert!(coalescer.push(&tcp6(1205, TCP_ACK | TCP_PSH, &parts[1])));
    let frame = coalescer.frame().unwrap().to_vec();
    assert_eq!(VnetHdr::parse(&frame).unwrap().gso_type, GSO_TCPV6);
    assert_eq!(ne16(&frame[6..8]), 40);
    let expected = tcp6(5, TCP_ACK | TCP_PSH, &parts.concat());
    assert_eq!(complete_checksum(&frame), expected);
}

#[test]
fn a_single_segment_is_written_as_it_came() {
    let packet = tcp4(9, TCP_ACK | TCP_PSH, &payload(10, 0));
    let mut coalescer = TcpCoalescer::new();
    assert!(coalescer.push(&packet));
    let frame = coalescer.frame().unwrap();
    assert_eq!(frame[..VNET_HDR_LEN], PLAIN_VNET_HDR);
    assert_eq!(frame[VNET_HDR_LEN..], packet[..]);
    assert!(VnetHdr::parse(frame).unwrap().is_plain());
    coalescer.clear();
    assert!(coalescer.is_empty());
    assert!(coalescer.frame().is_none());
}

#[test]
fn only_the_next_segment_of_the_same_flow_joins() {
    let body = payload(100, 0);
    let mut coalescer = TcpCoalescer::new();
    assert!(coalescer.push(&tcp4(0, TCP_ACK, &body)));
    assert!(!coalescer.push(&tcp4(200, TCP_ACK, &body)), "a gap");
    assert!(
        !coalescer.push(&tcp4(0, TCP_ACK, &body)),
        "a retransmission"
    );
    let mut other_port = tcp4(100, TCP_ACK, &body);
    other_port[21] ^= 1;
    assert!(!coalescer.push(&other_port), "another flow");
    let mut other_ack = tcp4(100, TCP_ACK, &body);
    other_ack[30] ^= 1;
    assert!(!coalescer.push(&other_ack), "another ack number");
    let mut other_option = tcp4(100, TCP_ACK, &body);
    other_option[51] ^= 1;
    assert!(!coalescer.push(&other_option), "another timestamp");
    let mut other_ttl = tcp4(100, TCP_ACK, &body);
    other_ttl[8] = 63;
    assert!(!coalescer.push(&other_ttl), "another TTL");
    assert!(
        !coalescer.push(&tcp6(100, TCP_ACK, &body)),
        "another family"
    );
    assert!(
        !coalescer.push(&tcp4(100, TCP_ACK, &payload(101, 0))),
        "a longer segment"
    );
    assert!(coalescer.push(&tcp4(100, TCP_ACK, &body)));
}

#[test]
fn a_short_segment_or_psh_ends_the_run() {
    let mut coalescer = TcpCoalescer::new();
    assert!(coalescer.push(&tcp4(0, TCP_ACK, &payload(100, 0))));
    assert!(coalescer.push(&tcp4(100, TCP_ACK, &payload(50, 0))));
    assert!(!coalescer.push(&tcp4(150, TCP_ACK, &payload(50, 0))));

    coalescer.clear();
    assert!(coalescer.push(&tcp4(0, TCP_ACK, &payload(100, 0))));
    assert!(coalescer.push(&tcp4(100, TCP_ACK | TCP_PSH, &payload(100, 0))));
    assert!(!coalescer.push(&tcp4(200, TCP_ACK, &payload(100, 0))));
    let frame = coalescer.frame().unwrap();
    assert_ne!(frame[VNET_HDR_LEN + 33] & TCP_PSH, 0, "the PSH is kept");
}

#[test]
fn control_segments_and_other_protocols_are_never_held() {
    let mut coalescer = TcpCoalescer::new();
    for flags in [
        TCP_SYN | TCP_ACK,
        TCP_FIN | TCP_ACK,
        TCP_RST | TCP_ACK,
        TCP_ACK | TCP_URG,
        0,
        TCP_ACK | 0x40,
    ] {
        assert!(
            !coalescer.push(&tcp4(0, flags, &payload(10, 0))),
            "flags {flags:#x}"
        );
    }
    assert!(!coalescer.push(&tcp4(0, TCP_ACK, &[])), "a bare ACK");
    let mut udp = tcp4(0, TCP_ACK, &payload(10, 0));
    udp[9] = 17;
    assert!(!coalescer.push(&udp));
    let mut fragment = tcp4(0, TCP_ACK, &payload(10, 0));
    fragment[6] = 0x20;
    assert!(!coalescer.push(&fragment));
    let mut padded = tcp4(0, TCP_ACK, &payload(10, 0));
    padded.push(0);
    assert!(!coalescer.push(&padded), "length disagrees with the header");
    assert!(coalescer.is_empty());
}

#[test]
fn a_joined_segment_stays_one_ip_packet() {
    let body = payload(1400, 0);
    let mut coalescer = TcpCoalescer::new();
    let mut seq = 0;
    let mut joined = 0;
    while coalescer.push(&tcp4(seq, TCP_ACK, &body)) {
        seq += 1400;
        joined += 1;
    }
    assert_eq!(joined, (MAX_JOINED_LEN - 52) / 1400);
    let frame = coalescer.frame().unwrap();
    assert!(frame.len() - VNET_HDR_LEN <= MAX_JOINED_LEN);

    let mut small = TcpCoalescer::new();
    let mut seq = 0;
    while small.push(&tcp4(seq, TCP_ACK, &[1])) {
        seq += 1;
    }
    assert_eq!(seq as usize, MAX_SEGMENTS);
}

/// Arbitrary bytes never panic and never get held unless they parse.
#[test]
fn garbage_is_refused_without_panicking() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut coalescer = TcpCoalescer::new();
    let template = tcp4(0, TCP_ACK, &payload(40, 0));
    for round in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut packet = template.clone();
        let len = (state as usize) % (template.len() + 1);
        packet.truncate(len);
        if let Some(byte) = packet.get_mut((state >> 20) as usize % template.len()) {
            *byte = (state >> 40) as u8;
        }
        if !coalescer.push(&packet) {
            coalescer.clear();
        }
        if round % 7 == 0 {
            if let Some(frame) = coalescer.frame() {
                assert!(frame.len() > VNET_HDR_LEN);
            }
            coalescer.clear();
        }
    }
}
