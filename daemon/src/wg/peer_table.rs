//! A pod's peer set (sans-IO): which peer a node key, a destination
//! address or a disco key names.
//!
//! Pods of one tailnet see nearly the same peers: each sees the tailnet
//! minus itself and the peers its ACLs hide. So a pod's table is a view:
//! a [`PeerIndex`] shared by the tailnet's pods (the base), the base
//! positions this pod does not see, and a small index of its own for the
//! peers the base lacks or holds with another record. A netmap delta
//! changes only that difference; once it outgrows a small part of the
//! base, the pod moves to a fresher base (see [`SharedBases`]).
//!
//! Lookups are binary searches in the base, then in the (mostly empty)
//! difference; the answers are those of one index built from the view's
//! peers alone.

#[path = "peer_index.rs"]
mod index;
#[path = "peer_bases.rs"]
mod shared;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use self::index::PeerIndex;
use super::config::PeerConfig;

pub use self::index::MAX_PEERS;
pub use self::shared::SharedBases;

/// A WireGuard node key.
pub type NodeKey = [u8; 32];

/// What changed in a pod's peer set since its last table.
#[derive(Debug, Default, Clone)]
pub struct PeerDelta {
    /// Peers that joined or whose record changed; of two with one node
    /// key the later stays.
    pub upserted: Vec<Arc<PeerConfig>>,
    /// Node keys of peers that left (applied before `upserted`).
    pub removed: Vec<NodeKey>,
}

impl PeerDelta {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// One pod's peers and their routes: a shared base and the pod's own
/// difference from it.
#[derive(Debug, Default)]
pub struct PeerTable {
    base: Arc<PeerIndex>,
    /// Base positions the pod does not see (peers it lacks, or holds with
    /// the record in `extra`), sorted.
    hidden: Box<[u32]>,
    /// Peers the base lacks or holds with another record.
    extra: PeerIndex,
}

/// A view's difference from its base, both lists sorted.
#[derive(Debug, Default)]
struct Difference {
    hidden: Vec<u32>,
    /// Sorted by node key.
    extra: Vec<Arc<PeerConfig>>,
}

impl Difference {
    /// How `peers` (sorted by node key, no repeats) differ from `base`;
    /// `None` once that is more than `limit` entries.
    fn between(base: &PeerIndex, peers: &[Arc<PeerConfig>], limit: usize) -> Option<Self> {
        let mut difference = Self::default();
        let (mut theirs, mut ours) = (base.records().iter().peekable(), peers.iter().peekable());
        let mut position = 0u32;
        loop {
            match (theirs.peek(), ours.peek()) {
                (None, None) => return Some(difference),
                (Some(b), Some(p)) if b.node_key == p.node_key => {
                    if !same_record(b, p) {
                        difference.hidden.push(position);
                        difference.extra.push((*p).clone());
                    }
                    theirs.next();
                    ours.next();
                    position += 1;
                }
                (Some(b), Some(p)) if p.node_key < b.node_key => {
                    difference.extra.push((*p).clone());
                    ours.next();
                }
                (None, Some(p)) => {
                    difference.extra.push((*p).clone());
                    ours.next();
                }
                (Some(_), _) => {
                    difference.hidden.push(position);
                    theirs.next();
                    position += 1;
                }
            }
            if difference.len() > limit {
                return None;
            }
        }
    }

    fn len(&self) -> usize {
        self.hidden.len() + self.extra.len()
    }
}

/// Whether two records are the same; pointers first, as records are
/// shared.
fn same_record(a: &Arc<PeerConfig>, b: &Arc<PeerConfig>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl PeerTable {
    /// The table of `peers`, over a base shared with other pods' tables
    /// where one is close; of two records with one node key the first
    /// given stays.
    pub fn new(peers: Vec<Arc<PeerConfig>>) -> Self {
        SharedBases::global().table_of(peers)
    }

    /// This table with `delta` applied: the peers it leaves, the peers it
    /// changes and adds, as [`Self::new`] would build them.
    pub fn apply(&self, delta: &PeerDelta) -> Self {
        SharedBases::global().apply(self, delta)
    }

    fn view(base: Arc<PeerIndex>, difference: Difference) -> Self {
        Self {
            base,
            hidden: difference.hidden.into_boxed_slice(),
            extra: PeerIndex::from_sorted(difference.extra),
        }
    }

    /// The difference from the base once `delta` is applied.
    fn difference_after(&self, delta: &PeerDelta) -> Difference {
        let mut hidden: BTreeSet<u32> = self.hidden.iter().copied().collect();
        let mut extra: BTreeMap<NodeKey, Arc<PeerConfig>> = self
            .extra
            .records()
            .iter()
            .map(|p| (p.node_key, p.clone()))
            .collect();
        for key in &delta.removed {
            extra.remove(key);
            hidden.extend(self.base.position(key));
        }
        for peer in &delta.upserted {
            let key = peer.node_key;
            match self.base.position(&key) {
                Some(at) if self.base.record(at).is_some_and(|b| same_record(b, peer)) => {
                    hidden.remove(&at);
                    extra.remove(&key);
                }
                Some(at) => {
                    hidden.insert(at);
                    extra.insert(key, peer.clone());
                }
                None => {
                    extra.insert(key, peer.clone());
                }
            }
        }
        Difference {
            hidden: hidden.into_iter().collect(),
            extra: extra.into_values().collect(),
        }
    }

    /// Whether the pod sees the base's peer at `position`.
    fn visible(&self, position: u32) -> bool {
        self.hidden.binary_search(&position).is_err()
    }

    /// The record of the peer with `key`.
    pub fn get(&self, key: &NodeKey) -> Option<&Arc<PeerConfig>> {
        if let Some(at) = self.extra.position(key) {
            return self.extra.record(at);
        }
        let at = self.base.position(key)?;
        self.visible(at).then(|| self.base.record(at)).flatten()
    }

    pub fn contains(&self, key: &NodeKey) -> bool {
        self.get(key).is_some()
    }

    /// The peer whose disco key is `disco` (of two with one key, the one
    /// with the lower node key).
    pub fn by_disco(&self, disco: &[u8; 32]) -> Option<&Arc<PeerConfig>> {
        let ours = self
            .extra
            .disco_positions(disco)
            .next()
            .and_then(|at| self.extra.record(at));
        let shared = self
            .base
            .disco_positions(disco)
            .find(|&at| self.visible(at))
            .and_then(|at| self.base.record(at));
        lower_key(ours, shared)
    }

    /// Whom `addr` belongs to, for a packet to it or from it: a peer's own
    /// address first, else the longest wider prefix, where a default route
    /// (an exit node's) never covers a tailnet address (see
    /// [`super::routing::AllowedIps::owner`]). Of two peers with one
    /// route, the one with the lower node key.
    pub fn owner(&self, addr: IpAddr) -> Option<&NodeKey> {
        let ours = self
            .extra
            .host_positions(addr)
            .next()
            .and_then(|at| self.extra.record(at));
        let shared = self
            .base
            .host_positions(addr)
            .find(|&at| self.visible(at))
            .and_then(|at| self.base.record(at));
        if let Some(host) = lower_key(ours, shared) {
            return Some(&host.node_key);
        }
        let ours = self.extra.prefix_owner(addr, |_| true);
        let shared = self.base.prefix_owner(addr, |at| self.visible(at));
        match (
            with_record(&self.extra, ours),
            with_record(&self.base, shared),
        ) {
            (Some((a, ours)), Some((b, shared))) if a == b => lower_key(Some(ours), Some(shared)),
            (Some((a, ours)), Some((b, shared))) => Some(if a > b { ours } else { shared }),
            (ours, shared) => ours.or(shared).map(|(_, record)| record),
        }
        .map(|record| &record.node_key)
    }

    /// Every record, by node key.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PeerConfig>> {
        let mut shared = self
            .base
            .records()
            .iter()
            .zip(0u32..)
            .filter(|&(_, at)| self.visible(at))
            .map(|(record, _)| record)
            .peekable();
        let mut ours = self.extra.records().iter().peekable();
        // A key is never in both: the base's record is hidden then.
        std::iter::from_fn(move || match (shared.peek(), ours.peek()) {
            (Some(s), Some(o)) if o.node_key < s.node_key => ours.next(),
            (Some(_), _) => shared.next(),
            (None, _) => ours.next(),
        })
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.base.len() - self.hidden.len() + self.extra.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of routes (host and wider).
    pub fn route_count(&self) -> usize {
        let hidden: usize = self
            .hidden
            .iter()
            .filter_map(|&at| self.base.record(at))
            .map(|p| p.allowed_ips.len())
            .sum();
        self.base.route_count() - hidden + self.extra.route_count()
    }

    /// Heap bytes the pod's own part takes (the base and the records are
    /// shared).
    pub fn index_bytes(&self) -> usize {
        self.hidden.len() * std::mem::size_of::<u32>() + self.extra.heap_bytes()
    }

    /// Heap bytes of the base, shared with every table over it.
    pub fn base_bytes(&self) -> usize {
        self.base.heap_bytes()
    }

    /// Whether both tables are views of one base.
    pub fn shares_base_with(&self, other: &PeerTable) -> bool {
        Arc::ptr_eq(&self.base, &other.base)
    }

    /// Whether both tables hold the same records.
    pub fn same_peers(&self, other: &PeerTable) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|(a, b)| same_record(a, b))
    }
}

/// A found prefix length with the record at its position.
fn with_record(index: &PeerIndex, found: Option<(u8, u32)>) -> Option<(u8, &Arc<PeerConfig>)> {
    let (len, at) = found?;
    Some((len, index.record(at)?))
}

/// Of two records, the one with the lower node key.
fn lower_key<'a>(
    a: Option<&'a Arc<PeerConfig>>,
    b: Option<&'a Arc<PeerConfig>>,
) -> Option<&'a Arc<PeerConfig>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.node_key <= b.node_key { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
#[path = "peer_table_tests.rs"]
mod tests;
