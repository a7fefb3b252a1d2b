use super::*;
use crate::control::json::from_slice;

/// A peer that is subnet router for 10.99.0.0/24 and fd00:99::/64 and an
/// approved exit node, as rscale sends it.
const ROUTER: &[u8] = br#"{"ID": 7, "StableID": "nStable7", "Name": "edge-router.tail.example.",
    "Key": "nodekey:0707070707070707070707070707070707070707070707070707070707070707",
    "Addresses": ["100.64.0.7/32", "fd7a:115c:a1e0::7/128"],
    "AllowedIPs": ["100.64.0.7/32", "fd7a:115c:a1e0::7/128", "10.99.0.0/24", "fd00:99::/64", "0.0.0.0/0", "::/0"],
    "PrimaryRoutes": ["10.99.0.0/24", "fd00:99::/64", "0.0.0.0/0", "::/0"]}"#;

const PLAIN: &[u8] = br#"{"ID": 8, "StableID": "nStable8", "Name": "laptop.tail.example.",
    "Key": "nodekey:0808080808080808080808080808080808080808080808080808080808080808",
    "Addresses": ["100.64.0.8/32"], "AllowedIPs": null}"#;

fn node(json: &[u8]) -> Node {
    from_slice(json).unwrap()
}

fn prefix(text: &str) -> (IpAddr, u8) {
    crate::control::tailcfg::parse_prefix(text).unwrap()
}

fn prefixes(texts: &[&str]) -> Vec<(IpAddr, u8)> {
    texts.iter().map(|t| prefix(t)).collect()
}

fn prefs(accept_routes: bool, exit_node: &str) -> RoutePrefs {
    RoutePrefs {
        accept_routes,
        exit_node: ExitNode::parse(exit_node),
    }
}

#[test]
fn by_default_only_the_peers_own_addresses_are_installed() {
    let router = node(ROUTER);
    let grant = RoutePrefs::default().grant_for(&router);
    assert_eq!(grant, Grant::default());
    assert_eq!(
        installed(&router, grant),
        prefixes(&["100.64.0.7/32", "fd7a:115c:a1e0::7/128"])
    );
}

#[test]
fn accepting_routes_adds_subnet_routes_but_never_exit_routes() {
    let router = node(ROUTER);
    let grant = prefs(true, "").grant_for(&router);
    assert_eq!(
        grant,
        Grant {
            subnets: true,
            exit: false
        }
    );
    assert_eq!(
        installed(&router, grant),
        prefixes(&[
            "100.64.0.7/32",
            "fd7a:115c:a1e0::7/128",
            "10.99.0.0/24",
            "fd00:99::/64"
        ])
    );
}

#[test]
fn exit_routes_only_for_the_selected_exit_node() {
    let router = node(ROUTER);
    let grant = prefs(false, "edge-router").grant_for(&router);
    assert_eq!(
        grant,
        Grant {
            subnets: false,
            exit: true
        }
    );
    assert_eq!(
        installed(&router, grant),
        prefixes(&[
            "100.64.0.7/32",
            "fd7a:115c:a1e0::7/128",
            "0.0.0.0/0",
            "::/0"
        ])
    );
    assert!(!prefs(false, "other-router").grant_for(&router).exit);
}

#[test]
fn an_exit_node_is_named_by_address_stable_id_or_name() {
    let router = node(ROUTER);
    for name in [
        "100.64.0.7",
        "fd7a:115c:a1e0::7",
        "nStable7",
        "nstable7",
        "edge-router",
        "Edge-Router",
        "edge-router.tail.example",
        "edge-router.tail.example.",
    ] {
        let exit = ExitNode::parse(name).unwrap();
        assert!(exit.matches(&router), "{name} names the router");
    }
    for name in [
        "100.64.0.8",
        "10.99.0.1",
        "edge",
        "tail.example",
        "nStable8",
    ] {
        let exit = ExitNode::parse(name).unwrap();
        assert!(!exit.matches(&router), "{name} does not name the router");
    }
    assert_eq!(ExitNode::parse("  "), None);
}

#[test]
fn grants_depend_only_on_what_the_peer_offers() {
    let plain = node(PLAIN);
    assert_eq!(prefs(true, "laptop").grant_for(&plain), Grant::default());
    assert_eq!(
        installed(
            &plain,
            Grant {
                subnets: true,
                exit: true
            }
        ),
        prefixes(&["100.64.0.8/32"])
    );
}

#[test]
fn prefixes_are_classified_as_the_go_client_does() {
    let own = prefixes(&["100.64.0.7/32", "fd7a:115c:a1e0::7/128"]);
    assert_eq!(classify(prefix("100.64.0.7/32"), &own), PrefixKind::Own);
    assert_eq!(
        classify(prefix("fd7a:115c:a1e0::7/128"), &own),
        PrefixKind::Own
    );
    assert_eq!(classify(prefix("0.0.0.0/0"), &own), PrefixKind::Exit);
    assert_eq!(classify(prefix("::/0"), &own), PrefixKind::Exit);
    assert_eq!(classify(prefix("10.99.0.0/24"), &own), PrefixKind::Subnet);
    // A single address that is not the peer's own is a route through it.
    assert_eq!(classify(prefix("192.0.2.1/32"), &own), PrefixKind::Subnet);
    assert_eq!(classify(prefix("100.64.0.9/32"), &own), PrefixKind::Subnet);
}

#[test]
fn accepted_subnets_are_the_pods_routes_into_its_tailnet_interface() {
    let (router, plain) = (node(ROUTER), node(PLAIN));
    assert!(accepted_subnets(&prefs(false, "edge-router"), [&router, &plain]).is_empty());
    assert_eq!(
        accepted_subnets(&prefs(true, "edge-router"), [&router, &plain, &router]),
        prefixes(&["10.99.0.0/24", "fd00:99::/64"])
    );
    let mut expired = router.clone();
    expired.expired = true;
    assert!(accepted_subnets(&prefs(true, ""), [&expired]).is_empty());
}

#[test]
fn pod_annotations_override_the_node_default() {
    let annotations = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let node = RoutePrefs::node_default(true, Some("edge-router"));
    assert_eq!(
        RouteRequest::from_annotations(&annotations(&[])).resolve(&node),
        node
    );
    assert_eq!(
        RouteRequest::from_annotations(&annotations(&[])).resolve(&RoutePrefs::default()),
        RoutePrefs::default(),
        "off by default"
    );
    let request = RouteRequest::from_annotations(&annotations(&[
        (ACCEPT_ROUTES_ANNOTATION, "yes"),
        (EXIT_NODE_ANNOTATION, ""),
    ]));
    assert_eq!(request.resolve(&node), RoutePrefs::default());
    let request = RouteRequest::from_annotations(&annotations(&[
        (ACCEPT_ROUTES_ANNOTATION, " TRUE "),
        (EXIT_NODE_ANNOTATION, "100.64.0.7"),
    ]));
    assert_eq!(
        request.resolve(&RoutePrefs::default()),
        prefs(true, "100.64.0.7")
    );
    assert!(!request.is_default());
}
