//! The engine with real kernel TUN devices: two network namespaces, one pod
//! identity in each, relayed through a local DERP relay on loopback. UDP
//! datagrams sent by the kernel stack in one namespace arrive in the other.
//!
//! Needs root, /dev/net/tun and `ip` (iproute2); skips otherwise (fails
//! under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tailnet_cnid::podmgr::tun::open_tun;
use tailnet_cnid::wg::local_relay::LocalRelay;
use tailnet_cnid::wg::{
    DerpNodeConfig, DerpRegionConfig, Engine, EngineConfig, PathKind, PeerConfig, PodDataConfig,
};

use crate::common::netns::{ip, Netns};
use crate::common::{require, Needs, Unmet};

/// Root, a TUN device and iproute2.
fn requirements() -> Result<(), Unmet> {
    Needs::new().root().tun().tools(&["ip"]).met()
}

struct Side {
    ns: Netns,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    private: [u8; 32],
}

impl Side {
    fn public(&self) -> [u8; 32] {
        tailnet_wire::derp::public_key(&self.private)
    }

    fn peer_config(&self) -> PeerConfig {
        PeerConfig {
            node_key: self.public(),
            disco_key: None,
            allowed_ips: vec![(IpAddr::V4(self.v4), 32), (IpAddr::V6(self.v6), 128)],
            endpoints: vec![],
            home_derp: Some(900),
        }
    }

    /// Create the TUN in the namespace, address it and route the tailnet to it.
    fn setup_tun(&self) -> std::os::fd::OwnedFd {
        let name = "tn0";
        let fd = self.ns.run(move || open_tun(name).expect("open tun"));
        let ns = self.ns.0.as_str();
        ip(&["-n", ns, "link", "set", name, "mtu", "1280", "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", self.v4),
            "dev",
            name,
        ]);
        ip(&[
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{}/128", self.v6),
            "dev",
            name,
            "nodad",
        ]);
        ip(&["-n", ns, "route", "add", "100.64.0.0/10", "dev", name]);
        ip(&[
            "-n",
            ns,
            "-6",
            "route",
            "add",
            "fd7a:115c:a1e0::/48",
            "dev",
            name,
        ]);
        fd
    }

    fn udp(&self, bind: SocketAddr) -> UdpSocket {
        self.ns.run(move || {
            let s = UdpSocket::bind(bind).expect("bind in netns");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            s
        })
    }
}

/// Send from `tx` to `to` until `rx` receives it; the first datagrams wait
/// for the relay connections and the WireGuard handshake.
fn exchange(tx: &UdpSocket, rx: &UdpSocket, to: SocketAddr, payload: &[u8]) -> SocketAddr {
    let mut buf = [0u8; 2048];
    for _ in 0..50 {
        tx.send_to(payload, to).expect("send");
        if let Ok((n, from)) = rx.recv_from(&mut buf) {
            assert_eq!(&buf[..n], payload);
            return from;
        }
    }
    panic!("no datagram reached {to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_traffic_crosses_between_namespaces_over_relay() {
    require!(requirements());
    let pid = std::process::id();
    let a = Side {
        ns: Netns::new(format!("tndp-a-{pid}")),
        v4: Ipv4Addr::new(100, 64, 10, 1),
        v6: "fd7a:115c:a1e0::a1".parse().unwrap(),
        private: [0x61; 32],
    };
    let b = Side {
        ns: Netns::new(format!("tndp-b-{pid}")),
        v4: Ipv4Addr::new(100, 64, 10, 2),
        v6: "fd7a:115c:a1e0::b2".parse().unwrap(),
        private: [0x62; 32],
    };

    let relay = LocalRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("relay");
    let SocketAddr::V4(relay_addr) = relay.addr() else {
        unreachable!()
    };
    let map = Arc::new(vec![DerpRegionConfig {
        region_id: 900,
        nodes: vec![DerpNodeConfig {
            name: "900a".into(),
            host_name: "localhost".into(),
            ipv4: Some(*relay_addr.ip()),
            ipv6: None,
            derp_port: relay_addr.port(),
            stun_port: 0,
            insecure_for_tests: true,
            stun_only: false,
            plain_http: true,
        }],
    }]);

    let engine = Engine::new(EngineConfig::default());
    let mut handles = Vec::new();
    for (me, them) in [(&a, &b), (&b, &a)] {
        let handle = engine
            .attach_pod(PodDataConfig {
                pod_id: me.ns.0.clone(),
                tun_fd: me.setup_tun(),
                node_private: me.private,
                disco_private: [0; 32],
                addresses: vec![IpAddr::V4(me.v4), IpAddr::V6(me.v6)],
            })
            .expect("attach");
        handle.set_derp_map(map.clone()).await.unwrap();
        handle.set_peers(vec![them.peer_config()]).await.unwrap();
        handles.push(handle);
    }

    let a_v4 = a.udp(SocketAddr::new(IpAddr::V4(a.v4), 0));
    let b_v4 = b.udp(SocketAddr::new(IpAddr::V4(b.v4), 7001));
    let a_v6 = a.udp(SocketAddr::new(IpAddr::V6(a.v6), 0));
    let b_v6 = b.udp(SocketAddr::new(IpAddr::V6(b.v6), 7002));

    let (from_v4, from_v6) = tokio::task::spawn_blocking(move || {
        let from_v4 = exchange(
            &a_v4,
            &b_v4,
            b_v4.local_addr().unwrap(),
            b"over the tailnet, v4",
        );
        // The reply travels the other way through the established session.
        let back = exchange(&b_v4, &a_v4, from_v4, b"reply v4");
        assert_eq!(back, b_v4.local_addr().unwrap());
        let from_v6 = exchange(
            &a_v6,
            &b_v6,
            b_v6.local_addr().unwrap(),
            b"over the tailnet, v6",
        );
        let big = vec![0x42u8; 1200];
        exchange(&a_v6, &b_v6, b_v6.local_addr().unwrap(), &big);
        (from_v4, from_v6)
    })
    .await
    .unwrap();
    assert_eq!(from_v4.ip(), IpAddr::V4(a.v4));
    assert_eq!(from_v6.ip(), IpAddr::V6(a.v6));

    let stats = handles[0].stats().await.unwrap();
    assert_eq!(stats.peers[0].path, PathKind::Relay);
    assert_eq!(stats.peers[0].relay_region, Some(900));
    assert!(stats.peers[0].last_handshake.is_some());
    assert!(stats.rx_packets >= 1);
    for h in handles {
        h.detach().await.unwrap();
    }
}
