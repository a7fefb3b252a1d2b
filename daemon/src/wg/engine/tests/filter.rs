//! The tailnet packet filter as the engine enforces it: two pods on one
//! engine talk through a local relay; the receiving pod's filter decides.

use std::net::Ipv4Addr;
use std::time::Duration;

use tailnet_wire::filter::{CompiledRules, FilterRule};

use super::*;
use crate::wg::EngineConfig;

/// An IPv4/TCP segment with only the given flags.
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Sends `packet` once and reports whether exactly it arrived at `to`.
async fn crosses(from: &TestPod, to: &TestPod, packet: &[u8]) -> bool {
    from.device.send(packet).await.unwrap();
    recv_timeout(&to.device, Duration::from_secs(1))
        .await
        .as_deref()
        == Some(packet)
}

fn rules(src: &str, dst: &str, first: u16, last: u16) -> Arc<CompiledRules> {
    let rule = FilterRule::parse([src], [(dst, first, last)], Vec::<i64>::new()).unwrap();
    Arc::new(CompiledRules::new(&[rule]))
}

/// Two pods on one engine whose session is up in both directions; neither
/// has a filter yet.
async fn connected_pair(relay: &LocalRelay, seed: u8) -> (Engine, TestPod, TestPod) {
    let engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(relay, (&engine, seed), (&engine, seed + 1)).await;
    introduce(&a, &b).await;
    let warmup = udp(a.addr, 1, b.addr, 1, b"warm-up");
    let mut up = false;
    for _ in 0..50 {
        if crosses(&a, &b, &warmup).await {
            up = true;
            break;
        }
    }
    assert!(up, "session never came up");
    drain(&b.device, Duration::from_millis(100)).await;
    (engine, a, b)
}

#[tokio::test]
async fn deny_all_filter_blocks_new_flows_but_admits_replies() {
    let relay = local_relay().await;
    let (_engine, a, b) = connected_pair(&relay, 0x41).await;
    b.handle
        .set_filter(Arc::new(CompiledRules::deny_all()))
        .await
        .unwrap();

    // a opens flows toward b: refused.
    assert!(!crosses(&a, &b, &udp(a.addr, 5000, b.addr, 53, b"query")).await);
    assert!(!crosses(&a, &b, &tcp(a.addr, 40000, b.addr, 80, SYN)).await);
    let stats = b.handle.stats().await.unwrap();
    assert_eq!(stats.filtered_packets, 2, "{stats:?}");

    // b's own flow to a: the request leaves, the reply comes back in.
    assert!(crosses(&b, &a, &udp(b.addr, 6000, a.addr, 53, b"query")).await);
    assert!(crosses(&a, &b, &udp(a.addr, 53, b.addr, 6000, b"answer")).await);
    // Same with TCP: b's SYN out, a's SYN-ACK back.
    assert!(crosses(&b, &a, &tcp(b.addr, 41000, a.addr, 443, SYN)).await);
    assert!(crosses(&a, &b, &tcp(a.addr, 443, b.addr, 41000, SYN | ACK)).await);
    // A reply from another port is not part of the flow.
    assert!(!crosses(&a, &b, &udp(a.addr, 54, b.addr, 6000, b"spoofed answer")).await);
    assert_eq!(b.handle.stats().await.unwrap().filtered_packets, 3);
    // The sender's side filtered nothing: it has no filter.
    assert_eq!(a.handle.stats().await.unwrap().filtered_packets, 0);
}

#[tokio::test]
async fn rules_admit_exactly_their_sources_and_ports() {
    let relay = local_relay().await;
    let (_engine, a, b) = connected_pair(&relay, 0x51).await;
    b.handle
        .set_filter(rules("100.64.0.1", "100.64.0.2", 8000, 8099))
        .await
        .unwrap();
    assert!(crosses(&a, &b, &udp(a.addr, 5000, b.addr, 8080, b"in range")).await);
    assert!(crosses(&a, &b, &tcp(a.addr, 40001, b.addr, 8000, SYN)).await);
    assert!(!crosses(&a, &b, &udp(a.addr, 5000, b.addr, 8100, b"out of range")).await);
    assert!(!crosses(&a, &b, &tcp(a.addr, 40002, b.addr, 22, SYN)).await);

    // A rule for another source admits nothing from a.
    b.handle
        .set_filter(rules("100.64.0.77", "*", 0, u16::MAX))
        .await
        .unwrap();
    assert!(!crosses(&a, &b, &udp(a.addr, 5001, b.addr, 8080, b"wrong source")).await);
    assert_eq!(b.handle.stats().await.unwrap().filtered_packets, 3);
}

#[tokio::test]
async fn new_rules_keep_tracked_flows() {
    let relay = local_relay().await;
    let (_engine, a, b) = connected_pair(&relay, 0x61).await;
    b.handle
        .set_filter(rules("*", "*", 0, u16::MAX))
        .await
        .unwrap();
    // b opens a flow while everything is allowed...
    assert!(crosses(&b, &a, &udp(b.addr, 7000, a.addr, 9000, b"open")).await);
    // ...then the rules tighten to nothing: the flow's replies still pass,
    // new flows do not.
    b.handle
        .set_filter(Arc::new(CompiledRules::deny_all()))
        .await
        .unwrap();
    assert!(crosses(&a, &b, &udp(a.addr, 9000, b.addr, 7000, b"reply")).await);
    assert!(!crosses(&a, &b, &udp(a.addr, 9001, b.addr, 7001, b"new")).await);
    assert_eq!(b.handle.stats().await.unwrap().filtered_packets, 1);
}

#[tokio::test]
async fn remembered_rules_hold_until_control_replaces_them_or_their_deadline() {
    let relay = local_relay().await;
    let (_engine, a, b) = connected_pair(&relay, 0x71).await;
    let far = tokio::time::Instant::now() + Duration::from_secs(600);
    b.handle
        .set_remembered_filter(rules("*", "*", 80, 80), far)
        .await
        .unwrap();
    assert!(crosses(&a, &b, &udp(a.addr, 5000, b.addr, 80, b"remembered")).await);
    assert!(!crosses(&a, &b, &udp(a.addr, 5000, b.addr, 81, b"not remembered")).await);

    // Control's rules replace the remembered ones: a rule control dropped
    // no longer admits anything.
    b.handle.set_filter(rules("*", "*", 81, 81)).await.unwrap();
    assert!(!crosses(&a, &b, &udp(a.addr, 5001, b.addr, 80, b"dropped rule")).await);
    assert!(crosses(&a, &b, &udp(a.addr, 5001, b.addr, 81, b"control's rule")).await);

    // Past their deadline remembered rules close the pod however late
    // control is...
    let soon = tokio::time::Instant::now() + Duration::from_secs(1);
    b.handle
        .set_remembered_filter(rules("*", "*", 0, u16::MAX), soon)
        .await
        .unwrap();
    assert!(crosses(&a, &b, &udp(a.addr, 5002, b.addr, 82, b"before")).await);
    tokio::time::sleep_until(soon + Duration::from_millis(100)).await;
    assert!(!crosses(&a, &b, &udp(a.addr, 5003, b.addr, 83, b"after")).await);

    // ...while control's rules have no deadline.
    let soon = tokio::time::Instant::now() + Duration::from_secs(1);
    b.handle
        .set_remembered_filter(rules("*", "*", 0, u16::MAX), soon)
        .await
        .unwrap();
    b.handle.set_filter(rules("*", "*", 84, 84)).await.unwrap();
    tokio::time::sleep_until(soon + Duration::from_millis(100)).await;
    assert!(crosses(&a, &b, &udp(a.addr, 5004, b.addr, 84, b"control's")).await);
    assert_eq!(b.handle.stats().await.unwrap().filtered_packets, 3);
}
