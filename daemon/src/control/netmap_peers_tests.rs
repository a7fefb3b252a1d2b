use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};

use super::*;

/// Changes as (id, old, new).
type Listed = Vec<(i64, Option<Arc<Node>>, Option<Arc<Node>>)>;

fn node(id: i64, version: u32) -> Arc<Node> {
    Arc::new(Node {
        id,
        name: format!("n{id}-{version}"),
        ..Default::default()
    })
}

/// What changed from `old` to `new`, found by comparing every peer.
fn compared(old: &PeerMap, new: &PeerMap) -> Listed {
    let old: BTreeMap<i64, Arc<Node>> = old.iter().map(|(k, v)| (*k, v.clone())).collect();
    let new: BTreeMap<i64, Arc<Node>> = new.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut ids: Vec<i64> = old.keys().chain(new.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| {
            let (a, b) = (old.get(&id), new.get(&id));
            match (a, b) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => None,
                _ => Some((id, a.cloned(), b.cloned())),
            }
        })
        .collect()
}

fn owned(changes: Vec<PeerChanged<'_>>) -> Listed {
    changes
        .into_iter()
        .map(|c| (c.id, c.old.cloned(), c.new.cloned()))
        .collect()
}

/// Chunks are sorted, never empty, within bounds once changed, and the
/// length is right.
fn check_shape(map: &PeerMap) {
    assert!(map
        .chunks
        .iter()
        .all(|c| !c.is_empty() && c.len() <= 2 * CHUNK));
    let ids: Vec<i64> = map.keys().copied().collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(ids.len(), map.len());
}

#[test]
fn acts_as_a_sorted_map_and_its_change_lists_match_a_full_compare() {
    for seed in 0..25 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut model: BTreeMap<i64, Arc<Node>> = BTreeMap::new();
        let span = rng.gen_range(10..600i64);
        let mut map: PeerMap = (0..rng.gen_range(0..span))
            .map(|id| (id, node(id, 0)))
            .collect();
        model.extend(map.iter().map(|(k, v)| (*k, v.clone())));
        for round in 1..60u32 {
            let before = map.clone();
            for _ in 0..rng.gen_range(1..12) {
                let id = rng.gen_range(0..span);
                if rng.gen_bool(0.4) {
                    assert_eq!(map.remove(&id), model.remove(&id));
                } else {
                    let record = node(id, round);
                    let old = map.insert(id, record.clone());
                    assert_eq!(old, model.insert(id, record));
                }
            }
            if rng.gen_ratio(1, 10) {
                // A full peer list: mostly the same records.
                let fresh: PeerMap = model
                    .iter()
                    .filter(|_| rng.gen_ratio(29, 30))
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                model = fresh.iter().map(|(k, v)| (*k, v.clone())).collect();
                map.replace_with(fresh);
            }
            check_shape(&map);
            assert!(map.iter().map(|(k, v)| (*k, v.clone())).eq(model.clone()));
            assert_eq!(
                owned(map.changes_from(&before)),
                compared(&before, &map),
                "seed {seed}, round {round}"
            );
            assert_eq!(owned(before.changes_from(&map)), compared(&map, &before));
            // The snapshot taken before is untouched.
            assert!(before.iter().all(|(id, _)| before.get(id).is_some()));
        }
    }
}

#[test]
fn a_change_copies_one_chunk_and_leaves_the_rest_shared() {
    let map: PeerMap = (0..5_000).map(|id| (id, node(id, 0))).collect();
    let mut next = map.clone();
    next.insert(2_500, node(2_500, 1));
    next.insert(5_000, node(5_000, 0));
    let shared = map
        .chunks
        .iter()
        .filter(|c| next.chunks.iter().any(|d| Arc::ptr_eq(c, d)))
        .count();
    assert_eq!(shared, map.chunks.len() - 2);
    let changes = next.changes_from(&map);
    assert_eq!(
        changes.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![2_500, 5_000]
    );
    assert!(changes[1].old.is_none());
    assert_eq!(map.get(&2_500).map(|n| n.name.as_str()), Some("n2500-0"));

    // The same record again copies nothing.
    let mut same = next.clone();
    same.insert(7, next[&7].clone());
    assert!(Arc::ptr_eq(&same.chunks, &next.chunks));
    assert!(same.changes_from(&next).is_empty());
}

#[test]
fn a_full_list_with_one_change_keeps_the_other_chunks_shared() {
    let records: Vec<_> = (0..1_000).map(|id| (id, node(id, 0))).collect();
    let mut map: PeerMap = records.iter().cloned().collect();
    let before = map.clone();
    let mut fresh = records.clone();
    fresh[10].1 = node(10, 1);
    fresh.remove(600);
    map.replace_with(fresh.into_iter().collect());
    let changes = map.changes_from(&before);
    assert_eq!(
        changes.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![10, 600]
    );
    let shared = before
        .chunks
        .iter()
        .filter(|c| map.chunks.iter().any(|d| Arc::ptr_eq(c, d)))
        .count();
    assert_eq!(shared, before.chunks.len() - 2);
}

#[test]
fn later_entries_of_one_id_win_as_in_a_btree_map() {
    let map: PeerMap = [(3, node(3, 0)), (1, node(1, 0)), (3, node(3, 1))]
        .into_iter()
        .collect();
    assert_eq!(map.len(), 2);
    assert_eq!(map[&3].name, "n3-1");
    assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    assert!(map.get(&2).is_none() && !map.contains_key(&2));
}
