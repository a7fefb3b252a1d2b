//! Benchmark: what a large tailnet costs each pod that never talks to it,
//! and what idle pods cost.
//!
//! A synthetic tailnet of 1,000, then 5,000 nodes; 250 of them are pods
//! attached to one engine, each with the netmap control would send it
//! (every node but itself), decoded and synced by the daemon's own code
//! (`control::netmap`, `podmgr::sync`). Reports the pods' peer tables in
//! bytes per peer per pod (their own parts, and the bases they share,
//! counted once), the whole heap per peer per pod (with each pod's netmap
//! as the control session holds it and the copy it publishes, which shares
//! it; a counting allocator: exact), the CPU time of one netmap delta decoded, applied
//! and synced to every pod (a node joins; a node's endpoints change),
//! and, with the pods idle, their CPU and the threads' context switches
//! per second (each wake-up of an idle runtime is one).
//!
//!     cargo run --release -p tailnet-cnid --example engine_peers [-- OUT.json]

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
use tailnet_cnid::wg::{Engine, EngineConfig, PodDataConfig, PodHandle};

#[global_allocator]
static ALLOC: measure::Counting = measure::Counting;

const PODS: usize = 250;
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

/// One pod: its engine handle, the other end of its device, its sync and
/// the netmap its control session keeps.
struct Pod {
    handle: PodHandle,
    _device: std::os::fd::OwnedFd,
    sync: PodSync,
    map: NetMap,
}

/// CPU time of the calling thread: the main task runs on the main thread,
/// the pods' engine tasks on the workers.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Decodes `message` into every pod's netmap and publishes it (a copy, as
/// the control session does), then syncs every pod and waits until every
/// pod task took the change; returns the CPU time of each half in
/// milliseconds, and of the syncs alone (the main thread, without the
/// engine's tasks and the barrier's subtraction).
async fn deliver(
    pods: &mut [Pod],
    message: impl Fn(usize) -> String,
    interner: &Interner,
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let start = measure::cpu_time();
    let mut published = Vec::with_capacity(pods.len());
    for (i, pod) in pods.iter_mut().enumerate() {
        let decoded: MapResponse = from_slice(message(i).as_bytes())?;
        pod.map.apply(decoded, interner);
        published.push(Arc::new(pod.map.clone()));
    }
    let decoded = measure::cpu_time();
    let own_start = thread_cpu_time();
    for (pod, map) in pods.iter_mut().zip(&published) {
        pod.sync.apply(map).await?;
    }
    let own = thread_cpu_time() - own_start;
    for pod in pods.iter() {
        pod.handle.stats().await?;
    }
    let synced = measure::cpu_time();
    drop(published);
    // The barrier walks every peer of every pod for its statistics: its
    // own cost, measured alone, is not the delta's.
    for pod in pods.iter() {
        pod.handle.stats().await?;
    }
    let barrier = measure::cpu_time() - synced;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok((
        ms(decoded - start),
        ms((synced - decoded).saturating_sub(barrier)),
        ms(own),
    ))
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1);
    let mut results = Vec::new();
    for peers in [1_000usize, 5_000] {
        let interner = Interner::default();
        let engine = Engine::new(EngineConfig::default());
        // Node `peers` joins later.
        let nodes: Vec<String> = (0..=peers).map(|i| node_json(i, 41641)).collect();
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
            let sync = PodSync::new(handle.clone(), Default::default()).await?;
            pods.push(Pod {
                handle,
                _device: other_end,
                sync,
                map: NetMap::default(),
            });
        }
        deliver(
            &mut pods,
            |i| {
                format!(
                    r#"{{"Node": {}, "DERPMap": {DERP_MAP}, "PacketFilter": [{{"SrcIPs": ["*"], "DstPorts": [{{"IP": "*", "Ports": {{"First": 0, "Last": 65535}}}}]}}]}}"#,
                    nodes[i]
                )
            },
            &interner,
        )
        .await?;
        settle().await;
        let before = measure::live();
        // The full netmap: every node but the pod itself.
        deliver(
            &mut pods,
            |i| {
                let others: Vec<&str> = (0..peers)
                    .filter(|&j| j != i)
                    .map(|j| nodes[j].as_str())
                    .collect();
                format!(r#"{{"Peers": [{}]}}"#, others.join(","))
            },
            &interner,
        )
        .await?;
        settle().await;
        let per_peer_per_pod = |bytes: f64| bytes / (PODS * (peers - 1)) as f64;
        let heap = per_peer_per_pod((measure::live() - before) as f64);
        let (own, shared) = table_bytes(&pods);
        let (own, shared) = (
            per_peer_per_pod(own as f64),
            per_peer_per_pod(shared as f64),
        );

        // One node joins, then one node's endpoints change.
        let join = format!(r#"{{"PeersChanged": [{}]}}"#, nodes[peers]);
        let (join_decode, join_sync, join_own) =
            deliver(&mut pods, |_| join.clone(), &interner).await?;
        let patch =
            r#"{"PeersChangedPatch": [{"NodeID": 300, "Endpoints": ["10.88.1.51:41642"]}]}"#;
        let (patch_decode, patch_sync, patch_own) =
            deliver(&mut pods, |_| patch.to_string(), &interner).await?;

        settle().await;
        let (cpu_before, switches_before) = (measure::cpu_time(), context_switches());
        tokio::time::sleep(IDLE_WINDOW).await;
        let window = IDLE_WINDOW.as_secs_f64();
        let idle_cpu = (measure::cpu_time() - cpu_before).as_secs_f64() / window * 100.0;
        let switches = (context_switches() - switches_before) as f64 / window;

        println!(
            "{PODS} pods x {peers:>5} peers: tables {own:>5.2} B own + {shared:>5.2} B shared per peer per pod, \
             heap {heap:>6.1} B per peer per pod with netmaps; \
             a join to all pods {join_decode:>6.1} ms CPU decoding + {join_sync:>6.1} ms syncing \
             (syncs alone {join_own:>5.1} ms), \
             an endpoint patch {patch_decode:>6.1} + {patch_sync:>6.1} ms (syncs alone {patch_own:>5.1} ms); \
             idle {idle_cpu:>5.2} % of a core, {switches:>6.1} context switches/s"
        );
        results.push(serde_json::json!({
            "pods": PODS, "peers": peers - 1,
            "table_own_bytes_per_peer_per_pod": own,
            "table_shared_bytes_per_peer_per_pod": shared,
            "heap_bytes_per_peer_per_pod": heap,
            "join_decode_cpu_ms": join_decode, "join_sync_cpu_ms": join_sync,
            "patch_decode_cpu_ms": patch_decode, "patch_sync_cpu_ms": patch_sync,
            "join_sync_own_cpu_ms": join_own, "patch_sync_own_cpu_ms": patch_own,
            "idle_cpu_percent": idle_cpu,
            "context_switches_per_s": switches,
        }));
        for pod in pods {
            pod.handle.detach().await?;
        }
        settle().await;
    }
    if let Some(path) = out {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

/// Bytes of the pods' own table parts, and of the distinct bases they
/// share.
fn table_bytes(pods: &[Pod]) -> (usize, usize) {
    let tables: Vec<_> = pods.iter().filter_map(|p| p.sync.peer_table()).collect();
    let own = tables.iter().map(|t| t.index_bytes()).sum();
    let mut shared = 0;
    for (i, table) in tables.iter().enumerate() {
        if !tables[..i].iter().any(|t| t.shares_base_with(table)) {
            shared += table.base_bytes();
        }
    }
    (own, shared)
}
