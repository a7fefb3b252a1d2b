//! A restarted pod re-handshakes with the peers it remembers, so a peer
//! still holding the lost session switches at once instead of at its
//! rekey timeout.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;
use crate::wg::derp_client::HomeRelay;
use crate::wg::engine::ResumePeer;
use crate::wg::{EngineConfig, PodDataConfig};

/// Well under the 15 s after which a peer that gets no answers starts a
/// handshake of its own.
const FAR_BELOW_PEER_REKEY: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_restarted_pod_re_handshakes_with_the_peers_it_remembers() {
    let relay = local_relay().await;
    let before = Engine::new(EngineConfig::default());
    let peer_engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(&relay, (&before, 0x31), (&peer_engine, 0x32)).await;
    introduce(&a, &b).await;
    let ab = ipv4_udp(a.addr, b.addr, b"before");
    assert_eq!(deliver_eventually(&a, &b, &ab).await, ab);
    drain(&a.device, Duration::from_millis(50)).await;
    let ba = ipv4_udp(b.addr, a.addr, b"reply");
    assert_eq!(deliver_eventually(&b, &a, &ba).await, ba);

    // The daemon dies: its engine and sessions are gone, `b` keeps its own.
    a.handle.clone().detach().await.unwrap();
    drop(before);
    let after = Engine::new(EngineConfig::default());
    let a = attach(&after, "a", [0x31; 32], Ipv4Addr::new(100, 64, 0, 1));
    a.handle.set_derp_map(derp_map(&relay)).await.unwrap();
    assert_eq!(
        a.handle.wait_home_relay(Duration::from_secs(5)).await,
        HomeRelay::Connected
    );
    // Asked before the netmap names the peer: it waits for the netmap.
    a.handle
        .initiate_handshakes(vec![ResumePeer {
            node_key: b.key,
            direct: None,
        }])
        .await
        .unwrap();
    a.handle
        .set_peers(vec![peer_of(&b, Some(900))])
        .await
        .unwrap();

    // Only `b` sends: without the new handshake its packets would go out
    // on the lost session until its own rekey.
    let ba = ipv4_udp(b.addr, a.addr, b"after");
    deliver_within(&b, &a, &ba, FAR_BELOW_PEER_REKEY)
        .await
        .expect("the peer reaches the restarted pod on the new session");
    let stats = a.handle.stats().await.unwrap();
    assert_eq!(stats.resume_handshakes, 1);
    assert!(stats.peers[0].last_handshake.is_some());

    a.handle.clone().detach().await.unwrap();
    b.handle.clone().detach().await.unwrap();
}

#[tokio::test]
async fn remembered_peers_the_netmap_never_names_get_no_handshake() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(&relay, (&engine, 0x41), (&engine, 0x42)).await;
    a.handle
        .initiate_handshakes(vec![ResumePeer {
            node_key: [0x99; 32],
            direct: None,
        }])
        .await
        .unwrap();
    a.handle
        .set_peers(vec![peer_of(&b, Some(900))])
        .await
        .unwrap();
    let stats = a.handle.stats().await.unwrap();
    assert_eq!(stats.resume_handshakes, 0);
    assert!(stats.peers.iter().all(|p| p.last_handshake.is_none()));
    a.handle.clone().detach().await.unwrap();
    b.handle.clone().detach().await.unwrap();
}

/// Peers keep sending to the port a pod had before the restart: the pod
/// gets it back when it is free, and another one when it is not.
#[tokio::test]
async fn a_pod_attached_again_gets_its_old_udp_port_when_free() {
    let engine = Engine::new(EngineConfig::default());
    let free = std::net::UdpSocket::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (pod, _device) = pod_config("port", 0x51, 5);
    let handle = engine.attach_pod_reusing(pod, reuse_port(free)).unwrap();
    assert_eq!(handle.endpoints().borrow().udp_port, Some(free));

    let (taken, _other_device) = pod_config("taken", 0x52, 6);
    let other = engine.attach_pod_reusing(taken, reuse_port(free)).unwrap();
    let port = other.endpoints().borrow().udp_port;
    assert!(port.is_some() && port != Some(free), "{port:?}");
    handle.detach().await.unwrap();
    other.detach().await.unwrap();
}

/// A pod's attach configuration over a socketpair device, and that device.
fn pod_config(id: &str, key: u8, last_octet: u8) -> (PodDataConfig, PacketFd) {
    let (fd, device) = pair();
    let pod = PodDataConfig {
        pod_id: id.into(),
        tun_fd: fd,
        node_private: [key; 32],
        disco_private: [0; 32],
        addresses: vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, last_octet))],
    };
    (pod, device)
}

/// Pod `a` with a session to `b` on another engine, then `a` restarted
/// on a new engine with `filter` remembered and its session back, before
/// any netmap. Returns the engines with the pods.
async fn restarted_with(
    relay: &LocalRelay,
    seed: u8,
    filter: Option<crate::podmgr::state::RememberedFilter>,
) -> ([Engine; 2], TestPod, TestPod) {
    use crate::podmgr::session_memory::resume_before_netmap;
    use crate::podmgr::state::RememberedSessions;

    let before = Engine::new(EngineConfig::default());
    let peer_engine = Engine::new(EngineConfig::default());
    let (a, b) = pods_on_relay(relay, (&before, seed), (&peer_engine, seed + 1)).await;
    introduce(&a, &b).await;
    let ab = ipv4_udp(a.addr, b.addr, b"before");
    assert_eq!(deliver_eventually(&a, &b, &ab).await, ab);
    let remembered = RememberedSessions {
        udp_port: None,
        peers: vec![ResumePeer {
            node_key: b.key,
            direct: None,
        }],
        peer_configs: vec![peer_of(&b, Some(900))],
        derp_map: derp_map(relay).to_vec(),
        filter,
    };

    a.handle.clone().detach().await.unwrap();
    drop(before);
    let after = Engine::new(EngineConfig::default());
    let a = attach(&after, "a", [seed; 32], a.addr);
    resume_before_netmap(&a.handle, &remembered).await.unwrap();

    // No netmap yet: the session comes back all the same.
    let mut back = false;
    for _ in 0..(FAR_BELOW_PEER_REKEY.as_millis() / 20) {
        let stats = a.handle.stats().await.unwrap();
        if stats.peers.iter().any(|p| p.last_handshake.is_some()) {
            assert_eq!(stats.resume_handshakes, 1);
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "the remembered peer answered the resume handshake");
    ([after, peer_engine], a, b)
}

/// With the peers' records and the DERP map remembered, a restarted pod
/// handshakes before its control session answers; without a remembered
/// filter inbound stays closed until the netmap's, and the netmap's peer
/// set decides who keeps a session.
#[tokio::test]
async fn remembered_records_resume_sessions_before_the_netmap() {
    let relay = local_relay().await;
    let (_engines, a, b) = restarted_with(&relay, 0x61, None).await;
    // ... but the pod takes no unsolicited traffic before control's filter.
    let ba = ipv4_udp(b.addr, a.addr, b"too early");
    assert!(deliver_within(&b, &a, &ba, Duration::from_millis(600))
        .await
        .is_err());
    assert!(a.handle.stats().await.unwrap().filtered_packets > 0);

    // The first netmap no longer lists the peer: its session ends.
    a.handle.set_peers(Vec::new()).await.unwrap();
    let stats = a.handle.stats().await.unwrap();
    assert!(stats.peers.is_empty(), "{:?}", stats.peers);

    a.handle.clone().detach().await.unwrap();
    b.handle.clone().detach().await.unwrap();
}

/// A filter control sent recently is enforced from the restart on: the
/// peer's traffic passes before the netmap, within the remembered rules.
#[tokio::test]
async fn a_remembered_filter_admits_peers_before_the_netmap() {
    use crate::control::tailcfg::{FilterRule, NetPortRange, PortRange};
    use crate::podmgr::state::RememberedFilter;

    let relay = local_relay().await;
    let port_7 = FilterRule {
        srcips: vec!["*".into()],
        dstports: vec![NetPortRange {
            ip: "*".into(),
            ports: PortRange { first: 7, last: 7 },
        }],
        ipproto: Vec::new(),
    };
    let filter = RememberedFilter {
        rules: vec![port_7],
        received: std::time::SystemTime::now(),
    };
    let (_engines, a, b) = restarted_with(&relay, 0x71, Some(filter)).await;
    let ba = ipv4_udp(b.addr, a.addr, b"before the netmap");
    assert_eq!(deliver_eventually(&b, &a, &ba).await, ba);
    assert_eq!(a.handle.stats().await.unwrap().filtered_packets, 0);

    a.handle.clone().detach().await.unwrap();
    b.handle.clone().detach().await.unwrap();
}

fn reuse_port(port: u16) -> Reused {
    Reused {
        udp_port: Some(port),
        relay: None,
    }
}
