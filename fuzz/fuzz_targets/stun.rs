//! STUN datagrams on the shared UDP socket: responses a client reads,
//! requests a server answers, and the socket's demultiplexer.
//!
//! Asserts: no panic; a request or response built by the module parses
//! back to its transaction ID and address; any one-byte change to a built
//! request is refused; parsing accepts only datagrams the demultiplexer
//! sorts as STUN.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use tailnet_cni_fuzz::Reader;
use tailnet_wire::demux::{classify, PacketKind};
use tailnet_wire::stun::{
    binding_request_with_tx_id, binding_response, is_stun, parse_binding_request, parse_response,
};

/// Input layout: transaction ID, address (16 bytes, v4 as v4-mapped),
/// port, byte to change in a built request and its mask, then the datagram.
struct Input<'a> {
    tx_id: [u8; 12],
    ip: [u8; 16],
    port: u16,
    flip: (u8, u8),
    datagram: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Self {
        let mut r = Reader::new(data);
        Input {
            tx_id: r.array(),
            ip: r.array(),
            port: r.u16(),
            flip: (r.u8(), r.u8()),
            datagram: r.rest(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::read(data);
    let datagram = input.datagram;
    let kind = classify(datagram);
    if let Ok((tx_id, _)) = parse_response(datagram) {
        assert!(is_stun(datagram));
        assert_eq!(kind, PacketKind::Stun);
        assert_eq!(&datagram[8..20], &tx_id);
    }
    if let Ok(tx_id) = parse_binding_request(datagram) {
        assert_eq!(kind, PacketKind::Stun);
        assert_eq!(&datagram[8..20], &tx_id);
    }

    let ip = Ipv6Addr::from(input.ip);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    let observed = SocketAddr::new(ip, input.port);
    let response = binding_response(input.tx_id, observed);
    assert_eq!(classify(&response), PacketKind::Stun);
    assert_eq!(parse_response(&response), Ok((input.tx_id, observed)));

    let request = binding_request_with_tx_id(input.tx_id);
    assert_eq!(classify(&request), PacketKind::Stun);
    assert_eq!(parse_binding_request(&request), Ok(input.tx_id));
    let (at, xor) = input.flip;
    let mut bad = request;
    let at = usize::from(at) % bad.len();
    bad[at] ^= xor | 1;
    // CRC-32 catches every single-byte change.
    assert!(
        parse_binding_request(&bad).is_err(),
        "a request changed at byte {at} still parsed"
    );
});
