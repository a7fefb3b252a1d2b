//! Filter rules as control sends them, parsed from their string form.

use std::net::IpAddr;
use std::str::FromStr;

use crate::packet::proto;

/// Protocols a rule with an empty protocol list covers.
pub const DEFAULT_PROTOCOLS: [u8; 4] = [proto::TCP, proto::UDP, proto::ICMPV4, proto::ICMPV6];

/// Why a filter rule string could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterParseError {
    /// An address entry is not `*`, an IP, a prefix or a same-family range.
    #[error("filter address {entry:?} is invalid: {reason}")]
    BadAddress {
        /// The entry as control sent it.
        entry: String,
        /// Which part of it is wrong.
        reason: &'static str,
    },
    /// A protocol number does not fit a byte.
    #[error("filter IP protocol {0} is outside 0-255")]
    BadProtocol(i64),
}

/// A set of addresses as written in a rule: `*`, an IP, a CIDR prefix, or an
/// inclusive range `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrMatch {
    /// `*`: every address of both families.
    Any,
    /// One address.
    Addr(IpAddr),
    /// A CIDR prefix.
    Prefix {
        /// The prefix's address, as written.
        addr: IpAddr,
        /// Its length in bits.
        len: u8,
    },
    /// An inclusive range of one family.
    Range {
        /// The lowest address in the range.
        first: IpAddr,
        /// The highest address in the range.
        last: IpAddr,
    },
}

/// Source entries use the same forms as destinations.
pub type SrcMatch = AddrMatch;

impl AddrMatch {
    /// True when `ip` is in this set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges().into_iter().flatten().any(|r| match (r, ip) {
            (AddrRange::V4(first, last), IpAddr::V4(a)) => (first..=last).contains(&u32::from(a)),
            (AddrRange::V6(first, last), IpAddr::V6(a)) => (first..=last).contains(&u128::from(a)),
            _ => false,
        })
    }

    /// The inclusive numeric ranges this entry covers (two for `*`).
    pub(super) fn ranges(&self) -> [Option<AddrRange>; 2] {
        match *self {
            AddrMatch::Any => [
                Some(AddrRange::V4(0, u32::MAX)),
                Some(AddrRange::V6(0, u128::MAX)),
            ],
            AddrMatch::Addr(IpAddr::V4(a)) => [Some(AddrRange::V4(a.into(), a.into())), None],
            AddrMatch::Addr(IpAddr::V6(a)) => [Some(AddrRange::V6(a.into(), a.into())), None],
            AddrMatch::Prefix { addr, len } => [Some(AddrRange::of_prefix(addr, len)), None],
            AddrMatch::Range {
                first: IpAddr::V4(f),
                last: IpAddr::V4(l),
            } => [Some(AddrRange::V4(f.into(), l.into())), None],
            AddrMatch::Range {
                first: IpAddr::V6(f),
                last: IpAddr::V6(l),
            } => [Some(AddrRange::V6(f.into(), l.into())), None],
            // Mixed-family ranges are rejected by the parser.
            AddrMatch::Range { .. } => [None, None],
        }
    }
}

impl FromStr for AddrMatch {
    type Err = FilterParseError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let bad = |reason| FilterParseError::BadAddress {
            entry: entry.to_owned(),
            reason,
        };
        if entry == "*" {
            return Ok(AddrMatch::Any);
        }
        if let Some((addr, len)) = entry.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| bad("prefix address"))?;
            let len: u8 = len.parse().map_err(|_| bad("prefix length"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(bad("prefix length too long for the address family"));
            }
            return Ok(AddrMatch::Prefix { addr, len });
        }
        if let Some((first, last)) = entry.split_once('-') {
            let first: IpAddr = first.parse().map_err(|_| bad("range start"))?;
            let last: IpAddr = last.parse().map_err(|_| bad("range end"))?;
            match (first, last) {
                (IpAddr::V4(f), IpAddr::V4(l)) if f <= l => {}
                (IpAddr::V6(f), IpAddr::V6(l)) if f <= l => {}
                (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                    return Err(bad("range end before start"))
                }
                _ => return Err(bad("range mixes address families")),
            }
            return Ok(AddrMatch::Range { first, last });
        }
        entry
            .parse()
            .map(AddrMatch::Addr)
            .map_err(|_| bad("not an IP, prefix, range or *"))
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The lowest port in the range.
    pub first: u16,
    /// The highest port in the range.
    pub last: u16,
}

impl PortRange {
    /// Every port, 0 to 65535.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// True when `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// A destination entry: addresses and the ports allowed on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DstMatch {
    /// The destination addresses.
    pub net: AddrMatch,
    /// The ports allowed on them.
    pub ports: PortRange,
}

/// One rule of a node's packet filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterRule {
    /// Sources the rule accepts packets from; any entry may match.
    pub src_ips: Vec<SrcMatch>,
    /// Destinations and ports the rule opens; any entry may match.
    pub dst_ports: Vec<DstMatch>,
    /// IP protocol numbers; empty means [`DEFAULT_PROTOCOLS`].
    pub ip_proto: Vec<u8>,
}

impl FilterRule {
    /// Parses a rule from the fields control sends (`SrcIPs`, `DstPorts` as
    /// `(IP, Ports.First, Ports.Last)`, `IPProto`), failing on the first bad
    /// entry.
    pub fn parse<S, D, DS, P>(
        src_ips: S,
        dst_ports: D,
        ip_proto: P,
    ) -> Result<Self, FilterParseError>
    where
        S: IntoIterator,
        S::Item: AsRef<str>,
        D: IntoIterator<Item = (DS, u16, u16)>,
        DS: AsRef<str>,
        P: IntoIterator,
        P::Item: Into<i64>,
    {
        let (rule, errors) = Self::parse_lenient(src_ips, dst_ports, ip_proto);
        match errors.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(rule),
        }
    }

    /// Parses a rule, skipping bad entries and reporting them, as Tailscale
    /// does so one unknown entry does not cut a node off entirely.
    ///
    /// If protocols were listed but none is valid, the rule keeps no
    /// destinations so that it matches nothing (rather than widening to the
    /// default protocols).
    pub fn parse_lenient<S, D, DS, P>(
        src_ips: S,
        dst_ports: D,
        ip_proto: P,
    ) -> (Self, Vec<FilterParseError>)
    where
        S: IntoIterator,
        S::Item: AsRef<str>,
        D: IntoIterator<Item = (DS, u16, u16)>,
        DS: AsRef<str>,
        P: IntoIterator,
        P::Item: Into<i64>,
    {
        let mut errors = Vec::new();
        let mut rule = FilterRule::default();
        for entry in src_ips {
            match entry.as_ref().parse() {
                Ok(m) => rule.src_ips.push(m),
                Err(e) => errors.push(e),
            }
        }
        for (ip, first, last) in dst_ports {
            match ip.as_ref().parse() {
                Ok(net) => rule.dst_ports.push(DstMatch {
                    net,
                    ports: PortRange { first, last },
                }),
                Err(e) => errors.push(e),
            }
        }
        let mut listed_any = false;
        for number in ip_proto {
            listed_any = true;
            let number: i64 = number.into();
            match u8::try_from(number) {
                Ok(p) => rule.ip_proto.push(p),
                Err(_) => errors.push(FilterParseError::BadProtocol(number)),
            }
        }
        if listed_any && rule.ip_proto.is_empty() {
            rule.dst_ports.clear();
        }
        (rule, errors)
    }
}

/// The inclusive numeric range of addresses an [`AddrMatch`] covers in one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AddrRange {
    V4(u32, u32),
    V6(u128, u128),
}

impl AddrRange {
    /// The addresses of `addr/len`, host bits cleared.
    fn of_prefix(addr: IpAddr, len: u8) -> Self {
        let shift = u32::from(len);
        match addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(shift).unwrap_or(0);
                Self::V4(u32::from(a) & !host, u32::from(a) | host)
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(shift).unwrap_or(0);
                Self::V6(u128::from(a) & !host, u128::from(a) | host)
            }
        }
    }
}

#[cfg(test)]
mod tests;
