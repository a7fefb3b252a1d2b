//! DNS messages as a stub resolver's server sees them (RFC 1035, EDNS from
//! RFC 6891): parse one query, build the answers a MagicDNS resolver gives
//! (A, AAAA, no data, NXDOMAIN, SERVFAIL), and cut a forwarded response to
//! what the client can receive over UDP.
//!
//! Sans-IO and strict: a query must hold exactly one question whose name is
//! uncompressed and well formed; anything else is refused with a
//! [`DnsError`] and never panics. Responses echo the question bytes exactly
//! as the client sent them, and point at them for every answer's name.

use std::net::IpAddr;

mod datagram;

pub use datagram::{udp_packet, UdpDatagram};

/// The port DNS is served on.
pub const DNS_PORT: u16 = 53;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 12;
/// The UDP payload every DNS client accepts (RFC 1035 §4.2.1); a client
/// that wants more says so with an EDNS OPT record.
pub const MIN_UDP_PAYLOAD: usize = 512;
/// Longest name in wire form, length bytes and final zero included.
pub const MAX_NAME_LEN: usize = 255;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// Resource record type A (IPv4 address).
pub const TYPE_A: u16 = 1;
/// Resource record type AAAA (IPv6 address).
pub const TYPE_AAAA: u16 = 28;
/// The EDNS pseudo record type.
pub const TYPE_OPT: u16 = 41;
/// The Internet class.
pub const CLASS_IN: u16 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const OPCODE_SHIFT: u16 = 11;
const OPCODE_MASK: u16 = 0xf;
/// A pointer to the question name, which always starts right after the header.
const NAME_POINTER: [u8; 2] = [0xc0, HEADER_LEN as u8];

/// Response codes a resolver answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    /// The name exists; the answer may still be empty (no data).
    NoError = 0,
    /// The query could not be understood.
    FormErr = 1,
    /// The resolver failed to get an answer (upstream down, too busy).
    ServFail = 2,
    /// The name does not exist.
    NxDomain = 3,
    /// The kind of query is not implemented.
    NotImp = 4,
}

/// Why bytes are not a query this module serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The message ends before a header, question or record does.
    #[error("DNS message truncated")]
    Truncated,
    /// The QR bit is set: a response, not a query.
    #[error("DNS message is a response")]
    NotAQuery,
    /// An opcode other than QUERY (0); holds it.
    #[error("DNS opcode {0} is not supported")]
    Opcode(u8),
    /// Anything but exactly one question; holds the count.
    #[error("DNS query has {0} questions, not one")]
    QuestionCount(u16),
    /// The question name uses compression or a reserved label type.
    #[error("DNS question name is compressed or uses a reserved label type")]
    LabelType,
    /// The question name is longer than 255 bytes in wire form.
    #[error("DNS name longer than 255 bytes")]
    NameTooLong,
}

/// One parsed query: what a resolver needs to decide, and the bytes it
/// echoes in any answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// The client's message id, returned in every answer.
    pub id: u16,
    /// The client asked for recursion (echoed in answers).
    pub recursion_desired: bool,
    /// The question name in lowercase presentation form without the
    /// final dot; bytes other than letters, digits, `-` and `_` are
    /// written `\DDD`, so no two wire names share a text. The root is "".
    pub name: String,
    /// The question type ([`TYPE_A`], [`TYPE_AAAA`], ...).
    pub qtype: u16,
    /// The question class ([`CLASS_IN`] in practice).
    pub qclass: u16,
    /// The largest response the client accepts over UDP: its EDNS payload
    /// size, at least [`MIN_UDP_PAYLOAD`].
    pub udp_payload: usize,
    /// The query carried an EDNS OPT record, so answers carry one too.
    pub edns: bool,
    /// The question section exactly as sent.
    question: &'a [u8],
}

impl<'a> Query<'a> {
    /// Parses a query. Answer, authority and additional records are
    /// skipped, except an OPT record in the additional section.
    pub fn parse(msg: &'a [u8]) -> Result<Self, DnsError> {
        let header = msg.get(..HEADER_LEN).ok_or(DnsError::Truncated)?;
        let id = u16::from_be_bytes([header[0], header[1]]);
        let flags = u16::from_be_bytes([header[2], header[3]]);
        if flags & FLAG_QR != 0 {
            return Err(DnsError::NotAQuery);
        }
        let opcode = (flags >> OPCODE_SHIFT) & OPCODE_MASK;
        if opcode != 0 {
            // Four bits: the cast cannot lose anything.
            return Err(DnsError::Opcode(opcode as u8));
        }
        let counts = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        let (qdcount, ancount, nscount, arcount) = (counts(4), counts(6), counts(8), counts(10));
        if qdcount != 1 {
            return Err(DnsError::QuestionCount(qdcount));
        }
        let (name, name_end) = read_question_name(msg, HEADER_LEN)?;
        let fixed = msg.get(name_end..name_end + 4).ok_or(DnsError::Truncated)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        let question_end = name_end + 4;

        let mut at = question_end;
        for _ in 0..(u32::from(ancount) + u32::from(nscount)) {
            at = skip_record(msg, at)?.end;
        }
        let mut udp_payload = MIN_UDP_PAYLOAD;
        let mut edns = false;
        for _ in 0..arcount {
            let record = skip_record(msg, at)?;
            if record.rtype == TYPE_OPT {
                edns = true;
                // The class field of OPT is the requestor's payload size.
                udp_payload = usize::from(record.class).max(MIN_UDP_PAYLOAD);
            }
            at = record.end;
        }
        Ok(Query {
            id,
            recursion_desired: flags & FLAG_RD != 0,
            name,
            qtype,
            qclass,
            udp_payload,
            edns,
            question: &msg[HEADER_LEN..question_end],
        })
    }

    /// The question section as the client sent it.
    pub fn question(&self) -> &'a [u8] {
        self.question
    }

    /// An authoritative answer: every address of `addrs` that matches the
    /// question type (A for IPv4, AAAA for IPv6), with `ttl`. No matching
    /// address gives an empty NOERROR answer ("no data": the name exists).
    /// If the answer would exceed `limit` (and the client's payload size),
    /// it is sent without records and with TC set, as RFC 1035 asks.
    pub fn answer(&self, addrs: &[IpAddr], ttl: u32, limit: usize) -> Vec<u8> {
        let records: Vec<&IpAddr> = addrs
            .iter()
            .filter(|ip| match ip {
                IpAddr::V4(_) => self.qtype == TYPE_A,
                IpAddr::V6(_) => self.qtype == TYPE_AAAA,
            })
            .filter(|_| self.qclass == CLASS_IN)
            .collect();
        let mut out = self.response_header(Rcode::NoError, FLAG_AA);
        for ip in &records {
            match ip {
                IpAddr::V4(v4) => push_address_record(&mut out, TYPE_A, ttl, &v4.octets()),
                IpAddr::V6(v6) => push_address_record(&mut out, TYPE_AAAA, ttl, &v6.octets()),
            }
        }
        // At most a handful of addresses per name: fits a u16.
        let count = records.len().min(usize::from(u16::MAX)) as u16;
        out[6..8].copy_from_slice(&count.to_be_bytes());
        self.finish(out, limit)
    }

    /// An answer with no records and `rcode` (NXDOMAIN, SERVFAIL, ...).
    /// NXDOMAIN is authoritative: only names the resolver owns get it.
    pub fn error(&self, rcode: Rcode) -> Vec<u8> {
        let authoritative = if rcode == Rcode::NxDomain { FLAG_AA } else { 0 };
        let out = self.response_header(rcode, authoritative);
        self.finish(out, usize::MAX)
    }

    /// Header and question of a response; counts filled in later.
    fn response_header(&self, rcode: Rcode, extra_flags: u16) -> Vec<u8> {
        let mut flags = FLAG_QR | FLAG_RA | extra_flags | rcode as u16;
        if self.recursion_desired {
            flags |= FLAG_RD;
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.question.len() + 64);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(self.question);
        out
    }

    /// Adds the OPT record a client that sent one expects, then applies
    /// the UDP size limit.
    fn finish(&self, mut out: Vec<u8>, limit: usize) -> Vec<u8> {
        let limit = limit.min(self.udp_payload);
        if self.edns {
            append_opt(&mut out);
        }
        if out.len() <= limit {
            return out;
        }
        let mut cut = self.response_header(Rcode::NoError, 0);
        cut[2..4].copy_from_slice(&(u16::from_be_bytes([out[2], out[3]]) | FLAG_TC).to_be_bytes());
        if self.edns {
            append_opt(&mut cut);
        }
        cut
    }
}

/// An answer record for the question's name (a pointer to it).
fn push_address_record(out: &mut Vec<u8>, rtype: u16, ttl: u32, data: &[u8]) {
    out.extend_from_slice(&NAME_POINTER);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    // 4 or 16 bytes: fits a u16.
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// The id of a DNS response, or `None` for anything that is not one.
pub fn response_id(msg: &[u8]) -> Option<u16> {
    let header = msg.get(..HEADER_LEN)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    (flags & FLAG_QR != 0).then(|| u16::from_be_bytes([header[0], header[1]]))
}

/// Rewrites the id of a message in place (a forwarder sends upstream an
/// id of its own and gives the client back the one it chose).
pub fn set_id(msg: &mut [u8], id: u16) {
    if let Some(slot) = msg.get_mut(..2) {
        slot.copy_from_slice(&id.to_be_bytes());
    }
}

/// Whether `response` answers exactly `question` (the bytes of
/// [`Query::question`]), compared the way names compare: ASCII case
/// ignored.
pub fn answers_question(response: &[u8], question: &[u8]) -> bool {
    let Some(header) = response.get(..HEADER_LEN) else {
        return false;
    };
    if u16::from_be_bytes([header[4], header[5]]) != 1 {
        return false;
    }
    response
        .get(HEADER_LEN..HEADER_LEN + question.len())
        .is_some_and(|echoed| echoed.eq_ignore_ascii_case(question))
}

/// A forwarded `response` cut to what fits in `limit` bytes: unchanged if
/// it fits, else its header and question with TC set and no records, so
/// the client retries over TCP or makes do. `None` if it is not a
/// response with one well-formed question.
pub fn fit_response(response: &[u8], limit: usize) -> Option<Vec<u8>> {
    response_id(response)?;
    let header = response.get(..HEADER_LEN)?;
    if u16::from_be_bytes([header[4], header[5]]) != 1 {
        return None;
    }
    if response.len() <= limit {
        return Some(response.to_vec());
    }
    let (_, name_end) = read_question_name(response, HEADER_LEN).ok()?;
    let question_end = name_end.checked_add(4)?;
    let question = response.get(HEADER_LEN..question_end)?;
    let mut out = Vec::with_capacity(HEADER_LEN + question.len());
    out.extend_from_slice(&header[..2]);
    let flags = u16::from_be_bytes([header[2], header[3]]) | FLAG_TC;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(question);
    Some(out)
}

/// A query for `name` (presentation form, final dot optional) and
/// `qtype`, with an EDNS OPT record offering `edns_payload` bytes if given.
/// What clients send; the resolver's tests and the fuzz target use it.
pub fn encode_query(
    id: u16,
    name: &str,
    qtype: u16,
    edns_payload: Option<u16>,
) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 2 + 4 + 11);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&u16::from(edns_payload.is_some()).to_be_bytes());
    let name = name.strip_suffix('.').unwrap_or(name);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        if label.len() > MAX_LABEL_LEN {
            return Err(DnsError::LabelType);
        }
        // At most 63: fits a u8.
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() - HEADER_LEN > MAX_NAME_LEN {
        return Err(DnsError::NameTooLong);
    }
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(payload) = edns_payload {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[0; 6]);
    }
    Ok(out)
}

/// What a client reads from a response: its id, rcode, whether it was
/// truncated, and the addresses of its A and AAAA answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The id, matching the query's.
    pub id: u16,
    /// The response code (low four bits of the flags).
    pub rcode: u8,
    /// TC: the answer did not fit.
    pub truncated: bool,
    /// AA: the server owns the name.
    pub authoritative: bool,
    /// Every A and AAAA record of the answer section, in order.
    pub addrs: Vec<IpAddr>,
}

impl Response {
    /// Parses a response; records other than A and AAAA are skipped.
    pub fn parse(msg: &[u8]) -> Result<Self, DnsError> {
        let id = response_id(msg).ok_or(if msg.len() < HEADER_LEN {
            DnsError::Truncated
        } else {
            DnsError::NotAQuery
        })?;
        let flags = u16::from_be_bytes([msg[2], msg[3]]);
        let count = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
        let (qdcount, ancount) = (count(4), count(6));
        let mut at = HEADER_LEN;
        for _ in 0..qdcount {
            at = skip_name(msg, at)? + 4;
            if at > msg.len() {
                return Err(DnsError::Truncated);
            }
        }
        let mut addrs = Vec::new();
        for _ in 0..ancount {
            let record = skip_record(msg, at)?;
            let data = &msg[record.data_start..record.end];
            match (record.rtype, data.len()) {
                (TYPE_A, 4) => addrs.push(IpAddr::from([data[0], data[1], data[2], data[3]])),
                (TYPE_AAAA, 16) => {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(data);
                    addrs.push(IpAddr::from(octets));
                }
                _ => {}
            }
            at = record.end;
        }
        Ok(Response {
            id,
            // Four bits: the cast cannot lose anything.
            rcode: (flags & 0xf) as u8,
            truncated: flags & FLAG_TC != 0,
            authoritative: flags & FLAG_AA != 0,
            addrs,
        })
    }
}

/// An OPT record advertising our own payload size, no options.
fn append_opt(out: &mut Vec<u8>) {
    out.push(0); // root name
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    // Our answers are small; advertise what every path carries.
    out.extend_from_slice(&1232u16.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // extended rcode, version, flags
    out.extend_from_slice(&[0; 2]); // no options
    let arcount = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
}

/// Reads an uncompressed name starting at `at`; returns its presentation
/// form and the offset after it.
fn read_question_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let start = at;
    let mut name = String::new();
    loop {
        let len = *msg.get(at).ok_or(DnsError::Truncated)?;
        if len & 0xc0 != 0 {
            return Err(DnsError::LabelType);
        }
        let len = usize::from(len);
        if at + 1 + len - start > MAX_NAME_LEN {
            return Err(DnsError::NameTooLong);
        }
        if len == 0 {
            return Ok((name, at + 1));
        }
        let label = msg.get(at + 1..at + 1 + len).ok_or(DnsError::Truncated)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => name.push(char::from(b)),
                b'A'..=b'Z' => name.push(char::from(b.to_ascii_lowercase())),
                _ => {
                    name.push('\\');
                    name.push_str(&format!("{b:03}"));
                }
            }
        }
        at += 1 + len;
    }
}

/// Where one resource record's data starts and ends, its type and class.
struct Skipped {
    data_start: usize,
    end: usize,
    rtype: u16,
    class: u16,
}

/// Skips a resource record (its name may be compressed) starting at `at`.
fn skip_record(msg: &[u8], at: usize) -> Result<Skipped, DnsError> {
    let name_end = skip_name(msg, at)?;
    let fixed = msg
        .get(name_end..name_end + 10)
        .ok_or(DnsError::Truncated)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let class = u16::from_be_bytes([fixed[2], fixed[3]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let data_start = name_end + 10;
    let end = data_start + rdlen;
    if end > msg.len() {
        return Err(DnsError::Truncated);
    }
    Ok(Skipped {
        data_start,
        end,
        rtype,
        class,
    })
}

/// The offset after a name in a record: labels, ending in a zero byte or
/// a compression pointer (never followed here).
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, DnsError> {
    let start = at;
    loop {
        let len = *msg.get(at).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0xc0 => {
                msg.get(at + 1).ok_or(DnsError::Truncated)?;
                return Ok(at + 2);
            }
            0 if len == 0 => return Ok(at + 1),
            0 => {
                at += 1 + usize::from(len);
                if at - start > MAX_NAME_LEN {
                    return Err(DnsError::NameTooLong);
                }
            }
            _ => return Err(DnsError::LabelType),
        }
    }
}

#[cfg(test)]
mod tests;
