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
    let bases = SharedBases::default();
    let table = bases.table_of(peers.clone());
    // A pointer, two host references and a disco reference per peer, in
    // the base; the first pod's view adds nothing of its own.
    assert_eq!(table.base_bytes(), 5000 * (8 + 4 + 4 + 4));
    assert_eq!(table.index_bytes(), 0);
    // A pod without peer 0: one hidden position of its own.
    let other = bases.table_of(peers[1..].to_vec());
    assert!(other.shares_base_with(&table));
    assert_eq!(other.index_bytes(), 4);
}

/// Peer `i` of a synthetic tailnet: its own addresses and disco key.
fn member(i: u16) -> Arc<PeerConfig> {
    let mut key = [0x10; 32];
    key[..2].copy_from_slice(&i.to_be_bytes());
    let [hi, lo] = i.to_be_bytes();
    Arc::new(PeerConfig {
        node_key: key,
        disco_key: Some(key.map(|b| b ^ 0xff)),
        allowed_ips: vec![
            (IpAddr::from([100, 64, hi, lo]), 32),
            (IpAddr::from([0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, i]), 128),
        ],
        endpoints: vec![],
        home_derp: None,
    })
}

fn tailnet(n: u16) -> Vec<Arc<PeerConfig>> {
    (0..n).map(member).collect()
}

#[test]
fn pods_that_see_the_tailnet_minus_themselves_share_one_base() {
    let bases = SharedBases::default();
    let peers = tailnet(250);
    let tables: Vec<PeerTable> = (0..250)
        .map(|pod| {
            let mut view = peers.clone();
            view.remove(pod);
            bases.table_of(view)
        })
        .collect();
    for (pod, table) in tables.iter().enumerate() {
        assert!(table.shares_base_with(&tables[0]));
        assert_eq!(table.len(), 249);
        assert!(!table.contains(&peers[pod].node_key));
        let someone = &peers[(pod + 1) % 250];
        assert!(table.contains(&someone.node_key));
        assert_eq!(
            table.owner(someone.allowed_ips[0].0),
            Some(&someone.node_key)
        );
        assert_eq!(table.owner(peers[pod].allowed_ips[0].0), None);
    }
    // The base lacks pod 0, so every other pod holds it and hides itself:
    // a position, a pointer, two host references, a disco reference.
    assert_eq!(tables[0].index_bytes(), 0);
    assert_eq!(tables[1].index_bytes(), 4 + 8 + 4 + 4 + 4);
}

#[test]
fn a_delta_adds_changes_and_removes_over_the_same_base() {
    let bases = SharedBases::default();
    let table = bases.table_of(tailnet(100));
    let mut moved = (*member(5)).clone();
    moved.endpoints = vec!["192.0.2.5:41641".parse().unwrap()];
    let moved = Arc::new(moved);
    let delta = PeerDelta {
        upserted: vec![member(100), moved.clone()],
        removed: vec![member(7).node_key],
    };
    let next = bases.apply(&table, &delta);
    assert!(next.shares_base_with(&table));
    assert_eq!(next.len(), 100);
    assert!(Arc::ptr_eq(next.get(&moved.node_key).unwrap(), &moved));
    assert!(next.get(&member(7).node_key).is_none());
    assert_eq!(
        next.owner(member(100).allowed_ips[1].0),
        Some(&member(100).node_key)
    );
    assert_eq!(next.owner(member(7).allowed_ips[0].0), None);
    assert_eq!(
        next.by_disco(&member(5).disco_key.unwrap())
            .map(|p| p.endpoints.len()),
        Some(1)
    );
    let keys: Vec<NodeKey> = next.iter().map(|p| p.node_key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "one record per key, by key");
    assert_eq!(next.route_count(), 200);

    // Putting back the base's own records empties the difference.
    let back = bases.apply(
        &next,
        &PeerDelta {
            upserted: vec![
                table.get(&moved.node_key).unwrap().clone(),
                table.get(&member(7).node_key).unwrap().clone(),
            ],
            removed: vec![member(100).node_key],
        },
    );
    assert!(back.same_peers(&table));
    assert!(back.shares_base_with(&table));
    assert_eq!(back.index_bytes(), 0);
}

#[test]
fn a_difference_past_its_limit_moves_pods_to_one_fresher_base() {
    let bases = SharedBases::default();
    let joined = || {
        (160..200).fold(bases.table_of(tailnet(160)), |table, i| {
            bases.apply(
                &table,
                &PeerDelta {
                    upserted: vec![member(i)],
                    removed: vec![],
                },
            )
        })
    };
    let (first, second) = (joined(), joined());
    assert_eq!(first.len(), 200);
    assert!(first.same_peers(&SharedBases::default().table_of(tailnet(200))));
    assert!(
        first.shares_base_with(&second),
        "the second pod reuses the first's base"
    );
    // A limit of 160 / 16 peers: the 11th new peer moved the pods.
    assert!(first.base_bytes() > 170 * 20);
    assert!(first.index_bytes() <= 200 / 16 * (8 + 4 + 4 + 4));
}

/// A random record: keys from a small space so deltas hit existing peers,
/// addresses, disco keys and prefixes from smaller ones so peers collide.
fn random_peer(rng: &mut impl rand::Rng) -> Arc<PeerConfig> {
    let mut node_key = [0; 32];
    node_key[0] = rng.gen_range(0..120);
    let mut allowed_ips = vec![(IpAddr::from([100, 64, 0, rng.gen_range(0..150)]), 32)];
    if rng.gen_bool(0.3) {
        let host = rng.gen_range(0..150);
        allowed_ips.push((
            IpAddr::from([0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, host]),
            128,
        ));
    }
    if rng.gen_bool(0.1) {
        let len = [0, 8, 16, 24][rng.gen_range(0..4)];
        allowed_ips.push((IpAddr::from([10, rng.gen_range(0..2), 0, 0]), len));
    }
    Arc::new(PeerConfig {
        node_key,
        disco_key: rng.gen_bool(0.8).then(|| [rng.gen_range(0..60); 32]),
        allowed_ips,
        // Records of one key differ by port.
        endpoints: vec![std::net::SocketAddr::from((
            [192, 0, 2, 1],
            41641 + rng.gen_range(0..4),
        ))],
        home_derp: None,
    })
}

/// Every lookup of `view` answers as `rebuilt`'s.
fn assert_same_answers(view: &PeerTable, rebuilt: &PeerTable) {
    assert!(view.same_peers(rebuilt));
    assert_eq!(view.len(), rebuilt.len());
    assert_eq!(view.route_count(), rebuilt.route_count());
    for first in 0..=120u8 {
        let mut key = [0; 32];
        key[0] = first;
        let ptr = |t: &PeerTable| t.get(&key).map(Arc::as_ptr);
        assert_eq!(ptr(view), ptr(rebuilt));
    }
    for disco in 0..=60u8 {
        let key = |t: &PeerTable| t.by_disco(&[disco; 32]).map(|p| p.node_key);
        assert_eq!(key(view), key(rebuilt), "disco {disco}");
    }
    for i in 0..=150u8 {
        for addr in [
            IpAddr::from([100, 64, 0, i]),
            IpAddr::from([0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, u16::from(i)]),
            IpAddr::from([10, i % 3, i, 1]),
            IpAddr::from([198, 51, 100, i]),
        ] {
            assert_eq!(view.owner(addr), rebuilt.owner(addr), "owner of {addr}");
        }
    }
}

#[test]
fn a_view_after_deltas_answers_as_one_rebuilt_from_scratch() {
    use rand::{Rng, SeedableRng};
    for seed in 0..40 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bases = SharedBases::default();
        let mut expected: std::collections::BTreeMap<NodeKey, Arc<PeerConfig>> = (0..80)
            .map(|_| random_peer(&mut rng))
            .map(|p| (p.node_key, p))
            .collect();
        let mut view = bases.table_of(expected.values().cloned().collect());
        for _ in 0..60 {
            let mut delta = PeerDelta::default();
            for _ in 0..rng.gen_range(0..4) {
                let mut key = [0; 32];
                key[0] = rng.gen_range(0..120);
                delta.removed.push(key);
            }
            for _ in 0..rng.gen_range(0..6) {
                // Now and then a record the base may hold already.
                let known = expected.values().nth(rng.gen_range(0..80)).cloned();
                let peer = match known.filter(|_| rng.gen_bool(0.3)) {
                    Some(peer) => peer,
                    None => random_peer(&mut rng),
                };
                delta.upserted.push(peer);
            }
            for key in &delta.removed {
                expected.remove(key);
            }
            for peer in &delta.upserted {
                expected.insert(peer.node_key, peer.clone());
            }
            view = bases.apply(&view, &delta);
            let rebuilt = SharedBases::default().table_of(expected.values().cloned().collect());
            assert_same_answers(&view, &rebuilt);
        }
    }
}
