//! Rules compiled for matching: per address family, merged source ranges
//! and destination ranges with their ports.

use std::net::IpAddr;

use super::rules::{AddrRange, FilterRule, PortRange, DEFAULT_PROTOCOLS};

/// A 256-bit set of IP protocol numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ProtoSet([u64; 4]);

impl ProtoSet {
    fn insert(&mut self, p: u8) {
        self.0[usize::from(p >> 6)] |= 1 << (p & 63);
    }
    fn contains(&self, p: u8) -> bool {
        self.0[usize::from(p >> 6)] & (1 << (p & 63)) != 0
    }
}

/// Sorted, merged, inclusive ranges: membership is a binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RangeSet<A> {
    ranges: Vec<(A, A)>,
}

/// An address family's numeric address type (u32 for v4, u128 for v6).
trait FamilyAddr: Copy + Ord + std::fmt::Debug {
    fn successor(self) -> Option<Self>;
}

impl FamilyAddr for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl FamilyAddr for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl<A: FamilyAddr> RangeSet<A> {
    fn new(mut ranges: Vec<(A, A)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(A, A)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            if let Some(prev) = merged.last_mut() {
                // Merge overlapping and adjacent ranges.
                if prev.1.successor().is_none_or(|next| first <= next) {
                    prev.1 = prev.1.max(last);
                    continue;
                }
            }
            merged.push((first, last));
        }
        RangeSet { ranges: merged }
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn contains(&self, addr: A) -> bool {
        let i = self.ranges.partition_point(|&(_, last)| last < addr);
        self.ranges.get(i).is_some_and(|&(first, _)| first <= addr)
    }
}

#[derive(Debug, Clone)]
struct CompiledDst<A> {
    first: A,
    last: A,
    ports: PortRange,
}

impl<A: FamilyAddr> CompiledDst<A> {
    fn contains(&self, addr: A) -> bool {
        self.first <= addr && addr <= self.last
    }
}

#[derive(Debug, Clone)]
struct CompiledMatch<A> {
    protocols: ProtoSet,
    srcs: RangeSet<A>,
    dsts: Vec<CompiledDst<A>>,
}

/// The compiled rules of one address family.
#[derive(Debug, Clone)]
struct FamilyRules<A> {
    matches: Vec<CompiledMatch<A>>,
}

impl<A: FamilyAddr> FamilyRules<A> {
    fn matches(&self, protocol: u8, src: A, dst: A, dst_port: u16) -> bool {
        self.matches.iter().any(|m| {
            m.protocols.contains(protocol)
                && m.srcs.contains(src)
                && m.dsts
                    .iter()
                    .any(|d| d.contains(dst) && d.ports.contains(dst_port))
        })
    }

    fn matches_addresses(&self, src: A, dst: A) -> bool {
        self.matches
            .iter()
            .any(|m| m.srcs.contains(src) && m.dsts.iter().any(|d| d.contains(dst)))
    }

    fn matches_protocol_all_ports(&self, protocol: u8, src: A, dst: A) -> bool {
        self.matches.iter().any(|m| {
            m.protocols.contains(protocol)
                && m.srcs.contains(src)
                && m.dsts
                    .iter()
                    .any(|d| d.contains(dst) && d.ports == PortRange::ALL)
        })
    }
}

/// Immutable, compiled filter rules, meant to be shared behind an `Arc` by
/// every node that received the same rules.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    v4: FamilyRules<u32>,
    v6: FamilyRules<u128>,
}

impl Default for CompiledRules {
    fn default() -> Self {
        Self::deny_all()
    }
}

impl CompiledRules {
    /// Compiles rules. A rule keeps, per address family, only the sources and
    /// destinations of that family, and is dropped for a family where either
    /// side is empty.
    pub fn new(rules: &[FilterRule]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for rule in rules {
            let mut protocols = ProtoSet::default();
            let listed = if rule.ip_proto.is_empty() {
                &DEFAULT_PROTOCOLS[..]
            } else {
                &rule.ip_proto[..]
            };
            for &p in listed {
                protocols.insert(p);
            }

            let (mut srcs4, mut srcs6) = (Vec::new(), Vec::new());
            for src in &rule.src_ips {
                for range in src.ranges().into_iter().flatten() {
                    match range {
                        AddrRange::V4(f, l) => srcs4.push((f, l)),
                        AddrRange::V6(f, l) => srcs6.push((f, l)),
                    }
                }
            }
            let (mut dsts4, mut dsts6) = (Vec::new(), Vec::new());
            for dst in &rule.dst_ports {
                for range in dst.net.ranges().into_iter().flatten() {
                    match range {
                        AddrRange::V4(first, last) => dsts4.push(CompiledDst {
                            first,
                            last,
                            ports: dst.ports,
                        }),
                        AddrRange::V6(first, last) => dsts6.push(CompiledDst {
                            first,
                            last,
                            ports: dst.ports,
                        }),
                    }
                }
            }
            push_match(&mut v4, protocols, srcs4, dsts4);
            push_match(&mut v6, protocols, srcs6, dsts6);
        }
        CompiledRules {
            v4: FamilyRules { matches: v4 },
            v6: FamilyRules { matches: v6 },
        }
    }

    /// Rules that accept nothing (replies to outbound flows still pass).
    pub fn deny_all() -> Self {
        Self::new(&[])
    }

    /// True when no rule can accept anything.
    pub fn is_empty(&self) -> bool {
        self.v4.matches.is_empty() && self.v6.matches.is_empty()
    }

    /// Whether a rule accepts `protocol` from `src` to `dst:dst_port`.
    pub fn allows(&self, protocol: u8, src: IpAddr, dst: IpAddr, dst_port: u16) -> bool {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.v4.matches(protocol, s.into(), d.into(), dst_port)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                self.v6.matches(protocol, s.into(), d.into(), dst_port)
            }
            _ => false,
        }
    }

    /// Whether any rule lets `src` reach `dst` at all (used for ICMP).
    pub fn allows_addresses(&self, src: IpAddr, dst: IpAddr) -> bool {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.v4.matches_addresses(s.into(), d.into()),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.v6.matches_addresses(s.into(), d.into()),
            _ => false,
        }
    }

    /// Whether a rule names `protocol` and grants every port from `src` to
    /// `dst` (used for protocols without ports).
    pub fn allows_protocol_all_ports(&self, protocol: u8, src: IpAddr, dst: IpAddr) -> bool {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.v4
                    .matches_protocol_all_ports(protocol, s.into(), d.into())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                self.v6
                    .matches_protocol_all_ports(protocol, s.into(), d.into())
            }
            _ => false,
        }
    }
}

fn push_match<A: FamilyAddr>(
    out: &mut Vec<CompiledMatch<A>>,
    protocols: ProtoSet,
    srcs: Vec<(A, A)>,
    dsts: Vec<CompiledDst<A>>,
) {
    let srcs = RangeSet::new(srcs);
    if !srcs.is_empty() && !dsts.is_empty() {
        out.push(CompiledMatch {
            protocols,
            srcs,
            dsts,
        });
    }
}

#[cfg(test)]
mod tests;
