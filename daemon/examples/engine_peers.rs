//! Benchmark: what a large tailnet costs each pod that never talks to it,
//! and what idle pods cost.
//!
//! Attaches 50 pods to one engine and gives each the same synthetic tailnet
//! of 1,000, then 5,000 peers (records shared between pods, as the netmap
//! sync interns them). Reports heap bytes per peer per pod (a counting
//! allocator: exact), the CPU time of one netmap change applied to every
//! pod (a peer joins), and, with the pods idle, their CPU and the threads'
//! context switches per second (each wake-up of an idle runtime is one).
//!
//!     cargo run --release -p tailnet-cnid --example engine_peers [-- OUT.json]

mod measure;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use measure::device::packet_device;
use tailnet_cnid::wg::{
    DerpNodeConfig, DerpRegionConfig, Engine, EngineConfig, PeerConfig, PodDataConfig,
};

#[global_allocator]
static ALLOC: measure::Counting = measure::Counting;

const PODS: usize = 50;
const IDLE_WINDOW: Duration = Duration::from_secs(6);

/// Context switches of every thread of the process so far.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Peer `i` of the synthetic tailnet: two addresses, two endpoints, a disco key.
fn peer(i: usize) -> Arc<PeerConfig> {
    let mut node_key = [0x10u8; 32];
    node_key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    let mut disco_key = [0x20u8; 32];
    disco_key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    let (hi, lo) = ((i / 250) as u8, (i % 250) as u8 + 1);
    Arc::new(PeerConfig {
        node_key,
        disco_key: Some(disco_key),
        allowed_ips: vec![
            (IpAddr::V4(Ipv4Addr::new(100, 80, hi, lo)), 32),
            (
                IpAddr::V6(Ipv6Addr::new(
                    0xfd7a,
                    0x115c,
                    0xa1e0,
                    0,
                    0,
                    1,
                    hi.into(),
                    lo.into(),
                )),
                128,
            ),
        ],
        endpoints: vec![
            SocketAddr::from(([10, 88, hi, lo], 41641)),
            SocketAddr::from((
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, hi.into(), lo.into()),
                41641,
            )),
        ],
        home_derp: Some(900),
    })
}

/// One STUN-only server on a closed loopback port: pods run their STUN
/// rounds as in a real tailnet, without relay connections.
fn derp_map() -> Arc<Vec<DerpRegionConfig>> {
    Arc::new(vec![DerpRegionConfig {
        region_id: 900,
        nodes: vec![DerpNodeConfig {
            name: "900a".into(),
            host_name: "localhost".into(),
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
            derp_port: 0,
            stun_port: 9,
            insecure_for_tests: true,
            stun_only: true,
            plain_http: true,
        }],
    }])
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1);
    let mut results = Vec::new();
    for peers in [1_000usize, 5_000] {
        let engine = Engine::new(EngineConfig::default());
        let tailnet: Vec<Arc<PeerConfig>> = (0..=peers).map(peer).collect();
        let map = derp_map();
        let mut pods = Vec::new();
        for i in 0..PODS {
            let (fd, other_end) = packet_device()?;
            let mut private = [0x40u8; 32];
            private[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let handle = engine.attach_pod(PodDataConfig {
                pod_id: format!("pod-{i}"),
                tun_fd: fd,
                node_private: private,
                disco_private: private,
                addresses: vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, i as u8 + 1))],
            })?;
            handle.set_derp_map(map.clone()).await?;
            pods.push((handle, other_end));
        }
        for (handle, _) in &pods {
            handle.stats().await?;
        }
        settle().await;
        let before = measure::live();
        for (handle, _) in &pods {
            handle.set_shared_peers(tailnet[..peers].to_vec()).await?;
        }
        for (handle, _) in &pods {
            handle.stats().await?;
        }
        settle().await;
        let per_peer_per_pod = (measure::live() - before) as f64 / (PODS * peers) as f64;

        // One peer joins: every pod takes the new set.
        let cpu_before = measure::cpu_time();
        for (handle, _) in &pods {
            handle.set_shared_peers(tailnet.clone()).await?;
        }
        for (handle, _) in &pods {
            handle.stats().await?;
        }
        let delta_ms = (measure::cpu_time() - cpu_before).as_secs_f64() * 1e3;

        settle().await;
        let (cpu_before, switches_before) = (measure::cpu_time(), context_switches());
        tokio::time::sleep(IDLE_WINDOW).await;
        let window = IDLE_WINDOW.as_secs_f64();
        let idle_cpu = (measure::cpu_time() - cpu_before).as_secs_f64() / window * 100.0;
        let switches = (context_switches() - switches_before) as f64 / window;

        println!(
            "{PODS} pods x {peers:>5} peers: {per_peer_per_pod:>6.1} B per peer per pod, \
             one change to all pods {delta_ms:>7.1} ms CPU, idle {idle_cpu:>5.2} % of a core, \
             {switches:>6.1} context switches/s"
        );
        results.push(serde_json::json!({
            "pods": PODS, "peers": peers, "bytes_per_peer_per_pod": per_peer_per_pod,
            "delta_cpu_ms": delta_ms, "idle_cpu_percent": idle_cpu,
            "context_switches_per_s": switches,
        }));
        for (handle, _) in pods {
            handle.detach().await?;
        }
        settle().await;
    }
    if let Some(path) = out {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}
