use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use super::{
    HandshakeGate, NodeBudget, Refusal, Sender, Verdict, COOKIE_REPLIES_PER_SOURCE_PER_SEC,
    COOKIE_REPLY_LEN, RELAYED_HANDSHAKES_PER_PEER_PER_SEC,
};

const FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

struct Bed {
    pod_public: x25519::PublicKey,
    /// A peer that knows the pod's public key.
    peer: Tunn,
}

fn bed() -> Bed {
    let pod_secret = x25519::StaticSecret::from([0x11; 32]);
    let pod_public = x25519::PublicKey::from(&pod_secret);
    let peer = Tunn::new(
        x25519::StaticSecret::from([0x22; 32]),
        pod_public,
        None,
        None,
        7,
        None,
    );
    Bed { pod_public, peer }
}

/// A fresh initiation from the peer, as it would send it.
fn initiation(peer: &mut Tunn) -> Vec<u8> {
    let mut buf = [0u8; 256];
    match peer.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(packet) => packet.to_vec(),
        _ => panic!("the peer made no initiation"),
    }
}

fn gate(bed: &Bed, per_sec: u64, node_per_sec: u64) -> HandshakeGate {
    HandshakeGate::with_limit(
        &bed.pod_public,
        per_sec,
        Arc::new(NodeBudget::new(node_per_sec)),
    )
}

#[test]
fn a_valid_initiation_passes_and_a_wrong_mac1_is_dropped_uncounted() {
    let mut bed = bed();
    let mut gate = gate(&bed, 1, 100);
    let now = Instant::now();
    let mut forged = initiation(&mut bed.peer);
    // mac1 sits 32 bytes from the end.
    let at = forged.len() - 32;
    forged[at] ^= 1;
    for _ in 0..50 {
        assert_eq!(
            gate.check(Sender::Address(FROM), &forged, now),
            Verdict::Drop(Refusal::BadMac)
        );
    }
    // The forgeries did not count toward the load: a real one still passes.
    let real = initiation(&mut bed.peer);
    assert_eq!(gate.check(Sender::Address(FROM), &real, now), Verdict::Pass);
    assert_eq!(
        gate.check(Sender::Address(FROM), &[1, 2, 3], now),
        Verdict::Drop(Refusal::Malformed)
    );
}

#[test]
fn an_initiation_for_another_key_fails_mac1() {
    let mut bed = bed();
    let other = x25519::PublicKey::from(&x25519::StaticSecret::from([0x33; 32]));
    let mut gate = HandshakeGate::with_limit(&other, 10, Arc::new(NodeBudget::new(10)));
    let init = initiation(&mut bed.peer);
    assert_eq!(
        gate.check(Sender::Address(FROM), &init, Instant::now()),
        Verdict::Drop(Refusal::BadMac)
    );
}

#[test]
fn under_load_direct_senders_get_cookies() {
    let mut bed = bed();
    let mut gate = gate(&bed, 3, 1000);
    let now = Instant::now();
    for _ in 0..3 {
        let init = initiation(&mut bed.peer);
        assert_eq!(gate.check(Sender::Address(FROM), &init, now), Verdict::Pass);
    }
    let init = initiation(&mut bed.peer);
    let Verdict::Cookie(reply) = gate.check(Sender::Address(FROM), &init, now) else {
        panic!("no cookie under load");
    };
    assert_eq!(reply.len(), COOKIE_REPLY_LEN);
    assert_eq!(reply[0], 3, "a cookie reply message");

    // The real peer takes the cookie; its next initiation carries mac2
    // and passes although the pod is still under load.
    let mut out = [0u8; 256];
    assert!(matches!(
        bed.peer.decapsulate(Some(FROM), &reply, &mut out),
        TunnResult::Done
    ));
    let with_cookie = initiation(&mut bed.peer);
    assert_eq!(
        gate.check(Sender::Address(FROM), &with_cookie, now),
        Verdict::Pass
    );
    // The cookie is bound to the address: the same message from elsewhere
    // is answered with a cookie, not admitted.
    let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
    assert!(matches!(
        gate.check(Sender::Address(elsewhere), &with_cookie, now),
        Verdict::Cookie(_)
    ));
}

/// Sends one initiation of `peer` `count` times from `from` at `now` (the
/// gate judges macs and load, not freshness): how many passed, were
/// answered with a cookie, and were dropped for the cookie budget.
fn flood(
    gate: &mut HandshakeGate,
    peer: &mut Tunn,
    from: IpAddr,
    count: usize,
    now: Instant,
) -> (usize, usize, usize) {
    let init = initiation(peer);
    let (mut passed, mut cookies, mut silent) = (0, 0, 0);
    for _ in 0..count {
        match gate.check(Sender::Address(from), &init, now) {
            Verdict::Pass => passed += 1,
            Verdict::Cookie(_) => cookies += 1,
            Verdict::Drop(Refusal::CookieBudget) => silent += 1,
            Verdict::Drop(why) => panic!("{why}"),
        }
    }
    (passed, cookies, silent)
}

#[test]
fn a_flood_under_load_reaches_no_session_and_gets_only_its_cookie_budget() {
    let mut bed = bed();
    let mut gate = gate(&bed, 10, 1000);
    let now = Instant::now();
    let budget = usize::from(COOKIE_REPLIES_PER_SOURCE_PER_SEC);
    assert_eq!(
        flood(&mut gate, &mut bed.peer, FROM, 1000, now),
        (10, budget, 990 - budget)
    );
    // Past the second, the source's budget is whole again.
    let later = now + Duration::from_secs(1);
    assert_eq!(
        flood(&mut gate, &mut bed.peer, FROM, 100, later),
        (0, budget, 100 - budget)
    );
}

#[test]
fn a_flooding_source_does_not_spend_another_sources_cookies() {
    let mut bed = bed();
    let mut gate = gate(&bed, 1, 1000);
    let now = Instant::now();
    flood(&mut gate, &mut bed.peer, FROM, 100, now);
    let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
    assert!(matches!(
        gate.check(Sender::Address(elsewhere), &initiation(&mut bed.peer), now),
        Verdict::Cookie(_)
    ));
}

#[test]
fn every_source_together_gets_at_most_the_pods_cookie_budget() {
    let mut bed = bed();
    let mut gate = gate(&bed, 1, 1000);
    let now = Instant::now();
    let cookies: usize = (0..=u8::MAX)
        .map(|last| IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
        .map(|from| flood(&mut gate, &mut bed.peer, from, 20, now).1)
        .sum();
    assert_eq!(cookies, gate.cookies.window_total());
    // A source that came first keeps its own budget whole.
    let first = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0));
    assert_eq!(
        flood(
            &mut gate,
            &mut bed.peer,
            first,
            20,
            now + Duration::from_secs(1)
        )
        .1,
        usize::from(COOKIE_REPLIES_PER_SOURCE_PER_SEC)
    );
}

/// A peer's key, as a relay names the sender.
fn key_of(peer: u8) -> [u8; 32] {
    x25519::PublicKey::from(&x25519::StaticSecret::from([peer; 32])).to_bytes()
}

#[test]
fn under_load_a_relayed_peer_passes_within_its_own_allowance() {
    let mut bed = bed();
    let mut gate = gate(&bed, 1, 1000);
    let now = Instant::now();
    let peer = Sender::Relayed(key_of(0x22));
    // Not under load: relayed handshakes pass like any other.
    assert_eq!(
        gate.check(peer, &initiation(&mut bed.peer), now),
        Verdict::Pass
    );
    // Under load: the peer's allowance, then nothing until the next second.
    let allowance = usize::from(RELAYED_HANDSHAKES_PER_PEER_PER_SEC);
    for _ in 0..allowance {
        assert_eq!(
            gate.check(peer, &initiation(&mut bed.peer), now),
            Verdict::Pass
        );
    }
    assert_eq!(
        gate.check(peer, &initiation(&mut bed.peer), now),
        Verdict::Drop(Refusal::RelayedBudget)
    );
    // Another relayed peer has its own allowance.
    let mut other = Tunn::new(
        x25519::StaticSecret::from([0x77; 32]),
        bed.pod_public,
        None,
        None,
        11,
        None,
    );
    assert_eq!(
        gate.check(Sender::Relayed(key_of(0x77)), &initiation(&mut other), now),
        Verdict::Pass
    );
    // A forged mac1 is refused before any allowance is looked at.
    let mut forged = initiation(&mut bed.peer);
    let at = forged.len() - 32;
    forged[at] ^= 1;
    assert_eq!(
        gate.check(peer, &forged, now + Duration::from_secs(1)),
        Verdict::Drop(Refusal::BadMac)
    );
    assert_eq!(
        gate.check(
            peer,
            &initiation(&mut bed.peer),
            now + Duration::from_secs(1)
        ),
        Verdict::Pass
    );
}

#[test]
fn relayed_handshakes_under_load_still_spend_the_node_budget() {
    let mut bed = bed();
    let mut gate = gate(&bed, 1, 2);
    let now = Instant::now();
    let peer = Sender::Relayed(key_of(0x22));
    assert_eq!(
        gate.check(peer, &initiation(&mut bed.peer), now),
        Verdict::Pass
    );
    assert_eq!(
        gate.check(peer, &initiation(&mut bed.peer), now),
        Verdict::Pass
    );
    assert_eq!(
        gate.check(peer, &initiation(&mut bed.peer), now),
        Verdict::Drop(Refusal::NodeBudget)
    );
}

#[test]
fn a_peer_with_a_cookie_passes_while_its_sources_budget_is_spent() {
    let mut bed = bed();
    let mut gate = gate(&bed, 1, 1000);
    let now = Instant::now();
    assert_eq!(
        gate.check(Sender::Address(FROM), &initiation(&mut bed.peer), now),
        Verdict::Pass
    );
    let Verdict::Cookie(reply) = gate.check(Sender::Address(FROM), &initiation(&mut bed.peer), now)
    else {
        panic!("no cookie under load");
    };
    let mut out = [0u8; 256];
    assert!(matches!(
        bed.peer.decapsulate(Some(FROM), &reply, &mut out),
        TunnResult::Done
    ));
    // Forgeries from the same address (with no cookie) spend its budget.
    let mut forger = Tunn::new(
        x25519::StaticSecret::from([0x66; 32]),
        bed.pod_public,
        None,
        None,
        9,
        None,
    );
    let (_, _, silent) = flood(&mut gate, &mut forger, FROM, 100, now);
    assert!(silent > 0, "the source's budget was not spent");
    assert_eq!(
        gate.check(Sender::Address(FROM), &initiation(&mut bed.peer), now),
        Verdict::Pass
    );
}

#[test]
fn the_node_budget_caps_handshakes_over_every_pod() {
    let bed = bed();
    let mut peer = bed.peer;
    let budget = Arc::new(NodeBudget::new(2));
    let other = x25519::PublicKey::from(&x25519::StaticSecret::from([0x44; 32]));
    let mut other_peer = Tunn::new(
        x25519::StaticSecret::from([0x55; 32]),
        other,
        None,
        None,
        8,
        None,
    );
    let mut first = HandshakeGate::with_limit(&bed.pod_public, 100, budget.clone());
    let mut second = HandshakeGate::with_limit(&other, 100, budget.clone());
    let now = Instant::now();
    assert_eq!(
        first.check(Sender::Address(FROM), &initiation(&mut peer), now),
        Verdict::Pass
    );
    assert_eq!(
        second.check(Sender::Address(FROM), &initiation(&mut other_peer), now),
        Verdict::Pass
    );
    assert_eq!(
        first.check(Sender::Address(FROM), &initiation(&mut peer), now),
        Verdict::Drop(Refusal::NodeBudget)
    );
    // Data messages are not handshakes and cost no budget.
    let mut data = vec![0u8; 32];
    data[0] = 4;
    assert_eq!(
        first.check(Sender::Address(FROM), &data, now),
        Verdict::Pass
    );
    // The next second has a fresh budget.
    let later = now + Duration::from_secs(1);
    assert_eq!(
        second.check(Sender::Address(FROM), &initiation(&mut other_peer), later),
        Verdict::Pass
    );
}

#[test]
fn the_budget_window_restarts_each_second() {
    let budget = NodeBudget::new(2);
    let t0 = Instant::now();
    assert!(budget.take(t0) && budget.take(t0));
    assert!(!budget.take(t0 + Duration::from_millis(999)));
    assert!(budget.take(t0 + Duration::from_secs(1)));
}
