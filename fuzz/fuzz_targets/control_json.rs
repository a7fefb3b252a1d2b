//! Control-server JSON, decoded the way the daemon does (Go-style key
//! normalisation, then the tailcfg types) and applied to a netmap.
//!
//! The input is a sequence of messages separated by 0xff (never valid in
//! JSON text): each is decoded as a MapResponse and applied in order, and
//! also as a RegisterResponse and a /key answer.
//!
//! Asserts: no panic; the netmap stays keyed by node ID; derived values
//! (prefixes, home region, self addresses) are well formed; re-applying a
//! message that only carries the self node and DERP map reports no change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailnet_cni_fuzz::pieces;
use tailnet_cnid::control::json;
use tailnet_cnid::control::netmap::{Interner, NetMap, SelfNode};
use tailnet_cnid::control::tailcfg::{
    parse_prefix, KeyResponse, MapResponse, Node, RegisterResponse,
};

fn check_node(node: &Node) {
    for (ip, len) in node.allowed_prefixes() {
        assert!(len <= if ip.is_ipv4() { 32 } else { 128 });
    }
    if let Some(region) = node.home_derp() {
        if node.homederp > 0 {
            assert_eq!(i64::from(region), node.homederp);
        }
    }
    assert!(node.endpoint_addrs().len() <= node.endpoints.len());
    let me = SelfNode::from_node(node);
    assert_eq!(me.id, node.id);
    if let Some(v4) = me.ipv4 {
        assert!(node
            .addresses
            .iter()
            .any(|a| parse_prefix(a).is_some_and(|(ip, _)| ip == v4)));
    }
}

fn check_map(map: &NetMap) {
    for (id, peer) in map.peers.iter() {
        assert_eq!(*id, peer.id, "peer filed under another node's ID");
        check_node(peer);
    }
    if let Some(node) = &map.self_node {
        check_node(node);
    }
    let _ = map.filter_rules().count();
}

fuzz_target!(|data: &[u8]| {
    let interner = Interner::default();
    let mut map = NetMap::default();
    for message in pieces(data, 0xff).take(16) {
        let _ = json::from_slice::<RegisterResponse>(message);
        if let Ok(key) = json::from_slice::<KeyResponse>(message) {
            let _ = tailnet_cnid::control::keys::MachinePublic::parse(&key.publickey);
        }
        let Ok(msg) = json::from_slice::<MapResponse>(message) else {
            continue;
        };
        if msg.is_keep_alive_only() {
            // The session drops these unapplied.
            continue;
        }
        // A message with only a full self node and DERP map is idempotent.
        let replay = (msg.peerschangedpatch.is_none()
            && msg.peers.is_none()
            && msg.peerschanged.is_none()
            && msg.peersremoved.is_none()
            && msg.onlinechange.is_none()
            && msg.packetfilter.is_none()
            && msg.packetfilters.is_none())
        .then(|| msg.clone());
        map.apply(msg, &interner);
        check_map(&map);
        if let Some(again) = replay {
            let change = map.apply(again, &interner);
            assert!(
                !change.self_node && !change.derp_map,
                "replay changed the map"
            );
        }
    }
});
