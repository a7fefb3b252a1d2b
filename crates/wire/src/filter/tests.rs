use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::packet::build;
use crate::packet::TcpFlags;

pub(super) const POD4: &str = "100.64.0.10";
pub(super) const POD6: &str = "fd7a:115c:a1e0::a";
pub(super) const PEER4: &str = "100.64.0.20";
pub(super) const PEER6: &str = "fd7a:115c:a1e0::14";
pub(super) const STRANGER4: &str = "100.64.0.99";

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn rule(srcs: &[&str], dsts: &[(&str, u16, u16)], protos: &[u8]) -> FilterRule {
    FilterRule::parse(srcs, dsts.iter().copied(), protos.iter().copied()).unwrap()
}

fn state() -> FilterState {
    FilterState::new([ip(POD4), ip(POD6)], ConntrackConfig::default())
}

fn verdict(state: &mut FilterState, rules: &CompiledRules, raw: &[u8], now: Instant) -> Verdict {
    state.check_inbound(rules, &Packet::parse(raw).unwrap(), now)
}

const DENIED: Verdict = Verdict::Drop(DropReason::NoRuleMatched);

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
