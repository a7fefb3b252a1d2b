//! Keeps one pod's data plane in step with its control session: netmap
//! changes become engine peer, DERP and packet-filter updates, engine
//! endpoint changes are reported to control.
//!
//! Packet filter, as Tailscale's client does it: until control sends a
//! filter the pod accepts no unsolicited inbound traffic (deny-all is set
//! before the pod gets any peer), and an explicit empty filter means the
//! same. Replies to the pod's own connections always pass.

use std::sync::Arc;
use std::time::Duration;

use tailnet_wire::filter::CompiledRules;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::filters::FilterCache;
use crate::control::keys::{DiscoPublic, NodePublic};
use crate::control::tailcfg::{DerpMap, Node};
use crate::control::{EndpointReporter, NetMap};
use crate::wg::{DerpNodeConfig, DerpRegionConfig, PeerConfig, PodHandle};

/// How long endpoint changes settle before they are sent to control.
const ENDPOINT_DEBOUNCE: Duration = Duration::from_millis(250);

/// A netmap peer as the engine needs it; `None` for records it cannot use
/// (no valid node key, expired).
pub fn peer_config(node: &Node) -> Option<PeerConfig> {
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
        allowed_ips: node.allowed_prefixes(),
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

fn peers_of(map: &NetMap) -> Vec<PeerConfig> {
    map.peers.values().filter_map(|n| peer_config(n)).collect()
}

/// Every rule of every named filter in the netmap, compiled (shared with
/// other pods that got the same rules).
pub fn filter_of(map: &NetMap, cache: &FilterCache) -> Arc<CompiledRules> {
    let rules: Vec<_> = map.filter_rules().collect();
    cache.compile(&rules)
}

/// Runs until the session or the data plane goes away.
pub async fn run(
    mut netmap: watch::Receiver<Option<Arc<NetMap>>>,
    reporter: EndpointReporter,
    data: PodHandle,
) {
    let mut endpoints = data.endpoints();
    let mut last_derp: Option<Arc<DerpMap>> = None;
    let mut last_peers: Option<Vec<PeerConfig>> = None;
    let cache = FilterCache::global();
    // Closed until control says otherwise.
    let mut last_filter = cache.compile(&[]);
    if data.set_filter(last_filter.clone()).await.is_err() {
        return;
    }
    loop {
        let current = netmap.borrow_and_update().clone();
        if let Some(map) = current {
            // Before peers, so a new peer never meets a stale filter.
            let filter = filter_of(&map, cache);
            if !Arc::ptr_eq(&filter, &last_filter) {
                debug!(rules = map.filter_rules().count(), "updating packet filter");
                if data.set_filter(filter.clone()).await.is_err() {
                    return;
                }
                last_filter = filter;
            }
            if let Some(derp) = &map.derp_map {
                if last_derp
                    .as_ref()
                    .is_none_or(|last| !Arc::ptr_eq(last, derp))
                {
                    if data
                        .set_derp_map(Arc::new(derp_regions(derp)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last_derp = Some(derp.clone());
                }
            }
            let peers = peers_of(&map);
            if last_peers.as_ref() != Some(&peers) {
                debug!(peers = peers.len(), "updating data-plane peers");
                if data.set_peers(peers.clone()).await.is_err() {
                    return;
                }
                last_peers = Some(peers);
            }
        }
        let reported = endpoints.borrow_and_update().clone();
        reporter.report(reported.endpoints, reported.preferred_derp);
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
        }
    }
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
        let peer = peer_config(&node).unwrap();
        assert_eq!(peer.node_key, [1; 32]);
        assert_eq!(peer.disco_key, Some([2; 32]));
        assert_eq!(peer.allowed_ips.len(), 2);
        assert_eq!(peer.endpoints, vec!["127.0.0.1:41641".parse().unwrap()]);
        assert_eq!(peer.home_derp, Some(900));
    }

    #[test]
    fn unusable_nodes_are_left_out() {
        let no_key: Node = from_slice(br#"{"ID": 2, "Addresses": ["100.64.0.2/32"]}"#).unwrap();
        assert!(peer_config(&no_key).is_none());
        let expired: Node = from_slice(
            br#"{"ID": 3, "Key": "nodekey:0303030303030303030303030303030303030303030303030303030303030303", "Expired": true}"#,
        )
        .unwrap();
        assert!(peer_config(&expired).is_none());
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
