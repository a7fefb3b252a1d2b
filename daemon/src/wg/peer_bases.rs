//! The bases pods' peer tables share.
//!
//! A pod's table is a view of a base plus a small difference. A new table
//! (a full netmap) or one whose difference outgrew its base looks for a
//! recent base it differs little from, and builds one only when none is
//! close: pods of a tailnet differ by themselves and the peers their ACLs
//! hide, so after a netmap change the first pod builds the new base and
//! the other pods' views point into it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use super::index::PeerIndex;
use super::{Difference, PeerConfig, PeerDelta, PeerTable};

/// Bases kept for reuse: a node's pods belong to a few tailnets.
const RECENT_BASES: usize = 8;

/// The most a view may differ from its base, in peers: lookups stay
/// binary searches in short lists, and a pod's own part a small fraction
/// of what the base holds for it.
fn difference_limit(base_len: usize) -> usize {
    base_len / 16
}

/// Recently built bases, newest first.
#[derive(Debug, Default)]
pub struct SharedBases {
    recent: Mutex<VecDeque<Weak<PeerIndex>>>,
}

impl SharedBases {
    /// The daemon's instance.
    pub fn global() -> &'static SharedBases {
        static GLOBAL: OnceLock<SharedBases> = OnceLock::new();
        GLOBAL.get_or_init(SharedBases::default)
    }

    /// The table of `peers`; of two records with one node key the first
    /// given stays.
    pub fn table_of(&self, mut peers: Vec<Arc<PeerConfig>>) -> PeerTable {
        // Stable: the first record of a key stays first.
        peers.sort_by_key(|p| p.node_key);
        peers.dedup_by(|later, earlier| later.node_key == earlier.node_key);
        self.view_of_sorted(peers)
    }

    /// `table` with `delta` applied, over the same base while the
    /// difference stays small.
    pub fn apply(&self, table: &PeerTable, delta: &PeerDelta) -> PeerTable {
        let difference = table.difference_after(delta);
        if difference.len() <= difference_limit(table.base.len()) {
            return PeerTable::view(table.base.clone(), difference);
        }
        let peers = PeerTable::view(table.base.clone(), difference)
            .iter()
            .cloned()
            .collect();
        self.view_of_sorted(peers)
    }

    /// A view of `peers` (sorted by node key, no repeats) over the first
    /// recent base close to them, else over a new base of them.
    fn view_of_sorted(&self, peers: Vec<Arc<PeerConfig>>) -> PeerTable {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.retain(|base| base.strong_count() > 0);
        for base in recent.iter().filter_map(Weak::upgrade) {
            let limit = difference_limit(base.len());
            if let Some(difference) = Difference::between(&base, &peers, limit) {
                return PeerTable::view(base, difference);
            }
        }
        // Built under the lock: the pods after this one wait for it rather
        // than build their own.
        let base = Arc::new(PeerIndex::from_sorted(peers));
        recent.push_front(Arc::downgrade(&base));
        recent.truncate(RECENT_BASES);
        PeerTable::view(base, Difference::default())
    }
}
