//! What changed for a pod's data plane between two netmaps: the peers
//! whose shared records differ ([`crate::control::netmap::PeerMap`]
//! skips what both netmaps share), converted alone: a delta costs the
//! peers it touches, not the tailnet.

use std::sync::Arc;

use super::SharedConversions;
use crate::control::keys::NodePublic;
use crate::control::tailcfg::Node;
use crate::control::NetMap;
use crate::podmgr::peer_routes::{accepted_subnets, RoutePrefs};
use crate::wg::peer_table::{PeerDelta, PeerTable};

/// A pod's peer changes from one netmap to the next.
#[derive(Debug, Default)]
pub struct NetmapDelta {
    /// The engine's peer changes.
    pub peers: PeerDelta,
    /// Whether a peer joined, left, or changed its name or addresses
    /// (what MagicDNS reads).
    pub names: bool,
    /// Whether a peer that offers subnet routes the pod accepts (before or
    /// after) changed: only then can the pod's routes to them change.
    pub subnets: bool,
}

impl SharedConversions {
    /// How a pod with `prefs` sees the peers change from `old` to `new`.
    pub fn peer_delta(&self, old: &NetMap, new: &NetMap, prefs: &RoutePrefs) -> NetmapDelta {
        let mut delta = NetmapDelta::default();
        for changed in new.peers.changes_from(&old.peers) {
            delta.names |= match (changed.old, changed.new) {
                (Some(x), Some(y)) => x.name != y.name || x.addresses != y.addresses,
                _ => true,
            };
            delta.subnets |= prefs.accept_routes
                && [changed.old, changed.new]
                    .into_iter()
                    .flatten()
                    .any(|node| !accepted_subnets(prefs, [&**node]).is_empty());
            self.record_change(changed.old, changed.new, prefs, &mut delta.peers);
        }
        delta
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
