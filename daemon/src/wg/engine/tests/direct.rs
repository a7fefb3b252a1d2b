//! Direct paths: datagrams from outside the engine on the pod's socket,
//! two engines upgrading to a direct path through disco and STUN, and
//! recovery when a direct endpoint dies.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::TunnResult;

use super::*;
use crate::wg::engine::PathKind;
use crate::wg::EngineConfig;

/// A peer outside the engine: a bare boringtun session that sends over UDP
/// to the pod's socket and hears back over the relay. Exercises the direct
/// receive path (handshake demux by decryption, data demux by index).
#[tokio::test]
async fn direct_udp_datagrams_reach_the_right_session() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (pod, mut outside) = pod_with_outside_peer(&engine, &relay).await;
    let pod_addr = loopback_socket_of(&pod);
    let (tunn, sock) = (&mut outside.tunn, &outside.sock);
    let outside_addr = outside.addr;
    let inner = ipv4_udp(outside_addr, pod.addr, b"direct hello");
    let mut buf = vec![0u8; 4096];

    // Handshake initiation straight to the pod's socket.
    let TunnResult::WriteToNetwork(init) = tunn.encapsulate(&inner, &mut buf) else {
        panic!("no initiation")
    };
    sock.send_to(init, pod_addr).await.unwrap();

    // The pod answers through the relay (no validated direct path yet).
    let response = relayed_from_pod(&mut outside, &pod, Duration::from_secs(5))
        .await
        .expect("handshake response over the relay");
    let (tunn, sock) = (&mut outside.tunn, &outside.sock);
    let mut out = vec![0u8; 4096];
    // The initiator confirms with a keepalive, then flushes its queued
    // packet: data messages carrying the pod's receiver index.
    let TunnResult::WriteToNetwork(keepalive) = tunn.decapsulate(None, &response, &mut out) else {
        panic!("no keepalive after the handshake")
    };
    sock.send_to(keepalive, pod_addr).await.unwrap();
    let mut flushed = 0;
    while let TunnResult::WriteToNetwork(data) = tunn.decapsulate(None, &[], &mut out) {
        sock.send_to(data, pod_addr).await.unwrap();
        flushed += 1;
    }
    assert_eq!(flushed, 1);
    assert_eq!(
        recv_timeout(&pod.device, Duration::from_secs(2))
            .await
            .as_deref(),
        Some(&inner[..])
    );
    assert_eq!(pod.handle.stats().await.unwrap().rx_packets, 1);

    // Garbage with a data header but an unknown index is dropped, not delivered.
    let mut bogus = vec![4u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    bogus.extend_from_slice(&[0u8; 40]);
    sock.send_to(&bogus, pod_addr).await.unwrap();
    assert_eq!(
        recv_timeout(&pod.device, Duration::from_millis(300)).await,
        None
    );
}

/// Moves the calling thread (a `#[tokio::test]` runs its runtime on it)
/// into a fresh network namespace with only `lo` up, so the pods' local
/// endpoint candidates and every ping stay on loopback. Missing without
/// the privilege to do so (the test then skips, or fails under CI).
fn private_netns() -> Result<(), tailnet_testbed::Missing> {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return Err(tailnet_testbed::Missing::new(
            "no privilege to make a private network namespace",
            "run as root (CAP_SYS_ADMIN)",
        ));
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
    Ok(())
}

/// A STUN server on loopback answering every binding request with the
/// requester's address. Returns its port.
async fn stun_server() -> u16 {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if let Ok(tx) = tailnet_wire::stun::parse_binding_request(&buf[..n]) {
                // Like a real STUN server: a lost answer is retried by the client.
                sock.send_to(&tailnet_wire::stun::binding_response(tx, from), from)
                    .await
                    .ok();
            }
        }
    });
    port
}

/// The pod's STUN-learned endpoint on loopback.
async fn reflexive_endpoint(pod: &TestPod) -> SocketAddr {
    let mut endpoints = pod.handle.endpoints();
    let port = endpoints.borrow().udp_port.expect("pod UDP socket");
    let want = SocketAddr::from(([127, 0, 0, 1], port));
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if endpoints.borrow_and_update().endpoints.contains(&want) {
                return;
            }
            endpoints.changed().await.unwrap();
        }
    })
    .await
    .expect("STUN never reported the pod's loopback endpoint");
    want
}

/// Exchanges packets both ways until both pods report a direct path to
/// each other's expected endpoint.
async fn wait_direct(a: &TestPod, b: &TestPod, a_ep: SocketAddr, b_ep: SocketAddr) {
    let ab = ipv4_udp(a.addr, b.addr, b"a to b");
    let ba = ipv4_udp(b.addr, a.addr, b"b to a");
    for _ in 0..100 {
        a.device.send(&ab).await.unwrap();
        b.device.send(&ba).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (sa, sb) = (
            a.handle.stats().await.unwrap(),
            b.handle.stats().await.unwrap(),
        );
        if sa.peers[0].direct_endpoint == Some(b_ep) && sb.peers[0].direct_endpoint == Some(a_ep) {
            assert_eq!(sa.peers[0].path, PathKind::Direct);
            assert_eq!(sb.peers[0].path, PathKind::Direct);
            return;
        }
    }
    let (sa, sb) = (
        a.handle.stats().await.unwrap(),
        b.handle.stats().await.unwrap(),
    );
    panic!("no direct path: a {:?} b {:?}", sa.peers, sb.peers);
}

/// Two pods on two engines, with disco keys, sharing a relay whose region
/// also serves STUN, each with its reflexive endpoint learned. `base` picks
/// the keys: node keys `base+1`, `base+2`, disco keys `base+0x11`, `base+0x12`.
/// The peer configurations carry the disco keys and no endpoints.
struct DirectPair {
    relay: LocalRelay,
    map: Arc<Vec<DerpRegionConfig>>,
    e2: Engine,
    a: TestPod,
    b: TestPod,
    a_ep: SocketAddr,
    b_ep: SocketAddr,
    a_for_b: PeerConfig,
    b_for_a: PeerConfig,
    /// Keeps the first engine alive.
    _e1: Engine,
}

async fn direct_pair(base: u8) -> DirectPair {
    let relay = local_relay().await;
    let stun_port = stun_server().await;
    let mut map = (*derp_map(&relay)).clone();
    map[0].nodes[0].stun_port = stun_port;
    let map = Arc::new(map);
    let (e1, e2) = (
        Engine::new(EngineConfig::default()),
        Engine::new(EngineConfig::default()),
    );
    let (disco_a, disco_b) = ([base + 0x11; 32], [base + 0x12; 32]);
    let a = attach_with_disco(
        &e1,
        "a",
        [base + 1; 32],
        disco_a,
        Ipv4Addr::new(100, 64, 0, 1),
    );
    let b = attach_with_disco(
        &e2,
        "b",
        [base + 2; 32],
        disco_b,
        Ipv4Addr::new(100, 64, 0, 2),
    );
    a.handle.set_derp_map(map.clone()).await.unwrap();
    b.handle.set_derp_map(map.clone()).await.unwrap();
    let a_ep = reflexive_endpoint(&a).await;
    let b_ep = reflexive_endpoint(&b).await;
    let mut b_for_a = peer_of(&b, Some(900));
    b_for_a.disco_key = Some(tailnet_wire::disco::public_key(&disco_b));
    let mut a_for_b = peer_of(&a, Some(900));
    a_for_b.disco_key = Some(tailnet_wire::disco::public_key(&disco_a));
    DirectPair {
        relay,
        map,
        e2,
        a,
        b,
        a_ep,
        b_ep,
        a_for_b,
        b_for_a,
        _e1: e1,
    }
}

/// Two engines find a direct path: STUN gives each pod its loopback
/// endpoint, `a` knows `b`'s from "control", `b` learns `a`'s from the
/// call-me-maybe `a` relays when it starts pinging. Once both sides have
/// their pongs, traffic flows with the relay gone.
#[tokio::test]
async fn pods_upgrade_to_a_direct_path_after_disco_and_survive_the_relay() {
    tailnet_testbed::require!(private_netns());
    let DirectPair {
        relay,
        a,
        b,
        a_ep,
        b_ep,
        a_for_b,
        mut b_for_a,
        map: _,
        e2: _e2,
        _e1,
    } = direct_pair(0xc0).await;
    b_for_a.endpoints = vec![b_ep];
    a.handle.set_peers(vec![b_for_a]).await.unwrap();
    b.handle.set_peers(vec![a_for_b]).await.unwrap();

    let first = ipv4_udp(a.addr, b.addr, b"first");
    deliver_eventually(&a, &b, &first).await;
    wait_direct(&a, &b, a_ep, b_ep).await;
    drain(&a.device, Duration::from_millis(50)).await;
    drain(&b.device, Duration::from_millis(50)).await;

    // With the relay down, only the direct path can carry packets.
    drop(relay);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ab = ipv4_udp(a.addr, b.addr, b"direct only a to b");
    send_and_expect(&a, &b, &ab).await;
    let ba = ipv4_udp(b.addr, a.addr, b"direct only b to a");
    send_and_expect(&b, &a, &ba).await;
    // Heartbeats keep the path trusted past its 6.5 s lifetime.
    for _ in 0..8 {
        a.device.send(&ab).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drain(&b.device, Duration::from_millis(50)).await;
    let stats = a.handle.stats().await.unwrap();
    assert_eq!(stats.peers[0].path, PathKind::Direct);
    assert_eq!(stats.peers[0].direct_endpoint, Some(b_ep));
    send_and_expect(&a, &b, &ab).await;
}

/// When the direct endpoint goes silent the peer is reached through the
/// relay again, and a new endpoint is found and used without help.
#[tokio::test]
async fn a_dead_direct_path_gives_way_to_the_peers_new_endpoint() {
    tailnet_testbed::require!(private_netns());
    let DirectPair {
        map,
        e2,
        a,
        b,
        a_ep,
        b_ep,
        mut a_for_b,
        b_for_a,
        relay: _relay,
        _e1,
    } = direct_pair(0xe0).await;
    a_for_b.endpoints = vec![a_ep];
    a.handle.set_peers(vec![b_for_a.clone()]).await.unwrap();
    b.handle.set_peers(vec![a_for_b.clone()]).await.unwrap();
    let ab = ipv4_udp(a.addr, b.addr, b"a to b");
    deliver_eventually(&a, &b, &ab).await;
    wait_direct(&a, &b, a_ep, b_ep).await;

    // b restarts: same keys, new socket. a's direct path now leads nowhere.
    b.handle.clone().detach().await.unwrap();
    assert!(
        eventually(Duration::from_millis(500), || e2.pod_count() == 0).await,
        "detached pod b still counted"
    );
    let b2 = attach_with_disco(&e2, "b", [0xe2; 32], [0xf2; 32], b.addr);
    b2.handle.set_derp_map(map).await.unwrap();
    let b2_ep = reflexive_endpoint(&b2).await;
    assert_ne!(b2_ep, b_ep);
    b2.handle.set_peers(vec![a_for_b]).await.unwrap();

    // Keep both talking (b2 starts a new session): once the dead path's
    // trust lapses a falls back to the relay and, within a ping round,
    // finds b2's endpoint (through b2's pings or call-me-maybe). The relay
    // interval can be shorter than one poll here, so it is not required to
    // be seen; what must hold is that a leaves the dead endpoint for b2's
    // (the fallback itself is unit-tested in `path`).
    let ba = ipv4_udp(b2.addr, a.addr, b"b2 to a");
    for _ in 0..150 {
        a.device.send(&ab).await.unwrap();
        b2.device.send(&ba).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let peer = a.handle.stats().await.unwrap().peers[0].clone();
        if peer.direct_endpoint == Some(b2_ep) {
            break;
        }
    }
    let peer = a.handle.stats().await.unwrap().peers[0].clone();
    assert_eq!(peer.path, PathKind::Direct, "{peer:?}");
    assert_eq!(
        peer.direct_endpoint,
        Some(b2_ep),
        "a kept the dead endpoint: {peer:?}"
    );
    // b2's new session settles (its handshake may have crossed the dead
    // path), then a's packets reach it.
    let probe = ipv4_udp(a.addr, b2.addr, b"after recovery");
    let delivered = deliver_within(&a, &b2, &probe, Duration::from_secs(15)).await;
    if let Err(others) = delivered {
        panic!("a's packets never reached the restarted b2 within 15 s ({others} others arrived)");
    }
    assert_eq!(
        a.handle.stats().await.unwrap().peers[0].direct_endpoint,
        Some(b2_ep)
    );
}

/// Throughput of one pod-to-pod stream over the direct path (both engines
/// in this process, packet devices are socketpairs). Prints; asserts only
/// that packets arrived. Run on demand, in release mode:
/// `cargo test -p tailnet-cnid --release --lib direct_path_throughput -- --ignored --nocapture`
#[test]
#[ignore = "benchmark"]
fn direct_path_throughput() {
    // The runtime's workers must share the namespace: enter it first, on
    // this thread, and build a runtime of our own inside it.
    tailnet_testbed::require!(private_netns());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(direct_path_throughput_inner());
}

async fn direct_path_throughput_inner() {
    let DirectPair {
        a,
        b,
        a_ep,
        b_ep,
        mut a_for_b,
        mut b_for_a,
        relay: _relay,
        _e1,
        e2: _e2,
        ..
    } = direct_pair(0x60).await;
    b_for_a.endpoints = vec![b_ep];
    a_for_b.endpoints = vec![a_ep];
    a.handle.set_peers(vec![b_for_a]).await.unwrap();
    b.handle.set_peers(vec![a_for_b]).await.unwrap();
    let first = ipv4_udp(a.addr, b.addr, b"first");
    deliver_eventually(&a, &b, &first).await;
    wait_direct(&a, &b, a_ep, b_ep).await;
    drain(&b.device, Duration::from_millis(50)).await;

    let packet = ipv4_udp(a.addr, b.addr, &[0x42; 1200]);
    let run = Duration::from_secs(5);
    let TestPod { device: a_dev, .. } = a;
    let sender = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < run {
            a_dev.send(&packet).await.unwrap();
            sent += 1;
        }
        sent
    });
    let start = std::time::Instant::now();
    let mut received = 0u64;
    let mut buf = vec![0u8; 2048];
    while start.elapsed() < run {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(100), b.device.recv(&mut buf)).await
        {
            received += 1;
        }
    }
    let sent = sender.await.unwrap();
    let secs = run.as_secs_f64();
    eprintln!(
        "direct path: sent {sent}, received {received} packets of 1228 bytes in {secs} s: {:.0} packets/s, {:.1} MB/s",
        received as f64 / secs,
        received as f64 * 1228.0 / secs / 1e6
    );
    assert!(received > 0);
}
