//! The history is complete, and the netmap features the advertised
//! version implies are handled (or their fields ignored) as it says.

use std::sync::Arc;

use super::*;
use crate::control::json::from_slice;
use crate::control::netmap::{Interner, NetMap};
use crate::control::tailcfg::MapResponse;

fn apply(map: &mut NetMap, text: &str) -> crate::control::netmap::Change {
    let msg: MapResponse = from_slice(text.as_bytes()).expect("a map response");
    map.apply(msg, &Interner::default())
}

#[test]
fn every_version_up_to_the_advertised_one_is_accounted_for() {
    let expected: Vec<u16> = (FIRST..=CAPABILITY_VERSION)
        .filter(|v| !UNASSIGNED.contains(v))
        .collect();
    let listed: Vec<u16> = PROMISES.iter().map(|p| p.version).collect();
    assert_eq!(listed, expected, "one entry per version, in order, no gap");
    for p in PROMISES {
        let said = match p.stance {
            Stance::Honoured(how) => how,
            Stance::NotApplicable(why) => why,
            Stance::NotKept(instead) => instead,
        };
        assert!(!p.promise.is_empty() && !said.is_empty(), "{}", p.version);
    }
    assert_eq!(promise(35), None);
    let gaps: Vec<u16> = unkept().map(|p| p.version).collect();
    assert_eq!(gaps, vec![12, 31, 38, 40, 51, 60, 64, 115]);
    assert!(matches!(
        promise(112).map(|p| p.stance),
        Some(Stance::Honoured(_))
    ));
}

/// A full map as control sends it to a current client.
const FULL: &str = r#"{
    "Node": {"ID": 1, "Name": "me.tailnet.test.", "Addresses": ["100.64.0.1/32"]},
    "Domain": "tailnet.test",
    "DNSConfig": {"Proxied": true, "Domains": ["tailnet.test"]},
    "Peers": [{"ID": 2, "Key": "nodekey:0202020202020202020202020202020202020202020202020202020202020202",
               "Addresses": ["100.64.0.2/32"], "AllowedIPs": null, "HomeDERP": 900, "Online": false}],
    "PacketFilter": [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]
}"#;

#[test]
fn absent_fields_mean_unchanged_as_versions_6_15_17_18_promise() {
    let mut map = NetMap::default();
    apply(&mut map, FULL);
    let before = (
        map.self_node.clone(),
        map.filters.clone(),
        map.dns.clone(),
        map.domain.clone(),
    );
    // A delta with none of them (and an empty Domain) changes none of them.
    let change = apply(
        &mut map,
        r#"{"Domain": "", "PeersChangedPatch": [{"NodeID": 2, "Online": true}]}"#,
    );
    assert!(change.peers && !change.self_node && !change.filter && !change.dns);
    assert_eq!(map.self_node, before.0);
    assert_eq!(map.filters, before.1);
    assert!(Arc::ptr_eq(
        map.dns.as_ref().expect("kept"),
        before.2.as_ref().expect("sent")
    ));
    assert_eq!(map.domain, before.3);
}

#[test]
fn peer_fields_of_versions_16_33_36_53_111_112_are_applied() {
    let mut map = NetMap::default();
    apply(&mut map, FULL);
    let peer = &map.peers[&2];
    assert_eq!(peer.home_derp(), Some(900), "111: HomeDERP");
    assert_eq!(peer.allowed_prefixes().len(), 1, "112: null AllowedIPs");
    apply(&mut map, r#"{"OnlineChange": {"2": true}}"#);
    assert_eq!(map.peers[&2].online, Some(true), "16: OnlineChange");
    apply(
        &mut map,
        r#"{"PeersChangedPatch": [{"NodeID": 2, "DERPRegion": 901, "Endpoints": ["127.0.0.1:41641"],
            "DiscoKey": "discokey:0303030303030303030303030303030303030303030303030303030303030303",
            "KeyExpiry": "2030-01-01T00:00:00Z"}]}"#,
    );
    let peer = &map.peers[&2];
    assert_eq!(peer.home_derp(), Some(901), "33: DERPRegion");
    assert_eq!(peer.endpoints, vec!["127.0.0.1:41641"], "33: Endpoints");
    assert!(peer.discokey.ends_with("0303"), "36: DiscoKey");
    assert_eq!(peer.keyexpiry, "2030-01-01T00:00:00Z", "36: KeyExpiry");
    apply(
        &mut map,
        r#"{"PeersChanged": [{"ID": 2, "Key": "nodekey:0202020202020202020202020202020202020202020202020202020202020202", "Expired": true}]}"#,
    );
    assert!(
        crate::podmgr::sync::peer_config(&map.peers[&2], Default::default()).is_none(),
        "53: an expired peer is not given to the data plane"
    );
}

#[test]
fn named_filters_of_version_81_replace_and_delete() {
    let mut map = NetMap::default();
    apply(&mut map, FULL);
    apply(
        &mut map,
        r#"{"PacketFilters": {"extra": [{"SrcIPs": ["100.64.0.9"]}]}}"#,
    );
    assert_eq!(map.filters.len(), 2);
    apply(&mut map, r#"{"PacketFilters": {"*": null}}"#);
    assert!(map.filters.is_empty());
}

#[test]
fn fields_of_features_pods_lack_are_ignored_without_effect() {
    let mut map = NetMap::default();
    apply(&mut map, FULL);
    let peers = map.peers.clone();
    // 12 PingRequest, 19/70 Debug, 24 Health, 27 SSHPolicy, 29 PopBrowserURL,
    // 44 ControlDialPlan, 73 ClientVersion: decoded, changing nothing.
    let change = apply(
        &mut map,
        r#"{"PingRequest": {"URL": "https://example.invalid/ping"}, "Debug": {"SleepSeconds": 5},
            "Health": ["x"], "SSHPolicy": {"Rules": []}, "PopBrowserURL": "https://example.invalid",
            "ControlDialPlan": {"Candidates": []}, "ClientVersion": {"RunningLatest": true}}"#,
    );
    assert!(!change.any());
    assert_eq!(map.peers, peers);
}

#[test]
fn capability_grants_of_versions_32_and_109_grant_no_packets() {
    let rules: Vec<crate::control::tailcfg::FilterRule> = from_slice(
        br#"[{"SrcIPs": ["*"], "CapGrant": [{"Dsts": ["100.64.0.1/32"], "Caps": ["https://tailscale.com/cap/x"]}]},
            {"SrcIPs": ["*"], "SrcCaps": ["https://tailscale.com/cap/y"]}]"#,
    )
    .expect("rules");
    let refs: Vec<_> = rules.iter().collect();
    let (converted, _) = crate::podmgr::filters::convert(&refs);
    assert_eq!(converted.len(), 2);
    assert!(
        converted.iter().all(|rule| rule.dst_ports.is_empty()),
        "capability-only rules open no destination: {converted:?}"
    );
}
