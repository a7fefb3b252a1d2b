use std::net::{IpAddr, SocketAddr};

use super::is_service_addr;
use super::table::{Decision, DnsTable, RouteTarget};

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn table() -> DnsTable {
    let mut t = DnsTable::default();
    let domain = "tailnet.test";
    t.add_name(
        "Peer.Tailnet.Test.",
        ips(&["100.64.0.2", "fd7a:115c:a1e0::2"]),
        domain,
    );
    t.add_name("me.tailnet.test.", ips(&["100.64.0.1"]), domain);
    // A shared-in node: its name is not under the tailnet's domain.
    t.add_name("guest.other.test.", ips(&["100.64.0.9"]), domain);
    t.add_local_suffix("tailnet.test.");
    t.add_route(
        "corp.example.",
        RouteTarget::Upstreams(vec!["127.0.0.1:5353".parse().unwrap()]),
    );
    t.add_route("sub.tailnet.test", RouteTarget::Unusable);
    t
}

#[test]
fn netmap_names_answer_by_full_and_short_name() {
    let t = table();
    let peer = Decision::Answer(ips(&["100.64.0.2", "fd7a:115c:a1e0::2"]));
    assert_eq!(t.decide("peer.tailnet.test"), peer);
    assert_eq!(t.decide("peer"), peer);
    assert_eq!(t.decide("me"), Decision::Answer(ips(&["100.64.0.1"])));
    // Only names under the tailnet's domain get a short form.
    assert_eq!(t.decide("guest"), Decision::ForwardDefault);
    assert_eq!(
        t.decide("guest.other.test"),
        Decision::Answer(ips(&["100.64.0.9"]))
    );
}

#[test]
fn unknown_names_under_the_tailnet_domain_do_not_exist() {
    let t = table();
    assert_eq!(t.decide("hidden.tailnet.test"), Decision::NxDomain);
    assert_eq!(t.decide("tailnet.test"), Decision::NxDomain);
    assert_eq!(t.decide("a.b.tailnet.test"), Decision::NxDomain);
    // A suffix match is a label match, not a string match.
    assert_eq!(t.decide("xtailnet.test"), Decision::ForwardDefault);
}

#[test]
fn split_dns_routes_forward_and_the_longest_suffix_wins() {
    let t = table();
    let corp: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    assert_eq!(t.decide("db.corp.example"), Decision::Forward(vec![corp]));
    assert_eq!(t.decide("corp.example"), Decision::Forward(vec![corp]));
    // A route below the tailnet's domain beats the shorter local suffix.
    assert_eq!(t.decide("x.sub.tailnet.test"), Decision::Fail);
    assert_eq!(
        t.decide("kube-dns.kube-system.svc.cluster.local"),
        Decision::ForwardDefault
    );
}

#[test]
fn an_empty_table_forwards_everything() {
    let t = DnsTable::default();
    assert!(t.is_empty());
    assert_eq!(t.decide("peer.tailnet.test"), Decision::ForwardDefault);
    assert!(!table().is_empty());
}

#[test]
fn the_service_addresses_are_the_magicdns_ones() {
    assert!(is_service_addr("100.100.100.100".parse().unwrap()));
    assert!(is_service_addr("fd7a:115c:a1e0::53".parse().unwrap()));
    assert!(!is_service_addr("100.100.100.101".parse().unwrap()));
    assert!(!is_service_addr("fd7a:115c:a1e0::54".parse().unwrap()));
}
