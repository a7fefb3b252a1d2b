//! The engine against the real test bed: an rscale control server with its
//! DERP relay and an official tailscaled peer (see scripts/testbed.sh).
//!
//! The identity the engine serves is registered by a short-lived tailscaled
//! of our own (its node key is then read from its state and the daemon is
//! stopped), so this test depends on nothing but the data plane. Traffic
//! moves both ways over DERP: ICMP echo from the engine's pod to the peer,
//! and `tailscale ping --icmp` from the peer to the pod, answered in-process.
//!
//! Needs the variables written by `scripts/testbed.sh env`; skips, saying
//! why, when they are absent (fails under `CI=true` or
//! `TAILNET_TEST_REQUIRE=1`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tailnet_cnid::wg::packet_fd::PacketFd;
use tailnet_cnid::wg::{
    DerpNodeConfig, DerpRegionConfig, Engine, EngineConfig, PathKind, PeerConfig, PodDataConfig,
    PodHandle,
};

use crate::common::keys::NodeCleanup;
use crate::common::netns::{ip, serve_hello, Netns};
use crate::common::packet::icmp_v4;
use crate::common::peer::{tailscale, OwnTailscaled};
use crate::common::{self, require, run, Bed};

fn cli(bed: &Bed, socket: &Path, args: &[&str]) -> std::process::Output {
    tailscale(bed, socket, args)
}

fn status_self(bed: &Bed, socket: &Path) -> serde_json::Value {
    let out = cli(bed, socket, &["status", "--json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    v["Self"].clone()
}

fn key_hex(text: &str, prefix: &str) -> [u8; 32] {
    let hex = text
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{prefix} key"));
    hex::decode(hex)
        .expect("hex key")
        .try_into()
        .expect("32 bytes")
}

fn ips(v: &serde_json::Value) -> Vec<IpAddr> {
    v["TailscaleIPs"]
        .as_array()
        .expect("TailscaleIPs")
        .iter()
        .map(|ip| ip.as_str().unwrap().parse().unwrap())
        .collect()
}

struct Registered {
    node_private: [u8; 32],
    addresses: Vec<IpAddr>,
}

/// Register a fresh node with control via a throwaway tailscaled, then stop
/// it and keep its node key: the engine takes over that identity.
fn register_identity(bed: &Bed, dir: &Path) -> Registered {
    let daemon = OwnTailscaled::start(bed, dir, "throwaway", "userspace-networking");
    daemon.up(bed, &format!("tncni-dp-{}", std::process::id()), &[]);
    let me = status_self(bed, &daemon.socket);
    let addresses = ips(&me);
    let public = key_hex(me["PublicKey"].as_str().unwrap(), "nodekey:");
    let state = daemon.state.clone();
    drop(daemon);

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state file")).expect("state JSON");
    let profile = state
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("profile-"))
        .map(|(_, v)| v.as_str().unwrap().to_owned())
        .expect("a login profile");
    use base64::Engine as _;
    let profile = base64::engine::general_purpose::STANDARD
        .decode(profile)
        .expect("profile base64");
    let profile: serde_json::Value = serde_json::from_slice(&profile).expect("profile JSON");
    let node_private = key_hex(
        profile["Config"]["PrivateNodeKey"]
            .as_str()
            .expect("PrivateNodeKey"),
        "privkey:",
    );
    assert_eq!(tailnet_wire::derp::public_key(&node_private), public);
    Registered {
        node_private,
        addresses,
    }
}

/// Everything a test needs to put a registered identity on the engine
/// next to the test bed's peer.
struct Setup {
    me: Registered,
    my_v4: Ipv4Addr,
    peer_v4: Ipv4Addr,
    peer: PeerConfig,
    derp_map: Arc<Vec<DerpRegionConfig>>,
    _cleanup: NodeCleanup,
}

fn first_v4(addrs: &[IpAddr]) -> Option<Ipv4Addr> {
    addrs.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

fn setup(bed: &Bed, dir: &Path) -> Setup {
    let me = register_identity(bed, dir);
    let my_v4 = first_v4(&me.addresses).expect("an IPv4 tailnet address");
    let cleanup = NodeCleanup {
        admin: bed.admin(),
        ipv4: my_v4,
    };
    let peer = status_self(bed, &bed.peer_socket);
    let peer_ips = ips(&peer);
    let peer_v4 = first_v4(&peer_ips).expect("peer IPv4");
    let peer = PeerConfig {
        node_key: key_hex(peer["PublicKey"].as_str().unwrap(), "nodekey:"),
        disco_key: None,
        allowed_ips: peer_ips
            .iter()
            .map(|ip| (*ip, if ip.is_ipv4() { 32 } else { 128 }))
            .collect(),
        endpoints: vec![],
        home_derp: Some(bed.derp_region),
    };
    let control = bed.control_addr;
    let IpAddr::V4(control_ip) = control.ip() else {
        panic!("IPv4 control address")
    };
    let derp_map = Arc::new(vec![DerpRegionConfig {
        region_id: bed.derp_region,
        nodes: vec![DerpNodeConfig {
            name: format!("{}a", bed.derp_region),
            host_name: "localhost".into(),
            ipv4: Some(control_ip),
            ipv6: None,
            derp_port: control.port(),
            stun_port: 0,
            // rscale serves TLS with a self-signed certificate on the same port.
            insecure_for_tests: true,
            stun_only: false,
            plain_http: false,
        }],
    }]);
    Setup {
        me,
        my_v4,
        peer_v4,
        peer,
        derp_map,
        _cleanup: cleanup,
    }
}

async fn attach(engine: &Engine, setup: &Setup, pod_id: &str, device: OwnedFd) -> PodHandle {
    let pod = engine
        .attach_pod(PodDataConfig {
            pod_id: pod_id.into(),
            tun_fd: device,
            node_private: setup.me.node_private,
            disco_private: [0; 32],
            addresses: setup.me.addresses.clone(),
        })
        .unwrap();
    pod.set_derp_map(setup.derp_map.clone()).await.unwrap();
    pod.set_peers(vec![setup.peer.clone()]).await.unwrap();
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_tailscaled_exchanges_traffic_with_the_engine_over_derp() {
    let bed = require!(common::bed());
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(&bed, dir.path());
    let (my_v4, peer_v4) = (setup.my_v4, setup.peer_v4);
    let (engine_end, test_end): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let device = PacketFd::new(test_end).unwrap();
    let engine = Engine::new(EngineConfig::default());
    let pod = attach(&engine, &setup, "tailscaled-interop", engine_end).await;

    // 1. Pod → peer: ICMP echo until the peer's netstack answers.
    let mut buf = vec![0u8; 2048];
    let mut answered = false;
    'outer: for seq in 0..60u16 {
        let echo = icmp_v4(my_v4, peer_v4, 8, 0x7a7a, seq, b"tailnet-cni dataplane");
        device.send(&echo).await.unwrap();
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(n)) = tokio::time::timeout(
            until.saturating_duration_since(Instant::now()),
            device.recv(&mut buf),
        )
        .await
        {
            let p = &buf[..n];
            if n >= 28
                && p[9] == 1
                && p[20] == 0
                && p[12..16] == peer_v4.octets()
                && p[24..26] == [0x7a, 0x7a]
            {
                answered = true;
                break 'outer;
            }
        }
    }
    assert!(
        answered,
        "no ICMP echo reply from the tailscaled peer over DERP"
    );
    let stats = pod.stats().await.unwrap();
    assert_eq!(stats.peers[0].path, PathKind::Relay);
    assert!(stats.peers[0].last_handshake.is_some());

    // 2. Peer → pod: `tailscale ping --icmp`, answered here.
    let target = my_v4.to_string();
    let ping = {
        let bed = bed.clone();
        std::thread::spawn(move || {
            cli(
                &bed,
                &bed.peer_socket,
                &[
                    "ping",
                    "--icmp",
                    "--c=5",
                    "--timeout=5s",
                    "--until-direct=false",
                    &target,
                ],
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut replied = 0;
    while !ping.is_finished() && Instant::now() < deadline {
        let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), device.recv(&mut buf)).await
        else {
            continue;
        };
        let p = buf[..n].to_vec();
        if n >= 28 && p[9] == 1 && p[20] == 8 && p[16..20] == my_v4.octets() {
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let id = u16::from_be_bytes([p[24], p[25]]);
            let seq = u16::from_be_bytes([p[26], p[27]]);
            let header_len = usize::from(p[0] & 0x0f) * 4;
            let reply = icmp_v4(my_v4, src, 0, id, seq, &p[header_len + 8..]);
            device.send(&reply).await.unwrap();
            replied += 1;
        }
    }
    let out = ping.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        replied >= 1,
        "no ICMP echo request reached the pod; ping said: {stdout}"
    );
    assert!(
        stdout.contains("pong from"),
        "tailscale ping saw no pong: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("peer ping over the engine: {}", stdout.trim());
    pod.detach().await.unwrap();
}

/// A kernel TCP server in the pod's namespace behind a real TUN, fetched over
/// HTTP by the tailscaled peer through its SOCKS5 proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_tailscaled_fetches_http_from_a_pod_behind_a_real_tun() {
    let bed = require!(common::Needs::new()
        .root()
        .tun()
        .tools(&["ip", "curl"])
        .bed());
    let socks = bed.peer_socks5.clone();
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(&bed, dir.path());
    let my_v4 = setup.my_v4;

    let ns = Netns::new(format!("tndp-ts-{}", std::process::id()));
    let tun = ns.run(|| tailnet_cnid::podmgr::tun::open_tun("tn0").expect("open tun"));
    ip(&["-n", &ns.0, "link", "set", "tn0", "mtu", "1280", "up"]);
    ip(&[
        "-n",
        &ns.0,
        "addr",
        "add",
        &format!("{my_v4}/32"),
        "dev",
        "tn0",
    ]);
    ip(&["-n", &ns.0, "route", "add", "100.64.0.0/10", "dev", "tn0"]);

    // The pod's web server: answers every request with a fixed body.
    let listener = ns.run(move || {
        std::net::TcpListener::bind(SocketAddr::from((my_v4, 8080))).expect("bind in pod")
    });
    serve_hello(listener);

    let engine = Engine::new(EngineConfig::default());
    let pod = attach(&engine, &setup, "tailscaled-http", tun).await;

    let url = format!("http://{my_v4}:8080/");
    let fetched = tokio::task::spawn_blocking(move || {
        let mut last = String::new();
        for _ in 0..10 {
            let out = run(Command::new("curl").args([
                "-sS",
                "--max-time",
                "10",
                "--socks5",
                &socks,
                &url,
            ]));
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(last)
    })
    .await
    .unwrap();
    assert_eq!(fetched.as_deref(), Ok("hello from the pod\n"));
    let stats = pod.stats().await.unwrap();
    assert_eq!(stats.peers[0].path, PathKind::Relay);
    assert!(stats.rx_packets >= 3 && stats.tx_packets >= 3, "{stats:?}");
    pod.detach().await.unwrap();
}
