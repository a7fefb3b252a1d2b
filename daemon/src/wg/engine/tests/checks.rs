//! Packets the engine must drop: spoofed or foreign sources, unroutable
//! destinations, inner sources outside a peer's allowed IPs, and packets
//! for addresses other than the pod's.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use boringtun::x25519;

use super::*;
use crate::wg::EngineConfig;

#[tokio::test]
async fn spoofed_sources_and_unroutable_destinations_are_dropped() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(&relay, (&engine, 0x31), (&engine, 0x32)).await;
    introduce(&a, &b).await;
    // Establish the session first so drops are not confused with setup delay.
    let ok = ipv4_udp(a.addr, b.addr, b"ok");
    deliver_eventually(&a, &b, &ok).await;
    drain(&b.device, Duration::from_millis(50)).await;
    let before = a.handle.stats().await.unwrap().dropped_packets;

    let spoofed = ipv4_udp(Ipv4Addr::new(100, 64, 0, 9), b.addr, b"spoof");
    a.device.send(&spoofed).await.unwrap();
    let unroutable = ipv4_udp(a.addr, Ipv4Addr::new(100, 64, 7, 7), b"nowhere");
    a.device.send(&unroutable).await.unwrap();
    a.device.send(b"not ip").await.unwrap();
    assert_eq!(
        recv_timeout(&b.device, Duration::from_millis(500)).await,
        None
    );
    let after = a.handle.stats().await.unwrap().dropped_packets;
    assert_eq!(after - before, 3);
}

#[tokio::test]
async fn inner_source_outside_allowed_ips_is_dropped() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    // Pod a owns two addresses, but b only allows one of them from a.
    let (fd, device) = pair();
    let a_addr = Ipv4Addr::new(100, 64, 0, 1);
    let a_extra = Ipv4Addr::new(100, 64, 0, 11);
    let handle = engine
        .attach_pod(PodDataConfig {
            pod_id: "a".into(),
            tun_fd: fd,
            node_private: [0x41; 32],
            disco_private: [0; 32],
            addresses: vec![IpAddr::V4(a_addr), IpAddr::V4(a_extra)],
        })
        .unwrap();
    let a_key = x25519::PublicKey::from(&x25519::StaticSecret::from([0x41; 32])).to_bytes();
    let a = TestPod {
        handle,
        device,
        key: a_key,
        addr: a_addr,
    };
    let b = attach(&engine, "b", [0x42; 32], Ipv4Addr::new(100, 64, 0, 2));
    let map = derp_map(&relay);
    a.handle.set_derp_map(map.clone()).await.unwrap();
    b.handle.set_derp_map(map).await.unwrap();
    introduce(&a, &b).await;
    let ok = ipv4_udp(a_addr, b.addr, b"ok");
    deliver_eventually(&a, &b, &ok).await;
    drain(&b.device, Duration::from_millis(50)).await;

    let before = b.handle.stats().await.unwrap().dropped_packets;
    let sneaky = ipv4_udp(a_extra, b.addr, b"from an address b does not allow");
    a.device.send(&sneaky).await.unwrap();
    assert_eq!(
        recv_timeout(&b.device, Duration::from_millis(500)).await,
        None
    );
    assert_eq!(b.handle.stats().await.unwrap().dropped_packets - before, 1);
}

#[tokio::test]
async fn packets_for_addresses_other_than_the_pods_are_not_injected() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(&relay, (&engine, 0xa1), (&engine, 0xa2)).await;
    // a routes a whole prefix to b, but b only owns 100.64.0.2.
    let mut b_as_router = peer_of(&b, Some(900));
    b_as_router.allowed_ips = vec![("100.64.0.0".parse().unwrap(), 24)];
    a.handle.set_peers(vec![b_as_router]).await.unwrap();
    b.handle
        .set_peers(vec![peer_of(&a, Some(900))])
        .await
        .unwrap();
    let ok = ipv4_udp(a.addr, b.addr, b"ok");
    deliver_eventually(&a, &b, &ok).await;
    drain(&b.device, Duration::from_millis(50)).await;

    let before = b.handle.stats().await.unwrap().dropped_packets;
    let elsewhere = ipv4_udp(a.addr, Ipv4Addr::new(100, 64, 0, 77), b"not for b");
    a.device.send(&elsewhere).await.unwrap();
    assert_eq!(
        recv_timeout(&b.device, Duration::from_millis(500)).await,
        None
    );
    assert_eq!(b.handle.stats().await.unwrap().dropped_packets - before, 1);
}
