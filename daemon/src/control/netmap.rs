//! One identity's network map, kept current from full and delta map
//! responses, with peer records shared between identities.
//!
//! Hundreds of identities on a node see the same thousands of peers: the
//! [`Interner`] hands every identity the same `Arc<Node>` for an identical
//! record, and the same `Arc<DerpMap>`, so a peer costs memory once per node
//! rather than once per pod. An identity's peers are a persistent
//! [`PeerMap`]: publishing the netmap on each change shares it rather than
//! copying it, and what changed between two published netmaps costs the
//! change ([`PeerMap::changes_from`]).

#[path = "netmap_peers.rs"]
mod peers;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::tailcfg::{parse_prefix, DerpMap, DnsConfig, FilterRule, MapResponse, Node, PeerChange};

pub use peers::{Keys, PeerChanged, PeerMap};

/// Shares identical peer records and DERP maps across identities.
#[derive(Debug, Default)]
pub struct Interner {
    nodes: Mutex<HashMap<i64, Weak<Node>>>,
    derp: Mutex<Option<Weak<DerpMap>>>,
}

impl Interner {
    pub fn node(&self, node: Node) -> Arc<Node> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = nodes.get(&node.id).and_then(Weak::upgrade) {
            if *existing == node {
                return existing;
            }
        }
        let shared = Arc::new(node);
        nodes.insert(shared.id, Arc::downgrade(&shared));
        if nodes.len() > 1024 && nodes.len().is_power_of_two() {
            nodes.retain(|_, w| w.strong_count() > 0);
        }
        shared
    }

    pub fn derp_map(&self, map: DerpMap) -> Arc<DerpMap> {
        let mut slot = self.derp.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = slot.as_ref().and_then(Weak::upgrade) {
            if *existing == map {
                return existing;
            }
        }
        let shared = Arc::new(map);
        *slot = Some(Arc::downgrade(&shared));
        shared
    }
}

/// What an update changed, so the data plane reacts only to that.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub self_node: bool,
    pub peers: bool,
    pub derp_map: bool,
    pub filter: bool,
    /// The DNS configuration or the tailnet's domain.
    pub dns: bool,
}

impl Change {
    pub fn any(&self) -> bool {
        self.self_node || self.peers || self.derp_map || self.filter || self.dns
    }
}

/// An identity's netmap; cheap to clone (every part is shared), so the
/// session publishes a copy on each change.
#[derive(Debug, Clone, Default)]
pub struct NetMap {
    pub self_node: Option<Arc<Node>>,
    pub peers: PeerMap,
    pub derp_map: Option<Arc<DerpMap>>,
    /// Named packet filters; "base" is the classic `PacketFilter`.
    pub filters: BTreeMap<String, Arc<Vec<FilterRule>>>,
    pub domain: String,
    /// The last DNS configuration control sent; `None` until it sends one.
    pub dns: Option<Arc<DnsConfig>>,
}

impl NetMap {
    /// Applies one map response exactly as the protocol defines deltas.
    pub fn apply(&mut self, msg: MapResponse, interner: &Interner) -> Change {
        let mut change = Change::default();
        if let Some(node) = msg.node {
            let node = interner.node(node);
            if self.self_node.as_ref() != Some(&node) {
                self.self_node = Some(node);
                change.self_node = true;
            }
        }
        if let Some(map) = msg.derpmap {
            let map = interner.derp_map(map);
            if self.derp_map.as_ref() != Some(&map) {
                self.derp_map = Some(map);
                change.derp_map = true;
            }
        }
        if let Some(peers) = msg.peers {
            let fresh = peers
                .into_iter()
                .map(|p| (p.id, interner.node(p)))
                .collect();
            self.peers.replace_with(fresh);
            change.peers = true;
        }
        if let Some(changed) = msg.peerschanged {
            for peer in changed {
                self.peers.insert(peer.id, interner.node(peer));
            }
            change.peers = true;
        }
        if let Some(removed) = msg.peersremoved {
            for id in removed {
                change.peers |= self.peers.remove(&id).is_some();
            }
        }
        if let Some(patches) = msg.peerschangedpatch {
            for patch in patches {
                change.peers |= self.patch(patch, interner);
            }
        }
        if let Some(online) = msg.onlinechange {
            for (id, is_online) in online {
                let Ok(id) = id.parse::<i64>() else { continue };
                if let Some(peer) = self.peers.get(&id) {
                    if peer.online != Some(is_online) {
                        let mut updated = (**peer).clone();
                        updated.online = Some(is_online);
                        self.peers.insert(id, interner.node(updated));
                    }
                }
            }
        }
        if let Some(base) = msg.packetfilter {
            self.filters.insert("base".into(), Arc::new(base));
            change.filter = true;
        }
        if let Some(named) = msg.packetfilters {
            if named.get("*").is_some_and(Option::is_none) {
                self.filters.clear();
            }
            for (name, rules) in named {
                if name == "*" {
                    continue;
                }
                match rules {
                    Some(rules) => self.filters.insert(name, Arc::new(rules)),
                    None => self.filters.remove(&name),
                };
            }
            change.filter = true;
        }
        if let Some(domain) = msg.domain.filter(|d| !d.is_empty()) {
            change.dns |= self.domain != domain;
            self.domain = domain;
        }
        if let Some(dns) = msg.dnsconfig {
            if self.dns.as_deref() != Some(&dns) {
                self.dns = Some(Arc::new(dns));
                change.dns = true;
            }
        }
        change
    }

    fn patch(&mut self, patch: PeerChange, interner: &Interner) -> bool {
        let Some(peer) = self.peers.get(&patch.nodeid) else {
            return false;
        };
        let mut updated = (**peer).clone();
        if patch.derpregion != 0 {
            updated.homederp = patch.derpregion;
        }
        if let Some(endpoints) = patch.endpoints {
            updated.endpoints = endpoints;
        }
        if let Some(key) = patch.key {
            updated.key = key;
        }
        if let Some(disco) = patch.discokey {
            updated.discokey = disco;
        }
        if let Some(online) = patch.online {
            updated.online = Some(online);
        }
        if let Some(expiry) = patch.keyexpiry {
            updated.keyexpiry = expiry;
        }
        if updated == **peer {
            return false;
        }
        self.peers.insert(patch.nodeid, interner.node(updated));
        true
    }

    /// Every filter rule in force.
    pub fn filter_rules(&self) -> impl Iterator<Item = &FilterRule> {
        self.filters.values().flat_map(|rules| rules.iter())
    }
}

/// The fields of the self node the daemon records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfNode {
    pub id: i64,
    pub stable_id: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl SelfNode {
    pub fn from_node(node: &Node) -> Self {
        let mut ipv4 = None;
        let mut ipv6 = None;
        for (ip, _) in node.addresses.iter().filter_map(|a| parse_prefix(a)) {
            match ip {
                std::net::IpAddr::V4(v4) if ipv4.is_none() => ipv4 = Some(v4),
                std::net::IpAddr::V6(v6) if ipv6.is_none() => ipv6 = Some(v6),
                _ => {}
            }
        }
        Self {
            id: node.id,
            stable_id: node.stableid.clone(),
            ipv4,
            ipv6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::json::from_slice;

    fn msg(text: &str) -> MapResponse {
        from_slice(text.as_bytes()).unwrap()
    }

    #[test]
    fn full_then_delta_updates() {
        let interner = Interner::default();
        let mut map = NetMap::default();
        let change = map.apply(
            msg(
                r#"{"Node": {"ID": 9, "Addresses": ["100.64.0.9/32", "fd7a:115c:a1e0::9/128"]},
                    "Peers": [{"ID": 1, "Key": "a"}, {"ID": 2, "Key": "b"}],
                    "PacketFilter": []}"#,
            ),
            &interner,
        );
        assert!(change.self_node && change.peers && change.filter && !change.derp_map);
        assert_eq!(map.peers.len(), 2);
        assert_eq!(map.filter_rules().count(), 0, "[] = deny all");
        let me = SelfNode::from_node(map.self_node.as_ref().unwrap());
        assert_eq!(me.ipv4, Some("100.64.0.9".parse().unwrap()));
        assert_eq!(me.ipv6, Some("fd7a:115c:a1e0::9".parse().unwrap()));

        map.apply(
            msg(r#"{"PeersChanged": [{"ID": 3, "Key": "c"}], "PeersRemoved": [1]}"#),
            &interner,
        );
        assert_eq!(map.peers.keys().copied().collect::<Vec<_>>(), vec![2, 3]);

        let change = map.apply(
            msg(r#"{"PeersChangedPatch": [{"NodeID": 2, "DERPRegion": 900, "Endpoints": ["127.0.0.1:5"]}]}"#),
            &interner,
        );
        assert!(change.peers);
        assert_eq!(map.peers[&2].homederp, 900);
        assert_eq!(map.peers[&2].endpoints, vec!["127.0.0.1:5"]);

        map.apply(msg(r#"{"OnlineChange": {"3": true}}"#), &interner);
        assert_eq!(map.peers[&3].online, Some(true));

        // A keep-alive or an absent filter changes nothing.
        let change = map.apply(msg(r#"{"KeepAlive": true}"#), &interner);
        assert!(!change.any());
    }

    #[test]
    fn dns_config_and_domain_change_only_when_sent() {
        let interner = Interner::default();
        let mut map = NetMap::default();
        let change = map.apply(
            msg(r#"{"Domain": "tailnet.test", "DNSConfig": {"Proxied": true}}"#),
            &interner,
        );
        assert!(change.dns);
        assert_eq!(map.domain, "tailnet.test");
        assert!(map.dns.as_ref().unwrap().proxied);
        // Absent or null DNSConfig and an empty Domain leave both as they were.
        let change = map.apply(
            msg(r#"{"Domain": "", "DNSConfig": null, "PeersRemoved": []}"#),
            &interner,
        );
        assert!(!change.dns);
        assert_eq!(map.domain, "tailnet.test");
        assert!(map.dns.is_some());
        // The same configuration again is no change; a new one is.
        assert!(
            !map.apply(msg(r#"{"DNSConfig": {"Proxied": true}}"#), &interner)
                .dns
        );
        let change = map.apply(msg(r#"{"DNSConfig": {"Proxied": false}}"#), &interner);
        assert!(change.dns);
        assert!(!map.dns.as_ref().unwrap().proxied);
    }

    #[test]
    fn named_filters_follow_null_and_star_semantics() {
        let interner = Interner::default();
        let mut map = NetMap::default();
        map.apply(
            msg(r#"{"PacketFilters": {"a": [{"SrcIPs": ["*"]}], "b": [{"SrcIPs": ["100.64.0.1"]}]}}"#),
            &interner,
        );
        assert_eq!(map.filters.len(), 2);
        map.apply(msg(r#"{"PacketFilters": {"a": null}}"#), &interner);
        assert_eq!(map.filters.keys().collect::<Vec<_>>(), vec!["b"]);
        map.apply(msg(r#"{"PacketFilters": {"*": null, "c": []}}"#), &interner);
        assert_eq!(map.filters.keys().collect::<Vec<_>>(), vec!["c"]);
    }

    /// Control's deltas, applied at random, leave the peers a plain map
    /// gets from the same messages, and each change list equals a compare
    /// of every peer.
    #[test]
    fn deltas_keep_the_peers_and_change_lists_of_a_full_compare() {
        use rand::{Rng, SeedableRng};
        use std::collections::BTreeSet;
        let node = |id: i64, port: u16| Node {
            id,
            key: format!("k{id}"),
            endpoints: vec![format!("192.0.2.1:{port}")],
            ..Default::default()
        };
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let interner = Interner::default();
            let mut map = NetMap::default();
            let mut model: BTreeMap<i64, Node> = BTreeMap::new();
            for round in 0..80u16 {
                let before = map.clone();
                let mut msg = MapResponse::default();
                match rng.gen_range(0..10) {
                    0 => {
                        let peers: Vec<Node> = (0..300)
                            .filter(|_| rng.gen_ratio(9, 10))
                            .map(|id| model.get(&id).cloned().unwrap_or_else(|| node(id, 1)))
                            .collect();
                        model = peers.iter().map(|n| (n.id, n.clone())).collect();
                        msg.peers = Some(peers);
                    }
                    1..=3 => {
                        let changed: Vec<Node> = (0..rng.gen_range(1..5))
                            .map(|_| node(rng.gen_range(0..320), round))
                            .collect();
                        model.extend(changed.iter().map(|n| (n.id, n.clone())));
                        msg.peerschanged = Some(changed);
                    }
                    4..=5 => {
                        let removed: Vec<i64> = (0..rng.gen_range(1..5))
                            .map(|_| rng.gen_range(0..320))
                            .collect();
                        for id in &removed {
                            model.remove(id);
                        }
                        msg.peersremoved = Some(removed);
                    }
                    6..=7 => {
                        let id = rng.gen_range(0..320);
                        let endpoints = vec![format!("192.0.2.9:{}", rng.gen_range(1..4))];
                        if let Some(peer) = model.get_mut(&id) {
                            peer.endpoints = endpoints.clone();
                        }
                        msg.peerschangedpatch = Some(vec![PeerChange {
                            nodeid: id,
                            endpoints: Some(endpoints),
                            ..Default::default()
                        }]);
                    }
                    _ => {
                        let id = rng.gen_range(0..320);
                        let online = rng.gen_bool(0.5);
                        if let Some(peer) = model.get_mut(&id) {
                            peer.online = Some(online);
                        }
                        msg.onlinechange = Some([(id.to_string(), online)].into());
                    }
                }
                map.apply(msg, &interner);
                assert!(
                    map.peers
                        .iter()
                        .map(|(id, n)| (*id, &**n))
                        .eq(model.iter().map(|(id, n)| (*id, n))),
                    "seed {seed}, round {round}"
                );
                let listed: Vec<i64> = map
                    .peers
                    .changes_from(&before.peers)
                    .iter()
                    .map(|c| c.id)
                    .collect();
                let ids: BTreeSet<i64> = before
                    .peers
                    .keys()
                    .chain(map.peers.keys())
                    .copied()
                    .collect();
                let compared: Vec<i64> = ids
                    .into_iter()
                    .filter(|id| match (before.peers.get(id), map.peers.get(id)) {
                        (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                        _ => true,
                    })
                    .collect();
                assert_eq!(listed, compared, "seed {seed}, round {round}");
            }
        }
    }

    #[test]
    fn identities_share_identical_peer_records() {
        let interner = Interner::default();
        let mut a = NetMap::default();
        let mut b = NetMap::default();
        let peers = r#"{"Peers": [{"ID": 1, "Key": "k", "Addresses": ["100.64.0.1/32"]}],
                        "DERPMap": {"Regions": {"900": {"RegionID": 900}}}}"#;
        a.apply(msg(peers), &interner);
        b.apply(msg(peers), &interner);
        assert!(Arc::ptr_eq(&a.peers[&1], &b.peers[&1]));
        assert!(Arc::ptr_eq(
            a.derp_map.as_ref().unwrap(),
            b.derp_map.as_ref().unwrap()
        ));
        // A different record for the same node is not shared.
        b.apply(
            msg(r#"{"PeersChanged": [{"ID": 1, "Key": "k2"}]}"#),
            &interner,
        );
        assert!(!Arc::ptr_eq(&a.peers[&1], &b.peers[&1]));
        assert_eq!(a.peers[&1].key, "k");
    }
}
