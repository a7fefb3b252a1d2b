//! Hostile senders at a pod's published UDP port.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use super::*;
use crate::wg::engine::handshake::COOKIE_REPLY_LEN;
use crate::wg::EngineConfig;

/// A stranger who knows the pod's public key (every peer does) floods it
/// with well-formed initiations. Once the pod is under load it answers
/// with cookie replies, which cost no X25519, and never with a handshake
/// response.
#[tokio::test]
async fn an_initiation_flood_is_answered_with_cookies() {
    let engine = Engine::new(EngineConfig::default());
    let pod = attach(&engine, "pod", [0xc1; 32], Ipv4Addr::new(100, 64, 0, 1));
    let pod_addr = loopback_socket_of(&pod);
    let mut stranger = Tunn::new(
        x25519::StaticSecret::from([0xc2; 32]),
        x25519::PublicKey::from(pod.key),
        None,
        None,
        5,
        None,
    );
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..400 {
        let TunnResult::WriteToNetwork(init) = stranger.format_handshake_initiation(&mut buf, true)
        else {
            panic!("no initiation")
        };
        sock.send_to(init, pod_addr).await.unwrap();
    }
    let mut cookies = 0;
    let mut reply = [0u8; 512];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut reply)).await
    {
        assert_eq!(
            reply[0], 3,
            "only cookie replies, got message type {}",
            reply[0]
        );
        assert_eq!(n, 64);
        cookies += 1;
    }
    assert!(cookies > 0, "a flooded pod sent no cookie reply");
}

/// A stranger floods the pod's socket from 127.0.0.2 with initiations
/// that carry a valid mac1, from a thread of its own, until dropped: about
/// 2,000 a second, twenty times what puts a pod under load, and little
/// enough that a debug build on a busy machine keeps reading its socket.
struct Flood {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Flood {
    fn start(pod: &TestPod) -> Self {
        let pod_addr = loopback_socket_of(pod);
        let mut stranger = Tunn::new(
            x25519::StaticSecret::from([0xf1; 32]),
            x25519::PublicKey::from(pod.key),
            None,
            None,
            77,
            None,
        );
        let mut buf = [0u8; 256];
        let TunnResult::WriteToNetwork(init) = stranger.format_handshake_initiation(&mut buf, true)
        else {
            panic!("no initiation")
        };
        let init = init.to_vec();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            let mut cookies = 0;
            let mut reply = [0u8; 128];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..10 {
                    // A full socket buffer only means the pod reads late.
                    sock.send_to(&init, pod_addr).ok();
                }
                while let Ok((64, _)) = sock.recv_from(&mut reply) {
                    cookies += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            cookies
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the flood: how many cookie replies it was sent.
    fn stop(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("flood thread"))
            .unwrap_or(0)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sends, from the peer to the pod's socket, what its session holds once
/// the handshake is complete; the pod must then deliver `inner`.
async fn deliver_queued(peer: &mut OutsidePeer, pod: &TestPod, first: Vec<u8>, inner: &[u8]) {
    let pod_addr = loopback_socket_of(pod);
    let mut out = vec![0u8; 4096];
    peer.sock.send_to(&first, pod_addr).await.unwrap();
    while let TunnResult::WriteToNetwork(data) = peer.tunn.decapsulate(None, &[], &mut out) {
        peer.sock.send_to(data, pod_addr).await.unwrap();
    }
    let give_up = Instant::now() + Duration::from_secs(5);
    while Instant::now() < give_up {
        match recv_timeout(&pod.device, Duration::from_millis(500)).await {
            Some(got) if got == inner => return,
            _ => {}
        }
    }
    panic!("the peer's packet never reached the pod");
}

/// Waits up to `wait` for the pod's handshake response through the relay
/// that completes the peer's latest initiation (an answer to an earlier
/// one does not); returns the peer's first packet after it.
async fn completed_by_relay(
    peer: &mut OutsidePeer,
    pod: &TestPod,
    wait: Duration,
) -> Option<Vec<u8>> {
    let give_up = Instant::now() + wait;
    let mut out = vec![0u8; 4096];
    while let Some(left) = give_up.checked_duration_since(Instant::now()) {
        let response = relayed_from_pod(peer, pod, left).await?;
        if let TunnResult::WriteToNetwork(first) = peer.tunn.decapsulate(None, &response, &mut out)
        {
            return Some(first.to_vec());
        }
    }
    None
}

/// While a stranger floods the pod from another address, a real peer is
/// first answered with a cookie; its next initiation carries mac2 and
/// completes a handshake, and its packet reaches the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_peer_handshakes_with_its_cookie_during_a_flood() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (pod, mut peer) = pod_with_outside_peer(&engine, &relay).await;
    let pod_addr = loopback_socket_of(&pod);
    let flood = Flood::start(&pod);
    // The pod is under load once the stranger is being answered with cookies.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let inner = ipv4_udp(peer.addr, pod.addr, b"through the flood");
    let mut buf = vec![0u8; 4096];
    let TunnResult::WriteToNetwork(init) = peer.tunn.encapsulate(&inner, &mut buf) else {
        panic!("no initiation")
    };
    let init = init.to_vec();
    // A datagram lost to a full socket buffer is sent again, the same
    // initiation, so any cookie reply that comes back names its index.
    let mut got_cookie = false;
    for _ in 0..20 {
        peer.sock.send_to(&init, pod_addr).await.unwrap();
        let mut reply = [0u8; 256];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), peer.sock.recv_from(&mut reply)).await
        {
            assert_eq!((n, reply[0]), (COOKIE_REPLY_LEN, 3), "only a cookie reply");
            let mut out = vec![0u8; 4096];
            let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert!(
                matches!(
                    peer.tunn.decapsulate(localhost, &reply[..n], &mut out),
                    TunnResult::Done
                ),
                "the peer did not take the cookie"
            );
            got_cookie = true;
            break;
        }
    }
    assert!(
        got_cookie,
        "no cookie reply to a peer's initiation under load"
    );

    // With the cookie: the pod answers (through the relay: no direct path
    // is validated yet).
    let TunnResult::WriteToNetwork(with_cookie) =
        peer.tunn.format_handshake_initiation(&mut buf, true)
    else {
        panic!("no initiation with the cookie")
    };
    let with_cookie = with_cookie.to_vec();
    let mut first = None;
    for _ in 0..20 {
        peer.sock.send_to(&with_cookie, pod_addr).await.unwrap();
        first = completed_by_relay(&mut peer, &pod, Duration::from_millis(500)).await;
        if first.is_some() {
            break;
        }
    }
    let first = first.expect("no handshake response to an initiation with a cookie");
    deliver_queued(&mut peer, &pod, first, &inner).await;
    let cookies_to_stranger = flood.stop();
    assert!(
        cookies_to_stranger > 0,
        "the pod was never under load: the flood got no cookies"
    );
}

/// While a stranger floods the pod's socket, a peer that reaches the pod
/// through its relay (where no cookie can be bound to an address) still
/// completes a handshake: the relay authenticated its node key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_peer_handshakes_during_a_flood() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (pod, mut peer) = pod_with_outside_peer(&engine, &relay).await;
    let flood = Flood::start(&pod);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let inner = ipv4_udp(peer.addr, pod.addr, b"relayed through the flood");
    let mut buf = vec![0u8; 4096];
    let TunnResult::WriteToNetwork(init) = peer.tunn.encapsulate(&inner, &mut buf) else {
        panic!("no initiation")
    };
    let mut frame = Vec::new();
    tailnet_wire::derp::encode_send_packet(&mut frame, &pod.key, init).unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut peer.relay.writer, &frame)
        .await
        .unwrap();
    let first = completed_by_relay(&mut peer, &pod, Duration::from_secs(5))
        .await
        .expect("no handshake response to a relayed initiation under load");
    deliver_queued(&mut peer, &pod, first, &inner).await;
    let cookies_to_stranger = flood.stop();
    assert!(
        cookies_to_stranger > 0,
        "the pod was never under load: the flood got no cookies"
    );
}
