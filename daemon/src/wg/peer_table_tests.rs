use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn peer(key: u8, disco: Option<u8>, allowed: &[(&str, u8)]) -> Arc<PeerConfig> {
    Arc::new(PeerConfig {
        node_key: [key; 32],
        disco_key: disco.map(|d| [d; 32]),
        allowed_ips: allowed.iter().map(|(a, l)| (ip(a), *l)).collect(),
        endpoints: vec![],
        home_derp: None,
    })
}

#[test]
fn finds_peers_by_key_address_and_disco_key() {
    let table = PeerTable::new(vec![
        peer(
            3,
            Some(0x33),
            &[("100.64.0.3", 32), ("fd7a:115c:a1e0::3", 128)],
        ),
        peer(1, None, &[("100.64.0.1", 32)]),
        peer(2, Some(0x22), &[("100.64.0.2", 32), ("10.9.0.0", 16)]),
    ]);
    assert_eq!(table.len(), 3);
    assert_eq!(table.route_count(), 5);
    assert_eq!(table.get(&[2; 32]).map(|p| p.node_key), Some([2; 32]));
    assert!(table.get(&[4; 32]).is_none());
    assert_eq!(table.owner(ip("100.64.0.1")), Some(&[1; 32]));
    assert_eq!(table.owner(ip("100.64.0.3")), Some(&[3; 32]));
    assert_eq!(table.owner(ip("fd7a:115c:a1e0::3")), Some(&[3; 32]));
    assert_eq!(table.owner(ip("10.9.200.1")), Some(&[2; 32]));
    assert_eq!(table.owner(ip("100.64.0.4")), None);
    assert_eq!(
        table.by_disco(&[0x33; 32]).map(|p| p.node_key),
        Some([3; 32])
    );
    assert_eq!(
        table.by_disco(&[0x22; 32]).map(|p| p.node_key),
        Some([2; 32])
    );
    assert!(table.by_disco(&[0x11; 32]).is_none());
    let keys: Vec<u8> = table.iter().map(|p| p.node_key[0]).collect();
    assert_eq!(keys, vec![1, 2, 3]);
}

#[test]
fn a_host_route_beats_a_wider_prefix_and_exit_routes_skip_tailnet_addresses() {
    let table = PeerTable::new(vec![
        peer(1, None, &[("100.64.0.7", 32), ("0.0.0.0", 0), ("::", 0)]),
        peer(2, None, &[("100.64.0.8", 32), ("fd7a:115c:a1e0::8", 128)]),
        peer(3, None, &[("100.64.0.0", 24)]),
    ]);
    assert_eq!(table.owner(ip("100.64.0.8")), Some(&[2; 32]));
    assert_eq!(table.owner(ip("100.64.0.7")), Some(&[1; 32]));
    assert_eq!(table.owner(ip("100.64.0.99")), Some(&[3; 32]));
    assert_eq!(
        table.owner(ip("100.64.1.1")),
        None,
        "no exit for tailnet addresses"
    );
    assert_eq!(table.owner(ip("fd7a:115c:a1e0::99")), None);
    assert_eq!(table.owner(ip("192.0.2.1")), Some(&[1; 32]));
    assert_eq!(table.owner(ip("2001:db8::1")), Some(&[1; 32]));
}

#[test]
fn the_first_record_of_a_key_stays() {
    let table = PeerTable::new(vec![
        peer(1, None, &[("100.64.0.1", 32)]),
        peer(1, None, &[("100.64.0.9", 32)]),
    ]);
    assert_eq!(table.len(), 1);
    assert_eq!(table.owner(ip("100.64.0.1")), Some(&[1; 32]));
    assert_eq!(table.owner(ip("100.64.0.9")), None);
}

#[test]
fn a_pod_keeps_about_sixteen_bytes_per_peer() {
    let peers: Vec<_> = (0..5000u32)
        .map(|i| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            Arc::new(PeerConfig {
                node_key: key,
                disco_key: Some([7; 32]),
                allowed_ips: vec![
                    (IpAddr::from([100, 64, (i >> 8) as u8, i as u8]), 32),
                    (
                        IpAddr::from([0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, i as u16]),
                        128,
                    ),
                ],
                endpoints: vec![],
                home_derp: None,
            })
        })
        .collect();
    let table = PeerTable::new(peers);
    // A pointer, two host references and a disco reference per peer.
    assert_eq!(table.index_bytes(), 5000 * (8 + 4 + 4 + 4));
}
