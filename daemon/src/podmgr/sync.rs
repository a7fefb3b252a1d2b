//! Keeps one pod's data plane in step with its control session: netmap
//! changes become engine peer, DERP, packet-filter and MagicDNS updates
//! and, for a pod that accepts subnet routes, routes in the pod; engine
//! endpoint changes are reported to control.
//!
//! Packet filter, as Tailscale's client does it: until control sends a
//! filter the pod accepts no unsolicited inbound traffic (deny-all is set
//! before the pod gets any peer), and an explicit empty filter means the
//! same. Replies to the pod's own connections always pass.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tailnet_wire::filter::CompiledRules;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::filters::FilterCache;
use super::magicdns::{dns_inputs_digest, dns_table};
use super::peer_routes::{accepted_subnets, installed, Grant, RoutePrefs};
use super::plumbing::PodRouteTarget;
use super::session_memory::FilterBeforeNetmap;
use crate::control::keys::{DiscoPublic, NodePublic};
use crate::control::tailcfg::{DerpMap, Node};
use crate::control::{EndpointReporter, NetMap};
use crate::wg::peer_table::PeerTable;
use crate::wg::{
    DerpNodeConfig, DerpRegionConfig, DnsTable, EngineError, PeerConfig, PodEndpoints, PodHandle,
};

#[path = "sync_delta.rs"]
mod delta;
pub use delta::NetmapDelta;

/// How long endpoint changes settle before they are sent to control.
const ENDPOINT_DEBOUNCE: Duration = Duration::from_millis(250);

/// A netmap peer as the engine needs it, with the routes `grant` lets the
/// pod install; `None` for records it cannot use (no valid node key,
/// expired).
pub fn peer_config(node: &Node, grant: Grant) -> Option<PeerConfig> {
    if node.expired {
        return None;
    }
    let key = NodePublic::parse(&node.key).ok().filter(|k| !k.is_zero())?;
    Some(PeerConfig {
        node_key: key.0,
        disco_key: DiscoPublic::parse(&node.discokey)
            .ok()
            .filter(|k| !k.is_zero())
            .map(|k| k.0),
        allowed_ips: installed(node, grant),
        endpoints: node.endpoint_addrs(),
        home_derp: node.home_derp(),
    })
}

/// The DERP map as the engine needs it, regions in id order.
pub fn derp_regions(map: &DerpMap) -> Vec<DerpRegionConfig> {
    let mut regions: Vec<DerpRegionConfig> = map
        .regions
        .values()
        .filter(|r| !r.avoid)
        .filter_map(|region| {
            let region_id = u16::try_from(region.regionid).ok()?;
            let nodes = region
                .nodes
                .iter()
                .map(|n| DerpNodeConfig {
                    name: n.name.clone(),
                    host_name: n.hostname.clone(),
                    // "none" disables a family; empty means "resolve the name".
                    ipv4: n.ipv4.parse().ok(),
                    ipv6: n.ipv6.parse().ok(),
                    derp_port: u16::try_from(n.derpport).unwrap_or(0),
                    stun_port: u16::try_from(n.stunport).unwrap_or(0),
                    insecure_for_tests: n.insecurefortests,
                    stun_only: n.stunonly,
                    plain_http: false,
                })
                .collect();
            Some(DerpRegionConfig { region_id, nodes })
        })
        .collect();
    regions.sort_by_key(|r| r.region_id);
    regions
}

/// Engine inputs shared by every pod: one `Arc<PeerConfig>` per interned
/// peer record and route grant, one converted DERP map per interned DERP
/// map. Pods of one tailnet see the same records, so hundreds of pods hold
/// pointers to one conversion instead of a copy each.
#[derive(Default)]
pub struct SharedConversions {
    peers: Mutex<HashMap<(i64, Grant), SharedPeer>>,
    derp: Mutex<Option<SharedDerp>>,
}

struct SharedPeer {
    node: Weak<Node>,
    config: Weak<PeerConfig>,
}

struct SharedDerp {
    map: Weak<DerpMap>,
    regions: Weak<Vec<DerpRegionConfig>>,
}

impl SharedConversions {
    /// The daemon's instance.
    pub fn global() -> &'static SharedConversions {
        static GLOBAL: OnceLock<SharedConversions> = OnceLock::new();
        GLOBAL.get_or_init(SharedConversions::default)
    }

    /// The engine's view of `node` for a pod that grants it `grant`,
    /// shared with every pod that has it with the same grant.
    pub fn peer(&self, node: &Arc<Node>, grant: Grant) -> Option<Arc<PeerConfig>> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = peers.get(&(node.id, grant));
        if let Some(config) = cached
            .filter(|c| std::ptr::eq(c.node.as_ptr(), Arc::as_ptr(node)))
            .and_then(|c| c.config.upgrade())
        {
            return Some(config);
        }
        let fresh = peer_config(node, grant)?;
        // A record that changed only where the engine does not look
        // (online, name, ...) keeps the old conversion.
        let config = cached
            .and_then(|c| c.config.upgrade())
            .filter(|old| **old == fresh)
            .unwrap_or_else(|| Arc::new(fresh));
        peers.insert(
            (node.id, grant),
            SharedPeer {
                node: Arc::downgrade(node),
                config: Arc::downgrade(&config),
            },
        );
        if peers.len() > 1024 && peers.len().is_power_of_two() {
            peers.retain(|_, c| c.config.strong_count() > 0);
        }
        Some(config)
    }

    /// Every usable peer of `map` as a pod with `prefs` installs it, in
    /// node-id order.
    pub fn peers_of(&self, map: &NetMap, prefs: &RoutePrefs) -> Vec<Arc<PeerConfig>> {
        map.peers
            .values()
            .filter_map(|n| self.peer(n, prefs.grant_for(n)))
            .collect()
    }

    /// The engine's DERP map for `map`, converted once.
    pub fn derp_map(&self, map: &Arc<DerpMap>) -> Arc<Vec<DerpRegionConfig>> {
        let mut slot = self.derp.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(regions) = slot
            .as_ref()
            .filter(|d| std::ptr::eq(d.map.as_ptr(), Arc::as_ptr(map)))
            .and_then(|d| d.regions.upgrade())
        {
            return regions;
        }
        let regions = Arc::new(derp_regions(map));
        *slot = Some(SharedDerp {
            map: Arc::downgrade(map),
            regions: Arc::downgrade(&regions),
        });
        regions
    }
}

/// Every rule of every named filter in the netmap, compiled (shared with
/// other pods that got the same rules).
pub fn filter_of(map: &NetMap, cache: &FilterCache) -> Arc<CompiledRules> {
    let rules: Vec<_> = map.filter_rules().collect();
    cache.compile(&rules)
}

/// A pod's route opt-ins and where its routes to accepted subnet routes go
/// (`None`: the pod's routes are left alone). The default opts into
/// nothing.
#[derive(Debug, Clone, Default)]
pub struct PodRouting {
    pub prefs: RoutePrefs,
    pub pod: Option<PodRouteTarget>,
}

/// What one pod's data plane last got from its netmap, so each netmap
/// change sends the engine only what changed.
pub struct PodSync {
    data: PodHandle,
    routing: PodRouting,
    /// The subnet routes last installed in the pod; `None` until the first
    /// success, so a failure is retried with the next netmap.
    last_subnets: Option<Vec<(IpAddr, u8)>>,
    last_derp: Option<Arc<DerpMap>>,
    /// The netmap last applied: the next one is compared with it, so a
    /// delta costs what it changed.
    last_map: Option<Arc<NetMap>>,
    /// The peer table last sent (shared with the engine).
    last_peers: Option<Arc<PeerTable>>,
    /// `None` while the pod enforces a filter remembered from before a
    /// restart: control's first filter is then sent whatever it is.
    last_filter: Option<Arc<CompiledRules>>,
    /// The table last sent, and the digest of the netmap it came from.
    last_dns: Option<(u64, Arc<DnsTable>)>,
    cache: &'static FilterCache,
    shared: &'static SharedConversions,
}

impl PodSync {
    /// Starts the pod closed: deny-all until control sends a filter. Peers'
    /// routes are installed as `routing` opts into them.
    pub async fn new(data: PodHandle, routing: PodRouting) -> Result<Self, EngineError> {
        Self::starting_with(data, routing, FilterBeforeNetmap::Closed).await
    }

    /// [`Self::new`] for a pod that may enforce a remembered filter until
    /// control sends one.
    pub async fn starting_with(
        data: PodHandle,
        routing: PodRouting,
        filter: FilterBeforeNetmap,
    ) -> Result<Self, EngineError> {
        let cache = FilterCache::global();
        let last_filter = match filter {
            FilterBeforeNetmap::Closed => {
                let closed = cache.compile(&[]);
                data.set_filter(closed.clone()).await?;
                Some(closed)
            }
            FilterBeforeNetmap::Remembered => None,
        };
        Ok(Self {
            data,
            routing,
            last_subnets: None,
            last_derp: None,
            last_map: None,
            last_peers: None,
            last_filter,
            last_dns: None,
            cache,
            shared: SharedConversions::global(),
        })
    }

    /// The peer table the engine last got.
    pub fn peer_table(&self) -> Option<&Arc<PeerTable>> {
        self.last_peers.as_ref()
    }

    /// Brings the data plane in line with `map`.
    pub async fn apply(&mut self, map: &Arc<NetMap>) -> Result<(), EngineError> {
        // Before peers, so a new peer never meets a stale filter. Rules
        // the last netmap shared are not looked up again.
        let same_rules = self
            .last_map
            .as_ref()
            .is_some_and(|last| same_filters(last, map));
        if !same_rules || self.last_filter.is_none() {
            let filter = filter_of(map, self.cache);
            if self
                .last_filter
                .as_ref()
                .is_none_or(|last| !Arc::ptr_eq(&filter, last))
            {
                debug!(rules = map.filter_rules().count(), "updating packet filter");
                self.data.set_filter(filter.clone()).await?;
                self.last_filter = Some(filter);
            }
        }
        if let Some(derp) = &map.derp_map {
            if self
                .last_derp
                .as_ref()
                .is_none_or(|last| !Arc::ptr_eq(last, derp))
            {
                self.data.set_derp_map(self.shared.derp_map(derp)).await?;
                self.last_derp = Some(derp.clone());
            }
        }
        // From the last netmap only what changed; the first is converted
        // whole.
        let (table, dns_inputs_changed, subnets_touched) = match (&self.last_map, &self.last_peers)
        {
            (Some(last), Some(table)) => {
                let change = self.shared.peer_delta(last, map, &self.routing.prefs);
                let delta = delta::effective(change.peers, table);
                let next = (!delta.is_empty()).then(|| Arc::new(table.apply(&delta)));
                let dns = dns_inputs_changed(last, map, change.names);
                (next, dns, change.subnets)
            }
            _ => {
                let peers = self.shared.peers_of(map, &self.routing.prefs);
                (Some(Arc::new(PeerTable::new(peers))), true, true)
            }
        };
        if dns_inputs_changed {
            self.update_dns(map).await?;
        }
        if let Some(table) = table {
            debug!(peers = table.len(), "updating data-plane peers");
            self.data.set_peer_table(table.clone()).await?;
            self.last_peers = Some(table);
        }
        self.last_map = Some(map.clone());
        if subnets_touched || self.last_subnets.is_none() {
            self.route_subnets(map).await;
        }
        Ok(())
    }

    /// Sends the pod's MagicDNS table when what it is made of changed.
    async fn update_dns(&mut self, map: &NetMap) -> Result<(), EngineError> {
        let digest = dns_inputs_digest(map);
        if self
            .last_dns
            .as_ref()
            .is_none_or(|(last, _)| *last != digest)
        {
            let dns = Arc::new(dns_table(map));
            if self.last_dns.as_ref().is_none_or(|(_, last)| *last != dns) {
                self.data.set_dns(dns.clone()).await?;
            }
            self.last_dns = Some((digest, dns));
        }
        Ok(())
    }

    /// Routes the pod's accepted subnet routes into its tailnet interface,
    /// after the engine has the peers they lead to. A pod that does not
    /// accept routes is never touched. Walks every peer: called only when
    /// a peer that offers such routes changed (or the last attempt
    /// failed).
    async fn route_subnets(&mut self, map: &NetMap) {
        let Some(pod) = self
            .routing
            .pod
            .as_ref()
            .filter(|_| self.routing.prefs.accept_routes)
        else {
            return;
        };
        let subnets = accepted_subnets(&self.routing.prefs, map.peers.values().map(|n| &**n));
        if self.last_subnets.as_ref() == Some(&subnets) {
            return;
        }
        match pod.apply(&subnets).await {
            Ok(()) => {
                debug!(
                    routes = subnets.len(),
                    "pod routes to subnet routes updated"
                );
                self.last_subnets = Some(subnets);
            }
            Err(error) => {
                warn!(%error, "cannot update the pod's routes to subnet routes; retrying with the next netmap");
                self.last_subnets = None;
            }
        }
    }
}

/// Whether what the MagicDNS table is made of changed from `old` to
/// `new`, given whether peers' `names` (or addresses, or the peers) did:
/// those count only while MagicDNS serves node names, as hashing every
/// peer's name costs each pod more than the rest of a delta.
fn dns_inputs_changed(old: &NetMap, new: &NetMap, names: bool) -> bool {
    let serves_names = new.dns.as_ref().is_some_and(|dns| dns.proxied);
    (names && serves_names)
        || !same_arc(old.self_node.as_ref(), new.self_node.as_ref())
        || !same_arc(old.dns.as_ref(), new.dns.as_ref())
        || old.domain != new.domain
}

/// Whether both netmaps hold the same filter rules (shared, so compared by
/// pointer).
fn same_filters(old: &NetMap, new: &NetMap) -> bool {
    old.filters.len() == new.filters.len()
        && old
            .filters
            .iter()
            .zip(&new.filters)
            .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
}

/// Whether both are the same allocation, or both absent.
fn same_arc<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// Runs until the session or the data plane goes away; the pod is closed
/// inbound until its first netmap.
pub async fn run(
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    reporter: EndpointReporter,
    data: PodHandle,
    routing: PodRouting,
) {
    let (applied, _) = watch::channel(false);
    run_from(
        netmap,
        reporter,
        data,
        routing,
        FilterBeforeNetmap::Closed,
        &applied,
    )
    .await
}

/// [`run`] for a pod that enforces `filter` until its first netmap; sets
/// `applied` once a netmap has been handed to the data plane.
pub async fn run_from(
    mut netmap: watch::Receiver<Option<Arc<NetMap>>>,
    reporter: EndpointReporter,
    data: PodHandle,
    routing: PodRouting,
    filter: FilterBeforeNetmap,
    applied: &watch::Sender<bool>,
) {
    let mut endpoints = data.endpoints();
    let Ok(mut sync) = PodSync::starting_with(data, routing, filter).await else {
        return;
    };
    // A first report that can wait for the endpoints to settle.
    let mut settling = first_report_settles(&reporter, &endpoints.borrow())
        .then(|| tokio::time::Instant::now() + ENDPOINT_DEBOUNCE);
    loop {
        let current = netmap.borrow_and_update().clone();
        if let Some(map) = current {
            if sync.apply(&map).await.is_err() {
                return;
            }
            applied.send_if_modified(|done| !std::mem::replace(done, true));
        }
        let now = tokio::time::Instant::now();
        if settling.is_none_or(|until| until <= now) {
            settling = None;
            let reported = endpoints.borrow_and_update().clone();
            reporter.report(reported.endpoints, reported.preferred_derp);
        }
        let settled = async {
            match settling {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = netmap.changed() => if changed.is_err() {
                warn!("control session ended; data plane keeps its last netmap");
                return;
            },
            changed = endpoints.changed() => {
                if changed.is_err() {
                    return;
                }
                // Endpoint changes come in bursts (one STUN answer per server,
                // interface changes): report the settled set once.
                tokio::time::sleep(ENDPOINT_DEBOUNCE).await;
            }
            () = settled => {}
        }
    }
}

/// Whether a pod's first endpoint report may wait for its endpoints to
/// settle: when control already has the relay the pod is reached through
/// (a pooled identity reported it while it waited), peers can reach the
/// pod now, and STUN's answer, moments away, would otherwise cost every
/// peer a second update.
fn first_report_settles(reporter: &EndpointReporter, endpoints: &PodEndpoints) -> bool {
    endpoints.preferred_derp.is_some() && reporter.reported_relay() == endpoints.preferred_derp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::json::from_slice;

    #[test]
    fn netmap_nodes_become_engine_peers() {
        let node: Node = from_slice(
            br#"{"ID": 1, "Key": "nodekey:0101010101010101010101010101010101010101010101010101010101010101",
                 "DiscoKey": "discokey:0202020202020202020202020202020202020202020202020202020202020202",
                 "Addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"], "AllowedIPs": null,
                 "Endpoints": ["127.0.0.1:41641"], "HomeDERP": 900}"#,
        )
        .unwrap();
        let peer = peer_config(&node, Grant::default()).unwrap();
        assert_eq!(peer.node_key, [1; 32]);
        assert_eq!(peer.disco_key, Some([2; 32]));
        assert_eq!(peer.allowed_ips.len(), 2);
        assert_eq!(peer.endpoints, vec!["127.0.0.1:41641".parse().unwrap()]);
        assert_eq!(peer.home_derp, Some(900));
    }

    #[test]
    fn pods_share_peer_and_derp_conversions() {
        use crate::control::netmap::Interner;
        use crate::control::tailcfg::MapResponse;
        let msg = |text: &str| -> MapResponse { from_slice(text.as_bytes()).unwrap() };
        let interner = Interner::default();
        let shared = SharedConversions::default();
        let full = r#"{"Peers": [{"ID": 1, "Key": "nodekey:0101010101010101010101010101010101010101010101010101010101010101",
                                  "Addresses": ["100.64.0.1/32"], "Endpoints": ["10.0.0.1:41641"]},
                                 {"ID": 2, "Key": "nodekey:0202020202020202020202020202020202020202020202020202020202020202",
                                  "Addresses": ["100.64.0.2/32"]}],
                       "DERPMap": {"Regions": {"900": {"RegionID": 900}}}}"#;
        let (mut a, mut b) = (NetMap::default(), NetMap::default());
        a.apply(msg(full), &interner);
        b.apply(msg(full), &interner);
        let (pa, pb) = (
            shared.peers_of(&a, &RoutePrefs::default()),
            shared.peers_of(&b, &RoutePrefs::default()),
        );
        assert_eq!(pa.len(), 2);
        assert!(pa.iter().zip(&pb).all(|(x, y)| Arc::ptr_eq(x, y)));
        let (da, db) = (a.derp_map.as_ref().unwrap(), b.derp_map.as_ref().unwrap());
        assert!(Arc::ptr_eq(&shared.derp_map(da), &shared.derp_map(db)));

        // A change the engine does not see keeps the conversion.
        b.apply(msg(r#"{"OnlineChange": {"1": true}}"#), &interner);
        let pb = shared.peers_of(&b, &RoutePrefs::default());
        assert!(!Arc::ptr_eq(&a.peers[&1], &b.peers[&1]));
        assert!(Arc::ptr_eq(&pa[0], &pb[0]));
        let table = |peers: &[Arc<PeerConfig>]| PeerTable::new(peers.to_vec());
        assert!(table(&pa).same_peers(&table(&pb)));

        // New endpoints make a new config, for that pod only.
        b.apply(
            msg(r#"{"PeersChangedPatch": [{"NodeID": 1, "Endpoints": ["10.0.0.9:41641"]}]}"#),
            &interner,
        );
        let pb = shared.peers_of(&b, &RoutePrefs::default());
        assert_eq!(pb[0].endpoints, vec!["10.0.0.9:41641".parse().unwrap()]);
        assert_eq!(pa[0].endpoints, vec!["10.0.0.1:41641".parse().unwrap()]);
        assert!(!table(&pa).same_peers(&table(&pb)));
        assert!(Arc::ptr_eq(&pa[1], &pb[1]));
    }

    #[test]
    fn pods_install_a_routers_routes_only_as_they_opted_in() {
        use crate::control::netmap::Interner;
        use crate::control::tailcfg::MapResponse;
        use crate::podmgr::peer_routes::ExitNode;
        let map: MapResponse = from_slice(
            br#"{"Peers": [{"ID": 1, "StableID": "nRouter", "Key": "nodekey:0101010101010101010101010101010101010101010101010101010101010101",
                            "Addresses": ["100.64.0.1/32"],
                            "AllowedIPs": ["100.64.0.1/32", "10.99.0.0/24", "0.0.0.0/0"]},
                           {"ID": 2, "Key": "nodekey:0202020202020202020202020202020202020202020202020202020202020202",
                            "Addresses": ["100.64.0.2/32"]}]}"#,
        )
        .unwrap();
        let interner = Interner::default();
        let mut netmap = NetMap::default();
        netmap.apply(map, &interner);
        let shared = SharedConversions::default();
        let plain = shared.peers_of(&netmap, &RoutePrefs::default());
        let accepting = shared.peers_of(
            &netmap,
            &RoutePrefs {
                accept_routes: true,
                exit_node: None,
            },
        );
        let exiting = shared.peers_of(
            &netmap,
            &RoutePrefs {
                accept_routes: false,
                exit_node: ExitNode::parse("nRouter"),
            },
        );
        let prefix = |s: &str| crate::control::tailcfg::parse_prefix(s).unwrap();
        assert_eq!(plain[0].allowed_ips, vec![prefix("100.64.0.1/32")]);
        assert_eq!(
            accepting[0].allowed_ips,
            vec![prefix("100.64.0.1/32"), prefix("10.99.0.0/24")]
        );
        assert_eq!(
            exiting[0].allowed_ips,
            vec![prefix("100.64.0.1/32"), prefix("0.0.0.0/0")]
        );
        // The peer without routes is one shared conversion for all three.
        assert!(Arc::ptr_eq(&plain[1], &accepting[1]) && Arc::ptr_eq(&plain[1], &exiting[1]));
        // Pods with the same grant share the router's conversion too.
        let again = shared.peers_of(&netmap, &RoutePrefs::default());
        assert!(Arc::ptr_eq(&plain[0], &again[0]));
    }

    #[test]
    fn peer_names_matter_to_dns_only_while_it_serves_them() {
        use crate::control::netmap::Interner;
        use crate::control::tailcfg::MapResponse;
        let interner = Interner::default();
        let mut map = NetMap::default();
        let dns_config = |proxied: bool| -> MapResponse {
            let text =
                format!(r#"{{"DNSConfig": {{"Proxied": {proxied}}}, "Domain": "tailnet."}}"#);
            from_slice(text.as_bytes()).unwrap()
        };
        map.apply(dns_config(false), &interner);
        assert!(!dns_inputs_changed(&map.clone(), &map, true));
        let old = map.clone();
        map.apply(dns_config(true), &interner);
        assert!(
            dns_inputs_changed(&old, &map, false),
            "the DNS settings changed"
        );
        assert!(dns_inputs_changed(&map.clone(), &map, true));
        assert!(!dns_inputs_changed(&map.clone(), &map, false));
    }

    #[test]
    fn unusable_nodes_are_left_out() {
        let no_key: Node = from_slice(br#"{"ID": 2, "Addresses": ["100.64.0.2/32"]}"#).unwrap();
        assert!(peer_config(&no_key, Grant::default()).is_none());
        let expired: Node = from_slice(
            br#"{"ID": 3, "Key": "nodekey:0303030303030303030303030303030303030303030303030303030303030303", "Expired": true}"#,
        )
        .unwrap();
        assert!(peer_config(&expired, Grant::default()).is_none());
    }

    #[test]
    fn derp_map_converts_with_families_and_ports() {
        let map: DerpMap = from_slice(
            br#"{"Regions": {"901": {"RegionID": 901, "Nodes": [{"Name": "b", "HostName": "h", "IPv4": "none", "IPv6": "none"}]},
                             "900": {"RegionID": 900, "Nodes": [{"Name": "a", "HostName": "localhost", "IPv4": "127.0.0.1",
                                      "IPv6": "none", "DERPPort": 18080, "STUNPort": -1, "InsecureForTests": true}]},
                             "902": {"RegionID": 902, "Avoid": true}}}"#,
        )
        .unwrap();
        let regions = derp_regions(&map);
        assert_eq!(
            regions.iter().map(|r| r.region_id).collect::<Vec<_>>(),
            vec![900, 901]
        );
        let node = &regions[0].nodes[0];
        assert_eq!(node.ipv4, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(node.ipv6, None);
        assert_eq!(node.derp_port, 18080);
        assert_eq!(node.stun_port, 0);
        assert!(node.insecure_for_tests && !node.plain_http);
    }
}
