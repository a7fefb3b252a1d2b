use std::net::IpAddr;

use super::*;

fn record(key: u8, endpoint: &str) -> Arc<PeerConfig> {
    Arc::new(PeerConfig {
        node_key: [key; 32],
        disco_key: None,
        allowed_ips: vec![(IpAddr::from([100, 64, 0, key]), 32)],
        endpoints: vec![endpoint.parse().unwrap()],
        home_derp: None,
    })
}

fn tailnet(n: u8) -> Vec<Arc<PeerConfig>> {
    (1..=n).map(|k| record(k, "10.0.0.1:41641")).collect()
}

fn table(peers: Vec<Arc<PeerConfig>>) -> Arc<PeerTable> {
    Arc::new(PeerTable::new(peers))
}

#[test]
fn peers_get_state_only_once_talked_to() {
    let mut peers = Peers::default();
    peers.replace(table(tailnet(200)));
    assert_eq!(peers.len(), 200);
    assert!(peers.sessions.is_empty(), "no peer was talked to");
    assert!(!peers.has_live_session());
    assert_eq!(
        peers.table.owner(IpAddr::from([100, 64, 0, 7])),
        Some(&[7; 32])
    );
    assert!(peers.get_mut(&[7; 32]).is_some());
    assert!(peers.get_mut(&[201; 32]).is_none(), "not a peer: no state");
    assert_eq!(peers.sessions.len(), 1);
    // State without a WireGuard session needs no timers.
    assert!(!peers.has_live_session());
}

#[test]
fn state_of_remaining_peers_survives_a_new_netmap_and_follows_its_endpoints() {
    let mut peers = Peers::default();
    peers.replace(table(tailnet(3)));
    let talked = peers.get_mut(&[2; 32]).unwrap();
    talked.tx_bytes = 42;
    talked.path_state_mut();
    peers.get_mut(&[3; 32]).unwrap().tx_bytes = 7;
    // Peer 2 moves, peer 3 leaves.
    let removed = peers.replace(table(vec![
        record(1, "10.0.0.1:41641"),
        record(2, "10.0.0.2:1"),
    ]));
    assert_eq!(removed, 3);
    assert_eq!(peers.len(), 2);
    assert!(!peers.sessions.contains_key(&[3; 32]));
    let kept = peers.sessions.get(&[2; 32]).unwrap();
    assert_eq!(kept.tx_bytes, 42);
    assert_eq!(kept.config.endpoints, vec!["10.0.0.2:1".parse().unwrap()]);
}

#[test]
fn a_session_is_live_while_its_tunn_exists() {
    let mut peers = Peers::default();
    peers.replace(table(tailnet(2)));
    let secret = x25519::StaticSecret::from([9; 32]);
    let index = AtomicU32::new(1);
    let public = x25519::PublicKey::from(&secret);
    let limiter = || Arc::new(RateLimiter::new(&public, 10));
    assert!(peers.tunn_for(&[1; 32], &secret, &index, limiter).is_some());
    assert!(peers.has_live_session());
    assert!(peers.tunn_for(&[9; 32], &secret, &index, limiter).is_none());
    assert_eq!(peers.sessions.len(), 1);
    // The peer leaves: its session and receiver index go.
    peers.replace(table(vec![record(2, "10.0.0.1:41641")]));
    assert!(!peers.has_live_session());
    assert!(peers.index_to_peer.is_empty());
}
