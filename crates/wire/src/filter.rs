//! The tailnet packet filter: which packets a node accepts from its peers.
//!
//! Control sends each node `FilterRule`s (source IPs, destination IP and port
//! ranges, IP protocols). [`FilterRule::parse`] turns their string form into
//! typed rules, [`CompiledRules::new`] compiles them into sorted address
//! ranges per address family for fast matching, and [`FilterState`] holds the
//! per-node part: its own addresses and a bounded connection-tracking table
//! so replies to the node's own outbound flows come back in. Compiled rules
//! are immutable and shared (`Arc`) by every pod that got the same rules;
//! each pod owns its `FilterState`. [`Filter`] bundles the two.
//!
//! Semantics follow Tailscale's `wgengine/filter`:
//! - the destination must be one of the node's own addresses;
//! - a rule accepts a packet when its protocol is in the rule's protocols
//!   (default TCP, UDP, ICMPv4, ICMPv6), its source is in any source entry,
//!   and its destination address and port are in any destination entry;
//! - ICMP is accepted when any rule lets the source reach the destination
//!   address at all, whatever the ports or protocols;
//! - other port-less protocols need a rule that names the protocol and
//!   grants all ports;
//! - no rules (an empty filter) accept nothing but replies.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::packet::{proto, IcmpKind, Packet, Transport};

/// Protocols a rule with an empty protocol list covers.
pub const DEFAULT_PROTOCOLS: [u8; 4] = [proto::TCP, proto::UDP, proto::ICMPV4, proto::ICMPV6];

/// Why a filter rule string could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterParseError {
    #[error("filter address {entry:?} is invalid: {reason}")]
    BadAddress { entry: String, reason: &'static str },
    #[error("filter IP protocol {0} is outside 0-255")]
    BadProtocol(i64),
}

/// A set of addresses as written in a rule: `*`, an IP, a CIDR prefix, or an
/// inclusive range `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrMatch {
    Any,
    Addr(IpAddr),
    Prefix { addr: IpAddr, len: u8 },
    Range { first: IpAddr, last: IpAddr },
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
    fn ranges(&self) -> [Option<AddrRange>; 2] {
        match *self {
            AddrMatch::Any => [
                Some(AddrRange::V4(0, u32::MAX)),
                Some(AddrRange::V6(0, u128::MAX)),
            ],
            AddrMatch::Addr(IpAddr::V4(a)) => [Some(AddrRange::V4(a.into(), a.into())), None],
            AddrMatch::Addr(IpAddr::V6(a)) => [Some(AddrRange::V6(a.into(), a.into())), None],
            AddrMatch::Prefix {
                addr: IpAddr::V4(a),
                len,
            } => {
                let host_bits = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                let first = u32::from(a) & !host_bits;
                [Some(AddrRange::V4(first, first | host_bits)), None]
            }
            AddrMatch::Prefix {
                addr: IpAddr::V6(a),
                len,
            } => {
                let host_bits = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                let first = u128::from(a) & !host_bits;
                [Some(AddrRange::V6(first, first | host_bits)), None]
            }
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
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// A destination entry: addresses and the ports allowed on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DstMatch {
    pub net: AddrMatch,
    pub ports: PortRange,
}

/// One rule of a node's packet filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterRule {
    pub src_ips: Vec<SrcMatch>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrRange {
    V4(u32, u32),
    V6(u128, u128),
}

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

/// What to do with an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop(DropReason),
}

/// Why an inbound packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The destination is not one of this node's addresses.
    NotLocalDestination,
    /// No rule accepts it and it is not a reply to a tracked flow.
    NoRuleMatched,
}

/// Limits of the connection-tracking table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Most flows tracked at once; the least recently used is evicted.
    pub capacity: usize,
    /// Idle lifetime of a TCP flow.
    pub tcp_idle: Duration,
    /// Idle lifetime of a UDP or SCTP flow.
    pub udp_idle: Duration,
    /// Idle lifetime of an ICMP echo exchange.
    pub icmp_idle: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 1024,
            tcp_idle: Duration::from_secs(300),
            udp_idle: Duration::from_secs(30),
            icmp_idle: Duration::from_secs(30),
        }
    }
}

/// A flow as seen from the node: protocol, local end, remote end. For ICMP
/// echo the local "port" is the echo identifier and the remote one is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    protocol: u8,
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
}

const NIL: usize = usize::MAX;

#[derive(Debug, Clone)]
struct FlowSlot {
    key: FlowKey,
    expires: Instant,
    /// Toward the most recently used end.
    newer: usize,
    /// Toward the least recently used end.
    older: usize,
}

/// A bounded LRU table of flows with idle expiry: a hash map into a slab of
/// slots threaded on a doubly linked recency list, so lookups, refreshes,
/// inserts and evictions are all O(1).
#[derive(Debug, Clone)]
struct Conntrack {
    index: HashMap<FlowKey, usize>,
    slots: Vec<FlowSlot>,
    free: Vec<usize>,
    newest: usize,
    oldest: usize,
    capacity: usize,
}

impl Conntrack {
    fn new(capacity: usize) -> Self {
        Conntrack {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// Inserts or refreshes a flow.
    fn track(&mut self, key: FlowKey, expires: Instant) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&slot) = self.index.get(&key) {
            self.slots[slot].expires = expires;
            self.move_to_newest(slot);
            return;
        }
        if self.index.len() >= self.capacity {
            self.remove(self.oldest);
        }
        let fresh = FlowSlot {
            key,
            expires,
            newer: NIL,
            older: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = fresh;
                slot
            }
            None => {
                self.slots.push(fresh);
                self.slots.len() - 1
            }
        };
        self.index.insert(key, slot);
        self.link_newest(slot);
    }

    /// True when the flow is tracked and live; a live hit is refreshed to
    /// `refreshed_expiry`, an expired one is removed.
    fn hit(&mut self, key: &FlowKey, now: Instant, refreshed_expiry: Instant) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        if self.slots[slot].expires <= now {
            self.remove(slot);
            return false;
        }
        self.slots[slot].expires = refreshed_expiry;
        self.move_to_newest(slot);
        true
    }

    /// Removes every expired flow; returns how many.
    fn sweep(&mut self, now: Instant) -> usize {
        let expired: Vec<usize> = self
            .index
            .values()
            .copied()
            .filter(|&slot| self.slots[slot].expires <= now)
            .collect();
        for &slot in &expired {
            self.remove(slot);
        }
        expired.len()
    }

    fn remove(&mut self, slot: usize) {
        if slot == NIL {
            return;
        }
        self.unlink(slot);
        let key = self.slots[slot].key;
        self.index.remove(&key);
        self.free.push(slot);
    }

    fn unlink(&mut self, slot: usize) {
        let FlowSlot { newer, older, .. } = self.slots[slot];
        if newer == NIL {
            self.newest = older;
        } else {
            self.slots[newer].older = older;
        }
        if older == NIL {
            self.oldest = newer;
        } else {
            self.slots[older].newer = newer;
        }
        self.slots[slot].newer = NIL;
        self.slots[slot].older = NIL;
    }

    fn link_newest(&mut self, slot: usize) {
        self.slots[slot].older = self.newest;
        self.slots[slot].newer = NIL;
        if self.newest != NIL {
            self.slots[self.newest].newer = slot;
        }
        self.newest = slot;
        if self.oldest == NIL {
            self.oldest = slot;
        }
    }

    fn move_to_newest(&mut self, slot: usize) {
        if self.newest != slot {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }
}

/// The per-node half of the filter: the node's own addresses and the flows
/// it opened.
#[derive(Debug, Clone)]
pub struct FilterState {
    local_addrs: Vec<IpAddr>,
    conntrack: Conntrack,
    config: ConntrackConfig,
}

impl FilterState {
    /// `local_addrs` are the node's own tailnet addresses: inbound packets to
    /// anything else are dropped.
    pub fn new(local_addrs: impl IntoIterator<Item = IpAddr>, config: ConntrackConfig) -> Self {
        FilterState {
            local_addrs: local_addrs.into_iter().collect(),
            conntrack: Conntrack::new(config.capacity),
            config,
        }
    }

    /// Replaces the node's addresses (tracked flows are kept).
    pub fn set_local_addrs(&mut self, local_addrs: impl IntoIterator<Item = IpAddr>) {
        self.local_addrs = local_addrs.into_iter().collect();
    }

    pub fn local_addrs(&self) -> &[IpAddr] {
        &self.local_addrs
    }

    /// Number of flows currently in the table (expired ones included until
    /// they are looked up or swept).
    pub fn tracked_flows(&self) -> usize {
        self.conntrack.len()
    }

    /// Drops expired flows; returns how many. Lookups ignore expired flows
    /// anyway, so this only reclaims memory.
    pub fn sweep_expired(&mut self, now: Instant) -> usize {
        self.conntrack.sweep(now)
    }

    /// Decides whether a packet arriving from a peer may reach the node.
    pub fn check_inbound(
        &mut self,
        rules: &CompiledRules,
        packet: &Packet<'_>,
        now: Instant,
    ) -> Verdict {
        if !self.local_addrs.contains(&packet.dst) {
            return Verdict::Drop(DropReason::NotLocalDestination);
        }
        let accepted = match packet.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } => {
                // Like Tailscale, only connection-opening SYNs are judged by
                // the rules; every other segment passes. A peer cannot open
                // a connection without a SYN, so this admits exactly the
                // connections the node opened (whose SYN-ACK has ACK set)
                // or the rules allowed, without tracking every TCP flow.
                // A tracked outbound SYN also admits a simultaneous open.
                !flags.is_initial_syn()
                    || self.inbound_hit(proto::TCP, packet, src_port, dst_port, now)
                    || rules.allows(proto::TCP, packet.src, packet.dst, dst_port)
            }
            Transport::Udp { src_port, dst_port } | Transport::Sctp { src_port, dst_port } => {
                self.inbound_hit(packet.protocol, packet, src_port, dst_port, now)
                    || rules.allows(packet.protocol, packet.src, packet.dst, dst_port)
            }
            Transport::Icmp { kind, .. } => match kind {
                // Error reports concern flows the node already has; accept
                // them as Tailscale does (path MTU discovery needs them).
                IcmpKind::Error(_) => true,
                IcmpKind::EchoReply { id, .. } => {
                    self.inbound_hit(packet.protocol, packet, 0, id, now)
                        || rules.allows_addresses(packet.src, packet.dst)
                }
                IcmpKind::EchoRequest { .. } | IcmpKind::Other(_) => {
                    rules.allows_addresses(packet.src, packet.dst)
                }
            },
            // Later fragments carry no ports to judge; the first fragment
            // was judged, and without it the node cannot reassemble them.
            Transport::NonFirstFragment => true,
            Transport::Other => {
                rules.allows_protocol_all_ports(packet.protocol, packet.src, packet.dst)
            }
        };
        if accepted {
            Verdict::Accept
        } else {
            Verdict::Drop(DropReason::NoRuleMatched)
        }
    }

    /// Records a packet the node sends, so the replies pass
    /// [`FilterState::check_inbound`]: UDP and SCTP flows, TCP connection
    /// openings, and ICMP echo requests.
    pub fn note_outbound(&mut self, packet: &Packet<'_>, now: Instant) {
        let (local_port, remote_port, idle) = match packet.transport {
            Transport::Udp { src_port, dst_port } | Transport::Sctp { src_port, dst_port } => {
                (src_port, dst_port, self.config.udp_idle)
            }
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } if flags.is_initial_syn() => (src_port, dst_port, self.config.tcp_idle),
            Transport::Icmp {
                kind: IcmpKind::EchoRequest { id, .. },
                ..
            } => (id, 0, self.config.icmp_idle),
            _ => return,
        };
        let key = FlowKey {
            protocol: packet.protocol,
            local: packet.src,
            local_port,
            remote: packet.dst,
            remote_port,
        };
        self.conntrack.track(key, now + idle);
    }

    fn inbound_hit(
        &mut self,
        protocol: u8,
        packet: &Packet<'_>,
        remote_port: u16,
        local_port: u16,
        now: Instant,
    ) -> bool {
        let key = FlowKey {
            protocol,
            local: packet.dst,
            local_port,
            remote: packet.src,
            remote_port,
        };
        let idle = match protocol {
            proto::TCP => self.config.tcp_idle,
            proto::ICMPV4 | proto::ICMPV6 => self.config.icmp_idle,
            _ => self.config.udp_idle,
        };
        self.conntrack.hit(&key, now, now + idle)
    }
}

/// One node's filter: shared compiled rules plus its own state.
#[derive(Debug, Clone)]
pub struct Filter {
    rules: Arc<CompiledRules>,
    state: FilterState,
}

impl Filter {
    pub fn new(
        rules: Arc<CompiledRules>,
        local_addrs: impl IntoIterator<Item = IpAddr>,
        config: ConntrackConfig,
    ) -> Self {
        Filter {
            rules,
            state: FilterState::new(local_addrs, config),
        }
    }

    /// Swaps in new rules; tracked flows survive, so established replies
    /// keep flowing across a netmap update.
    pub fn set_rules(&mut self, rules: Arc<CompiledRules>) {
        self.rules = rules;
    }

    pub fn rules(&self) -> &Arc<CompiledRules> {
        &self.rules
    }

    pub fn state(&self) -> &FilterState {
        &self.state
    }

    pub fn state_mut(&mut self) -> &mut FilterState {
        &mut self.state
    }

    /// See [`FilterState::check_inbound`].
    pub fn check_inbound(&mut self, packet: &Packet<'_>, now: Instant) -> Verdict {
        self.state.check_inbound(&self.rules, packet, now)
    }

    /// See [`FilterState::note_outbound`].
    pub fn note_outbound(&mut self, packet: &Packet<'_>, now: Instant) {
        self.state.note_outbound(packet, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build;
    use crate::packet::TcpFlags;

    const POD4: &str = "100.64.0.10";
    const POD6: &str = "fd7a:115c:a1e0::a";
    const PEER4: &str = "100.64.0.20";
    const PEER6: &str = "fd7a:115c:a1e0::14";
    const STRANGER4: &str = "100.64.0.99";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(srcs: &[&str], dsts: &[(&str, u16, u16)], protos: &[u8]) -> FilterRule {
        FilterRule::parse(srcs, dsts.iter().copied(), protos.iter().copied()).unwrap()
    }

    fn state() -> FilterState {
        FilterState::new([ip(POD4), ip(POD6)], ConntrackConfig::default())
    }

    fn verdict(
        state: &mut FilterState,
        rules: &CompiledRules,
        raw: &[u8],
        now: Instant,
    ) -> Verdict {
        state.check_inbound(rules, &Packet::parse(raw).unwrap(), now)
    }

    const DENIED: Verdict = Verdict::Drop(DropReason::NoRuleMatched);

    #[test]
    fn parses_every_address_form() {
        assert_eq!("*".parse(), Ok(AddrMatch::Any));
        assert_eq!("100.64.0.1".parse(), Ok(AddrMatch::Addr(ip("100.64.0.1"))));
        assert_eq!(
            "100.64.0.0/10".parse(),
            Ok(AddrMatch::Prefix {
                addr: ip("100.64.0.0"),
                len: 10
            })
        );
        assert_eq!(
            "fd7a:115c:a1e0::/48".parse(),
            Ok(AddrMatch::Prefix {
                addr: ip("fd7a:115c:a1e0::"),
                len: 48
            })
        );
        assert_eq!(
            "100.64.0.1-100.64.0.9".parse(),
            Ok(AddrMatch::Range {
                first: ip("100.64.0.1"),
                last: ip("100.64.0.9")
            })
        );
        for bad in [
            "",
            "100.64.0.0/33",
            "::/129",
            "1.2.3.4-::1",
            "1.2.3.9-1.2.3.1",
            "tag:web",
            "1.2.3/8",
            "autogroup:internet",
        ] {
            assert!(
                bad.parse::<AddrMatch>().is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn addr_match_contains() {
        let prefix: AddrMatch = "100.64.1.7/24".parse().unwrap();
        assert!(prefix.contains(ip("100.64.1.0")) && prefix.contains(ip("100.64.1.255")));
        assert!(!prefix.contains(ip("100.64.2.0")));
        assert!(!prefix.contains(ip("fd7a:115c:a1e0::1")));
        let range: AddrMatch = "fd7a::5-fd7a::9".parse().unwrap();
        assert!(range.contains(ip("fd7a::5")) && range.contains(ip("fd7a::9")));
        assert!(!range.contains(ip("fd7a::a")) && !range.contains(ip("fd7a::4")));
        let zero: AddrMatch = "0.0.0.0/0".parse().unwrap();
        assert!(zero.contains(ip("255.255.255.255")) && !zero.contains(ip("::1")));
        let any = AddrMatch::Any;
        assert!(any.contains(ip("1.1.1.1")) && any.contains(ip("::1")));
    }

    #[test]
    fn strict_and_lenient_parsing() {
        let err = FilterRule::parse(["*", "bogus"], [("*", 22, 22)], [6i64]).unwrap_err();
        assert!(matches!(err, FilterParseError::BadAddress { ref entry, .. } if entry == "bogus"));
        assert_eq!(
            FilterRule::parse(["*"], [("*", 22, 22)], [6i64, 300]),
            Err(FilterParseError::BadProtocol(300))
        );

        let (rule, errors) = FilterRule::parse_lenient(
            ["bogus", PEER4],
            [("nope", 1, 1), (POD4, 22, 22)],
            [6i64, -1],
        );
        assert_eq!(errors.len(), 3);
        assert_eq!(rule.src_ips, vec![AddrMatch::Addr(ip(PEER4))]);
        assert_eq!(rule.dst_ports.len(), 1);
        assert_eq!(rule.ip_proto, vec![6]);

        // Only invalid protocols: the rule must match nothing, not default.
        let (rule, _) = FilterRule::parse_lenient(["*"], [("*", 0, 65535)], [999i64]);
        let rules = CompiledRules::new(&[rule]);
        assert!(rules.is_empty());
    }

    #[test]
    fn empty_rules_deny_all_unsolicited() {
        let rules = CompiledRules::deny_all();
        assert!(rules.is_empty());
        let mut st = state();
        let now = Instant::now();
        for raw in [
            build::tcp(PEER4, 5000, POD4, 22, TcpFlags::SYN),
            build::udp(PEER6, 5000, POD6, 53),
            build::echo(PEER4, POD4, true, 1),
            build::echo(PEER6, POD6, true, 1),
        ] {
            assert_eq!(verdict(&mut st, &rules, &raw, now), DENIED);
        }
    }

    #[test]
    fn destination_must_be_local() {
        let rules = CompiledRules::new(&[rule(&["*"], &[("*", 0, 65535)], &[])]);
        let mut st = state();
        let raw = build::tcp(PEER4, 5000, "100.64.0.11", 22, TcpFlags::ACK);
        assert_eq!(
            verdict(&mut st, &rules, &raw, Instant::now()),
            Verdict::Drop(DropReason::NotLocalDestination)
        );
    }

    #[test]
    fn source_matching() {
        let rules = CompiledRules::new(&[rule(
            &[PEER4, "100.64.1.0/24", "100.64.2.5-100.64.2.9", PEER6],
            &[("*", 22, 22)],
            &[],
        )]);
        let mut st = state();
        let now = Instant::now();
        for (src, allowed) in [
            (PEER4, true),
            ("100.64.1.200", true),
            ("100.64.2.5", true),
            ("100.64.2.9", true),
            ("100.64.2.10", false),
            ("100.64.0.21", false),
            (STRANGER4, false),
        ] {
            let raw = build::tcp(src, 40000, POD4, 22, TcpFlags::SYN);
            let expected = if allowed { Verdict::Accept } else { DENIED };
            assert_eq!(verdict(&mut st, &rules, &raw, now), expected, "from {src}");
        }
        let raw = build::tcp(PEER6, 40000, POD6, 22, TcpFlags::SYN);
        assert_eq!(verdict(&mut st, &rules, &raw, now), Verdict::Accept);
        let raw = build::tcp("fd7a:115c:a1e0::15", 40000, POD6, 22, TcpFlags::SYN);
        assert_eq!(verdict(&mut st, &rules, &raw, now), DENIED);
    }

    #[test]
    fn destination_port_ranges() {
        let rules = CompiledRules::new(&[rule(
            &["*"],
            &[
                (POD4, 80, 80),
                (POD4, 8000, 8999),
                ("fd7a:115c:a1e0::/48", 443, 443),
            ],
            &[],
        )]);
        let mut st = state();
        let now = Instant::now();
        for (port, allowed) in [
            (80, true),
            (81, false),
            (7999, false),
            (8000, true),
            (8999, true),
            (9000, false),
            (443, false),
        ] {
            let raw = build::tcp(PEER4, 40000, POD4, port, TcpFlags::SYN);
            let expected = if allowed { Verdict::Accept } else { DENIED };
            assert_eq!(verdict(&mut st, &rules, &raw, now), expected, "port {port}");
        }
        let raw = build::udp(PEER6, 40000, POD6, 443);
        assert_eq!(verdict(&mut st, &rules, &raw, now), Verdict::Accept);
        let raw = build::udp(PEER6, 40000, POD6, 80);
        assert_eq!(verdict(&mut st, &rules, &raw, now), DENIED);
    }

    #[test]
    fn protocol_lists() {
        let udp_only = CompiledRules::new(&[rule(&["*"], &[("*", 0, 65535)], &[proto::UDP])]);
        let mut st = state();
        let now = Instant::now();
        assert_eq!(
            verdict(&mut st, &udp_only, &build::udp(PEER4, 1, POD4, 53), now),
            Verdict::Accept
        );
        assert_eq!(
            verdict(
                &mut st,
                &udp_only,
                &build::tcp(PEER4, 1, POD4, 53, TcpFlags::SYN),
                now
            ),
            DENIED
        );

        // Port-less protocols need the protocol named and all ports granted.
        let gre = build::ip(ip(PEER4), ip(POD4), 47, &[0; 4]);
        assert_eq!(verdict(&mut st, &udp_only, &gre, now), DENIED);
        let with_gre = CompiledRules::new(&[rule(&["*"], &[("*", 0, 65535)], &[47])]);
        assert_eq!(verdict(&mut st, &with_gre, &gre, now), Verdict::Accept);
        let gre_some_ports = CompiledRules::new(&[rule(&["*"], &[("*", 1, 65535)], &[47])]);
        assert_eq!(verdict(&mut st, &gre_some_ports, &gre, now), DENIED);
        // Default protocols do not include GRE.
        let defaults = CompiledRules::new(&[rule(&["*"], &[("*", 0, 65535)], &[])]);
        assert_eq!(verdict(&mut st, &defaults, &gre, now), DENIED);
    }

    #[test]
    fn star_rules_allow_everything_to_local_addresses() {
        let rules = CompiledRules::new(&[rule(&["*"], &[("*", 0, 65535)], &[])]);
        let mut st = state();
        let now = Instant::now();
        for raw in [
            build::tcp(STRANGER4, 1, POD4, 22, TcpFlags::SYN),
            build::udp(PEER6, 1, POD6, 9),
            build::echo(STRANGER4, POD4, true, 5),
            build::echo(PEER6, POD6, true, 5),
        ] {
            assert_eq!(verdict(&mut st, &rules, &raw, now), Verdict::Accept);
        }
    }

    #[test]
    fn tcp_non_syn_passes_and_syn_is_judged() {
        let rules = CompiledRules::deny_all();
        let mut st = state();
        let now = Instant::now();
        for flags in [
            TcpFlags::ACK,
            TcpFlags::SYN | TcpFlags::ACK,
            TcpFlags::RST,
            TcpFlags::FIN | TcpFlags::ACK,
        ] {
            let raw = build::tcp(PEER4, 22, POD4, 40000, flags);
            assert_eq!(
                verdict(&mut st, &rules, &raw, now),
                Verdict::Accept,
                "flags {flags:#x}"
            );
        }
        let raw = build::tcp(PEER4, 22, POD4, 40000, TcpFlags::SYN);
        assert_eq!(verdict(&mut st, &rules, &raw, now), DENIED);

        // A SYN on a connection the pod itself opened (simultaneous open).
        let out = build::tcp(POD4, 40000, PEER4, 22, TcpFlags::SYN);
        st.note_outbound(&Packet::parse(&out).unwrap(), now);
        assert_eq!(verdict(&mut st, &rules, &raw, now), Verdict::Accept);
    }

    #[test]
    fn udp_return_traffic_of_outbound_flows() {
        let rules = CompiledRules::deny_all();
        let mut st = state();
        let t0 = Instant::now();
        let out = build::udp(POD4, 5353, PEER4, 53);
        st.note_outbound(&Packet::parse(&out).unwrap(), t0);
        assert_eq!(st.tracked_flows(), 1);

        let reply = build::udp(PEER4, 53, POD4, 5353);
        assert_eq!(
            verdict(&mut st, &rules, &reply, t0 + Duration::from_secs(1)),
            Verdict::Accept
        );
        // Only the exact reverse 5-tuple is a reply.
        for other in [
            build::udp(PEER4, 54, POD4, 5353),
            build::udp(PEER4, 53, POD4, 5354),
            build::udp(STRANGER4, 53, POD4, 5353),
        ] {
            assert_eq!(verdict(&mut st, &rules, &other, t0), DENIED);
        }
        let v6_out = build::udp(POD6, 1000, PEER6, 2000);
        st.note_outbound(&Packet::parse(&v6_out).unwrap(), t0);
        let v6_reply = build::udp(PEER6, 2000, POD6, 1000);
        assert_eq!(verdict(&mut st, &rules, &v6_reply, t0), Verdict::Accept);
    }

    #[test]
    fn icmp_echo() {
        let rules = CompiledRules::deny_all();
        let mut st = state();
        let now = Instant::now();
        let reply = build::echo(PEER4, POD4, false, 77);
        assert_eq!(verdict(&mut st, &rules, &reply, now), DENIED);
        st.note_outbound(
            &Packet::parse(&build::echo(POD4, PEER4, true, 77)).unwrap(),
            now,
        );
        assert_eq!(verdict(&mut st, &rules, &reply, now), Verdict::Accept);
        assert_eq!(
            verdict(&mut st, &rules, &build::echo(PEER4, POD4, false, 78), now),
            DENIED
        );
        st.note_outbound(
            &Packet::parse(&build::echo(POD6, PEER6, true, 1)).unwrap(),
            now,
        );
        assert_eq!(
            verdict(&mut st, &rules, &build::echo(PEER6, POD6, false, 1), now),
            Verdict::Accept
        );

        // Echo requests: allowed when any rule lets the source reach the
        // destination, whatever its ports and protocols.
        let ssh_only = CompiledRules::new(&[rule(&[PEER4], &[(POD4, 22, 22)], &[proto::TCP])]);
        assert_eq!(
            verdict(&mut st, &ssh_only, &build::echo(PEER4, POD4, true, 9), now),
            Verdict::Accept
        );
        assert_eq!(
            verdict(
                &mut st,
                &ssh_only,
                &build::echo(STRANGER4, POD4, true, 9),
                now
            ),
            DENIED
        );

        // ICMP errors are accepted.
        let unreachable = build::ip(
            ip(STRANGER4),
            ip(POD4),
            proto::ICMPV4,
            &build::icmp_header(3, 0, 0),
        );
        assert_eq!(verdict(&mut st, &rules, &unreachable, now), Verdict::Accept);
    }

    #[test]
    fn flows_expire() {
        let config = ConntrackConfig {
            capacity: 16,
            tcp_idle: Duration::from_secs(300),
            udp_idle: Duration::from_secs(30),
            icmp_idle: Duration::from_secs(10),
        };
        let rules = CompiledRules::deny_all();
        let mut st = FilterState::new([ip(POD4)], config);
        let t0 = Instant::now();
        st.note_outbound(&Packet::parse(&build::udp(POD4, 1, PEER4, 2)).unwrap(), t0);
        st.note_outbound(
            &Packet::parse(&build::echo(POD4, PEER4, true, 3)).unwrap(),
            t0,
        );
        st.note_outbound(
            &Packet::parse(&build::tcp(POD4, 4, PEER4, 5, TcpFlags::SYN)).unwrap(),
            t0,
        );
        assert_eq!(st.tracked_flows(), 3);

        let udp_reply = build::udp(PEER4, 2, POD4, 1);
        let echo_reply = build::echo(PEER4, POD4, false, 3);
        let tcp_syn = build::tcp(PEER4, 5, POD4, 4, TcpFlags::SYN);

        // A reply refreshes the idle timer.
        assert_eq!(
            verdict(&mut st, &rules, &udp_reply, t0 + Duration::from_secs(25)),
            Verdict::Accept
        );
        assert_eq!(
            verdict(&mut st, &rules, &udp_reply, t0 + Duration::from_secs(50)),
            Verdict::Accept
        );
        assert_eq!(
            verdict(&mut st, &rules, &echo_reply, t0 + Duration::from_secs(11)),
            DENIED
        );
        assert_eq!(
            verdict(&mut st, &rules, &udp_reply, t0 + Duration::from_secs(81)),
            DENIED
        );
        assert_eq!(
            verdict(&mut st, &rules, &tcp_syn, t0 + Duration::from_secs(299)),
            Verdict::Accept
        );
        // Expired flows found by lookups are gone; the TCP one remains.
        assert_eq!(st.tracked_flows(), 1);
        assert_eq!(st.sweep_expired(t0 + Duration::from_secs(598)), 0);
        assert_eq!(st.sweep_expired(t0 + Duration::from_secs(599)), 1);
        assert_eq!(st.tracked_flows(), 0);
    }

    #[test]
    fn outbound_refresh_extends_lifetime() {
        let rules = CompiledRules::deny_all();
        let mut st = state();
        let t0 = Instant::now();
        let out = Packet::parse(&build::udp(POD4, 1, PEER4, 2))
            .unwrap()
            .bytes()
            .to_vec();
        st.note_outbound(&Packet::parse(&out).unwrap(), t0);
        st.note_outbound(&Packet::parse(&out).unwrap(), t0 + Duration::from_secs(20));
        assert_eq!(st.tracked_flows(), 1);
        let reply = build::udp(PEER4, 2, POD4, 1);
        assert_eq!(
            verdict(&mut st, &rules, &reply, t0 + Duration::from_secs(45)),
            Verdict::Accept
        );
    }

    #[test]
    fn capacity_bound_evicts_least_recently_used() {
        let config = ConntrackConfig {
            capacity: 3,
            ..ConntrackConfig::default()
        };
        let rules = CompiledRules::deny_all();
        let mut st = FilterState::new([ip(POD4)], config);
        let t0 = Instant::now();
        let out = |port| build::udp(POD4, port, PEER4, 53);
        let reply = |port| build::udp(PEER4, 53, POD4, port);
        for port in [1, 2, 3] {
            st.note_outbound(&Packet::parse(&out(port)).unwrap(), t0);
        }
        // Touch flow 1 so flow 2 becomes the least recently used.
        assert_eq!(verdict(&mut st, &rules, &reply(1), t0), Verdict::Accept);
        st.note_outbound(&Packet::parse(&out(4)).unwrap(), t0);
        assert_eq!(st.tracked_flows(), 3);
        assert_eq!(verdict(&mut st, &rules, &reply(2), t0), DENIED);
        for port in [1, 3, 4] {
            assert_eq!(
                verdict(&mut st, &rules, &reply(port), t0),
                Verdict::Accept,
                "port {port}"
            );
        }
        // Many more flows never exceed the bound, and the newest survive.
        for port in 100..1000 {
            st.note_outbound(&Packet::parse(&out(port)).unwrap(), t0);
            assert!(st.tracked_flows() <= 3);
        }
        for port in 997..1000 {
            assert_eq!(verdict(&mut st, &rules, &reply(port), t0), Verdict::Accept);
        }
        assert_eq!(verdict(&mut st, &rules, &reply(996), t0), DENIED);
    }

    #[test]
    fn zero_capacity_tracks_nothing() {
        let config = ConntrackConfig {
            capacity: 0,
            ..ConntrackConfig::default()
        };
        let mut st = FilterState::new([ip(POD4)], config);
        st.note_outbound(
            &Packet::parse(&build::udp(POD4, 1, PEER4, 2)).unwrap(),
            Instant::now(),
        );
        assert_eq!(st.tracked_flows(), 0);
    }

    #[test]
    fn fragments() {
        let rules = CompiledRules::new(&[rule(&["*"], &[(POD4, 53, 53)], &[])]);
        let mut st = state();
        let now = Instant::now();
        let mut first = build::udp(PEER4, 1, POD4, 9);
        first[6] = 0x20; // MF
        assert_eq!(verdict(&mut st, &rules, &first, now), DENIED);
        let mut later = build::ip(ip(PEER4), ip(POD4), proto::UDP, &[0; 16]);
        later[7] = 0x10; // offset 16 * 8
        assert_eq!(verdict(&mut st, &rules, &later, now), Verdict::Accept);
        let mut elsewhere = build::ip(ip(PEER4), ip("100.64.0.11"), proto::UDP, &[0; 16]);
        elsewhere[7] = 0x10;
        assert_eq!(
            verdict(&mut st, &rules, &elsewhere, now),
            Verdict::Drop(DropReason::NotLocalDestination)
        );
    }

    #[test]
    fn family_split_and_overlapping_sources() {
        // One rule with both families; sources overlap and touch.
        let rules = CompiledRules::new(&[rule(
            &[
                "100.64.0.0/24",
                "100.64.0.128-100.64.1.5",
                "100.64.1.6",
                "fd7a:115c:a1e0::/48",
            ],
            &[(POD4, 1, 1), (POD6, 2, 2)],
            &[],
        )]);
        assert_eq!(
            rules.v4.matches[0].srcs.ranges.len(),
            1,
            "merged v4 sources"
        );
        assert!(rules.allows(proto::UDP, ip("100.64.1.6"), ip(POD4), 1));
        assert!(!rules.allows(proto::UDP, ip("100.64.1.7"), ip(POD4), 1));
        assert!(!rules.allows(proto::UDP, ip("100.64.0.1"), ip(POD4), 2));
        assert!(rules.allows(proto::UDP, ip(PEER6), ip(POD6), 2));
        assert!(!rules.allows(proto::UDP, ip(PEER6), ip(POD6), 1));
        assert!(!rules.allows(proto::UDP, ip(PEER4), ip(POD6), 2));

        // A rule whose sources are only IPv4 cannot admit IPv6 traffic.
        let v4_only = CompiledRules::new(&[rule(&[PEER4], &[("*", 0, 65535)], &[])]);
        assert!(v4_only.v6.matches.is_empty());
        assert!(!v4_only.allows_addresses(ip(PEER6), ip(POD6)));
    }

    #[test]
    fn range_set_edges() {
        let set = RangeSet::new(vec![
            (10u32, 20),
            (0, 0),
            (21, 30),
            (u32::MAX, u32::MAX),
            (40, 50),
        ]);
        assert_eq!(
            set.ranges,
            vec![(0, 0), (10, 30), (40, 50), (u32::MAX, u32::MAX)]
        );
        for (a, inside) in [
            (0, true),
            (1, false),
            (10, true),
            (30, true),
            (31, false),
            (45, true),
            (u32::MAX, true),
            (u32::MAX - 1, false),
        ] {
            assert_eq!(set.contains(a), inside, "{a}");
        }
        let full = RangeSet::new(vec![(0u128, u128::MAX), (5, 6)]);
        assert_eq!(full.ranges, vec![(0, u128::MAX)]);
    }

    #[test]
    fn filter_shares_rules_and_keeps_state_across_updates() {
        let shared = Arc::new(CompiledRules::deny_all());
        let mut pod_a = Filter::new(shared.clone(), [ip(POD4)], ConntrackConfig::default());
        let mut pod_b = Filter::new(
            shared.clone(),
            [ip("100.64.0.11")],
            ConntrackConfig::default(),
        );
        assert!(Arc::ptr_eq(pod_a.rules(), pod_b.rules()));
        let now = Instant::now();
        pod_a.note_outbound(&Packet::parse(&build::udp(POD4, 1, PEER4, 2)).unwrap(), now);
        let reply = build::udp(PEER4, 2, POD4, 1);
        assert_eq!(
            pod_a.check_inbound(&Packet::parse(&reply).unwrap(), now),
            Verdict::Accept
        );
        // Pod B's conntrack is its own.
        let reply_b = build::udp(PEER4, 2, "100.64.0.11", 1);
        assert_eq!(
            pod_b.check_inbound(&Packet::parse(&reply_b).unwrap(), now),
            DENIED
        );

        // New rules keep established flows and open new ports.
        pod_a.set_rules(Arc::new(CompiledRules::new(&[rule(
            &["*"],
            &[("*", 22, 22)],
            &[],
        )])));
        assert_eq!(
            pod_a.check_inbound(&Packet::parse(&reply).unwrap(), now),
            Verdict::Accept
        );
        let ssh = build::tcp(PEER4, 9, POD4, 22, TcpFlags::SYN);
        assert_eq!(
            pod_a.check_inbound(&Packet::parse(&ssh).unwrap(), now),
            Verdict::Accept
        );
        assert_eq!(
            pod_b.check_inbound(&Packet::parse(&ssh.clone()).unwrap(), now),
            Verdict::Drop(DropReason::NotLocalDestination)
        );
    }
}
