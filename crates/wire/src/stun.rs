//! STUN (RFC 5389) Binding messages as Tailscale uses them. Telling them
//! apart from disco and WireGuard on the shared socket is [`crate::demux`]'s.
//!
//! Requests carry SOFTWARE "tailnode" and a FINGERPRINT, because Tailscale's
//! STUN servers drop requests without both. Responses are read from
//! XOR-MAPPED-ADDRESS (0x0020, or the pre-RFC 0x8020) and fall back to
//! MAPPED-ADDRESS (0x0001).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rand::RngCore;

/// The fixed cookie at bytes 4..8 of every RFC 5389 message.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Length of a STUN message header.
pub const HEADER_LEN: usize = 20;
/// Length of the Binding request [`binding_request`] builds.
pub const BINDING_REQUEST_LEN: usize = 40;
/// The SOFTWARE value Tailscale's STUN servers require.
pub const SOFTWARE: &[u8; 8] = b"tailnode";

/// A STUN transaction ID.
pub type TxId = [u8; 12];

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_XOR_MAPPED_ADDRESS_OLD: u16 = 0x8020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const FINGERPRINT_ATTR_LEN: usize = 8;
const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// Why a datagram is not the STUN message expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// The datagram has no STUN header: too short, top bits set, or no magic cookie.
    #[error("not a STUN message")]
    NotStun,
    /// A STUN message, but not the Binding request or success response expected; holds its type.
    #[error("STUN message type {0:#06x} is not the expected one")]
    UnexpectedType(u16),
    /// The attributes are truncated, or an address attribute is malformed; says what.
    #[error("STUN attributes malformed: {0}")]
    MalformedAttributes(&'static str),
    /// A Binding response with neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS.
    #[error("STUN response has no mapped address")]
    NoMappedAddress,
    /// A Binding request whose SOFTWARE attribute is missing or not "tailnode".
    #[error("STUN binding request lacks SOFTWARE \"tailnode\"")]
    WrongSoftware,
    /// A Binding request whose last attribute is not a FINGERPRINT matching the message.
    #[error("STUN binding request lacks a valid trailing FINGERPRINT")]
    BadFingerprint,
}

/// The RFC 5389 demux rule: at least a header, top two bits zero, cookie.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] & 0xc0 == 0 && datagram[4..8] == MAGIC_COOKIE
}

/// A Binding request with a fresh random transaction ID.
pub fn binding_request() -> (TxId, [u8; BINDING_REQUEST_LEN]) {
    let mut tx_id = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut tx_id);
    (tx_id, binding_request_with_tx_id(tx_id))
}

/// A Binding request for the given transaction ID.
pub fn binding_request_with_tx_id(tx_id: TxId) -> [u8; BINDING_REQUEST_LEN] {
    let mut out = [0u8; BINDING_REQUEST_LEN];
    out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    // Attributes: SOFTWARE (4 + 8) and FINGERPRINT (4 + 4).
    out[2..4].copy_from_slice(&20u16.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE);
    out[8..20].copy_from_slice(&tx_id);
    out[20..22].copy_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    out[22..24].copy_from_slice(&(SOFTWARE.len() as u16).to_be_bytes());
    out[24..32].copy_from_slice(SOFTWARE);
    out[32..34].copy_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out[34..36].copy_from_slice(&4u16.to_be_bytes());
    let fingerprint = crc32(&out[..32]) ^ FINGERPRINT_XOR;
    out[36..40].copy_from_slice(&fingerprint.to_be_bytes());
    out
}

/// Parses a Binding request the way Tailscale's STUN server does: SOFTWARE
/// must be "tailnode" and the last attribute a valid FINGERPRINT.
pub fn parse_binding_request(datagram: &[u8]) -> Result<TxId, StunError> {
    let header = Header::parse(datagram)?;
    if header.message_type != BINDING_REQUEST {
        return Err(StunError::UnexpectedType(header.message_type));
    }
    let mut software_ok = false;
    let mut last_attr = None;
    for attr in Attributes::new(header.attributes) {
        let attr = attr?;
        if attr.kind == ATTR_SOFTWARE {
            software_ok = attr.value == SOFTWARE;
        }
        last_attr = Some(attr);
    }
    if !software_ok {
        return Err(StunError::WrongSoftware);
    }
    match last_attr {
        Some(attr) if attr.kind == ATTR_FINGERPRINT && attr.value.len() == 4 => {
            let covered = HEADER_LEN + header.attributes.len() - FINGERPRINT_ATTR_LEN;
            let expected = crc32(&datagram[..covered]) ^ FINGERPRINT_XOR;
            if attr.value == expected.to_be_bytes() {
                Ok(header.tx_id)
            } else {
                Err(StunError::BadFingerprint)
            }
        }
        _ => Err(StunError::BadFingerprint),
    }
}

/// A Binding success response telling the requester its observed address.
pub fn binding_response(tx_id: TxId, observed: SocketAddr) -> Vec<u8> {
    let (family, addr_len) = match observed.ip() {
        IpAddr::V4(_) => (FAMILY_V4, 4),
        IpAddr::V6(_) => (FAMILY_V6, 16),
    };
    let value_len = 4 + addr_len;
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + value_len);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&((4 + value_len) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE);
    out.extend_from_slice(&tx_id);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, family]);
    out.extend_from_slice(&(observed.port() ^ cookie_high16()).to_be_bytes());
    let pad = xor_pad(&tx_id);
    match observed.ip() {
        IpAddr::V4(ip) => out.extend(ip.octets().iter().zip(pad).map(|(a, k)| a ^ k)),
        IpAddr::V6(ip) => out.extend(ip.octets().iter().zip(pad).map(|(a, k)| a ^ k)),
    }
    out
}

/// Parses a Binding success response into its transaction ID and the
/// address the server saw. XOR-MAPPED-ADDRESS wins over MAPPED-ADDRESS.
pub fn parse_response(datagram: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    let header = Header::parse(datagram)?;
    if header.message_type != BINDING_SUCCESS {
        return Err(StunError::UnexpectedType(header.message_type));
    }
    let mut xor_mapped = None;
    let mut mapped = None;
    for attr in Attributes::new(header.attributes) {
        let attr = attr?;
        match attr.kind {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_OLD if xor_mapped.is_none() => {
                xor_mapped = Some(parse_address(attr.value, Some(&header.tx_id))?);
            }
            ATTR_MAPPED_ADDRESS if mapped.is_none() => {
                mapped = Some(parse_address(attr.value, None)?);
            }
            _ => {}
        }
    }
    xor_mapped
        .or(mapped)
        .map(|addr| (header.tx_id, addr))
        .ok_or(StunError::NoMappedAddress)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as the STUN
/// FINGERPRINT attribute uses.
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &byte| {
        CRC32_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8)
    })
}

const CRC32_TABLE: [u32; 256] = build_crc32_table();

const fn build_crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

struct Header<'a> {
    message_type: u16,
    tx_id: TxId,
    attributes: &'a [u8],
}

impl<'a> Header<'a> {
    fn parse(datagram: &'a [u8]) -> Result<Self, StunError> {
        if !is_stun(datagram) {
            return Err(StunError::NotStun);
        }
        let message_type = u16::from_be_bytes([datagram[0], datagram[1]]);
        let attrs_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
        let rest = &datagram[HEADER_LEN..];
        let attributes = rest
            .get(..attrs_len)
            .ok_or(StunError::MalformedAttributes("length beyond datagram"))?;
        let mut tx_id = [0u8; 12];
        tx_id.copy_from_slice(&datagram[8..20]);
        Ok(Header {
            message_type,
            tx_id,
            attributes,
        })
    }
}

struct Attribute<'a> {
    kind: u16,
    value: &'a [u8],
}

/// Iterates type-length-value attributes, each padded to 4 bytes.
struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Attributes<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Attributes { rest }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, StunError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 4 {
            self.rest = &[];
            return Some(Err(StunError::MalformedAttributes(
                "truncated attribute header",
            )));
        }
        let kind = u16::from_be_bytes([self.rest[0], self.rest[1]]);
        let len = usize::from(u16::from_be_bytes([self.rest[2], self.rest[3]]));
        let padded = (len + 3) & !3;
        let Some(value) = self.rest.get(4..4 + len) else {
            self.rest = &[];
            return Some(Err(StunError::MalformedAttributes(
                "attribute value truncated",
            )));
        };
        // The final attribute's padding may be missing in sloppy encoders.
        self.rest = self.rest.get(4 + padded..).unwrap_or(&[]);
        Some(Ok(Attribute { kind, value }))
    }
}

fn cookie_high16() -> u16 {
    u16::from_be_bytes([MAGIC_COOKIE[0], MAGIC_COOKIE[1]])
}

/// Cookie followed by the transaction ID: the XOR key for addresses.
fn xor_pad(tx_id: &TxId) -> [u8; 16] {
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&MAGIC_COOKIE);
    pad[4..].copy_from_slice(tx_id);
    pad
}

fn parse_address(value: &[u8], xor_with: Option<&TxId>) -> Result<SocketAddr, StunError> {
    if value.len() < 4 {
        return Err(StunError::MalformedAttributes(
            "address attribute too short",
        ));
    }
    let family = value[1];
    let mut port = u16::from_be_bytes([value[2], value[3]]);
    let pad = xor_with.map(xor_pad).unwrap_or([0u8; 16]);
    if xor_with.is_some() {
        port ^= cookie_high16();
    }
    let raw = &value[4..];
    let ip = match (family, raw.len()) {
        (FAMILY_V4, 4) => {
            let mut octets = [0u8; 4];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = raw[i] ^ pad[i];
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        (FAMILY_V6, 16) => {
            let mut octets = [0u8; 16];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = raw[i] ^ pad[i];
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Err(StunError::MalformedAttributes("address family or length")),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: TxId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn crc32_known_answers() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414f_a339
        );
    }

    #[test]
    fn binding_request_layout() {
        let req = binding_request_with_tx_id(TX);
        assert_eq!(req.len(), 40);
        assert_eq!(&req[..8], &[0x00, 0x01, 0x00, 0x14, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&req[8..20], &TX);
        assert_eq!(&req[20..24], &[0x80, 0x22, 0x00, 0x08]);
        assert_eq!(&req[24..32], b"tailnode");
        assert_eq!(&req[32..36], &[0x80, 0x28, 0x00, 0x04]);
        let fp = u32::from_be_bytes([req[36], req[37], req[38], req[39]]);
        assert_eq!(fp, crc32(&req[..32]) ^ 0x5354_554e);
        assert_eq!(parse_binding_request(&req), Ok(TX));
    }

    #[test]
    fn random_requests_differ_and_parse() {
        let (tx1, req1) = binding_request();
        let (tx2, req2) = binding_request();
        assert_ne!(tx1, tx2);
        assert_eq!(parse_binding_request(&req1), Ok(tx1));
        assert_eq!(parse_binding_request(&req2), Ok(tx2));
        assert_eq!(
            crate::demux::classify(&req1),
            crate::demux::PacketKind::Stun
        );
    }

    #[test]
    fn binding_request_validation() {
        let req = binding_request_with_tx_id(TX);
        let mut bad_fp = req;
        bad_fp[39] ^= 1;
        assert_eq!(
            parse_binding_request(&bad_fp),
            Err(StunError::BadFingerprint)
        );

        let mut bad_sw = req;
        bad_sw[24] = b'T';
        assert_eq!(
            parse_binding_request(&bad_sw),
            Err(StunError::WrongSoftware)
        );

        // Drop the fingerprint attribute entirely.
        let mut no_fp = req[..32].to_vec();
        no_fp[3] = 12;
        assert_eq!(
            parse_binding_request(&no_fp),
            Err(StunError::BadFingerprint)
        );

        let resp = binding_response(TX, "1.2.3.4:5".parse().unwrap());
        assert_eq!(
            parse_binding_request(&resp),
            Err(StunError::UnexpectedType(0x0101))
        );
        assert_eq!(parse_binding_request(&req[..19]), Err(StunError::NotStun));
    }

    #[test]
    fn xor_mapped_v4_known_answer() {
        // 192.0.2.1:32853 from RFC 5769 §2.2, with its transaction ID.
        let tx: TxId = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let resp = binding_response(tx, "192.0.2.1:32853".parse().unwrap());
        assert_eq!(
            &resp[20..32],
            &[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        assert_eq!(
            parse_response(&resp),
            Ok((tx, "192.0.2.1:32853".parse().unwrap()))
        );
    }

    #[test]
    fn xor_mapped_v6_known_answer() {
        // RFC 5769 §2.3: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
        let tx: TxId = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let resp = binding_response(tx, addr);
        assert_eq!(
            &resp[24..44],
            &[
                0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
                0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
        assert_eq!(parse_response(&resp), Ok((tx, addr)));
    }

    fn response_with(attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut out = vec![0x01, 0x01];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE);
        out.extend_from_slice(&TX);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn mapped_address_fallback_and_precedence() {
        let plain = vec![0, 1, 0x1f, 0x90, 10, 0, 0, 1]; // 10.0.0.1:8080
        let resp = response_with(&[(0x8022, b"server".to_vec()), (0x0001, plain.clone())]);
        assert_eq!(
            parse_response(&resp),
            Ok((TX, "10.0.0.1:8080".parse().unwrap()))
        );

        let xored = binding_response(TX, "203.0.113.9:41641".parse().unwrap())[24..].to_vec();
        let resp = response_with(&[(0x0001, plain.clone()), (0x8020, xored.clone())]);
        assert_eq!(
            parse_response(&resp),
            Ok((TX, "203.0.113.9:41641".parse().unwrap()))
        );
        let resp = response_with(&[(0x0001, plain), (0x0020, xored)]);
        assert_eq!(
            parse_response(&resp),
            Ok((TX, "203.0.113.9:41641".parse().unwrap()))
        );
    }

    #[test]
    fn bad_responses() {
        assert_eq!(
            parse_response(&response_with(&[])),
            Err(StunError::NoMappedAddress)
        );
        let mut truncated = binding_response(TX, "1.2.3.4:5".parse().unwrap());
        truncated.pop();
        assert!(matches!(
            parse_response(&truncated),
            Err(StunError::MalformedAttributes(_))
        ));
        let wrong_family = response_with(&[(0x0020, vec![0, 2, 0, 0, 1, 2, 3, 4])]);
        assert!(matches!(
            parse_response(&wrong_family),
            Err(StunError::MalformedAttributes(_))
        ));
        let request = binding_request_with_tx_id(TX);
        assert_eq!(
            parse_response(&request),
            Err(StunError::UnexpectedType(0x0001))
        );
        let mut not_cookie = request;
        not_cookie[4] = 0;
        assert_eq!(parse_response(&not_cookie), Err(StunError::NotStun));
    }

    #[test]
    fn stun_shape() {
        assert!(is_stun(&binding_request_with_tx_id(TX)));
        let resp = binding_response(TX, "1.2.3.4:5".parse().unwrap());
        assert!(is_stun(&resp));
        // A STUN error response (0x0111) is STUN-shaped too.
        let mut error_resp = resp.clone();
        error_resp[1] = 0x11;
        assert!(is_stun(&error_resp));

        let mut top_bits = resp;
        top_bits[0] |= 0x80;
        assert!(!is_stun(&top_bits));
    }
}
