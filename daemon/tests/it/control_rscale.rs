//! The control client against the real control server of the test bed
//! (rscale, plain http on loopback), with the official tailscaled peer
//! registered there. Needs `source <(scripts/testbed.sh env)`; skips,
//! saying why, otherwise (fails under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tailnet_auth::Secret;
use tailnet_cnid::control::keys::NodePublic;
use tailnet_cnid::control::{
    AuthKeySource, ControlClient, ControlConfig, ControlError, IdentityKeys, IdentityOptions,
    MintError,
};

use crate::common::keys::{admin_call, MintKeys};
use crate::common::peer::peer_status;
use crate::common::{self, require, Bed};

struct BadKey;

#[tonic::async_trait]
impl AuthKeySource for BadKey {
    async fn auth_key(&self) -> Result<Secret, MintError> {
        Ok(Secret::new(
            "rsk_0000000000000000000000000000000000000000000000000000000000000000",
        ))
    }
}

fn keys_source(bed: &Bed) -> Arc<MintKeys> {
    Arc::new(MintKeys::new(bed.admin(), "control test"))
}

/// Nodes whose name starts with `prefix`: other tests register nodes of
/// their own against the same server at the same time.
async fn node_count(bed: &Bed, prefix: &str) -> usize {
    admin_call(&bed.admin(), |admin| admin.nodes())
        .await
        .iter()
        .filter(|n| n.to_string().contains(&format!("\"{prefix}")))
        .count()
}

#[tokio::test]
async fn one_identity_registers_and_sees_the_peer() {
    let bed = require!(common::bed());
    let client = ControlClient::new(ControlConfig::new(&bed.control_url, None).unwrap()).unwrap();
    let keys = IdentityKeys::generate();
    let handle = client.spawn_identity(
        keys.clone(),
        IdentityOptions::new("ctl-one", vec![]),
        keys_source(&bed),
    );
    let netmap = handle
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("registered");
    let me = handle.self_node().expect("self node");
    assert!(me.ipv4.is_some_and(|a| a.octets()[0] == 100), "{me:?}");
    assert!(me.ipv6.is_some_and(|a| a.segments()[0] == 0xfd7a), "{me:?}");
    assert_eq!(
        netmap.self_node.as_ref().map(|n| n.key.clone()),
        Some(keys.node_public().to_string())
    );
    // The official tailscaled peer is in our netmap with its keys and home.
    let peer_ip = bed.peer_ipv4;
    let peer = netmap
        .peers
        .values()
        .find(|p| {
            p.addresses
                .iter()
                .any(|a| a.starts_with(&format!("{peer_ip}/")))
        })
        .unwrap_or_else(|| panic!("peer {peer_ip} missing from {:?}", netmap.peers.keys()));
    assert!(NodePublic::parse(&peer.key).is_ok(), "{peer:?}");
    assert!(peer.discokey.starts_with("discokey:"), "{peer:?}");
    assert!(peer.home_derp().is_some(), "{peer:?}");
    let derp = netmap.derp_map.as_ref().expect("DERP map");
    assert!(!derp.regions.is_empty());
    handle.logout().await.expect("logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identities_register_concurrently_and_come_back_unchanged() {
    let bed = require!(common::bed());
    let client = ControlClient::new(ControlConfig::new(&bed.control_url, None).unwrap()).unwrap();
    let source = keys_source(&bed);
    let keys: Vec<IdentityKeys> = (0..50).map(|_| IdentityKeys::generate()).collect();
    let handles: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            client.spawn_identity(
                k.clone(),
                IdentityOptions::new(&format!("ctl-par-{i}"), vec![]),
                source.clone(),
            )
        })
        .collect();
    let mut first = Vec::new();
    for h in &handles {
        h.wait_ready(Duration::from_secs(90))
            .await
            .expect("registered");
        first.push(h.self_node().expect("self"));
    }
    let v4: HashSet<_> = first.iter().filter_map(|n| n.ipv4).collect();
    let v6: HashSet<_> = first.iter().filter_map(|n| n.ipv6).collect();
    assert_eq!(v4.len(), 50, "IPv4 addresses not distinct");
    assert_eq!(v6.len(), 50, "IPv6 addresses not distinct");
    assert_eq!(
        source.minted.load(Ordering::SeqCst),
        50,
        "one key per identity"
    );

    // Every identity sees the others.
    let last = handles[49].netmap().borrow().clone().expect("netmap");
    for node in &first[..49] {
        assert!(
            last.peers.values().any(|p| p.id == node.id),
            "identity 49 does not see node {}",
            node.id
        );
    }

    // The official tailscaled peer lists every one of them.
    let wanted: Vec<String> = first
        .iter()
        .filter_map(|n| n.ipv4)
        .map(|a| a.to_string())
        .collect();
    let mut missing = wanted.clone();
    for _ in 0..60 {
        let peer = bed.clone();
        let status = tokio::task::spawn_blocking(move || peer_status(&peer))
            .await
            .expect("tailscale status");
        let listed: HashSet<String> = status["Peer"]
            .as_object()
            .into_iter()
            .flat_map(|peers| peers.values())
            .flat_map(|p| p["TailscaleIPs"].as_array().cloned().unwrap_or_default())
            .filter_map(|ip| ip.as_str().map(str::to_string))
            .collect();
        missing = wanted
            .iter()
            .filter(|ip| !listed.contains(*ip))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "the tailscaled peer does not list {missing:?}"
    );

    // A restart: same keys, no new key minted, same addresses, no new node.
    let nodes_before = node_count(&bed, "ctl-par-").await;
    assert!(
        nodes_before >= 50,
        "rscale lists {nodes_before} ctl-par- nodes"
    );
    for h in handles {
        h.shutdown();
    }
    let again: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            client.spawn_identity(
                k.clone(),
                IdentityOptions::new(&format!("ctl-par-{i}"), vec![]).resumed(),
                source.clone(),
            )
        })
        .collect();
    for (h, before) in again.iter().zip(&first) {
        h.wait_ready(Duration::from_secs(90))
            .await
            .expect("resumed");
        assert_eq!(h.self_node().as_ref(), Some(before));
    }
    assert_eq!(
        source.minted.load(Ordering::SeqCst),
        50,
        "restart minted keys"
    );
    assert_eq!(
        node_count(&bed, "ctl-par-").await,
        nodes_before,
        "restart created nodes"
    );
    for h in again {
        // Cleanup after the checks above.
        h.logout().await.ok();
    }
}

#[tokio::test]
async fn a_wrong_auth_key_is_reported_with_the_servers_reason() {
    let bed = require!(common::bed());
    let client = ControlClient::new(ControlConfig::new(&bed.control_url, None).unwrap()).unwrap();
    let handle = client.spawn_identity(
        IdentityKeys::generate(),
        IdentityOptions::new("ctl-bad", vec![]),
        Arc::new(BadKey),
    );
    let err = handle
        .wait_ready(Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Refused(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("refused"), "{text}");
    assert!(
        !text.contains("rsk_0000"),
        "the key leaked into the error: {text}"
    );
    handle.shutdown();
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    // A port nothing listens on, on loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("http://127.0.0.1:{port}");
    let client = ControlClient::new(ControlConfig::new(&url, None).unwrap()).unwrap();
    let handle = client.spawn_identity(
        IdentityKeys::generate(),
        IdentityOptions::new("ctl-none", vec![]),
        Arc::new(BadKey),
    );
    let err = handle.wait_ready(Duration::from_secs(3)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("unreachable") && text.contains(&port.to_string()),
        "{text}"
    );
    handle.shutdown();
}
