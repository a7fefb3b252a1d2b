//! The shim's stdin: network configuration and the chained `prevResult`.
//!
//! Asserts: no panic; a parsed config respects its documented bounds; a
//! `prevResult` that reads renders in every supported version, reads back
//! to the same entries, and renders again to the same JSON (a fixed point);
//! appending the tailnet interface keeps every earlier entry unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Map;
use tailnet_cni::commands::{read_stdin, MAX_STDIN_BYTES};
use tailnet_cni::netconf::{parse_json, peek_version, NetConf, MAX_TIMEOUT_SECONDS};
use tailnet_cni::result::{cidr_family, CniResult, Interface, IpConfig, Route};
use tailnet_cni::CniVersion;
use tailnet_cni_fuzz as _;
use tailnet_cni_proto::validate::{MAX_MTU, MIN_MTU};

fuzz_target!(|data: &[u8]| {
    match read_stdin(data, MAX_STDIN_BYTES) {
        Ok(bytes) => assert_eq!(bytes, data),
        Err(_) => {
            assert!(data.len() > MAX_STDIN_BYTES);
            return;
        }
    }
    let Ok(config) = parse_json(data) else { return };
    let peeked = peek_version(&config);
    let Ok(conf) = NetConf::from_json(&config) else {
        return;
    };

    assert_eq!(peeked, Some(conf.cni_version));
    assert!(!conf.name.is_empty() && !conf.plugin_type.is_empty());
    assert!(conf.daemon_socket.is_absolute());
    if let Some(mtu) = conf.mtu {
        assert!((MIN_MTU..=MAX_MTU).contains(&mtu));
    }
    if let Some(timeout) = conf.timeout {
        assert!((1..=MAX_TIMEOUT_SECONDS).contains(&timeout.as_secs()));
    }
    assert!(tailnet_cni::env::validate_interface_name(&conf.if_name).is_ok());

    let Some(prev) = &conf.prev_result else {
        return;
    };
    let Ok(result) = CniResult::from_prev_result(prev) else {
        return;
    };
    check_result(&result, &conf.if_name);
});

fn check_result(result: &CniResult, if_name: &str) {
    for version in CniVersion::SUPPORTED {
        let rendered = result
            .clone()
            .into_version(version)
            .expect("a result that was read renders");
        assert_eq!(rendered["cniVersion"], version.as_str());
        let reread = CniResult::from_prev_result(&rendered).expect("a rendered result reads back");
        assert_eq!(reread.interfaces, result.interfaces);
        assert_eq!(reread.routes, result.routes);
        assert_eq!(reread.extra, result.extra);
        let (before, after) = (result.ips.as_deref(), reread.ips.as_deref());
        assert_eq!(before.map(<[_]>::len), after.map(<[_]>::len));
        for (a, b) in before
            .unwrap_or_default()
            .iter()
            .zip(after.unwrap_or_default())
        {
            assert_eq!(
                (&a.address, &a.gateway, a.interface, &a.extra),
                (&b.address, &b.gateway, b.interface, &b.extra)
            );
            if version.ips_carry_version() {
                // An existing tag is kept; a missing one is derived.
                let expected = a
                    .version
                    .clone()
                    .or_else(|| cidr_family(&a.address).map(str::to_owned));
                assert_eq!(b.version, expected);
            } else {
                assert_eq!(b.version, None);
            }
        }
        let again = reread
            .into_version(version)
            .expect("a re-read result renders");
        assert_eq!(again, rendered, "rendering is not a fixed point");
    }

    // Whatever the previous plugins wrote, lookups stay in bounds.
    for sandbox in ["", "/run/netns/x"] {
        let interfaces = result.interfaces.as_deref().unwrap_or_default();
        if let Some(addresses) = result.addresses_of(if_name, sandbox) {
            let index = interfaces
                .iter()
                .position(|i| i.name == if_name)
                .expect("addresses_of found an interface");
            assert!(index < interfaces.len());
            assert!(addresses.iter().all(|ip| ip.interface.is_some()));
        }
        let _ = result.has_interface(if_name, sandbox);
    }

    let mut appended = result.clone();
    let interface = Interface {
        name: if_name.to_owned(),
        mac: Some("ee:ee:64:40:00:09".into()),
        mtu: Some(1280),
        sandbox: Some("/run/netns/x".into()),
        extra: Map::new(),
    };
    let address = IpConfig {
        version: None,
        address: "100.64.0.9/32".into(),
        gateway: None,
        interface: None,
        extra: Map::new(),
    };
    let route = Route {
        dst: "100.64.0.0/10".into(),
        gw: None,
        extra: Map::new(),
    };
    appended
        .append_interface(interface.clone(), vec![address], vec![route.clone()])
        .expect("a CIDR address is accepted");
    let old_interfaces = result.interfaces.as_deref().unwrap_or_default();
    let new_interfaces = appended.interfaces.as_deref().unwrap_or_default();
    assert_eq!(&new_interfaces[..old_interfaces.len()], old_interfaces);
    assert_eq!(new_interfaces.last(), Some(&interface));
    let old_ips = result.ips.as_deref().unwrap_or_default();
    let new_ips = appended.ips.as_deref().unwrap_or_default();
    assert_eq!(&new_ips[..old_ips.len()], old_ips);
    assert_eq!(new_ips.len(), old_ips.len() + 1);
    assert_eq!(new_ips[old_ips.len()].interface, Some(old_interfaces.len()));
    let new_routes = appended.routes.as_deref().unwrap_or_default();
    assert!(new_routes.contains(&route));
    assert!(appended.has_interface(if_name, "/run/netns/x"));
}
