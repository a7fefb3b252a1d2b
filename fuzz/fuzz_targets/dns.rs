//! DNS queries as the pod's MagicDNS resolver receives them: any bytes,
//! malformed and oversized included, through the query parser, the answer
//! builders, the fitting of forwarded responses and the IP/UDP wrapping.
//!
//! Asserts: no panic; a parsed query's answers parse back as responses to
//! that question, with its id, never larger than the limit asked for
//! (unless even header and question exceed it), truncated exactly when
//! records had to go; forwarded responses are cut to the limit the same
//! way; an answer wrapped in IP/UDP parses back to the same payload.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use tailnet_cni_fuzz::Reader;
use tailnet_wire::dns::{
    answers_question, fit_response, udp_packet, Query, Rcode, Response, UdpDatagram, HEADER_LEN,
};
use tailnet_wire::packet::Packet;

/// Input layout: a limit, an address count and one address seed, then the
/// message.
struct Input<'a> {
    limit: u16,
    count: u8,
    seed: [u8; 16],
    message: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Self {
        let mut r = Reader::new(data);
        Input {
            limit: r.u16(),
            count: r.u8(),
            seed: r.array(),
            message: r.rest(),
        }
    }
}

fn addrs(count: u8, seed: [u8; 16]) -> Vec<IpAddr> {
    (0..count % 64)
        .map(|i| {
            let mut octets = seed;
            octets[15] = i;
            if i % 2 == 0 {
                IpAddr::from([octets[0], octets[1], octets[2], i])
            } else {
                IpAddr::from(octets)
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let input = Input::read(data);
    let limit = usize::from(input.limit);
    if let Ok(query) = Query::parse(input.message) {
        let floor = HEADER_LEN + query.question().len() + if query.edns { 11 } else { 0 };
        let addrs = addrs(input.count, input.seed);
        let answer = query.answer(&addrs, 60, limit);
        let parsed = Response::parse(&answer).expect("an answer parses");
        assert_eq!(parsed.id, query.id);
        assert!(answers_question(&answer, query.question()));
        assert!(answer.len() <= limit.min(query.udp_payload).max(floor));
        if !parsed.truncated {
            let matching = addrs
                .iter()
                .filter(|ip| match ip {
                    IpAddr::V4(_) => query.qtype == 1,
                    IpAddr::V6(_) => query.qtype == 28,
                })
                .filter(|_| query.qclass == 1)
                .count();
            assert_eq!(parsed.addrs.len(), matching);
        } else {
            assert!(parsed.addrs.is_empty());
        }
        for rcode in [Rcode::NxDomain, Rcode::ServFail] {
            let out = query.error(rcode);
            let parsed = Response::parse(&out).expect("an error answer parses");
            assert_eq!(parsed.rcode, rcode as u8);
            assert!(answers_question(&out, query.question()));
        }

        let server: SocketAddr = "100.100.100.100:53".parse().expect("address");
        let client: SocketAddr = "100.64.0.1:40000".parse().expect("address");
        if let Some(packet) = udp_packet(server, client, &answer) {
            let parsed = Packet::parse(&packet).expect("a built packet parses");
            let datagram = UdpDatagram::from_packet(&parsed).expect("a built datagram");
            assert_eq!(datagram.payload, &answer[..]);
            assert_eq!((datagram.client, datagram.server), (server, client));
        }
    }
    if let Some(fitted) = fit_response(input.message, limit) {
        if input.message.len() <= limit {
            assert_eq!(fitted, input.message);
        } else {
            let parsed = Response::parse(&fitted).expect("a fitted response parses");
            assert!(parsed.truncated && parsed.addrs.is_empty());
            assert_eq!(&fitted[..2], &input.message[..2]);
        }
    }
    if let Ok(packet) = Packet::parse(input.message) {
        if let Some(datagram) = UdpDatagram::from_packet(&packet) {
            assert!(datagram.payload.len() <= input.message.len());
        }
    }
});
