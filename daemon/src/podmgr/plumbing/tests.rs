use std::net::{IpAddr, Ipv4Addr};

use super::check::{is_ipv6_link_local, records_spec};
use super::family::{self, IPV4, IPV6};
use super::ipv6::Ipv6Settings;
use super::*;
use crate::podmgr::naming::{host_veth_name, tun_name};

fn spec() -> PodNetSpec {
    PodNetSpec {
        container_id: "abc".into(),
        netns_path: "/var/run/netns/x".into(),
        if_name: DEFAULT_POD_IF_NAME.into(),
        mtu: DEFAULT_MTU,
        ipv4: Some(Ipv4Addr::new(100, 64, 0, 1)),
        ipv6: None,
    }
}

#[test]
fn spec_validation_rejects_bad_input() {
    validate_spec(&spec()).unwrap();
    let mut s = spec();
    s.mtu = 1000;
    assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
    // Above what the engine's buffers hold.
    s.mtu = 9001;
    assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
    s.mtu = 9000;
    validate_spec(&s).unwrap();
    let mut s = spec();
    s.ipv4 = None;
    assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
    let mut s = spec();
    s.if_name = "much-too-long-name".into();
    assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
    let mut s = spec();
    s.container_id = "../x".into();
    assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
}

#[test]
fn kernel_tables_are_never_treated_as_a_pods() {
    let mut net = sample_pod_net();
    for reserved in [0, 253, 254, 255] {
        assert!(is_reserved_table(reserved));
        net.table = reserved;
        assert!(!is_pod_table(reserved, &net));
    }
    net.table = 0x7c00_0001;
    assert!(is_pod_table(0x7c00_0001, &net));
    assert!(!is_pod_table(0x7c00_0002, &net));
}

#[test]
fn link_local_detection() {
    assert!(is_ipv6_link_local(&"fe80::1".parse().unwrap()));
    assert!(!is_ipv6_link_local(&"fd7a:115c:a1e0::1".parse().unwrap()));
    assert!(!is_ipv6_link_local(&"169.254.0.1".parse().unwrap()));
}

#[test]
fn teardown_errors_list_every_error() {
    let errors = TeardownErrors(vec![
        PlumbError::Missing("a".into()),
        PlumbError::Drift("b".into()),
    ]);
    let text = errors.to_string();
    assert!(
        text.contains("2 error(s)") && text.contains("missing: a") && text.contains("drift: b"),
        "{text}"
    );
}

fn sample_pod_net() -> PodNet {
    PodNet {
        container_id: "abc".into(),
        tun_name: tun_name("abc"),
        host_veth: host_veth_name("abc"),
        pod_if_name: "ts0".into(),
        pod_mac: "02:00:00:00:00:01".into(),
        host_veth_mac: "02:00:00:00:00:02".into(),
        table: 0x7c00_0001,
        rule_priority: DEFAULT_RULE_PRIORITY,
        mtu: DEFAULT_MTU,
        ipv4: Some(Ipv4Addr::new(100, 64, 0, 1)),
        ipv6: Some("fd7a:115c:a1e0::1".parse().unwrap()),
        ipv6_omitted: None,
    }
}

fn ipv4_only_pod_net() -> PodNet {
    PodNet {
        ipv6: None,
        ipv6_omitted: Some(Ipv6Unavailable::Disabled {
            place: Place::Node,
            sysctl: "net.ipv6.conf.all.disable_ipv6".into(),
            value: "1".into(),
        }),
        ..sample_pod_net()
    }
}

#[test]
fn pod_net_serialises_round_trip() {
    for net in [sample_pod_net(), ipv4_only_pod_net()] {
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(serde_json::from_str::<PodNet>(&json).unwrap(), net);
        assert_eq!(
            net.host_links(),
            [net.tun_name.as_str(), net.host_veth.as_str()]
        );
    }
}

#[test]
fn records_written_before_ipv6_could_be_omitted_still_load() {
    let mut json = serde_json::to_value(sample_pod_net()).unwrap();
    assert!(
        json.get("ipv6_omitted").is_none(),
        "a dual-stack record carries no omission: {json}"
    );
    json.as_object_mut().unwrap().remove("ipv6_omitted");
    assert_eq!(
        serde_json::from_value::<PodNet>(json).unwrap(),
        sample_pod_net()
    );
}

fn settings(stack: bool, values: &[(&str, Option<&str>)]) -> Ipv6Settings {
    Ipv6Settings {
        stack,
        disable_ipv6: values
            .iter()
            .map(|(key, value)| (key.to_string(), value.map(str::to_string)))
            .collect(),
    }
}

#[test]
fn ipv6_is_usable_when_nothing_disables_it() {
    let enabled = settings(
        true,
        &[
            ("net.ipv6.conf.all.disable_ipv6", Some("0")),
            ("net.ipv6.conf.default.disable_ipv6", Some("0")),
            ("net.ipv6.conf.tnv0123456789.disable_ipv6", Some("0")),
            // A link without the setting does not disable anything.
            ("net.ipv6.conf.tnt0123456789.disable_ipv6", None),
        ],
    );
    assert_eq!(enabled.verdict(Place::Node), None);
}

#[test]
fn ipv6_verdict_names_the_first_setting_that_disables_it() {
    let off = settings(
        true,
        &[
            ("net.ipv6.conf.all.disable_ipv6", Some("0")),
            ("net.ipv6.conf.default.disable_ipv6", Some("1")),
            ("net.ipv6.conf.ts0.disable_ipv6", Some("1")),
        ],
    );
    let reason = off.verdict(Place::Pod).unwrap();
    assert_eq!(
        reason,
        Ipv6Unavailable::Disabled {
            place: Place::Pod,
            sysctl: "net.ipv6.conf.default.disable_ipv6".into(),
            value: "1".into(),
        }
    );
    assert_eq!(
        reason.to_string(),
        "IPv6 is disabled in the pod's network namespace (net.ipv6.conf.default.disable_ipv6=1)"
    );

    let link_only = settings(
        true,
        &[
            ("net.ipv6.conf.all.disable_ipv6", Some("0")),
            ("net.ipv6.conf.tnv0123456789.disable_ipv6", Some("1")),
        ],
    );
    assert!(matches!(
        link_only.verdict(Place::Node),
        Some(Ipv6Unavailable::Disabled { place: Place::Node, ref sysctl, .. })
            if sysctl == "net.ipv6.conf.tnv0123456789.disable_ipv6"
    ));
}

#[test]
fn a_kernel_without_ipv6_is_reported_as_such() {
    let reason = settings(false, &[]).verdict(Place::Node).unwrap();
    assert_eq!(reason, Ipv6Unavailable::NoStack { place: Place::Node });
    assert_eq!(
        reason.to_string(),
        "the kernel has no IPv6 on this node (no /proc/sys/net/ipv6)"
    );
}

#[test]
fn check_expects_an_omitted_ipv6_address_to_be_absent() {
    let mut dual = spec();
    dual.ipv6 = Some("fd7a:115c:a1e0::1".parse().unwrap());
    assert!(records_spec(&sample_pod_net(), &dual));
    assert!(records_spec(&ipv4_only_pod_net(), &dual));

    // Without a recorded reason a missing IPv6 address is drift, and so is
    // one present although the record says it was left out.
    let mut lost = sample_pod_net();
    lost.ipv6 = None;
    assert!(!records_spec(&lost, &dual));
    let mut contradictory = sample_pod_net();
    contradictory.ipv6_omitted = ipv4_only_pod_net().ipv6_omitted;
    assert!(!records_spec(&contradictory, &dual));

    let mut renamed = sample_pod_net();
    renamed.pod_if_name = "eth1".into();
    assert!(!records_spec(&renamed, &dual));
}

#[test]
fn families_follow_the_plumbed_addresses() {
    let dual: Vec<(&str, IpAddr)> = family::plumbed(&sample_pod_net())
        .map(|(family, address)| (family.name, address))
        .collect();
    assert_eq!(
        dual,
        [
            ("IPv4", "100.64.0.1".parse().unwrap()),
            ("IPv6", "fd7a:115c:a1e0::1".parse().unwrap())
        ]
    );
    let v4: Vec<&str> = family::plumbed(&ipv4_only_pod_net())
        .map(|(family, _)| family.name)
        .collect();
    assert_eq!(v4, ["IPv4"]);
}

#[test]
fn family_table_matches_the_documented_addresses() {
    assert_eq!(IPV4.tailnet, IpAddr::V4(TAILNET_V4.0));
    assert_eq!(IPV6.tailnet, IpAddr::V6(TAILNET_V6.0));
    assert_eq!(IPV4.pod_gateway, IpAddr::V4(POD_GATEWAY_V4));
    assert_eq!(IPV6.pod_gateway, IpAddr::V6(POD_GATEWAY_V6));
    assert_eq!((IPV4.host_prefix_len, IPV6.host_prefix_len), (32, 128));
    assert!(IPV4.unspecified().is_unspecified() && IPV4.unspecified().is_ipv4());
    assert!(IPV6.unspecified().is_unspecified() && IPV6.unspecified().is_ipv6());
    let keys: Vec<String> = IPV6
        .link_sysctls
        .iter()
        .map(|setting| setting.key(&IPV6, "tnt0123456789"))
        .collect();
    assert_eq!(
        keys,
        [
            "net.ipv6.conf.tnt0123456789.accept_ra",
            "net.ipv6.conf.tnt0123456789.autoconf",
            "net.ipv6.conf.tnt0123456789.addr_gen_mode",
        ]
    );
}
