//! Pods reaching each other through a relay: both directions, removal
//! and detach, relay restarts, home-relay readiness, DERP map changes.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::wg::derp_client::HomeRelay;
use crate::wg::engine::{choose_home_region, EngineError, PathKind, STATS_PUBLISH_INTERVAL};
use crate::wg::EngineConfig;

async fn two_pods_over_relay(separate_engines: bool) {
    let relay = local_relay().await;
    let e1 = Engine::new(EngineConfig::default());
    let e2 = if separate_engines {
        Engine::new(EngineConfig::default())
    } else {
        e1.clone()
    };
    let (a, b) = pods_on_relay(&relay, (&e1, 0x11), (&e2, 0x22)).await;
    introduce(&a, &b).await;

    let ab = ipv4_udp(a.addr, b.addr, b"hello from a");
    assert_eq!(deliver_eventually(&a, &b, &ab).await, ab);
    // Drain duplicates from retries, then check the reverse direction.
    drain(&b.device, Duration::from_millis(50)).await;
    let ba = ipv4_udp(b.addr, a.addr, b"hello from b");
    send_and_expect(&b, &a, &ba).await;

    // Larger packets survive too.
    let big = ipv4_udp(a.addr, b.addr, &[0x5c; 1200]);
    send_and_expect(&a, &b, &big).await;

    let stats = a.handle.stats().await.unwrap();
    assert_eq!(stats.peers.len(), 1);
    assert_eq!(stats.peers[0].path, PathKind::Relay);
    assert_eq!(stats.peers[0].relay_region, Some(900));
    assert!(stats.peers[0].last_handshake.is_some());
    assert!(stats.rx_packets >= 1 && stats.tx_packets >= 2);
    // The published snapshot catches up within a publish interval.
    tokio::time::sleep(STATS_PUBLISH_INTERVAL + Duration::from_millis(300)).await;
    let published = a.handle.stats_now();
    assert_eq!(published.peers.len(), 1);
    assert!(published.tx_packets >= stats.tx_packets);
    let reported = a.handle.endpoints().borrow().clone();
    assert_eq!(reported.preferred_derp, Some(900));
    // Local candidates all carry the pod socket's one port.
    let ports: std::collections::HashSet<u16> =
        reported.endpoints.iter().map(|e| e.port()).collect();
    assert!(ports.len() <= 1, "{reported:?}");
    // The relay greeted each link with a Ping; both answered.
    assert!(relay.pongs() >= 2, "pongs {}", relay.pongs());

    a.handle.clone().detach().await.unwrap();
    b.handle.clone().detach().await.unwrap();
}

#[tokio::test]
async fn packets_cross_between_two_engines_via_relay() {
    two_pods_over_relay(true).await;
}

#[tokio::test]
async fn packets_cross_between_pods_of_one_engine() {
    two_pods_over_relay(false).await;
}

#[tokio::test]
async fn removing_a_peer_stops_traffic_and_detach_frees_the_pod_id() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(&relay, (&engine, 0x51), (&engine, 0x52)).await;
    introduce(&a, &b).await;
    let ok = ipv4_udp(a.addr, b.addr, b"ok");
    deliver_eventually(&a, &b, &ok).await;

    a.handle.set_peers(vec![]).await.unwrap();
    assert!(a.handle.stats().await.unwrap().peers.is_empty());
    drain(&b.device, Duration::from_millis(50)).await;
    a.device.send(&ok).await.unwrap();
    assert_eq!(
        recv_timeout(&b.device, Duration::from_millis(500)).await,
        None
    );

    assert!(matches!(
        engine.attach_pod(PodDataConfig {
            pod_id: "a".into(),
            tun_fd: pair().0,
            node_private: [1; 32],
            disco_private: [0; 32],
            addresses: vec![],
        }),
        Err(EngineError::AlreadyAttached(_))
    ));
    assert_eq!(engine.pod_count(), 2);
    a.handle.clone().detach().await.unwrap();
    // The pod task forgets its id right after acknowledging the detach.
    assert!(
        eventually(Duration::from_millis(500), || engine.pod_count() == 1).await,
        "detached pod still counted: {} pods",
        engine.pod_count()
    );
    assert!(matches!(
        a.handle.stats().await,
        Err(EngineError::Detached(_))
    ));
    // Its relay connection is gone as well.
    assert!(
        eventually(Duration::from_secs(1), || relay.connected() == 1).await,
        "detached pod's relay connection still open: {} connected",
        relay.connected()
    );
}

#[tokio::test]
async fn traffic_resumes_after_the_relay_restarts() {
    let relay = local_relay().await;
    let addr = relay.addr();
    let engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(&relay, (&engine, 0x71), (&engine, 0x72)).await;
    introduce(&a, &b).await;
    let first = ipv4_udp(a.addr, b.addr, b"before");
    deliver_eventually(&a, &b, &first).await;

    drop(relay);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relay = LocalRelay::start(addr).await.unwrap();
    let second = ipv4_udp(a.addr, b.addr, b"after the restart");
    // Stragglers of the first packet may arrive first; they are skipped.
    let delivered = deliver_within(&a, &b, &second, Duration::from_secs(15)).await;
    if let Err(others) = delivered {
        panic!("no packet crossed the restarted relay within 15 s ({others} stragglers arrived)");
    }
    assert_eq!(relay.connected(), 2);
}

#[tokio::test]
async fn home_relay_readiness_follows_the_link() {
    let engine = Engine::new(EngineConfig::default());
    let a = attach(&engine, "a", [0x73; 32], Ipv4Addr::new(100, 64, 0, 3));
    let short = Duration::from_millis(50);
    assert_eq!(a.handle.wait_home_relay(short).await, HomeRelay::Unknown);

    // A relay that does not answer: the link stays connecting.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = closed.local_addr().unwrap();
    drop(closed);
    let relay = LocalRelay::start(dead_addr).await.unwrap();
    let map = derp_map(&relay);
    drop(relay);
    a.handle.set_derp_map(map).await.unwrap();
    a.handle.stats().await.unwrap();
    assert_eq!(a.handle.wait_home_relay(short).await, HomeRelay::Connecting);

    let relay = local_relay().await;
    a.handle.set_derp_map(derp_map(&relay)).await.unwrap();
    assert_eq!(
        a.handle.wait_home_relay(Duration::from_secs(5)).await,
        HomeRelay::Connected
    );

    // A map without relay regions leaves nothing to wait for. (A stats
    // round trip makes sure the pod task has applied the map.)
    a.handle.set_derp_map(Arc::new(Vec::new())).await.unwrap();
    a.handle.stats().await.unwrap();
    assert_eq!(a.handle.wait_home_relay(short).await, HomeRelay::Absent);
}

#[tokio::test]
async fn repeating_the_derp_map_keeps_connections_and_changing_it_reconnects() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let a = attach(&engine, "a", [0x81; 32], Ipv4Addr::new(100, 64, 0, 1));
    let map = derp_map(&relay);
    a.handle.set_derp_map(map.clone()).await.unwrap();
    // Each new connection answers the relay's greeting Ping once.
    let wait_for_pongs = |n: usize| {
        let relay = &relay;
        async move {
            for _ in 0..200 {
                if relay.pongs() >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            relay.pongs()
        }
    };
    assert_eq!(wait_for_pongs(1).await, 1);
    a.handle
        .set_derp_map(Arc::new((*map).clone()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay.pongs(), 1, "an identical map must not reconnect");

    let mut changed = (*map).clone();
    changed[0].nodes[0].name = "900b".into();
    a.handle.set_derp_map(Arc::new(changed)).await.unwrap();
    assert_eq!(wait_for_pongs(2).await, 2, "a changed region reconnects");
    assert_eq!(relay.connected(), 1);
}

#[tokio::test]
async fn peer_with_unknown_home_region_is_reached_through_ours() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(&relay, (&engine, 0x91), (&engine, 0x92)).await;
    // Region 4242 is not in the map; 900 (the shared home) must be used.
    a.handle
        .set_peers(vec![peer_of(&b, Some(4242))])
        .await
        .unwrap();
    b.handle.set_peers(vec![peer_of(&a, None)]).await.unwrap();
    let packet = ipv4_udp(a.addr, b.addr, b"via our home");
    assert_eq!(deliver_eventually(&a, &b, &packet).await, packet);
    assert_eq!(
        a.handle.stats().await.unwrap().peers[0].relay_region,
        Some(900)
    );
}

#[test]
fn home_region_is_lowest_relay_region() {
    let node = |stun_only| DerpNodeConfig {
        name: "n".into(),
        host_name: "h".into(),
        ipv4: None,
        ipv6: None,
        derp_port: 0,
        stun_port: 0,
        insecure_for_tests: false,
        stun_only,
        plain_http: false,
    };
    let map = vec![
        DerpRegionConfig {
            region_id: 5,
            nodes: vec![node(true)],
        },
        DerpRegionConfig {
            region_id: 9,
            nodes: vec![node(false)],
        },
        DerpRegionConfig {
            region_id: 7,
            nodes: vec![node(false)],
        },
    ];
    assert_eq!(choose_home_region(&map), Some(7));
    assert_eq!(choose_home_region(&[]), None);
}
