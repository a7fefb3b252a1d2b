//! The pod's MagicDNS resolver through a real engine: queries written to
//! the pod's device, answers read back from it; upstreams are UDP servers
//! on loopback that the tests run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tailnet_wire::dns::{encode_query, udp_packet, Query, Response, TYPE_A, TYPE_AAAA};
use tailnet_wire::packet::Packet;
use tokio::net::UdpSocket;

use super::*;
use crate::wg::engine::{DnsSettings, DnsTable, SERVICE_V4, SERVICE_V6};
use crate::wg::EngineConfig;

const POD_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 1);
const NXDOMAIN: u8 = 3;
const SERVFAIL: u8 = 2;

fn engine_with(settings: DnsSettings) -> Engine {
    Engine::new(EngineConfig {
        dns: settings,
        ..EngineConfig::default()
    })
}

/// A pod with both families, its table holding `peer.tailnet.test`.
async fn pod_with_names(engine: &Engine) -> (PodHandle, PacketFd) {
    let (fd, device) = pair();
    let handle = engine
        .attach_pod(PodDataConfig {
            pod_id: "dns".into(),
            tun_fd: fd,
            node_private: [0x51; 32],
            disco_private: [0; 32],
            addresses: vec![IpAddr::V4(POD_V4), IpAddr::V6(POD_V6)],
        })
        .unwrap();
    let mut table = DnsTable::default();
    let peer: Vec<IpAddr> = vec![
        "100.64.0.2".parse().unwrap(),
        "fd7a:115c:a1e0::2".parse().unwrap(),
    ];
    table.add_name("peer.tailnet.test.", peer, "tailnet.test");
    table.add_local_suffix("tailnet.test");
    handle.set_dns(Arc::new(table)).await.unwrap();
    (handle, device)
}

/// Sends `name`/`qtype` from the pod to MagicDNS over `family`'s address
/// and returns the parsed answer, checking it comes back from the service
/// address to the port the query came from.
async fn ask(device: &PacketFd, v6: bool, id: u16, name: &str, qtype: u16) -> Option<Response> {
    let (client, server): (SocketAddr, SocketAddr) = if v6 {
        ((POD_V6, 40053).into(), (SERVICE_V6, 53).into())
    } else {
        ((POD_V4, 40053).into(), (SERVICE_V4, 53).into())
    };
    let query = encode_query(id, name, qtype, None).unwrap();
    device
        .send(&udp_packet(client, server, &query).unwrap())
        .await
        .unwrap();
    let packet = recv_timeout(device, Duration::from_secs(5)).await?;
    let parsed = Packet::parse(&packet).expect("an IP packet");
    let datagram = tailnet_wire::dns::UdpDatagram::from_packet(&parsed).expect("UDP");
    assert_eq!(datagram.client, server, "answer from the service address");
    assert_eq!(datagram.server, client, "answer to the asking socket");
    Some(Response::parse(datagram.payload).expect("a DNS response"))
}

/// A DNS server on loopback answering every A query with 10.43.0.99 after
/// `delay`; counts the queries it got.
async fn upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            counter.fetch_add(1, Ordering::SeqCst);
            let Ok(query) = Query::parse(&buf[..n]) else {
                continue;
            };
            let answer = query.answer(&["10.43.0.99".parse().unwrap()], 5, 512);
            tokio::time::sleep(delay).await;
            socket.send_to(&answer, from).await.ok();
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn tailnet_names_are_answered_over_both_families() {
    let engine = engine_with(DnsSettings::default());
    let (_handle, device) = pod_with_names(&engine).await;
    for v6 in [false, true] {
        let a = ask(&device, v6, 1, "peer.tailnet.test", TYPE_A)
            .await
            .unwrap();
        assert_eq!(a.id, 1);
        assert_eq!(a.rcode, 0);
        assert_eq!(a.addrs, vec!["100.64.0.2".parse::<IpAddr>().unwrap()]);
        let aaaa = ask(&device, v6, 2, "PEER", TYPE_AAAA).await.unwrap();
        assert_eq!(
            aaaa.addrs,
            vec!["fd7a:115c:a1e0::2".parse::<IpAddr>().unwrap()]
        );
        let missing = ask(&device, v6, 3, "hidden.tailnet.test", TYPE_A)
            .await
            .unwrap();
        assert_eq!(missing.rcode, NXDOMAIN);
        assert!(missing.authoritative);
    }
}

#[tokio::test]
async fn other_names_go_to_the_upstream() {
    let (addr, seen) = upstream(Duration::ZERO).await;
    let engine = engine_with(DnsSettings {
        upstream: Some(addr),
        ..DnsSettings::default()
    });
    let (_handle, device) = pod_with_names(&engine).await;
    let r = ask(
        &device,
        false,
        0x4242,
        "kube-dns.kube-system.svc.cluster.local",
        TYPE_A,
    )
    .await
    .unwrap();
    assert_eq!(r.id, 0x4242, "the client's id, whatever id went upstream");
    assert_eq!(r.addrs, vec!["10.43.0.99".parse::<IpAddr>().unwrap()]);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // Tailnet names never reach the upstream.
    ask(&device, false, 5, "peer.tailnet.test", TYPE_A)
        .await
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_silent_upstream_gives_servfail_after_the_timeout() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let engine = engine_with(DnsSettings {
        upstream: Some(silent.local_addr().unwrap()),
        timeout: Duration::from_millis(200),
        ..DnsSettings::default()
    });
    let (_handle, device) = pod_with_names(&engine).await;
    let r = ask(&device, false, 9, "example.cluster.local", TYPE_A)
        .await
        .unwrap();
    assert_eq!(r.rcode, SERVFAIL);
    // No upstream at all: SERVFAIL at once.
    let engine = engine_with(DnsSettings::default());
    let (_handle, device) = pod_with_names(&engine).await;
    let r = ask(&device, false, 10, "example.cluster.local", TYPE_A)
        .await
        .unwrap();
    assert_eq!(r.rcode, SERVFAIL);
}

#[tokio::test]
async fn queries_beyond_the_in_flight_bound_are_refused_at_once() {
    let (addr, seen) = upstream(Duration::from_millis(1500)).await;
    let engine = engine_with(DnsSettings {
        upstream: Some(addr),
        max_in_flight: 2,
        timeout: Duration::from_secs(5),
    });
    let (_handle, device) = pod_with_names(&engine).await;
    let client: SocketAddr = (POD_V4, 40053).into();
    let server: SocketAddr = (SERVICE_V4, 53).into();
    for id in 1..=3u16 {
        let query = encode_query(id, "slow.cluster.local", TYPE_A, None).unwrap();
        device
            .send(&udp_packet(client, server, &query).unwrap())
            .await
            .unwrap();
    }
    // The third is refused before the slow upstream answers the first two.
    let first = recv_timeout(&device, Duration::from_millis(1000))
        .await
        .unwrap();
    let first = Packet::parse(&first).unwrap();
    let first = tailnet_wire::dns::UdpDatagram::from_packet(&first).unwrap();
    let first = Response::parse(first.payload).unwrap();
    assert_eq!((first.id, first.rcode), (3, SERVFAIL));
    let mut answered = Vec::new();
    for _ in 0..2 {
        let packet = recv_timeout(&device, Duration::from_secs(5)).await.unwrap();
        let parsed = Packet::parse(&packet).unwrap();
        let datagram = tailnet_wire::dns::UdpDatagram::from_packet(&parsed).unwrap();
        let r = Response::parse(datagram.payload).unwrap();
        assert_eq!(r.rcode, 0);
        answered.push(r.id);
    }
    answered.sort();
    assert_eq!(answered, vec![1, 2]);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn malformed_queries_and_other_ports_are_dropped_and_counted() {
    let engine = engine_with(DnsSettings::default());
    let (handle, device) = pod_with_names(&engine).await;
    let before = handle.stats().await.unwrap().dropped_packets;
    let client: SocketAddr = (POD_V4, 40053).into();
    let query = encode_query(1, "peer.tailnet.test", TYPE_A, None).unwrap();
    device
        .send(&udp_packet(client, (SERVICE_V4, 5353).into(), &query).unwrap())
        .await
        .unwrap();
    device
        .send(&udp_packet(client, (SERVICE_V4, 53).into(), &query[..7]).unwrap())
        .await
        .unwrap();
    assert_eq!(
        recv_timeout(&device, Duration::from_millis(300)).await,
        None
    );
    assert_eq!(handle.stats().await.unwrap().dropped_packets - before, 2);
    // The resolver still serves the next good query.
    assert_eq!(
        ask(&device, false, 2, "peer.tailnet.test", TYPE_A)
            .await
            .unwrap()
            .rcode,
        0
    );
}
