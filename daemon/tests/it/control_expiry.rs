//! Node-key expiry and rotation against the real control server of the test
//! bed (rscale), with the official tailscaled peer registered there.
//!
//! rscale 0.1.0 has no admin call that expires a node (its PATCH
//! /api/v1/admin/nodes/{id} takes only name, hostname and tags): a key
//! expires there when the node's `status` is `expired` or its `key_expiry`
//! passes, both columns in its PostgreSQL database. The tests set them with
//! psql on the test bed's database and wake rscale's map streams with the
//! `NOTIFY` it listens for, exactly what a second rscale instance would do.
//!
//! Needs `source <(scripts/testbed.sh env)` (run through
//! `scripts/isolated.sh scripts/test-in-netns.sh`) and `psql`; skips,
//! saying why, otherwise (fails under `CI=true` or `TAILNET_TEST_REQUIRE=1`).
//! The data-plane test also needs root for its TUN.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tailnet_cnid::control::keys::NodePublic;
use tailnet_cnid::control::{
    ControlClient, ControlConfig, ControlError, IdentityHandle, IdentityKeys, IdentityOptions,
    NetMap, RotationPolicy,
};
use tailnet_cnid::podmgr::dataplane::{self, AttachTarget};
use tailnet_cnid::podmgr::keyfile::IdentityFile;
use tailnet_cnid::podmgr::tun::{create_persistent_tun, open_tun, release_persistent_tun};
use tailnet_cnid::wg::{Engine, EngineConfig, PodDataConfig};

use crate::common::keys::{admin_call, MintKeys};
use crate::common::netns::{ip, serve_hello};
use crate::common::{self, require, Bed, Needs, Unmet};

/// The shared bed with its database reachable through `psql`.
fn bed_with_database(needs: Needs) -> Result<Bed, Unmet> {
    let bed = needs.tools(&["psql"]).bed()?;
    bed.database_port()?;
    Ok(bed)
}

/// Single-use keys expiring `expires_in` seconds from now (< 0: already
/// expired).
fn auth_keys(bed: &Bed, expires_in: i64) -> Arc<MintKeys> {
    Arc::new(MintKeys::new(bed.admin(), "expiry test").expiring_in(expires_in))
}

/// Runs SQL on rscale's database.
async fn psql(bed: &Bed, sql: &str) -> String {
    let port = bed
        .database_port()
        .expect("checked when the test started")
        .to_string();
    let out = tokio::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "rscale",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .await
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Expires node `id`'s key on the server, as an operator (or a server-side
/// expiry job) would, and tells rscale to push fresh maps.
async fn expire_on_server(bed: &Bed, id: i64) {
    psql(
        bed,
        &format!(
            "UPDATE nodes SET status = 'expired' WHERE id = {id}; \
             UPDATE node_control_state SET key_expiry = now() - interval '1 minute' WHERE node_id = {id}; \
             SELECT pg_notify('rscale_control_updates', 'expiry-test');"
        ),
    )
    .await;
}

/// Nodes rscale lists under `hostname`.
async fn nodes_named(bed: &Bed, hostname: &str) -> Vec<serde_json::Value> {
    admin_call(&bed.admin(), |admin| admin.nodes())
        .await
        .into_iter()
        .filter(|n| n["hostname"].as_str() == Some(hostname))
        .collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Waits for the session to publish a node key other than `old`.
async fn rotated_key(handle: &IdentityHandle, old: NodePublic, within: Duration) -> IdentityKeys {
    let mut keys = handle.keys();
    let rotated = tokio::time::timeout(within, keys.wait_for(|k| k.node_public() != old))
        .await
        .expect("the session rotated the node key by itself")
        .expect("keys channel")
        .clone();
    rotated
}

/// Waits for a netmap whose self node carries `key` and is not expired.
async fn netmap_for(handle: &IdentityHandle, key: NodePublic, within: Duration) -> Arc<NetMap> {
    let mut netmap = handle.netmap();
    let want = key.to_string();
    let map = tokio::time::timeout(
        within,
        netmap.wait_for(|m| {
            m.as_ref()
                .and_then(|m| m.self_node.as_ref())
                .is_some_and(|n| n.key == want && !n.expired)
        }),
    )
    .await
    .expect("a netmap for the new key")
    .expect("netmap channel")
    .clone()
    .expect("netmap");
    map
}

/// The node keys the official tailscaled peer lists for `ipv4`.
async fn peer_sees_key(bed: &Bed, ipv4: &str, key: NodePublic, within: Duration) -> bool {
    let (cli, socket) = (
        bed.tailscale_bin.clone(),
        bed.peer_socket.display().to_string(),
    );
    let deadline = Instant::now() + within;
    let want = key.to_string();
    loop {
        let out = tokio::process::Command::new(&cli)
            .arg(format!("--socket={socket}"))
            .args(["status", "--json"])
            .output()
            .await
            .expect("tailscale status");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let found = status["Peer"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
            .any(|p| {
                p["PublicKey"].as_str() == Some(want.as_str())
                    && p["TailscaleIPs"]
                        .as_array()
                        .is_some_and(|ips| ips.iter().any(|ip| ip.as_str() == Some(ipv4)))
            });
        if found {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_key_the_server_expires_is_rotated_and_the_node_kept() {
    let bed = require!(bed_with_database(Needs::new()));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("identity.json");
    let client = ControlClient::new(ControlConfig::new(&bed.control_url, None).unwrap()).unwrap();
    let keys = IdentityKeys::generate();
    std::fs::write(&key_file, serde_json::to_vec(&keys).unwrap()).unwrap();
    let hostname = unique("ctl-exp");
    let source = auth_keys(&bed, 3600);
    let handle = client.spawn_identity(
        keys.clone(),
        IdentityOptions::new(&hostname, vec![]).key_store(Arc::new(IdentityFile(key_file.clone()))),
        source.clone(),
    );
    handle
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("registered");
    let before = handle.self_node().expect("self node");
    assert_eq!(nodes_named(&bed, &hostname).await.len(), 1);

    expire_on_server(&bed, before.id).await;
    let rotated = rotated_key(&handle, keys.node_public(), Duration::from_secs(30)).await;
    assert_ne!(rotated.node_public(), keys.node_public());
    assert_eq!(
        rotated.machine.public(),
        keys.machine.public(),
        "same machine key"
    );
    assert!(
        rotated.old_node.is_none(),
        "published before the server confirmed"
    );

    // The server knows the new key, for the same node, and lets it poll.
    let map = netmap_for(&handle, rotated.node_public(), Duration::from_secs(30)).await;
    let node = map.self_node.as_ref().expect("self node");
    assert_eq!(node.id, before.id, "a new node appeared");
    assert_eq!(
        handle.self_node().as_ref(),
        Some(&before),
        "addresses changed"
    );
    assert!(!map.peers.is_empty(), "netmap has no peers");
    let listed = nodes_named(&bed, &hostname).await;
    assert_eq!(listed.len(), 1, "rscale lists {listed:?}");
    let status = psql(
        &bed,
        &format!("SELECT status FROM nodes WHERE id = {}", before.id),
    )
    .await;
    assert_eq!(status, "online");
    assert_eq!(
        source.minted.load(Ordering::SeqCst),
        1,
        "rscale accepts a rotation under the same machine key without a new auth key"
    );

    // The new key is what is on disk, 0600, with no rotation pending.
    let saved: IdentityKeys = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    assert_eq!(saved.node_public(), rotated.node_public());
    assert!(saved.old_node.is_none());
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Peers learn the new key.
    let ipv4 = before.ipv4.expect("ipv4").to_string();
    assert!(
        peer_sees_key(&bed, &ipv4, rotated.node_public(), Duration::from_secs(30)).await,
        "the tailscaled peer does not list {ipv4} with the rotated key"
    );
    handle.logout().await.expect("logout");
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_rotation_keeps_the_identity() {
    let bed = require!(bed_with_database(Needs::new()));
    let client = ControlClient::new(ControlConfig::new(&bed.control_url, None).unwrap()).unwrap();
    let keys = IdentityKeys::generate();
    let hostname = unique("ctl-crash");
    let source = auth_keys(&bed, 3600);
    let handle = client.spawn_identity(
        keys.clone(),
        IdentityOptions::new(&hostname, vec![]),
        source.clone(),
    );
    handle
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("registered");
    let before = handle.self_node().expect("self node");
    handle.shutdown();

    // What the identity file holds if the daemon died after saving the new
    // key and before (or after) the server saw it: the new key and the old.
    let pending = keys.begin_rotation().expect("no rotation pending");
    let again = client.spawn_identity(
        pending.clone(),
        IdentityOptions::new(&hostname, vec![]).resumed(),
        source.clone(),
    );
    again
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("resumed with the pending rotation");
    let map = netmap_for(&again, pending.node_public(), Duration::from_secs(30)).await;
    assert_eq!(map.self_node.as_ref().map(|n| n.id), Some(before.id));
    assert_eq!(again.self_node().as_ref(), Some(&before));
    assert!(
        again.keys().borrow().old_node.is_none(),
        "rotation not finished"
    );
    assert_eq!(source.minted.load(Ordering::SeqCst), 1);
    assert_eq!(nodes_named(&bed, &hostname).await.len(), 1);
    again.logout().await.expect("logout");
}

#[tokio::test]
async fn keys_are_renewed_before_they_expire() {
    let bed = require!(bed_with_database(Needs::new()));
    // Ask for 20 s keys and renew with half the lifetime left: rscale keeps
    // the requested expiry, so the session must renew on its own, early.
    let policy = RotationPolicy {
        renew_fraction: 0.5,
        min_margin: Duration::ZERO,
        min_interval: Duration::from_secs(1),
        requested_lifetime: Some(Duration::from_secs(20)),
    };
    let client = ControlClient::new(
        ControlConfig::new(&bed.control_url, None)
            .unwrap()
            .with_rotation(policy),
    )
    .unwrap();
    let keys = IdentityKeys::generate();
    let hostname = unique("ctl-renew");
    let handle = client.spawn_identity(
        keys.clone(),
        IdentityOptions::new(&hostname, vec![]),
        auth_keys(&bed, 3600),
    );
    let first = handle
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("registered");
    let node = first.self_node.as_ref().expect("self node");
    let expiry = tailnet_cnid::control::rotation::parse_time(&node.keyexpiry)
        .unwrap_or_else(|| panic!("the server kept no key expiry: {:?}", node.keyexpiry));
    assert!(!node.expired);

    let rotated = rotated_key(&handle, keys.node_public(), Duration::from_secs(40)).await;
    assert!(
        SystemTime::now() < expiry,
        "the key was renewed only after it expired"
    );
    let map = netmap_for(&handle, rotated.node_public(), Duration::from_secs(30)).await;
    assert_eq!(map.self_node.as_ref().map(|n| n.id), Some(node.id));
    assert_eq!(nodes_named(&bed, &hostname).await.len(), 1);
    handle.logout().await.expect("logout");
}

#[tokio::test]
async fn an_expired_auth_key_is_named_as_the_cause() {
    let bed = require!(bed_with_database(Needs::new()));
    let client = ControlClient::new(ControlConfig::new(&bed.control_url, None).unwrap()).unwrap();
    let handle = client.spawn_identity(
        IdentityKeys::generate(),
        IdentityOptions::new(&unique("ctl-oldkey"), vec![]),
        auth_keys(&bed, -60),
    );
    let err = handle
        .wait_ready(Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Refused(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("refused registration") && text.contains("expired auth key"),
        "{text}"
    );
    assert!(
        !text.contains("rsk_"),
        "the key leaked into the error: {text}"
    );
    handle.shutdown();
}

#[tokio::test]
async fn the_data_plane_follows_a_rotated_key() {
    // Root inside scripts/isolated.sh: it creates a TUN and routing rules.
    let bed = require!(bed_with_database(
        common::isolated_root().tun().tools(&["ip", "curl"])
    ));
    // Not a `tnt` name: daemons of other tests in this namespace sweep
    // links of theirs no record owns, and leak checks count them.
    let tun_name = format!("tcx{:05x}", rand::random::<u32>() & 0xfffff);
    create_persistent_tun(&tun_name).expect("TUN");
    let client = ControlClient::new(ControlConfig::new(&bed.control_url, None).unwrap()).unwrap();
    let keys = IdentityKeys::generate();
    let handle = client.spawn_identity(
        keys.clone(),
        IdentityOptions::new(&unique("ctl-dp"), vec![]),
        auth_keys(&bed, 3600),
    );
    handle
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("registered");
    let me = handle.self_node().expect("self node");
    let addresses: Vec<std::net::IpAddr> = me
        .ipv4
        .map(Into::into)
        .into_iter()
        .chain(me.ipv6.map(Into::into))
        .collect();

    // The pod side, kept to this test: the TUN holds the pod's address, and
    // only packets from that address are routed back into the TUN.
    let v4 = me.ipv4.expect("ipv4");
    let table = (31_000 + rand::random::<u32>() % 1000).to_string();
    let _plumbing = HostPlumbing::new(&tun_name, v4, &table);
    serve_hello(std::net::TcpListener::bind((v4, 8080)).expect("bind on the pod address"));

    let engine = Engine::new(EngineConfig::default());
    let first = engine
        .attach_pod(PodDataConfig {
            pod_id: "dp".into(),
            tun_fd: open_tun(&tun_name).expect("open TUN"),
            node_private: keys.node_private_bytes(),
            disco_private: keys.disco_private_bytes(),
            addresses: addresses.clone(),
        })
        .expect("attach");
    let (data, task) = dataplane::supervise(
        first.clone(),
        keys.node_public(),
        AttachTarget {
            engine: engine.clone(),
            pod_id: "dp".into(),
            tun_name: tun_name.clone(),
            addresses,
            routing: Default::default(),
        },
        handle.keys(),
        handle.netmap(),
        handle.reporter(),
        None,
    );
    let task = tokio::spawn(task);
    // The sync gives the first attachment its peers; once the wait says so,
    // the pod's task has them.
    assert!(
        data.wait_netmap_applied(Duration::from_secs(20)).await,
        "the data plane took no netmap"
    );
    let peers = data.stats().await.expect("stats").peers;
    assert!(
        !peers.is_empty(),
        "the netmap was applied but the data plane has no peers"
    );

    let socks = &bed.peer_socks5;
    assert_eq!(
        fetch_through_peer(socks, v4).await,
        Ok("hello from the pod\n".into()),
        "the peer cannot reach the pod before the rotation"
    );

    expire_on_server(&bed, me.id).await;
    let rotated = rotated_key(&handle, keys.node_public(), Duration::from_secs(30)).await;
    // The old attachment goes away; a new one takes the pod and its peers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let old_gone = first.stats().await.is_err();
        let new_peers = data
            .stats()
            .await
            .map(|s| !s.peers.is_empty())
            .unwrap_or(false);
        if old_gone && new_peers {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "data plane did not move to the key {:?} (old gone: {old_gone}, new has peers: {new_peers})",
            rotated.node_public()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(engine.pod_count(), 1);
    // The tailscaled peer reaches the pod again, now under the new key.
    assert_eq!(
        fetch_through_peer(socks, v4).await,
        Ok("hello from the pod\n".into()),
        "the peer cannot reach the pod after the rotation"
    );

    task.abort();
    // Cleanup after the checks above; the session task is already aborted.
    data.detach().await.ok();
    handle.logout().await.expect("logout");
    // Cleanup: the interface may already be gone.
    release_persistent_tun(&tun_name).ok();
}

/// The pod's address on the TUN and a source rule that sends its replies
/// back into the TUN; removed on drop (the TUN's own routes go with it).
struct HostPlumbing {
    v4: std::net::Ipv4Addr,
    table: String,
}

impl HostPlumbing {
    fn new(tun: &str, v4: std::net::Ipv4Addr, table: &str) -> Self {
        ip(&["link", "set", tun, "mtu", "1280", "up"]);
        ip(&["addr", "add", &format!("{v4}/32"), "dev", tun]);
        ip(&["route", "add", "100.64.0.0/10", "dev", tun, "table", table]);
        ip(&[
            "rule",
            "add",
            "from",
            &v4.to_string(),
            "lookup",
            table,
            "priority",
            "5150",
        ]);
        Self {
            v4,
            table: table.to_string(),
        }
    }
}

impl Drop for HostPlumbing {
    fn drop(&mut self) {
        // Cleanup: nothing is left to do if the plumbing is already gone.
        std::process::Command::new("ip")
            .args([
                "rule",
                "del",
                "from",
                &self.v4.to_string(),
                "lookup",
                &self.table,
            ])
            .output()
            .ok();
    }
}

/// Fetches the pod's page from the tailscaled peer's side (its SOCKS5
/// proxy), retrying while paths settle.
async fn fetch_through_peer(socks: &str, v4: std::net::Ipv4Addr) -> Result<String, String> {
    let url = format!("http://{v4}:8080/");
    let mut last = String::new();
    for _ in 0..20 {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--socks5", socks, &url])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}
