use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::packet::Packet;

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    encode_query(0x1234, name, qtype, None).unwrap()
}

#[test]
fn parses_a_query_and_lowercases_its_name() {
    let msg = query("Peer.Tailnet.Test.", TYPE_AAAA);
    let q = Query::parse(&msg).unwrap();
    assert_eq!(q.id, 0x1234);
    assert_eq!(q.name, "peer.tailnet.test");
    assert_eq!(q.qtype, TYPE_AAAA);
    assert_eq!(q.qclass, CLASS_IN);
    assert!(q.recursion_desired);
    assert!(!q.edns);
    assert_eq!(q.udp_payload, MIN_UDP_PAYLOAD);
    assert_eq!(q.question(), &msg[HEADER_LEN..]);
}

#[test]
fn names_keep_unusual_bytes_distinct() {
    let mut msg = query("a.b", TYPE_A);
    // "a" -> "." inside a label: must not read as two labels.
    msg[HEADER_LEN + 1] = b'.';
    assert_eq!(Query::parse(&msg).unwrap().name, "\\046.b");
    assert_eq!(Query::parse(&query(".", TYPE_A)).unwrap().name, "");
}

#[test]
fn edns_payload_is_read_and_floored() {
    let msg = encode_query(1, "x.test", TYPE_A, Some(4096)).unwrap();
    let q = Query::parse(&msg).unwrap();
    assert!(q.edns);
    assert_eq!(q.udp_payload, 4096);
    let small = encode_query(1, "x.test", TYPE_A, Some(100)).unwrap();
    assert_eq!(Query::parse(&small).unwrap().udp_payload, MIN_UDP_PAYLOAD);
}

#[test]
fn refuses_what_is_not_one_plain_query() {
    assert_eq!(Query::parse(&[0; 11]), Err(DnsError::Truncated));
    let mut response = query("x", TYPE_A);
    response[2] |= 0x80;
    assert_eq!(Query::parse(&response), Err(DnsError::NotAQuery));
    let mut notify = query("x", TYPE_A);
    notify[2] = 4 << 3;
    assert_eq!(Query::parse(&notify), Err(DnsError::Opcode(4)));
    let mut two = query("x", TYPE_A);
    two[5] = 2;
    assert_eq!(Query::parse(&two), Err(DnsError::QuestionCount(2)));
    let mut compressed = query("x", TYPE_A);
    compressed[HEADER_LEN] = 0xc0;
    assert_eq!(Query::parse(&compressed), Err(DnsError::LabelType));
    let cut = query("peer.tailnet.test", TYPE_A);
    for len in HEADER_LEN..cut.len() {
        assert_eq!(Query::parse(&cut[..len]), Err(DnsError::Truncated), "{len}");
    }
    // An OPT record announced but missing.
    let mut no_opt = query("x", TYPE_A);
    no_opt[11] = 1;
    assert_eq!(Query::parse(&no_opt), Err(DnsError::Truncated));
}

#[test]
fn refuses_names_over_255_bytes() {
    let label = "a".repeat(63);
    let long = [label.as_str(); 4].join(".");
    assert_eq!(
        encode_query(1, &long, TYPE_A, None),
        Err(DnsError::NameTooLong)
    );
    let mut msg = query(&[label.as_str(); 3].join("."), TYPE_A);
    // Graft a fourth 63-byte label in: 4 * 64 + 1 = 257 bytes.
    let at = msg.len() - 5;
    let mut grafted = vec![63u8];
    grafted.extend_from_slice(label.as_bytes());
    msg.splice(at..at, grafted);
    assert_eq!(Query::parse(&msg), Err(DnsError::NameTooLong));
}

#[test]
fn answers_a_and_aaaa_with_matching_addresses_only() {
    let ips = addrs(&["100.64.0.7", "fd7a:115c:a1e0::7"]);
    for (qtype, expected) in [
        (TYPE_A, addrs(&["100.64.0.7"])),
        (TYPE_AAAA, addrs(&["fd7a:115c:a1e0::7"])),
    ] {
        let msg = query("peer.tailnet.test", qtype);
        let answer = Query::parse(&msg).unwrap().answer(&ips, 600, 512);
        let r = Response::parse(&answer).unwrap();
        assert_eq!(r.id, 0x1234);
        assert_eq!(r.rcode, Rcode::NoError as u8);
        assert!(r.authoritative && !r.truncated);
        assert_eq!(r.addrs, expected);
        assert!(answers_question(
            &answer,
            Query::parse(&msg).unwrap().question()
        ));
    }
    // A name with no address of the asked family: no data, not NXDOMAIN.
    let msg = query("peer.tailnet.test", 16);
    let answer = Query::parse(&msg).unwrap().answer(&ips, 600, 512);
    let r = Response::parse(&answer).unwrap();
    assert_eq!(r.rcode, Rcode::NoError as u8);
    assert!(r.addrs.is_empty());
}

#[test]
fn errors_carry_their_rcode_and_the_question() {
    let msg = encode_query(9, "gone.tailnet.test", TYPE_A, Some(1232)).unwrap();
    let q = Query::parse(&msg).unwrap();
    for rcode in [Rcode::NxDomain, Rcode::ServFail, Rcode::FormErr] {
        let out = q.error(rcode);
        let r = Response::parse(&out).unwrap();
        assert_eq!(r.rcode, rcode as u8);
        assert_eq!(r.authoritative, rcode == Rcode::NxDomain);
        assert!(answers_question(&out, q.question()));
        // The client sent EDNS: the answer carries an OPT record back.
        assert_eq!(u16::from_be_bytes([out[10], out[11]]), 1);
    }
}

#[test]
fn answers_too_large_for_the_client_are_truncated() {
    let many: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([100, 64, 0, i])).collect();
    let msg = query("many.tailnet.test", TYPE_A);
    let q = Query::parse(&msg).unwrap();
    // 40 records of 16 bytes do not fit 512.
    let out = q.answer(&many, 60, usize::MAX);
    assert!(out.len() <= MIN_UDP_PAYLOAD);
    let r = Response::parse(&out).unwrap();
    assert!(r.truncated && r.addrs.is_empty());
    // With EDNS and room for all of them, nothing is cut.
    let big = encode_query(1, "many.tailnet.test", TYPE_A, Some(4096)).unwrap();
    let out = Query::parse(&big).unwrap().answer(&many, 60, 1232);
    let r = Response::parse(&out).unwrap();
    assert!(!r.truncated);
    assert_eq!(r.addrs.len(), 40);
}

#[test]
fn forwarded_responses_are_fitted_to_the_limit() {
    let many: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    let big = encode_query(7, "svc.cluster.local", TYPE_A, Some(4096)).unwrap();
    let upstream = Query::parse(&big).unwrap().answer(&many, 5, usize::MAX);
    assert_eq!(fit_response(&upstream, 4096), Some(upstream.clone()));
    let cut = fit_response(&upstream, 512).unwrap();
    assert!(cut.len() <= 512);
    let r = Response::parse(&cut).unwrap();
    assert!(r.truncated && r.addrs.is_empty());
    assert_eq!(r.id, 7);
    assert!(answers_question(
        &cut,
        Query::parse(&big).unwrap().question()
    ));
    // Queries and garbage are not responses.
    assert_eq!(fit_response(&big, 4096), None);
    assert_eq!(fit_response(&[0xff; 5], 4096), None);
}

#[test]
fn ids_are_rewritten_and_questions_matched_ignoring_case() {
    let msg = query("Peer.Test", TYPE_A);
    let q = Query::parse(&msg).unwrap();
    let mut out = q.error(Rcode::ServFail);
    assert_eq!(response_id(&out), Some(0x1234));
    set_id(&mut out, 0xbeef);
    assert_eq!(response_id(&out), Some(0xbeef));
    let lower = query("peer.test", TYPE_A);
    assert!(answers_question(&out, &lower[HEADER_LEN..]));
    let other = query("peer.tesu", TYPE_A);
    assert!(!answers_question(&out, &other[HEADER_LEN..]));
    assert_eq!(response_id(&msg), None, "a query is not a response");
}

#[test]
fn udp_packets_round_trip_with_valid_checksums() {
    for (server, client) in [
        ("100.100.100.100:53", "100.64.0.9:40000"),
        ("[fd7a:115c:a1e0::53]:53", "[fd7a:115c:a1e0::9]:40000"),
    ] {
        let server: SocketAddr = server.parse().unwrap();
        let client: SocketAddr = client.parse().unwrap();
        let payload = b"odd-length payload";
        let packet = udp_packet(server, client, payload).unwrap();
        let parsed = Packet::parse(&packet).unwrap();
        let datagram = UdpDatagram::from_packet(&parsed).unwrap();
        assert_eq!(datagram.client, server);
        assert_eq!(datagram.server, client);
        assert_eq!(datagram.payload, payload);
        assert_eq!(checksum_of(&packet, server.ip(), client.ip()), 0);
        if server.is_ipv4() {
            assert_eq!(!folded_sum(&packet[..20]), 0, "IPv4 header checksum");
        }
    }
    let v4: SocketAddr = "100.64.0.1:1".parse().unwrap();
    let v6: SocketAddr = "[::1]:1".parse().unwrap();
    assert_eq!(udp_packet(v4, v6, b""), None);
}

/// The UDP checksum verified the way a receiver does: over the pseudo
/// header and the datagram, the result must fold to zero.
fn checksum_of(packet: &[u8], src: IpAddr, dst: IpAddr) -> u16 {
    let (udp, mut pseudo) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let udp = &packet[20..];
            let mut p = s.octets().to_vec();
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, 17]);
            p.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            (udp, p)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let udp = &packet[40..];
            let mut p = s.octets().to_vec();
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(udp.len() as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 17]);
            (udp, p)
        }
        _ => unreachable!(),
    };
    pseudo.extend_from_slice(udp);
    !folded_sum(&pseudo)
}

/// RFC 1071's one's-complement sum, written out independently of the code under test.
fn folded_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u32::from);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn datagrams_need_whole_consistent_udp() {
    let server: SocketAddr = "100.100.100.100:53".parse().unwrap();
    let client: SocketAddr = "100.64.0.9:40000".parse().unwrap();
    let mut packet = udp_packet(client, server, b"abc").unwrap();
    // UDP length larger than the packet.
    packet[24..26].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(
        UdpDatagram::from_packet(&Packet::parse(&packet).unwrap()),
        None
    );
    // UDP length below its header.
    packet[24..26].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(
        UdpDatagram::from_packet(&Packet::parse(&packet).unwrap()),
        None
    );
}
