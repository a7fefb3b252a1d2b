use rand::{Rng, SeedableRng};

use super::*;
use crate::control::netmap::Interner;

/// Node `id` as control sends it; `generation` changes its key.
fn node(id: i64, generation: u8, port: u16) -> Node {
    let mut key = [generation; 32];
    key[..8].copy_from_slice(&id.to_be_bytes());
    Node {
        id,
        name: format!("n{id}.tailnet."),
        key: format!("nodekey:{}", hex::encode(key)),
        addresses: vec![format!("100.64.{}.{}/32", id / 250, id % 250)],
        endpoints: vec![format!("192.0.2.1:{port}")],
        ..Default::default()
    }
}

/// The table the pod holds for `map` when built from scratch.
fn rebuilt(shared: &SharedConversions, map: &NetMap) -> PeerTable {
    PeerTable::new(shared.peers_of(map, &RoutePrefs::default()))
}

/// `table` moved from `old` to `new` by the delta, as the sync does it.
fn moved(shared: &SharedConversions, table: &PeerTable, old: &NetMap, new: &NetMap) -> PeerTable {
    let change = shared.peer_delta(old, new, &RoutePrefs::default());
    table.apply(&effective(change.peers, table))
}

#[test]
fn changes_only_control_sees_move_no_engine() {
    let (interner, shared) = (Interner::default(), SharedConversions::default());
    let mut map = NetMap::default();
    for id in 1..=3 {
        map.peers.insert(id, interner.node(node(id, 1, 41641)));
    }
    let table = rebuilt(&shared, &map);
    let old = map.clone();
    let mut online = node(2, 1, 41641);
    online.online = Some(true);
    map.peers.insert(2, interner.node(online));
    let change = shared.peer_delta(&old, &map, &RoutePrefs::default());
    assert!(!change.names);
    assert!(effective(change.peers, &table).is_empty());

    let old = map.clone();
    let mut renamed = node(3, 1, 41641);
    renamed.name = "renamed.tailnet.".into();
    map.peers.insert(3, interner.node(renamed));
    let change = shared.peer_delta(&old, &map, &RoutePrefs::default());
    assert!(change.names, "MagicDNS reads names");
    assert!(effective(change.peers, &table).is_empty());

    let old = map.clone();
    map.peers.insert(1, interner.node(node(1, 1, 9)));
    let change = shared.peer_delta(&old, &map, &RoutePrefs::default());
    assert!(!change.names);
    let delta = effective(change.peers, &table);
    assert_eq!(delta.upserted.len(), 1);
    assert!(delta.removed.is_empty());
}

#[test]
fn a_netmap_delta_leaves_the_table_a_full_rebuild_would_make() {
    for seed in 0..30 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (interner, shared) = (Interner::default(), SharedConversions::default());
        let mut map = NetMap::default();
        let mut generation = [1u8; 64];
        for id in 0..40 {
            map.peers.insert(id, interner.node(node(id, 1, 41641)));
        }
        let mut table = rebuilt(&shared, &map);
        for _ in 0..40 {
            let old = map.clone();
            for _ in 0..rng.gen_range(1..5) {
                let id = rng.gen_range(0..64i64);
                let slot = id as usize;
                match rng.gen_range(0..6) {
                    0 => {
                        map.peers.remove(&id);
                    }
                    1 => {
                        // A new key: the old one leaves the engine.
                        generation[slot] = generation[slot].wrapping_add(1);
                        map.peers
                            .insert(id, interner.node(node(id, generation[slot], 1)));
                    }
                    2 => {
                        let mut expired = node(id, generation[slot], 41641);
                        expired.expired = true;
                        map.peers.insert(id, interner.node(expired));
                    }
                    3 => {
                        let mut online = node(id, generation[slot], 41641);
                        online.online = Some(rng.gen_bool(0.5));
                        map.peers.insert(id, interner.node(online));
                    }
                    _ => {
                        let port = rng.gen_range(1..4);
                        map.peers
                            .insert(id, interner.node(node(id, generation[slot], port)));
                    }
                }
            }
            table = moved(&shared, &table, &old, &map);
            assert!(
                table.same_peers(&rebuilt(&shared, &map)),
                "seed {seed}: the delta's table differs from a rebuild"
            );
        }
    }
}

#[test]
fn only_a_router_changing_touches_a_pods_subnet_routes() {
    let (interner, shared) = (Interner::default(), SharedConversions::default());
    let accepting = RoutePrefs {
        accept_routes: true,
        exit_node: None,
    };
    let mut map = NetMap::default();
    for id in 1..=3 {
        map.peers.insert(id, interner.node(node(id, 1, 41641)));
    }
    let mut router = node(4, 1, 41641);
    router.allowedips = Some(vec![router.addresses[0].clone(), "10.99.0.0/24".into()]);
    map.peers.insert(4, interner.node(router.clone()));

    let old = map.clone();
    map.peers.insert(2, interner.node(node(2, 1, 9)));
    map.peers.insert(5, interner.node(node(5, 1, 41641)));
    assert!(!shared.peer_delta(&old, &map, &accepting).subnets);

    let old = map.clone();
    router.endpoints = vec!["192.0.2.1:9".into()];
    map.peers.insert(4, interner.node(router));
    assert!(shared.peer_delta(&old, &map, &accepting).subnets);
    assert!(
        !shared
            .peer_delta(&old, &map, &RoutePrefs::default())
            .subnets,
        "a pod that accepts no routes has none to change"
    );

    let old = map.clone();
    map.peers.remove(&4);
    assert!(shared.peer_delta(&old, &map, &accepting).subnets);
}
