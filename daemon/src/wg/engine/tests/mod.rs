//! Engine tests: pods attached to real engines, packet devices as
//! socketpairs, a local relay on loopback. Shared helpers live here.

mod checks;
mod direct;
mod dns;
mod filter;
mod hostile;
mod idle;
mod relay;
mod resume;
mod warm;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::Tunn;
use boringtun::x25519;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::time::Instant;

use super::{Engine, PodHandle, Reused};
use crate::wg::config::{DerpNodeConfig, DerpRegionConfig, PeerConfig, PodDataConfig};
use crate::wg::local_relay::LocalRelay;
use crate::wg::packet_fd::PacketFd;

/// The longest a test waits for a packet device to go quiet.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

fn pair() -> (OwnedFd, PacketFd) {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    (a, PacketFd::new(b).unwrap())
}

/// A minimal IPv4/UDP packet with a correct total length.
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    udp(src, 40000, dst, 7, payload)
}

/// An IPv4/UDP packet with chosen ports (checksums zero: nothing verifies them).
fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn derp_map(relay: &LocalRelay) -> Arc<Vec<DerpRegionConfig>> {
    let SocketAddr::V4(addr) = relay.addr() else {
        panic!("v4 relay")
    };
    Arc::new(vec![DerpRegionConfig {
        region_id: 900,
        nodes: vec![DerpNodeConfig {
            name: "900a".into(),
            host_name: "localhost".into(),
            ipv4: Some(*addr.ip()),
            ipv6: None,
            derp_port: addr.port(),
            stun_port: 0,
            insecure_for_tests: true,
            stun_only: false,
            plain_http: true,
        }],
    }])
}
struct TestPod {
    handle: PodHandle,
    device: PacketFd,
    key: [u8; 32],
    addr: Ipv4Addr,
}

fn attach(engine: &Engine, name: &str, private: [u8; 32], addr: Ipv4Addr) -> TestPod {
    attach_with_disco(engine, name, private, [0; 32], addr)
}

fn peer_of(p: &TestPod, home: Option<u16>) -> PeerConfig {
    PeerConfig {
        node_key: p.key,
        disco_key: None,
        allowed_ips: vec![(IpAddr::V4(p.addr), 32)],
        endpoints: vec![],
        home_derp: home,
    }
}

/// The pod's UDP socket on loopback, where peers outside the engine send.
fn loopback_socket_of(pod: &TestPod) -> SocketAddr {
    let port = pod
        .handle
        .endpoints()
        .borrow()
        .udp_port
        .expect("pod UDP socket");
    ([127, 0, 0, 1], port).into()
}

async fn recv_timeout(dev: &PacketFd, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(wait, dev.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Sends `packet` once from `from` and expects exactly it at `to` within
/// 2 s: for a path already up, where nothing needs a retry.
async fn send_and_expect(from: &TestPod, to: &TestPod, packet: &[u8]) {
    from.device.send(packet).await.unwrap();
    assert_eq!(
        recv_timeout(&to.device, Duration::from_secs(2))
            .await
            .as_deref(),
        Some(packet)
    );
}

/// A relay on an ephemeral loopback port.
async fn local_relay() -> LocalRelay {
    LocalRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Pod `a` (100.64.0.1) and pod `b` (100.64.0.2), each on the engine and
/// with the node-key byte given, both with `relay`'s DERP map; no peers yet.
async fn pods_on_relay(
    relay: &LocalRelay,
    (a_engine, a_key): (&Engine, u8),
    (b_engine, b_key): (&Engine, u8),
) -> (TestPod, TestPod) {
    let a = attach(a_engine, "a", [a_key; 32], Ipv4Addr::new(100, 64, 0, 1));
    let b = attach(b_engine, "b", [b_key; 32], Ipv4Addr::new(100, 64, 0, 2));
    let map = derp_map(relay);
    a.handle.set_derp_map(map.clone()).await.unwrap();
    b.handle.set_derp_map(map).await.unwrap();
    (a, b)
}

/// Makes each pod the other's peer, both homed in the relay's region.
async fn introduce(a: &TestPod, b: &TestPod) {
    a.handle
        .set_peers(vec![peer_of(b, Some(900))])
        .await
        .unwrap();
    b.handle
        .set_peers(vec![peer_of(a, Some(900))])
        .await
        .unwrap();
}

/// Send `packet` from `from` until it shows up at `to` (the first packets
/// wait for relay connections and the handshake).
async fn deliver_eventually(from: &TestPod, to: &TestPod, packet: &[u8]) -> Vec<u8> {
    for _ in 0..50 {
        from.device.send(packet).await.unwrap();
        if let Some(got) = recv_timeout(&to.device, Duration::from_millis(200)).await {
            return got;
        }
    }
    panic!("packet never arrived");
}

fn attach_with_disco(
    engine: &Engine,
    name: &str,
    private: [u8; 32],
    disco_private: [u8; 32],
    addr: Ipv4Addr,
) -> TestPod {
    attach_reusing(
        engine,
        (name, private, disco_private),
        addr,
        Reused::default(),
    )
}

/// A pod named and keyed by `(name, node private, disco private)` that
/// takes over `reused`.
fn attach_reusing(
    engine: &Engine,
    (name, private, disco_private): (&str, [u8; 32], [u8; 32]),
    addr: Ipv4Addr,
    reused: Reused,
) -> TestPod {
    let (fd, device) = pair();
    let handle = engine
        .attach_pod_reusing(
            PodDataConfig {
                pod_id: name.into(),
                tun_fd: fd,
                node_private: private,
                disco_private,
                addresses: vec![IpAddr::V4(addr)],
            },
            reused,
        )
        .unwrap();
    let key = x25519::PublicKey::from(&x25519::StaticSecret::from(private)).to_bytes();
    TestPod {
        handle,
        device,
        key,
        addr,
    }
}

/// Receives until nothing arrives for `quiet` (stragglers of earlier
/// sends), for at most [`DRAIN_LIMIT`]: a device that never goes quiet
/// fails the test instead of hanging it.
async fn drain(dev: &PacketFd, quiet: Duration) {
    let give_up = Instant::now() + DRAIN_LIMIT;
    let mut drained = 0;
    while recv_timeout(dev, quiet).await.is_some() {
        drained += 1;
        assert!(
            Instant::now() < give_up,
            "device still receiving after {DRAIN_LIMIT:?} ({drained} packets drained)"
        );
    }
}

/// Sends `packet` from `from` until exactly it shows up at `to`, skipping
/// stragglers of earlier sends, for at most `deadline`. On timeout returns
/// how many other packets arrived meanwhile.
async fn deliver_within(
    from: &TestPod,
    to: &TestPod,
    packet: &[u8],
    deadline: Duration,
) -> Result<(), usize> {
    let give_up = Instant::now() + deadline;
    let mut others = 0;
    while Instant::now() < give_up {
        from.device.send(packet).await.unwrap();
        match recv_timeout(&to.device, Duration::from_millis(200)).await {
            Some(got) if got == packet => return Ok(()),
            Some(_) => others += 1,
            None => {}
        }
    }
    Err(others)
}

/// Polls `check` every 10 ms until it holds, for at most `deadline`;
/// returns whether it did.
async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A peer outside the engine: its boringtun session, a relay connection
/// under its node key, and a UDP socket on 127.0.0.1.
pub(super) struct OutsidePeer {
    tunn: Tunn,
    relay: crate::wg::derp_client::DerpConnection,
    sock: tokio::net::UdpSocket,
    addr: Ipv4Addr,
}

/// A pod with one outside peer, both homed on a local relay.
async fn pod_with_outside_peer(engine: &Engine, relay: &LocalRelay) -> (TestPod, OutsidePeer) {
    let pod = attach(engine, "pod", [0xd1; 32], Ipv4Addr::new(100, 64, 0, 1));
    let map = derp_map(relay);
    pod.handle.set_derp_map(map.clone()).await.unwrap();
    let private = [0xd2; 32];
    let addr = Ipv4Addr::new(100, 64, 0, 9);
    let key = x25519::PublicKey::from(&x25519::StaticSecret::from(private)).to_bytes();
    pod.handle
        .set_peers(vec![PeerConfig {
            node_key: key,
            disco_key: None,
            allowed_ips: vec![(IpAddr::V4(addr), 32)],
            endpoints: vec![],
            home_derp: Some(900),
        }])
        .await
        .unwrap();
    let conn = crate::wg::derp_client::connect(
        &map[0].nodes[0],
        &crate::wg::derp_client::RelayTrust::default(),
        &private,
    )
    .await
    .unwrap();
    let tunn = Tunn::new(
        x25519::StaticSecret::from(private),
        x25519::PublicKey::from(pod.key),
        None,
        None,
        55,
        None,
    );
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer = OutsidePeer {
        tunn,
        relay: conn,
        sock,
        addr,
    };
    (pod, peer)
}

/// The next WireGuard packet the relay hands `peer` from the pod.
async fn relayed_from_pod(
    peer: &mut OutsidePeer,
    pod: &TestPod,
    wait: Duration,
) -> Option<Vec<u8>> {
    use crate::wg::derp_client::tests_support::{next, Received};
    tokio::time::timeout(wait, async {
        loop {
            if let Received::Packet(src, p) = next(&mut peer.relay.reader).await {
                if src == pod.key {
                    return p;
                }
            }
        }
    })
    .await
    .ok()
}
