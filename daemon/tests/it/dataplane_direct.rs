//! Direct UDP paths against the real test bed: an identity of our own
//! (control session + engine pod + the daemon's netmap sync, as the daemon
//! runs them) and the official tailscaled peer.
//!
//! (a) `tailscale ping` (disco) from the peer reports a direct path to the
//!     pod's socket, and the engine says Direct too;
//! (b) with UDP on loopback dropped by nftables (STUN still allowed),
//!     traffic keeps flowing through DERP, and once the rules are gone the
//!     path becomes direct again by itself.
//!
//! Needs `source <(scripts/testbed.sh env)`; part (b) needs root and `nft`
//! and runs only inside `scripts/isolated.sh`, never touching the host's
//! firewall. Either skips, saying why, when that is missing (fails under
//! `CI=true` or `TAILNET_TEST_REQUIRE=1`). The nft table is removed however the test ends.
//! Part (b) drops all UDP on `lo` in the test namespace for a few seconds:
//! it takes the turn lock of the daemon-driving tests, so those do not run
//! meanwhile.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tailnet_cnid::control::{ControlClient, ControlConfig, IdentityKeys, IdentityOptions};
use tailnet_cnid::wg::packet_fd::PacketFd;
use tailnet_cnid::wg::{Engine, EngineConfig, PathKind, PeerStats, PodDataConfig, PodHandle};

use crate::common::keys::{MintKeys, NodeCleanup};
use crate::common::packet::icmp_v4;
use crate::common::peer::{peer_status, tailscale};
use crate::common::{self, require, run, Bed, Missing};

/// Drops UDP on `lo` except to and from the STUN port, in this network
/// namespace only. The table is deleted on drop.
struct UdpBlock(String);

impl UdpBlock {
    fn new(stun_port: u16) -> Self {
        let table = format!("tncni_direct_{}", std::process::id());
        let block = UdpBlock(table.clone());
        let port = stun_port.to_string();
        // Accept-then-drop: nftables merges "sport != P dport != P" into one
        // comparison that would also drop STUN.
        nft(&["add", "table", "inet", &table]);
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ]);
        nft(&[
            "add", "rule", "inet", &table, "out", "udp", "dport", &port, "accept",
        ]);
        nft(&[
            "add", "rule", "inet", &table, "out", "udp", "sport", &port, "accept",
        ]);
        nft(&[
            "add", "rule", "inet", &table, "out", "oifname", "lo", "meta", "l4proto", "udp", "drop",
        ]);
        block
    }
}

impl Drop for UdpBlock {
    fn drop(&mut self) {
        // Cleanup: nothing is left to do if the table is already gone.
        Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .output()
            .ok();
    }
}

fn nft(args: &[&str]) {
    let out = run(Command::new("nft").args(args));
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Inside the namespace `scripts/isolated.sh` makes (its marker variable
/// and its `tb0` veth, looked up over netlink in this namespace): firewall
/// rules made here vanish with it and cannot touch the host.
fn in_isolated_netns() -> Result<(), Missing> {
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino());
    // Where init's namespace is readable, it must differ from ours.
    let not_init = match (ino("/proc/self/ns/net"), ino("/proc/1/ns/net")) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    };
    let has_tb0 = run(Command::new("ip").args(["-o", "link", "show", "tb0"]))
        .status
        .success();
    (std::env::var("TAILNET_ISOLATED").as_deref() == Ok("1") && not_init && has_tb0)
        .then_some(())
        .ok_or_else(|| {
            Missing::new(
                "this network namespace is not the one scripts/isolated.sh makes (no tb0)",
                "run the test through `scripts/isolated.sh scripts/test-in-netns.sh`",
            )
        })
}

fn cli(bed: &Bed, args: &[&str]) -> std::process::Output {
    tailscale(bed, &bed.peer_socket, args)
}

fn peer_node_key(bed: &Bed) -> [u8; 32] {
    let v = peer_status(bed);
    let key = v["Self"]["PublicKey"].as_str().expect("PublicKey");
    hex::decode(key.strip_prefix("nodekey:").expect("nodekey prefix"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// Our node as it appears in the peer's netmap (`tailscale debug netmap`).
fn node_in_peer_netmap(bed: &Bed, ip: Ipv4Addr) -> serde_json::Value {
    let out = cli(bed, &["debug", "netmap"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let prefix = format!("{ip}/32");
    v["Peers"]
        .as_array()
        .and_then(|peers| {
            peers.iter().find(|p| {
                p["Addresses"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a.as_str() == Some(prefix.as_str())))
            })
        })
        .cloned()
        .unwrap_or_default()
}

/// `tailscale ping` (disco) from the peer; returns its output.
async fn peer_ping(bed: &Bed, target: Ipv4Addr, until_direct: bool) -> String {
    let bed = bed.clone();
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &bed,
            &[
                "ping",
                "--c=5",
                "--timeout=3s",
                &format!("--until-direct={until_direct}"),
                &target.to_string(),
            ],
        )
    })
    .await
    .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The endpoint of the last direct pong in `tailscale ping` output.
fn direct_via(output: &str) -> Option<SocketAddr> {
    output
        .lines()
        .rev()
        .filter(|l| l.starts_with("pong from"))
        .filter_map(|l| l.split(" via ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .find_map(|addr| addr.parse().ok())
}

/// IPv4 ICMP echo request.
fn echo(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    icmp_v4(src, dst, 8, 0x5d5d, seq, b"tailnet-cni direct path")
}

/// The pod pings the peer's 100.x (its netstack answers) every 200 ms;
/// returns how many replies came back and the pod's view of the peer
/// once `done` holds for it, or after `limit`.
struct Traffic<'a> {
    device: &'a PacketFd,
    pod: &'a PodHandle,
    me: Ipv4Addr,
    peer: Ipv4Addr,
    peer_key: [u8; 32],
    seq: u16,
}

impl Traffic<'_> {
    async fn peer_stats(&self) -> Option<PeerStats> {
        let stats = self.pod.stats().await.ok()?;
        stats
            .peers
            .into_iter()
            .find(|p| p.node_key == self.peer_key)
    }

    async fn run_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&PeerStats) -> bool,
    ) -> (usize, Option<PeerStats>) {
        let deadline = Instant::now() + limit;
        let mut replies = 0;
        let mut buf = vec![0u8; 2048];
        loop {
            self.seq = self.seq.wrapping_add(1);
            self.device
                .send(&echo(self.me, self.peer, self.seq))
                .await
                .unwrap();
            let tick = Instant::now() + Duration::from_millis(200);
            while let Ok(Ok(n)) = tokio::time::timeout(
                tick.saturating_duration_since(Instant::now()),
                self.device.recv(&mut buf),
            )
            .await
            {
                let p = &buf[..n];
                if n >= 28 && p[9] == 1 && p[20] == 0 && p[24..26] == [0x5d, 0x5d] {
                    replies += 1;
                }
            }
            let stats = self.peer_stats().await;
            if stats.as_ref().is_some_and(&done) || Instant::now() >= deadline {
                return (replies, stats);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_tailscaled_reaches_the_pod_directly_and_falls_back_to_derp_when_udp_is_blocked() {
    let bed = require!(common::bed());
    let _turn = common::take_turn();
    let client = ControlClient::new(ControlConfig::new(&bed.control_url, None).unwrap()).unwrap();
    let keys = IdentityKeys::generate();
    let identity = client.spawn_identity(
        keys.clone(),
        IdentityOptions::new(&format!("tncni-direct-{}", std::process::id()), vec![]),
        Arc::new(MintKeys::new(bed.admin(), "direct path test").expiring_in(3600)),
    );
    identity
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("registered");
    let me = identity.self_node().expect("self node");
    let my_v4 = me.ipv4.expect("IPv4 tailnet address");
    let _cleanup = NodeCleanup {
        admin: bed.admin(),
        ipv4: my_v4,
    };
    let addresses: Vec<IpAddr> = [me.ipv4.map(IpAddr::V4), me.ipv6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .collect();

    let (engine_end, test_end): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let device = PacketFd::new(test_end).unwrap();
    let engine = Engine::new(EngineConfig::default());
    let pod = engine
        .attach_pod(PodDataConfig {
            pod_id: "direct".into(),
            tun_fd: engine_end,
            node_private: keys.node_private_bytes(),
            disco_private: keys.disco_private_bytes(),
            addresses,
        })
        .unwrap();
    // The daemon's own glue: netmap → engine, endpoints → control.
    let sync = tokio::spawn(tailnet_cnid::podmgr::sync::run(
        identity.netmap(),
        identity.reporter(),
        pod.clone(),
        Default::default(),
    ));

    // STUN against rscale gives the pod its loopback endpoint.
    let port = pod.endpoints().borrow().udp_port.expect("pod UDP socket");
    let reflexive = SocketAddr::from(([127, 0, 0, 1], port));
    let mut endpoints = pod.endpoints();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !endpoints.borrow_and_update().endpoints.contains(&reflexive) {
            endpoints.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "STUN never reported {reflexive}: {:?}",
            pod.endpoints().borrow()
        )
    });

    // Reported to control: the peer's netmap lists it among our endpoints.
    let wanted = reflexive.to_string();
    let listed = |node: &serde_json::Value| {
        node["Endpoints"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e.as_str() == Some(wanted.as_str())))
    };
    let mut seen = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        seen = node_in_peer_netmap(&bed, my_v4);
        if listed(&seen) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        listed(&seen),
        "the peer never saw {wanted} for us: {}",
        seen["Endpoints"]
    );

    let peer_key = peer_node_key(&bed);
    let mut traffic = Traffic {
        device: &device,
        pod: &pod,
        me: my_v4,
        peer: bed.peer_ipv4,
        peer_key,
        seq: 0,
    };

    // (a) The peer's disco ping finds the pod's socket.
    let mut last = String::new();
    let mut via = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        last = peer_ping(&bed, my_v4, true).await;
        via = direct_via(&last);
        if via.is_some() {
            break;
        }
    }
    let via = via.unwrap_or_else(|| panic!("tailscale ping never went direct: {last}"));
    assert_eq!(via.port(), port, "direct path to another socket: {last}");
    // One of the endpoints the pod reported (STUN's 127.0.0.1 or an
    // address of this namespace's interfaces).
    let reported = pod.endpoints().borrow().endpoints.clone();
    assert!(reported.contains(&via), "{via} not in {reported:?}: {last}");
    eprintln!("peer → pod: {}", last.trim());
    // The pod, sending to the peer, uses a direct path as well.
    let (replies, stats) = traffic
        .run_until(Duration::from_secs(30), |p| p.path == PathKind::Direct)
        .await;
    let stats = stats.expect("the peer in the pod's stats");
    assert_eq!(stats.path, PathKind::Direct, "{stats:?}");
    let endpoint = stats.direct_endpoint.expect("direct endpoint");
    assert!(replies > 0, "no echo replies from the peer");
    eprintln!("pod → peer: direct via {endpoint}, {replies} echo replies");

    let blocking = common::isolated_root()
        .tools(&["nft", "ip"])
        .with(in_isolated_netns());
    if common::settle(blocking).is_some() {
        // (b) Block UDP between them: DERP carries the traffic.
        let block = UdpBlock::new(bed.stun_port);
        let (_, stats) = traffic
            .run_until(Duration::from_secs(30), |p| p.path == PathKind::Relay)
            .await;
        assert_eq!(
            stats.as_ref().map(|s| s.path),
            Some(PathKind::Relay),
            "{stats:?}"
        );
        let (replies, stats) = traffic.run_until(Duration::from_secs(3), |_| false).await;
        assert!(replies >= 3, "only {replies} echo replies over DERP");
        assert_eq!(stats.map(|s| s.path), Some(PathKind::Relay));
        // The peer notices too (its own trust in the path runs out).
        let mut relayed = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            relayed = peer_ping(&bed, my_v4, false).await;
            if relayed.contains("via DERP") {
                break;
            }
        }
        assert!(relayed.contains("via DERP"), "{relayed}");
        eprintln!("blocked: {}", relayed.trim());

        // Lift the block: the path upgrades by itself.
        drop(block);
        let (replies, stats) = traffic
            .run_until(Duration::from_secs(45), |p| p.path == PathKind::Direct)
            .await;
        let stats = stats.expect("peer stats");
        assert_eq!(stats.path, PathKind::Direct, "{stats:?}");
        assert!(replies > 0);
        let mut again = String::new();
        let deadline = Instant::now() + Duration::from_secs(45);
        while Instant::now() < deadline {
            again = peer_ping(&bed, my_v4, true).await;
            if direct_via(&again).is_some() {
                break;
            }
        }
        assert!(direct_via(&again).is_some(), "{again}");
        eprintln!("unblocked: {}", again.trim());
    }

    sync.abort();
    pod.detach().await.unwrap();
    identity.shutdown();
}
