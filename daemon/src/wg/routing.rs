//! Cryptokey routing: destination address → peer by longest allowed prefix,
//! and the address checks done on each packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The tailnet's address ranges: 100.64.0.0/10 (CGNAT) and Tailscale's
/// ULA, fd7a:115c:a1e0::/48.
const TAILNET_RANGES: [(IpAddr, u8); 2] = [
    (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), 10),
    (
        IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0)),
        48,
    ),
];

/// Whether `addr` is in a range control assigns tailnet addresses from.
pub fn is_tailnet_addr(addr: IpAddr) -> bool {
    TAILNET_RANGES
        .iter()
        .any(|&(range, len)| prefix_contains(range, len, addr))
}

/// Source and destination of a raw IP packet, if it looks like IPv4/IPv6.
pub fn packet_addrs(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        6 if packet.len() >= 40 => {
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        _ => None,
    }
}

/// Whether `addr` lies within `prefix/len`.
pub fn prefix_contains(prefix: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (prefix, addr) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (u32::from(p) & mask) == (u32::from(a) & mask)
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            (u128::from(p) & mask) == (u128::from(a) & mask)
        }
        _ => false,
    }
}

/// A table of (prefix, peer) entries answering longest-prefix lookups.
///
/// Pods have few peers' prefixes (mostly /32 and /128), so a vector sorted
/// by descending prefix length is both small and quick: the first match is
/// the longest.
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    entries: Vec<(IpAddr, u8, T)>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T: Clone> AllowedIps<T> {
    pub fn from_entries(entries: impl IntoIterator<Item = (IpAddr, u8, T)>) -> Self {
        let mut entries: Vec<_> = entries.into_iter().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.1));
        Self { entries }
    }

    /// The entry with the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        self.entries
            .iter()
            .find(|(p, len, _)| prefix_contains(*p, *len, addr))
            .map(|(_, _, v)| v)
    }

    /// Whom `addr` belongs to, for a packet to it or from it: the longest
    /// prefix, except that a default route (an exit node's) never covers a
    /// tailnet address. A 100.x or fd7a address no peer owns is nobody's,
    /// so it is neither sent to an exit node nor accepted from one.
    pub fn owner(&self, addr: IpAddr) -> Option<&T> {
        self.owner_where(addr, |_| true).map(|(_, v)| v)
    }

    /// [`Self::owner`] among the entries `keep` accepts, with the length
    /// of the prefix that matched.
    pub fn owner_where(&self, addr: IpAddr, keep: impl Fn(&T) -> bool) -> Option<(u8, &T)> {
        let tailnet = is_tailnet_addr(addr);
        self.entries
            .iter()
            .filter(|(_, len, _)| !(tailnet && *len == 0))
            .find(|(p, len, v)| prefix_contains(*p, *len, addr) && keep(v))
            .map(|(_, len, v)| (*len, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes the entries take.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(IpAddr, u8, T)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_regardless_of_insert_order() {
        let t = AllowedIps::from_entries([
            (ip("10.0.0.0"), 8, "wide"),
            (ip("10.1.2.3"), 32, "host"),
            (ip("10.1.0.0"), 16, "mid"),
        ]);
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&"host"));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(&"mid"));
        assert_eq!(t.lookup(ip("10.200.0.1")), Some(&"wide"));
        assert_eq!(t.lookup(ip("11.0.0.1")), None);
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0::1")), None);
    }

    #[test]
    fn v6_prefixes_and_default_route() {
        let t = AllowedIps::from_entries([
            (ip("fd7a:115c:a1e0::"), 48, 1),
            (ip("fd7a:115c:a1e0::5"), 128, 2),
            (ip("::"), 0, 3),
        ]);
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0::5")), Some(&2));
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0::6")), Some(&1));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(&3));
        // A v6 default route does not catch v4.
        assert_eq!(t.lookup(ip("100.64.0.1")), None);
    }

    #[test]
    fn exit_routes_never_own_tailnet_addresses() {
        let t = AllowedIps::from_entries([
            (ip("100.64.0.7"), 32, "exit"),
            (ip("0.0.0.0"), 0, "exit"),
            (ip("::"), 0, "exit"),
            (ip("100.64.0.8"), 32, "laptop"),
            (ip("fd7a:115c:a1e0::8"), 128, "laptop"),
            (ip("10.99.0.0"), 24, "router"),
        ]);
        assert_eq!(t.owner(ip("100.64.0.8")), Some(&"laptop"));
        assert_eq!(t.owner(ip("100.64.0.7")), Some(&"exit"));
        assert_eq!(t.owner(ip("10.99.0.5")), Some(&"router"));
        assert_eq!(t.owner(ip("192.0.2.1")), Some(&"exit"));
        assert_eq!(t.owner(ip("2001:db8::1")), Some(&"exit"));
        // Unassigned tailnet addresses belong to no one...
        assert_eq!(t.owner(ip("100.64.0.99")), None);
        assert_eq!(t.owner(ip("100.127.255.255")), None);
        assert_eq!(t.owner(ip("fd7a:115c:a1e0::99")), None);
        // ...while the plain lookup would give them to the exit node.
        assert_eq!(t.lookup(ip("100.64.0.99")), Some(&"exit"));
        // Just outside the ranges the exit node carries them.
        assert_eq!(t.owner(ip("100.128.0.1")), Some(&"exit"));
        assert_eq!(t.owner(ip("fd7a:115c:a1e1::1")), Some(&"exit"));
    }

    #[test]
    fn a_subnet_route_inside_the_tailnet_range_still_counts() {
        // 4via6 routes live inside fd7a:115c:a1e0::/48.
        let t = AllowedIps::from_entries([(ip("fd7a:115c:a1e0:b1a::"), 64, "via")]);
        assert_eq!(t.owner(ip("fd7a:115c:a1e0:b1a::1")), Some(&"via"));
    }

    #[test]
    fn parses_v4_and_v6_headers() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[100, 64, 0, 1]);
        v4[16..20].copy_from_slice(&[100, 64, 0, 2]);
        assert_eq!(
            packet_addrs(&v4),
            Some((ip("100.64.0.1"), ip("100.64.0.2")))
        );
        assert_eq!(packet_addrs(&v4[..19]), None);

        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[8..24].copy_from_slice(&ip_bytes6("fd7a:115c:a1e0::1"));
        v6[24..40].copy_from_slice(&ip_bytes6("fd7a:115c:a1e0::2"));
        assert_eq!(
            packet_addrs(&v6),
            Some((ip("fd7a:115c:a1e0::1"), ip("fd7a:115c:a1e0::2")))
        );
        assert_eq!(packet_addrs(&[0x00; 40]), None);
    }

    fn ip_bytes6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }
}
