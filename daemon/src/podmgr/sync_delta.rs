//! What changed for a pod's data plane between two netmaps, found by
//! comparing their shared records (pointers, in node-id order) instead of
//! converting every peer again: a delta costs the peers it touches, plus
//! one pointer comparison per peer.

use std::collections::btree_map;
use std::iter::Peekable;
use std::sync::Arc;

use super::SharedConversions;
use crate::control::keys::NodePublic;
use crate::control::tailcfg::Node;
use crate::control::NetMap;
use crate::podmgr::peer_routes::RoutePrefs;
use crate::wg::peer_table::{PeerDelta, PeerTable};

/// A pod's peer changes from one netmap to the next.
#[derive(Debug, Default)]
pub struct NetmapDelta {
    /// The engine's peer changes.
    pub peers: PeerDelta,
    /// Whether a peer joined, left, or changed its name or addresses
    /// (what MagicDNS reads).
    pub names: bool,
}

type Nodes<'a> = Peekable<btree_map::Iter<'a, i64, Arc<Node>>>;

impl SharedConversions {
    /// How a pod with `prefs` sees the peers change from `old` to `new`.
    pub fn peer_delta(&self, old: &NetMap, new: &NetMap, prefs: &RoutePrefs) -> NetmapDelta {
        let mut delta = NetmapDelta::default();
        let (mut before, mut after): (Nodes, Nodes) =
            (old.peers.iter().peekable(), new.peers.iter().peekable());
        loop {
            let (old_node, new_node) = match (before.peek(), after.peek()) {
                (None, None) => return delta,
                (Some((a, _)), Some((b, _))) if a == b => {
                    let pair = (before.next().map(|e| e.1), after.next().map(|e| e.1));
                    match pair {
                        (Some(x), Some(y)) if Arc::ptr_eq(x, y) => continue,
                        (Some(x), Some(y)) => {
                            delta.names |= x.name != y.name || x.addresses != y.addresses;
                        }
                        _ => {}
                    }
                    pair
                }
                (Some((a, _)), Some((b, _))) if b < a => (None, after.next().map(|e| e.1)),
                (None, Some(_)) => (None, after.next().map(|e| e.1)),
                (Some(_), _) => (before.next().map(|e| e.1), None),
            };
            delta.names |= old_node.is_none() || new_node.is_none();
            self.record_change(old_node, new_node, prefs, &mut delta.peers);
        }
    }

    /// The engine's side of one node changing from `old` to `new` (`None`:
    /// absent).
    fn record_change(
        &self,
        old: Option<&Arc<Node>>,
        new: Option<&Arc<Node>>,
        prefs: &RoutePrefs,
        delta: &mut PeerDelta,
    ) {
        let config = new.and_then(|node| self.peer(node, prefs.grant_for(node)));
        let old_key = old
            .and_then(|node| NodePublic::parse(&node.key).ok())
            .filter(|key| !key.is_zero())
            .map(|key| key.0);
        if let Some(key) = old_key.filter(|key| config.as_ref().map(|c| &c.node_key) != Some(key)) {
            delta.removed.push(key);
        }
        delta.upserted.extend(config);
    }
}

/// `delta` without what `table` already reflects: a change only control
/// sees (online state, names) moves no engine.
pub fn effective(delta: PeerDelta, table: &PeerTable) -> PeerDelta {
    let removed: Vec<_> = delta
        .removed
        .into_iter()
        .filter(|key| table.contains(key))
        .collect();
    let upserted = delta
        .upserted
        .into_iter()
        .filter(|peer| {
            removed.contains(&peer.node_key)
                || table
                    .get(&peer.node_key)
                    .is_none_or(|held| !Arc::ptr_eq(held, peer) && **held != **peer)
        })
        .collect();
    PeerDelta { upserted, removed }
}

#[cfg(test)]
#[path = "sync_delta_tests.rs"]
mod tests;
