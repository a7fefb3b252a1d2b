//! A pod's netmap as its MagicDNS table: the names of the nodes it can
//! see (so the tailnet's ACLs decide what resolves), the tailnet's domain
//! as a suffix the resolver owns, control's extra records and split-DNS
//! routes.
//!
//! Control's global nameservers are not used: a pod's default upstream
//! stays the cluster DNS, so cluster names keep resolving.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::config::Config;
use crate::control::tailcfg::{parse_prefix, DnsConfig, DnsResolver, Node};
use crate::control::NetMap;
use crate::wg::{DnsSettings, DnsTable, RouteTarget};

/// Port of a resolver given without one.
const DEFAULT_DNS_PORT: u16 = 53;
/// Where the default upstream is read from when none is configured.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A digest of what [`dns_table`] reads from `map`: names, addresses, the
/// domain and the DNS configuration. Peer records change far more often
/// than names (endpoints, online state), and hashing is much cheaper than
/// building a table per pod on every change.
pub fn dns_inputs_digest(map: &NetMap) -> u64 {
    let mut hasher = DefaultHasher::new();
    map.domain.hash(&mut hasher);
    map.dns.hash(&mut hasher);
    for node in map.self_node.iter().chain(map.peers.values()) {
        node.name.hash(&mut hasher);
        node.addresses.hash(&mut hasher);
    }
    hasher.finish()
}

/// The MagicDNS table for `map`. Without a DNS configuration, or with
/// MagicDNS off, node names are left out and only routes apply.
pub fn dns_table(map: &NetMap) -> DnsTable {
    let mut table = DnsTable::default();
    let Some(dns) = map.dns.as_deref() else {
        return table;
    };
    if dns.proxied {
        add_node_names(&mut table, map);
        if is_dns_name(&map.domain) {
            table.add_local_suffix(&map.domain);
        }
    }
    add_extra_records(&mut table, dns, &map.domain);
    add_routes(&mut table, dns);
    table
}

fn add_node_names(table: &mut DnsTable, map: &NetMap) {
    let nodes = map.self_node.iter().chain(map.peers.values());
    for node in nodes.filter(|n| !n.name.is_empty()) {
        table.add_name(&node.name, host_addresses(node), &map.domain);
    }
}

/// The node's own addresses (single-host prefixes), not routes it serves.
fn host_addresses(node: &Node) -> Vec<IpAddr> {
    node.addresses
        .iter()
        .filter_map(|a| parse_prefix(a))
        .filter(|(ip, len)| *len == if ip.is_ipv4() { 32 } else { 128 })
        .map(|(ip, _)| ip)
        .collect()
}

fn add_extra_records(table: &mut DnsTable, dns: &DnsConfig, domain: &str) {
    for record in &dns.extrarecords {
        let Ok(ip) = record.value.parse::<IpAddr>() else {
            debug!(name = %record.name, "skipping an extra DNS record that is not an address");
            continue;
        };
        let fits = match record.record_type.as_str() {
            "" => true,
            "A" => ip.is_ipv4(),
            "AAAA" => ip.is_ipv6(),
            _ => false,
        };
        if fits {
            table.add_name(&record.name, vec![ip], domain);
        }
    }
}

fn add_routes(table: &mut DnsTable, dns: &DnsConfig) {
    for (suffix, resolvers) in &dns.routes {
        let resolvers = resolvers.as_deref().unwrap_or_default();
        if resolvers.is_empty() {
            table.add_local_suffix(suffix);
            continue;
        }
        let usable: Vec<SocketAddr> = resolvers.iter().filter_map(plain_resolver).collect();
        if usable.is_empty() {
            debug!(%suffix, "no plain-DNS resolver for this route; its names will fail");
            table.add_route(suffix, RouteTarget::Unusable);
        } else {
            table.add_route(suffix, RouteTarget::Upstreams(usable));
        }
    }
}

/// A resolver spoken to over plain UDP: "ip", "ip:port" or "[ip6]:port".
/// DoH and DoT URLs are not.
fn plain_resolver(resolver: &DnsResolver) -> Option<SocketAddr> {
    let addr = resolver.addr.as_str();
    addr.parse::<SocketAddr>().ok().or_else(|| {
        addr.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, DEFAULT_DNS_PORT))
    })
}

/// The engine's DNS settings from the daemon's configuration; without a
/// configured upstream, the first nameserver of `/etc/resolv.conf`.
pub fn dns_settings(config: &Config) -> DnsSettings {
    let upstream = config.dns_upstream.or_else(|| {
        std::fs::read_to_string(RESOLV_CONF)
            .ok()
            .and_then(|text| resolv_conf_nameserver(&text))
    });
    match upstream {
        Some(upstream) => info!(%upstream, "MagicDNS forwards other names to this upstream"),
        None => warn!(
            "no DNS upstream configured or in {RESOLV_CONF}; pods' non-tailnet names will fail"
        ),
    }
    DnsSettings {
        upstream,
        timeout: Duration::from_millis(config.dns_timeout_ms),
        max_in_flight: config.dns_max_in_flight,
    }
}

/// The first nameserver of a resolv.conf: the cluster DNS when the daemon
/// runs with `dnsPolicy: ClusterFirstWithHostNet`.
pub fn resolv_conf_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        // A link-local IPv6 nameserver may carry a zone: not usable here.
        .find_map(|addr| addr.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, DEFAULT_DNS_PORT))
}

/// Whether `text` can be a DNS suffix (rscale falls back to its URL's
/// host and port when no base domain is set).
fn is_dns_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::json::from_slice;
    use crate::control::netmap::Interner;
    use crate::control::tailcfg::MapResponse;
    use crate::wg::engine::DnsDecision as D;

    /// The addresses `name` answers with, if the table owns it.
    fn decide(table: &DnsTable, name: &str) -> Option<Vec<IpAddr>> {
        match table.decide(name) {
            D::Answer(addrs) => Some(addrs),
            _ => None,
        }
    }

    fn netmap(text: &str) -> NetMap {
        let mut map = NetMap::default();
        let msg: MapResponse = from_slice(text.as_bytes()).unwrap();
        map.apply(msg, &Interner::default());
        map
    }

    const RSCALE: &str = r#"{
        "Domain": "tailnet.test",
        "DNSConfig": {"Resolvers": [{"Addr": "1.1.1.1"}], "Domains": [], "Proxied": true,
                      "Routes": {"corp.example.": [{"Addr": "127.0.0.1:5353"}, {"Addr": "https://doh.example/q"}],
                                 "doh.example.": [{"Addr": "https://doh.example/q"}],
                                 "local.test.": null},
                      "ExtraRecords": [{"Name": "db.tailnet.test.", "Type": "A", "Value": "100.64.9.9"},
                                       {"Name": "bad.tailnet.test.", "Type": "AAAA", "Value": "100.64.9.8"}]},
        "Node": {"ID": 1, "Name": "me.tailnet.test.", "Addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]},
        "Peers": [{"ID": 2, "Name": "peer.tailnet.test.", "Key": "k",
                   "Addresses": ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
                   "AllowedIPs": ["100.64.0.2/32", "fd7a:115c:a1e0::2/128", "10.0.0.0/8"]}]
    }"#;

    #[test]
    fn peers_self_and_extra_records_resolve() {
        let table = dns_table(&netmap(RSCALE));
        let peer: Vec<IpAddr> = vec![
            "100.64.0.2".parse().unwrap(),
            "fd7a:115c:a1e0::2".parse().unwrap(),
        ];
        assert_eq!(decide(&table, "peer.tailnet.test"), Some(peer.clone()));
        assert_eq!(decide(&table, "peer"), Some(peer), "short name");
        assert_eq!(decide(&table, "me").map(|a| a.len()), Some(2));
        assert_eq!(
            decide(&table, "db.tailnet.test"),
            Some(vec!["100.64.9.9".parse().unwrap()])
        );
        // A record whose type and value disagree is left out.
        assert_eq!(decide(&table, "bad.tailnet.test"), None);
    }

    #[test]
    fn routes_and_the_tailnet_domain_are_honoured() {
        let table = dns_table(&netmap(RSCALE));
        assert_eq!(table.decide("hidden.tailnet.test"), D::NxDomain);
        assert_eq!(table.decide("x.local.test"), D::NxDomain);
        assert_eq!(
            table.decide("db.corp.example"),
            D::Forward(vec!["127.0.0.1:5353".parse().unwrap()]),
            "plain resolvers kept, DoH left out"
        );
        assert_eq!(table.decide("x.doh.example"), D::Fail);
        // Control's global resolvers are not the pods' upstream.
        assert_eq!(table.decide("svc.cluster.local"), D::ForwardDefault);
    }

    #[test]
    fn magicdns_off_or_absent_answers_no_node_names() {
        let off = RSCALE.replace(r#""Proxied": true"#, r#""Proxied": false"#);
        let table = dns_table(&netmap(&off));
        assert_eq!(decide(&table, "peer.tailnet.test"), None);
        assert_eq!(table.decide("hidden.tailnet.test"), D::ForwardDefault);
        let none = netmap(
            r#"{"Peers": [{"ID": 2, "Name": "peer.tailnet.test.", "Addresses": ["100.64.0.2/32"]}]}"#,
        );
        assert!(dns_table(&none).is_empty());
    }

    #[test]
    fn the_digest_follows_names_not_endpoints() {
        let interner = Interner::default();
        let mut map = NetMap::default();
        let apply = |map: &mut NetMap, text: &str| {
            let msg: MapResponse = from_slice(text.as_bytes()).unwrap();
            map.apply(msg, &interner);
        };
        apply(&mut map, RSCALE);
        let first = dns_inputs_digest(&map);
        apply(
            &mut map,
            r#"{"PeersChangedPatch": [{"NodeID": 2, "Endpoints": ["127.0.0.1:9"]}], "OnlineChange": {"2": true}}"#,
        );
        assert_eq!(dns_inputs_digest(&map), first);
        apply(
            &mut map,
            r#"{"PeersChanged": [{"ID": 2, "Name": "renamed.tailnet.test.", "Addresses": ["100.64.0.2/32"]}]}"#,
        );
        let renamed = dns_inputs_digest(&map);
        assert_ne!(renamed, first);
        apply(&mut map, r#"{"DNSConfig": {"Proxied": false}}"#);
        assert_ne!(dns_inputs_digest(&map), renamed);
    }

    #[test]
    fn resolvers_parse_with_and_without_ports() {
        let r = |addr: &str| {
            plain_resolver(&DnsResolver {
                addr: addr.to_string(),
            })
        };
        assert_eq!(r("10.43.0.10"), Some("10.43.0.10:53".parse().unwrap()));
        assert_eq!(
            r("10.43.0.10:5353"),
            Some("10.43.0.10:5353".parse().unwrap())
        );
        assert_eq!(r("fd00::1"), Some("[fd00::1]:53".parse().unwrap()));
        assert_eq!(r("[fd00::1]:54"), Some("[fd00::1]:54".parse().unwrap()));
        assert_eq!(r("https://dns.example/dns-query"), None);
        assert!(!is_dns_name("127.0.0.1:18080"));
    }

    #[test]
    fn the_default_upstream_is_the_first_usable_nameserver() {
        let conf = "# generated\nsearch default.svc.cluster.local svc.cluster.local\n\
                    nameserver fe80::1%eth0\nnameserver 10.43.0.10\nnameserver 10.43.0.11\noptions ndots:5\n";
        assert_eq!(
            resolv_conf_nameserver(conf),
            Some("10.43.0.10:53".parse().unwrap())
        );
        assert_eq!(resolv_conf_nameserver("search x\n"), None);
        assert!(is_dns_name("tailnet.test"));
    }
}
