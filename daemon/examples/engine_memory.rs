//! Benchmark: resident memory of the data-plane engine per attached pod.
//!
//! Attaches 1, 50 and 250 pods to one engine, each with its packet device,
//! UDP socket, one configured peer and its home DERP relay connection (to an
//! in-process relay on loopback, whose side of each connection is counted
//! too), and reports the process's resident-memory growth per pod.
//!
//!     cargo run --release -p tailnet-cnid --example engine_memory [-- OUT.json]

#[path = "measure/device.rs"]
mod device;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use device::packet_device;
use tailnet_cnid::wg::local_relay::LocalRelay;
use tailnet_cnid::wg::{
    DerpNodeConfig, DerpRegionConfig, Engine, EngineConfig, PeerConfig, PodDataConfig,
};

fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1);
    let relay = LocalRelay::start("127.0.0.1:0".parse().unwrap()).await?;
    let SocketAddr::V4(relay_addr) = relay.addr() else {
        return Err("relay did not bind IPv4".into());
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
    let mut results = Vec::new();
    for pods in [1usize, 50, 250] {
        let engine = Engine::new(EngineConfig::default());
        let connected_before = relay.connected();
        let before = resident_bytes();
        let mut kept = Vec::new();
        for i in 0..pods {
            let (fd, other_end) = packet_device()?;
            let mut private = [0u8; 32];
            // Bytes 0 and 31 are clamped by X25519: vary the middle.
            private[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            private[16..24].copy_from_slice(&(pods as u64).to_le_bytes());
            let addr = Ipv4Addr::new(100, 65, (i / 250) as u8, (i % 250) as u8 + 1);
            let handle = engine.attach_pod(PodDataConfig {
                pod_id: format!("pod-{pods}-{i}"),
                tun_fd: fd,
                node_private: private,
                disco_private: [0; 32],
                addresses: vec![IpAddr::V4(addr)],
            })?;
            handle.set_derp_map(map.clone()).await?;
            handle
                .set_peers(vec![PeerConfig {
                    node_key: [0x77; 32],
                    disco_key: None,
                    allowed_ips: vec![("100.100.0.1".parse()?, 32)],
                    endpoints: vec![],
                    home_derp: Some(900),
                }])
                .await?;
            kept.push((handle, other_end));
        }
        for _ in 0..1000 {
            if relay.connected() >= connected_before + pods {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let connected = relay.connected() - connected_before;
        let grown = resident_bytes().saturating_sub(before);
        let per_pod = grown / pods;
        println!(
            "{pods:>4} pods: resident growth {grown:>9} bytes, {per_pod:>7} bytes per pod, {connected} relay connections"
        );
        results.push(serde_json::json!({
            "pods": pods, "resident_growth_bytes": grown, "bytes_per_pod": per_pod,
            "relay_connections": connected,
        }));
        for (handle, _) in kept {
            handle.detach().await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(path) = out {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}
