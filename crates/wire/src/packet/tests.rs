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
