//! Benchmark: what a tailnet's peers cost each pod.
//!
//! Every pod is a tailnet node, so N pods on a node each see the other N-1
//! as peers. This attaches N pods (50, then 250) to one engine, gives each
//! the netmap of a tailnet made of all of them (parsed and interned as the
//! control client does, converted by the daemon's own `sync` code), lets
//! the engines settle, and reports heap bytes alive per pod (a counting
//! allocator: exact, unlike resident memory), CPU time of one netmap delta
//! (a node joins: every pod updates) and idle CPU over a few seconds.
//!
//!     cargo run --release -p tailnet-cnid --example peer_memory [-- OUT.json]

mod measure;
#[path = "measure/tailnet.rs"]
mod tailnet;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use measure::device::packet_device;
use tailnet::{node_json, DERP_MAP};
use tailnet_cnid::control::json::from_slice;
use tailnet_cnid::control::netmap::Interner;
use tailnet_cnid::control::tailcfg::MapResponse;
use tailnet_cnid::control::NetMap;
use tailnet_cnid::podmgr::sync::PodSync;
use tailnet_cnid::wg::{Engine, EngineConfig, PodDataConfig};

#[global_allocator]
static ALLOC: measure::Counting = measure::Counting;

fn map_response(text: &str) -> Result<MapResponse, Box<dyn std::error::Error>> {
    Ok(from_slice(text.as_bytes())?)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1);
    let mut results = Vec::new();
    for pods in [50usize, 250] {
        let interner = Interner::default();
        let engine = Engine::new(EngineConfig::default());
        let nodes: Vec<String> = (0..=pods).map(|i| node_json(i, 41641)).collect();
        settle().await;
        let base = measure::live();

        // Pods attached with the netmap's DERP map and filter, no peers yet.
        let mut members = Vec::new();
        for (i, node) in nodes.iter().take(pods).enumerate() {
            let (fd, other_end) = packet_device()?;
            let mut private = [0x40u8; 32];
            private[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let mut disco = [0x50u8; 32];
            disco[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let addr = Ipv4Addr::new(100, 64, (i / 250) as u8, (i % 250) as u8 + 1);
            let handle = engine.attach_pod(PodDataConfig {
                pod_id: format!("pod-{i}"),
                tun_fd: fd,
                node_private: private,
                disco_private: disco,
                addresses: vec![IpAddr::V4(addr)],
            })?;
            let mut sync = PodSync::new(handle.clone(), Default::default()).await?;
            let mut map = NetMap::default();
            map.apply(
                map_response(&format!(
                    r#"{{"Node": {}, "DERPMap": {DERP_MAP}, "PacketFilter": [{{"SrcIPs": ["*"], "DstPorts": [{{"IP": "*", "Ports": {{"First": 0, "Last": 65535}}}}]}}]}}"#,
                    node
                ))?,
                &interner,
            );
            // Published as the control session does: a copy per change.
            sync.apply(&Arc::new(map.clone())).await?;
            members.push((handle, other_end, sync, map));
        }
        settle().await;
        let attached = measure::live();

        // Every pod learns the tailnet: all other pods are its peers.
        for (i, (_, _, sync, map)) in members.iter_mut().enumerate() {
            let peers: Vec<&str> = (0..pods)
                .filter(|&j| j != i)
                .map(|j| nodes[j].as_str())
                .collect();
            map.apply(
                map_response(&format!(r#"{{"Peers": [{}]}}"#, peers.join(",")))?,
                &interner,
            );
            sync.apply(&Arc::new(map.clone())).await?;
        }
        for (handle, ..) in &members {
            handle.stats().await?;
        }
        settle().await;
        let with_peers = measure::live();

        // One node joins: every pod gets the delta and updates its engine.
        let cpu_before = measure::cpu_time();
        let delta = format!(r#"{{"PeersChanged": [{}]}}"#, nodes[pods]);
        for (_, _, sync, map) in members.iter_mut() {
            map.apply(map_response(&delta)?, &interner);
            sync.apply(&Arc::new(map.clone())).await?;
        }
        for (handle, ..) in &members {
            handle.stats().await?;
        }
        let delta_cpu = measure::cpu_time() - cpu_before;

        // Idle: timers only.
        settle().await;
        let idle_window = Duration::from_secs(4);
        let cpu_before = measure::cpu_time();
        tokio::time::sleep(idle_window).await;
        let idle_cpu = (measure::cpu_time() - cpu_before).as_secs_f64() / idle_window.as_secs_f64();

        let n = pods as isize;
        let per_pod = (with_peers - base) / n;
        let peers_per_pod = (with_peers - attached) / n;
        println!(
            "{pods:>4} pods: {per_pod:>8} B heap per pod ({peers_per_pod:>8} B of it for {} peers), \
             delta to all pods {:>6.1} ms CPU, idle CPU {:>5.1} % of a core",
            pods - 1,
            delta_cpu.as_secs_f64() * 1e3,
            idle_cpu * 100.0,
        );
        results.push(serde_json::json!({
            "pods": pods, "heap_bytes_per_pod": per_pod, "peer_heap_bytes_per_pod": peers_per_pod,
            "delta_cpu_ms": delta_cpu.as_secs_f64() * 1e3, "idle_cpu_percent": idle_cpu * 100.0,
        }));
        for (handle, ..) in members {
            handle.detach().await?;
        }
        settle().await;
    }
    if let Some(path) = out {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}
