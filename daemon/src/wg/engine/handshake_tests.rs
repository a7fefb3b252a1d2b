use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use super::{HandshakeGate, NodeBudget, Refusal, Verdict, COOKIE_REPLY_LEN};

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
    let gate = gate(&bed, 1, 100);
    let now = Instant::now();
    let mut forged = initiation(&mut bed.peer);
    // mac1 sits 32 bytes from the end.
    let at = forged.len() - 32;
    forged[at] ^= 1;
    for _ in 0..50 {
        assert_eq!(
            gate.check(Some(FROM), &forged, now),
            Verdict::Drop(Refusal::BadMac)
        );
    }
    // The forgeries did not count toward the load: a real one still passes.
    let real = initiation(&mut bed.peer);
    assert_eq!(gate.check(Some(FROM), &real, now), Verdict::Pass);
    assert_eq!(
        gate.check(Some(FROM), &[1, 2, 3], now),
        Verdict::Drop(Refusal::Malformed)
    );
}

#[test]
fn an_initiation_for_another_key_fails_mac1() {
    let mut bed = bed();
    let other = x25519::PublicKey::from(&x25519::StaticSecret::from([0x33; 32]));
    let gate = HandshakeGate::with_limit(&other, 10, Arc::new(NodeBudget::new(10)));
    let init = initiation(&mut bed.peer);
    assert_eq!(
        gate.check(Some(FROM), &init, Instant::now()),
        Verdict::Drop(Refusal::BadMac)
    );
}

#[test]
fn under_load_direct_senders_get_cookies_and_relayed_ones_are_dropped() {
    let mut bed = bed();
    let gate = gate(&bed, 3, 1000);
    let now = Instant::now();
    for _ in 0..3 {
        let init = initiation(&mut bed.peer);
        assert_eq!(gate.check(Some(FROM), &init, now), Verdict::Pass);
    }
    assert_eq!(
        gate.check(None, &initiation(&mut bed.peer), now),
        Verdict::Drop(Refusal::UnderLoad)
    );
    let init = initiation(&mut bed.peer);
    let Verdict::Cookie(reply) = gate.check(Some(FROM), &init, now) else {
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
    assert_eq!(gate.check(Some(FROM), &with_cookie, now), Verdict::Pass);
    // The cookie is bound to the address: the same message from elsewhere
    // is answered with a cookie, not admitted.
    let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
    assert!(matches!(
        gate.check(Some(elsewhere), &with_cookie, now),
        Verdict::Cookie(_)
    ));
}

#[test]
fn a_flood_under_load_reaches_no_session() {
    let mut bed = bed();
    let gate = gate(&bed, 10, 1000);
    let now = Instant::now();
    let (mut passed, mut cookies) = (0, 0);
    for _ in 0..1000 {
        match gate.check(Some(FROM), &initiation(&mut bed.peer), now) {
            Verdict::Pass => passed += 1,
            Verdict::Cookie(_) => cookies += 1,
            Verdict::Drop(why) => panic!("{why}"),
        }
    }
    assert_eq!((passed, cookies), (10, 990));
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
    let first = HandshakeGate::with_limit(&bed.pod_public, 100, budget.clone());
    let second = HandshakeGate::with_limit(&other, 100, budget.clone());
    let now = Instant::now();
    assert_eq!(
        first.check(Some(FROM), &initiation(&mut peer), now),
        Verdict::Pass
    );
    assert_eq!(
        second.check(Some(FROM), &initiation(&mut other_peer), now),
        Verdict::Pass
    );
    assert_eq!(
        first.check(Some(FROM), &initiation(&mut peer), now),
        Verdict::Drop(Refusal::NodeBudget)
    );
    // Data messages are not handshakes and cost no budget.
    let mut data = vec![0u8; 32];
    data[0] = 4;
    assert_eq!(first.check(Some(FROM), &data, now), Verdict::Pass);
    // The next second has a fresh budget.
    let later = now + Duration::from_secs(1);
    assert_eq!(
        second.check(Some(FROM), &initiation(&mut other_peer), later),
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
