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
//! `rules` parses what control sends, `compiled` matches packets against
//! it, `conntrack` is the bounded table of flows; this module decides.
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

mod compiled;
mod conntrack;
mod rules;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::packet::{proto, IcmpKind, Packet, Transport};

pub use self::compiled::CompiledRules;
pub use self::conntrack::ConntrackConfig;
use self::conntrack::{Conntrack, FlowKey};
pub use self::rules::{
    AddrMatch, DstMatch, FilterParseError, FilterRule, PortRange, SrcMatch, DEFAULT_PROTOCOLS,
};

/// What to do with an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver the packet.
    Accept,
    /// Drop the packet, for this reason.
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

    /// The node's own tailnet addresses.
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
        let idle = self.config.idle_for(protocol);
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
    /// A filter for a node with `local_addrs`, matching against `rules`.
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

    /// The compiled rules this filter matches against.
    pub fn rules(&self) -> &Arc<CompiledRules> {
        &self.rules
    }

    /// The node's half: its addresses and tracked flows.
    pub fn state(&self) -> &FilterState {
        &self.state
    }

    /// The node's half, to update its addresses or flows.
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
mod tests;
