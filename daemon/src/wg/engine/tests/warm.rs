//! Relay links opened before a pod exists (a pooled identity's) and
//! taken over when the pod is attached.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::*;
use crate::wg::derp_client::HomeRelay;
use crate::wg::{EngineConfig, WarmRelay};

/// Too short for a new relay connection to come up, long enough to read a
/// state that is already there.
const AT_ONCE: Duration = Duration::from_millis(20);

/// Pod `a` (100.64.0.1) with node key `private`, given `warm`.
fn attach_warm(engine: &Engine, private: [u8; 32], warm: WarmRelay) -> TestPod {
    let reused = Reused {
        udp_port: None,
        relay: Some(warm),
    };
    attach_reusing(
        engine,
        ("a", private, [0; 32]),
        Ipv4Addr::new(100, 64, 0, 1),
        reused,
    )
}

#[tokio::test]
async fn a_pod_takes_over_its_identitys_warm_relay() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let map = derp_map(&relay);
    let warm = engine.warm_relay("pooled", [0xa1; 32], map.clone());
    assert!(
        eventually(Duration::from_secs(5), || warm.home_relay()
            == HomeRelay::Connected)
        .await,
        "the warm link never connected: {:?}",
        warm.home_relay()
    );
    assert!(eventually(Duration::from_secs(1), || relay.pongs() == 1).await);

    let a = attach_warm(&engine, [0xa1; 32], warm);
    // Reachable from the start: nothing to wait for.
    assert_eq!(
        a.handle.wait_home_relay(AT_ONCE).await,
        HomeRelay::Connected
    );
    let b = attach(&engine, "b", [0xb2; 32], Ipv4Addr::new(100, 64, 0, 2));
    // The pod's sync sends the map it already has: no reconnect.
    a.handle
        .set_derp_map(Arc::new((*map).clone()))
        .await
        .unwrap();
    b.handle.set_derp_map(map).await.unwrap();
    introduce(&a, &b).await;

    // b reaches a through the link a's identity opened before a existed.
    let ba = ipv4_udp(b.addr, a.addr, b"to the pooled identity");
    assert_eq!(deliver_eventually(&b, &a, &ba).await, ba);
    drain(&a.device, Duration::from_millis(50)).await;
    let ab = ipv4_udp(a.addr, b.addr, b"and back");
    send_and_expect(&a, &b, &ab).await;
    // One connection each, each greeted once: a's warm link was kept.
    assert_eq!(relay.connected(), 2);
    assert_eq!(relay.pongs(), 2);
    a.handle.clone().detach().await.unwrap();
    b.handle.clone().detach().await.unwrap();
}

#[tokio::test]
async fn a_warm_relay_of_another_node_key_is_closed_not_used() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let warm = engine.warm_relay("rotated", [0xc3; 32], derp_map(&relay));
    assert!(eventually(Duration::from_secs(5), || relay.connected() == 1).await);

    // The identity's key rotated while it waited: the links are the old key's.
    let a = attach_warm(&engine, [0xc4; 32], warm);
    assert_eq!(a.handle.wait_home_relay(AT_ONCE).await, HomeRelay::Unknown);
    assert!(
        eventually(Duration::from_secs(5), || relay.connected() == 0).await,
        "the old key's link stayed open: {} connected",
        relay.connected()
    );
    a.handle.clone().detach().await.unwrap();
}
