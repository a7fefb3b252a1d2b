//! IP packet parsing and the stateful tailnet packet filter.
//!
//! Rules are parsed from their string form (as control sends them), then a
//! sequence of outbound packets, inbound packets (constructed or raw), clock
//! steps and sweeps runs through a `FilterState`. A plain reference model
//! (rules checked one by one, connection tracking as an ordered list) runs
//! beside it.
//!
//! Asserts: no panic; constructed packets parse back to what was built;
//! parsed views stay inside the input; the compiled rules decide exactly
//! like the rules checked one by one; every verdict and the number of
//! tracked flows match the model (LRU eviction, idle expiry, sweeping).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tailnet_wire::filter::{
    AddrMatch, CompiledRules, ConntrackConfig, DropReason, FilterRule, FilterState, PortRange,
    Verdict, DEFAULT_PROTOCOLS,
};
use tailnet_wire::packet::{proto, IcmpKind, IpVersion, Packet, Transport};

/// Few addresses and ports, so rules, flows and packets meet often.
fn v4(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 64, 0, i % 8))
}
fn v6(i: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd7a,
        0x115c,
        0xa1e0,
        0,
        0,
        0,
        0,
        u16::from(i % 8),
    ))
}
fn port(p: u8) -> u16 {
    [22, 53, 80, 443, 1000, 1001, 65535, 0][usize::from(p % 8)]
}

#[derive(Arbitrary, Debug)]
enum AddrSpec {
    Any,
    Host { v6: bool, i: u8 },
    Prefix { v6: bool, i: u8, len: u8 },
    Range { v6: bool, first: u8, last: u8 },
    Text(String),
}

impl AddrSpec {
    fn text(&self) -> String {
        let ip = |v6_: bool, i: u8| if v6_ { v6(i) } else { v4(i) };
        match self {
            AddrSpec::Any => "*".into(),
            AddrSpec::Host { v6, i } => ip(*v6, *i).to_string(),
            AddrSpec::Prefix { v6, i, len } => {
                format!("{}/{}", ip(*v6, *i), len % if *v6 { 130 } else { 34 })
            }
            AddrSpec::Range { v6, first, last } => {
                format!("{}-{}", ip(*v6, *first), ip(*v6, *last))
            }
            AddrSpec::Text(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct RuleSpec {
    srcs: Vec<AddrSpec>,
    dsts: Vec<(AddrSpec, u8, u8)>,
    protos: Vec<i16>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Tcp { sport: u8, dport: u8, flags: u8 },
    Udp { sport: u8, dport: u8 },
    Sctp { sport: u8, dport: u8 },
    EchoRequest { id: u8 },
    EchoReply { id: u8 },
    IcmpError,
    IcmpOther(u8),
    Protocol(u8),
    LaterFragment { protocol: u8 },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct PacketSpec {
    v6: bool,
    src: u8,
    dst: u8,
    kind: Kind,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Outbound(PacketSpec),
    Inbound(PacketSpec),
    RawOutbound(Vec<u8>),
    RawInbound(Vec<u8>),
    Advance(u8),
    Sweep,
    SetLocal(Vec<(bool, u8)>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<RuleSpec>,
    local: Vec<(bool, u8)>,
    capacity: u8,
    ops: Vec<Op>,
}

fn build(spec: &PacketSpec) -> Vec<u8> {
    let (src, dst) = if spec.v6 {
        (v6(spec.src), v6(spec.dst))
    } else {
        (v4(spec.src), v4(spec.dst))
    };
    let icmp = if spec.v6 {
        proto::ICMPV6
    } else {
        proto::ICMPV4
    };
    let (echo_request, echo_reply, error) = if spec.v6 { (128, 129, 1) } else { (8, 0, 3) };
    let ports = |s: u8, d: u8| {
        let mut t = port(s).to_be_bytes().to_vec();
        t.extend_from_slice(&port(d).to_be_bytes());
        t
    };
    let (protocol, transport, later_fragment) = match spec.kind {
        Kind::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut t = ports(sport, dport);
            t.resize(20, 0);
            t[12] = 5 << 4;
            t[13] = flags;
            (proto::TCP, t, false)
        }
        Kind::Udp { sport, dport } => {
            let mut t = ports(sport, dport);
            t.extend_from_slice(&[0, 8, 0, 0]);
            (proto::UDP, t, false)
        }
        Kind::Sctp { sport, dport } => {
            let mut t = ports(sport, dport);
            t.resize(12, 0);
            (proto::SCTP, t, false)
        }
        Kind::EchoRequest { id } => (icmp, vec![echo_request, 0, 0, 0, 0, id, 0, 1], false),
        Kind::EchoReply { id } => (icmp, vec![echo_reply, 0, 0, 0, 0, id, 0, 1], false),
        Kind::IcmpError => (icmp, vec![error, 1, 0, 0, 0, 0, 0, 0], false),
        // Types the classifier does not name: v4 redirect, router
        // advertisement, timestamp; v6 router/neighbour discovery.
        Kind::IcmpOther(t) => {
            let types = if spec.v6 { [133, 135, 136] } else { [5, 9, 13] };
            (
                icmp,
                vec![types[usize::from(t % 3)], 0, 0, 0, 0, 0, 0, 0],
                false,
            )
        }
        Kind::Protocol(p) => {
            // Keep extension headers and parsed protocols out: plain payload.
            let p = match p {
                0 | 1 | 6 | 17 | 43 | 44 | 50 | 51 | 58 | 60 | 132 => 47,
                other => other,
            };
            (p, vec![0; 4], false)
        }
        Kind::LaterFragment { protocol } => (protocol, vec![0; 8], true),
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + transport.len();
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            if later_fragment {
                p[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
            }
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&transport);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut body = Vec::new();
            let next = if later_fragment {
                // Fragment header: next header, reserved, offset 2 (x8 bytes), id.
                body.extend_from_slice(&[protocol, 0, 0, 2 << 3, 0, 0, 0, 1]);
                proto::FRAGMENT
            } else {
                protocol
            };
            body.extend_from_slice(&transport);
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(body.len() as u16).to_be_bytes());
            p.extend_from_slice(&[next, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&body);
            p
        }
        _ => unreachable!("both addresses come from one family"),
    }
}

/// What the parser must report for a constructed packet.
fn check_built(spec: &PacketSpec, packet: &Packet<'_>) {
    assert_eq!(
        packet.version,
        if spec.v6 {
            IpVersion::V6
        } else {
            IpVersion::V4
        }
    );
    let ok = match (spec.kind, packet.transport) {
        (
            Kind::Tcp {
                sport,
                dport,
                flags,
            },
            Transport::Tcp {
                src_port,
                dst_port,
                flags: f,
            },
        ) => (src_port, dst_port, f.0) == (port(sport), port(dport), flags),
        (Kind::Udp { sport, dport }, Transport::Udp { src_port, dst_port })
        | (Kind::Sctp { sport, dport }, Transport::Sctp { src_port, dst_port }) => {
            (src_port, dst_port) == (port(sport), port(dport))
        }
        (
            Kind::EchoRequest { id },
            Transport::Icmp {
                kind: IcmpKind::EchoRequest { id: got, .. },
                ..
            },
        )
        | (
            Kind::EchoReply { id },
            Transport::Icmp {
                kind: IcmpKind::EchoReply { id: got, .. },
                ..
            },
        ) => got == u16::from(id),
        (
            Kind::IcmpError,
            Transport::Icmp {
                kind: IcmpKind::Error(_),
                ..
            },
        ) => true,
        (
            Kind::IcmpOther(_),
            Transport::Icmp {
                kind: IcmpKind::Other(_),
                ..
            },
        ) => true,
        (Kind::Protocol(_), Transport::Other) => true,
        (Kind::LaterFragment { .. }, Transport::NonFirstFragment) => packet.fragmented,
        _ => false,
    };
    assert!(ok, "built {spec:?}, parsed {packet:?}");
}

/// Properties of any successful parse.
fn check_view(input: &[u8], packet: &Packet<'_>) {
    let bytes = packet.bytes();
    assert!(input.starts_with(bytes));
    assert!(bytes.ends_with(packet.transport_bytes()));
    assert_eq!(
        packet.ports().is_some(),
        matches!(
            packet.transport,
            Transport::Tcp { .. } | Transport::Udp { .. } | Transport::Sctp { .. }
        )
    );
    assert_eq!(
        packet.is_non_first_fragment(),
        packet.transport == Transport::NonFirstFragment
    );
    match packet.version {
        IpVersion::V4 => {
            assert!(packet.src.is_ipv4() && packet.dst.is_ipv4() && bytes[0] >> 4 == 4)
        }
        IpVersion::V6 => {
            assert!(packet.src.is_ipv6() && packet.dst.is_ipv6() && bytes[0] >> 4 == 6)
        }
    }
}

/// The rules, checked one by one.
struct Naive<'a>(&'a [FilterRule]);

impl Naive<'_> {
    fn protocols(rule: &FilterRule) -> &[u8] {
        if rule.ip_proto.is_empty() {
            &DEFAULT_PROTOCOLS
        } else {
            &rule.ip_proto
        }
    }
    fn src(rule: &FilterRule, src: IpAddr) -> bool {
        rule.src_ips.iter().any(|m| m.contains(src))
    }
    fn allows(&self, protocol: u8, src: IpAddr, dst: IpAddr, port: u16) -> bool {
        self.0.iter().any(|r| {
            Self::protocols(r).contains(&protocol)
                && Self::src(r, src)
                && r.dst_ports
                    .iter()
                    .any(|d| d.net.contains(dst) && d.ports.contains(port))
        })
    }
    fn allows_addresses(&self, src: IpAddr, dst: IpAddr) -> bool {
        self.0
            .iter()
            .any(|r| Self::src(r, src) && r.dst_ports.iter().any(|d| d.net.contains(dst)))
    }
    fn allows_all_ports(&self, protocol: u8, src: IpAddr, dst: IpAddr) -> bool {
        self.0.iter().any(|r| {
            Self::protocols(r).contains(&protocol)
                && Self::src(r, src)
                && r.dst_ports
                    .iter()
                    .any(|d| d.net.contains(dst) && d.ports == PortRange::ALL)
        })
    }
}

type Flow = (u8, IpAddr, u16, IpAddr, u16);

/// Connection tracking as an ordered list, oldest first.
struct Model {
    flows: Vec<(Flow, Instant)>,
    capacity: usize,
    config: ConntrackConfig,
    local: Vec<IpAddr>,
}

impl Model {
    fn track(&mut self, flow: Flow, expires: Instant) {
        if self.capacity == 0 {
            return;
        }
        if let Some(i) = self.flows.iter().position(|(f, _)| *f == flow) {
            self.flows.remove(i);
        } else if self.flows.len() >= self.capacity {
            self.flows.remove(0);
        }
        self.flows.push((flow, expires));
    }

    fn hit(&mut self, flow: Flow, now: Instant, idle: Duration) -> bool {
        let Some(i) = self.flows.iter().position(|(f, _)| *f == flow) else {
            return false;
        };
        let (flow, expires) = self.flows.remove(i);
        if expires <= now {
            return false;
        }
        self.flows.push((flow, now + idle));
        true
    }

    fn idle(&self, protocol: u8) -> Duration {
        match protocol {
            proto::TCP => self.config.tcp_idle,
            proto::ICMPV4 | proto::ICMPV6 => self.config.icmp_idle,
            _ => self.config.udp_idle,
        }
    }

    fn outbound(&mut self, p: &Packet<'_>, now: Instant) {
        let (local_port, remote_port, idle) = match p.transport {
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
        self.track(
            (p.protocol, p.src, local_port, p.dst, remote_port),
            now + idle,
        );
    }

    fn inbound(&mut self, rules: &Naive<'_>, p: &Packet<'_>, now: Instant) -> Verdict {
        if !self.local.contains(&p.dst) {
            return Verdict::Drop(DropReason::NotLocalDestination);
        }
        let hit = |model: &mut Self, protocol: u8, remote_port: u16, local_port: u16| {
            let idle = model.idle(protocol);
            model.hit((protocol, p.dst, local_port, p.src, remote_port), now, idle)
        };
        let accepted = match p.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } => {
                !flags.is_initial_syn()
                    || hit(self, proto::TCP, src_port, dst_port)
                    || rules.allows(proto::TCP, p.src, p.dst, dst_port)
            }
            Transport::Udp { src_port, dst_port } | Transport::Sctp { src_port, dst_port } => {
                hit(self, p.protocol, src_port, dst_port)
                    || rules.allows(p.protocol, p.src, p.dst, dst_port)
            }
            Transport::Icmp { kind, .. } => match kind {
                IcmpKind::Error(_) => true,
                IcmpKind::EchoReply { id, .. } => {
                    hit(self, p.protocol, 0, id) || rules.allows_addresses(p.src, p.dst)
                }
                IcmpKind::EchoRequest { .. } | IcmpKind::Other(_) => {
                    rules.allows_addresses(p.src, p.dst)
                }
            },
            Transport::NonFirstFragment => true,
            Transport::Other => rules.allows_all_ports(p.protocol, p.src, p.dst),
        };
        if accepted {
            Verdict::Accept
        } else {
            Verdict::Drop(DropReason::NoRuleMatched)
        }
    }
}

fn addrs(list: &[(bool, u8)]) -> Vec<IpAddr> {
    list.iter()
        .take(4)
        .map(|&(is_v6, i)| if is_v6 { v6(i) } else { v4(i) })
        .collect()
}

fuzz_target!(|input: Input| {
    let mut rules = Vec::new();
    for spec in input.rules.iter().take(8) {
        let srcs: Vec<String> = spec.srcs.iter().take(8).map(AddrSpec::text).collect();
        let dsts: Vec<(String, u16, u16)> = spec
            .dsts
            .iter()
            .take(8)
            .map(|(a, first, last)| (a.text(), port(*first), port(*last)))
            .collect();
        let (rule, errors) = FilterRule::parse_lenient(
            &srcs,
            dsts.iter().map(|(a, f, l)| (a.as_str(), *f, *l)),
            spec.protos.iter().take(8).map(|&p| i64::from(p)),
        );
        // Every entry either parsed or was reported; none is invented.
        let listed = srcs.len() + dsts.len() + spec.protos.len().min(8);
        let kept = rule.src_ips.len() + rule.dst_ports.len() + rule.ip_proto.len();
        assert!(kept + errors.len() <= listed);
        assert!(rule.src_ips.len() <= srcs.len() && rule.dst_ports.len() <= dsts.len());
        rules.push(rule);
    }
    let compiled = CompiledRules::new(&rules);
    let naive = Naive(&rules);
    // Empty exactly when no rule has a source and a destination of one family.
    let families = |m: &AddrMatch| match m {
        AddrMatch::Any => (true, true),
        AddrMatch::Addr(ip)
        | AddrMatch::Prefix { addr: ip, .. }
        | AddrMatch::Range { first: ip, .. } => (ip.is_ipv4(), ip.is_ipv6()),
    };
    let usable = rules.iter().any(|r| {
        let (s4, s6) = r
            .src_ips
            .iter()
            .map(families)
            .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1));
        let (d4, d6) = r
            .dst_ports
            .iter()
            .map(|d| families(&d.net))
            .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1));
        (s4 && d4) || (s6 && d6)
    });
    assert_eq!(compiled.is_empty(), !usable);

    let config = ConntrackConfig {
        capacity: usize::from(input.capacity % 6),
        ..ConntrackConfig::default()
    };
    let local = addrs(&input.local);
    let mut state = FilterState::new(local.iter().copied(), config);
    let mut model = Model {
        flows: Vec::new(),
        capacity: config.capacity,
        config,
        local,
    };
    let start = Instant::now();
    let mut now = start;

    for op in input.ops.iter().take(64) {
        match op {
            Op::Outbound(spec) | Op::Inbound(spec) => {
                let bytes = build(spec);
                let packet = Packet::parse(&bytes).expect("a constructed packet parses");
                check_built(spec, &packet);
                check_view(&bytes, &packet);
                check_decisions(&compiled, &naive, &packet);
                if matches!(op, Op::Outbound(_)) {
                    state.note_outbound(&packet, now);
                    model.outbound(&packet, now);
                } else {
                    let verdict = state.check_inbound(&compiled, &packet, now);
                    assert_eq!(verdict, model.inbound(&naive, &packet, now), "{packet:?}");
                }
            }
            Op::RawOutbound(bytes) | Op::RawInbound(bytes) => {
                let Ok(packet) = Packet::parse(bytes) else {
                    continue;
                };
                check_view(bytes, &packet);
                check_decisions(&compiled, &naive, &packet);
                if matches!(op, Op::RawOutbound(_)) {
                    state.note_outbound(&packet, now);
                    model.outbound(&packet, now);
                } else {
                    let verdict = state.check_inbound(&compiled, &packet, now);
                    assert_eq!(verdict, model.inbound(&naive, &packet, now), "{packet:?}");
                }
            }
            Op::Advance(seconds) => now += Duration::from_secs(u64::from(*seconds) * 4),
            Op::Sweep => {
                let expected = model.flows.iter().filter(|(_, e)| *e <= now).count();
                model.flows.retain(|(_, e)| *e > now);
                assert_eq!(state.sweep_expired(now), expected);
            }
            Op::SetLocal(list) => {
                model.local = addrs(list);
                state.set_local_addrs(model.local.iter().copied());
            }
        }
        assert_eq!(state.tracked_flows(), model.flows.len());
        assert!(state.tracked_flows() <= config.capacity);
    }
});

fn check_decisions(compiled: &CompiledRules, naive: &Naive<'_>, packet: &Packet<'_>) {
    let (src, dst) = (packet.src, packet.dst);
    let port = packet.ports().map_or(0, |(_, d)| d);
    assert_eq!(
        compiled.allows(packet.protocol, src, dst, port),
        naive.allows(packet.protocol, src, dst, port)
    );
    assert_eq!(
        compiled.allows_addresses(src, dst),
        naive.allows_addresses(src, dst)
    );
    assert_eq!(
        compiled.allows_protocol_all_ports(packet.protocol, src, dst),
        naive.allows_all_ports(packet.protocol, src, dst)
    );
}
