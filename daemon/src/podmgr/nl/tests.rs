use super::*;
use rtnetlink::packet_core::ErrorMessage;
use std::num::NonZeroI32;

fn nl_error(code: i32) -> rtnetlink::Error {
    let mut msg = ErrorMessage::default();
    msg.code = NonZeroI32::new(-code);
    rtnetlink::Error::NetlinkError(msg)
}

#[test]
fn classifies_kernel_errors() {
    assert!(is_not_found(&nl_error(libc::ENODEV)));
    assert!(is_not_found(&nl_error(libc::ENOENT)));
    assert!(!is_not_found(&nl_error(libc::EPERM)));
    assert!(is_exists(&nl_error(libc::EEXIST)));
    assert!(!is_exists(&nl_error(libc::ENOENT)));
    assert!(!is_not_found(&rtnetlink::Error::RequestFailed));
}

#[test]
fn link_view_reads_the_attributes_we_use() {
    let mut msg = LinkMessage::default();
    msg.header.index = 7;
    msg.header.flags = LinkFlags::Up;
    msg.attributes = vec![
        LinkAttribute::IfName("tnt0123456789".into()),
        LinkAttribute::IfAlias("tailnet-cni:abc".into()),
        LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
        LinkAttribute::Mtu(1280),
        LinkAttribute::OperState(State::Up),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Tun)]),
    ];
    let view = LinkInfoView::from(&msg);
    assert_eq!(view.index, 7);
    assert_eq!(view.name, "tnt0123456789");
    assert_eq!(view.alias.as_deref(), Some("tailnet-cni:abc"));
    assert_eq!(view.mac, Some([2, 0, 0, 0, 0, 9]));
    assert_eq!(view.mtu, Some(1280));
    assert!(view.up && view.oper_up);
    assert_eq!(view.kind, Some(InfoKind::Tun));

    msg.header.flags = LinkFlags::empty();
    msg.attributes = vec![
        LinkAttribute::Address(vec![1, 2, 3]),
        LinkAttribute::OperState(State::LowerLayerDown),
    ];
    let view = LinkInfoView::from(&msg);
    assert!(!view.up && !view.oper_up);
    assert_eq!(view.mac, None, "a non-Ethernet address is not a MAC");
}

#[test]
fn mac_is_formatted_lowercase_colon_separated() {
    let mac = [0x02, 0xab, 0x00, 0x10, 0xfe, 0x7f];
    assert_eq!(format_mac(&mac), "02:ab:00:10:fe:7f");
}

#[test]
fn a_route_in_a_pod_table_carries_the_table_as_an_attribute() {
    let route = Route {
        table: 0x7c00_0001,
        destination: "0.0.0.0".parse().unwrap(),
        prefix_len: 0,
        gateway: None,
        oif: 9,
        pref_source: None,
        scope: RouteScope::Link,
        onlink: false,
    };
    let message = route.message();
    assert_eq!(message.header.address_family, AddressFamily::Inet);
    assert_eq!(message.header.table, RouteHeader::RT_TABLE_UNSPEC);
    assert_eq!(message.header.scope, RouteScope::Link);
    assert_eq!(message.header.destination_prefix_length, 0);
    assert!(message
        .attributes
        .contains(&RouteAttribute::Table(0x7c00_0001)));
    assert!(message.attributes.contains(&RouteAttribute::Oif(9)));
    assert!(
        !message
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))),
        "a default route names no destination"
    );
}

#[test]
fn a_pod_route_names_its_gateway_source_and_onlink_flag() {
    let route = Route {
        table: u32::from(RouteHeader::RT_TABLE_MAIN),
        destination: "fd7a:115c:a1e0::".parse().unwrap(),
        prefix_len: 48,
        gateway: Some("fe80::1".parse().unwrap()),
        oif: 3,
        pref_source: Some("fd7a:115c:a1e0::5".parse().unwrap()),
        scope: RouteScope::Universe,
        onlink: true,
    };
    let message = route.message();
    assert_eq!(message.header.address_family, AddressFamily::Inet6);
    assert_eq!(message.header.table, RouteHeader::RT_TABLE_MAIN);
    assert_eq!(message.header.destination_prefix_length, 48);
    assert!(message.header.flags.contains(RouteFlags::Onlink));
    let ip = |s: &str| RouteAddress::from(s.parse::<IpAddr>().unwrap());
    for attribute in [
        RouteAttribute::Destination(ip("fd7a:115c:a1e0::")),
        RouteAttribute::Gateway(ip("fe80::1")),
        RouteAttribute::PrefSource(ip("fd7a:115c:a1e0::5")),
    ] {
        assert!(message.attributes.contains(&attribute), "{attribute:?}");
    }
}
