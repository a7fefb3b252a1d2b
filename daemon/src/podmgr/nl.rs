//! Small queries and classifications over rtnetlink shared by setup, check
//! and teardown.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion};

const ENOENT: i32 = libc::ENOENT;
const ENODEV: i32 = libc::ENODEV;
const ESRCH: i32 = libc::ESRCH;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// The kernel's ways of saying "no such thing".
pub fn is_not_found(err: &rtnetlink::Error) -> bool {
    matches!(errno(err), Some(ENOENT | ENODEV | ESRCH | EADDRNOTAVAIL))
}

pub fn is_exists(err: &rtnetlink::Error) -> bool {
    errno(err) == Some(libc::EEXIST)
}

/// A link's facts we care about.
#[derive(Debug, Clone)]
pub struct LinkInfoView {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// Operationally up: carrier present and the kernel ready to transmit.
    pub oper_up: bool,
    pub kind: Option<InfoKind>,
    pub mtu: Option<u32>,
}

impl From<&LinkMessage> for LinkInfoView {
    fn from(msg: &LinkMessage) -> Self {
        let mut view = LinkInfoView {
            index: msg.header.index,
            name: String::new(),
            alias: None,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            oper_up: false,
            kind: None,
            mtu: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => view.name = name.clone(),
                LinkAttribute::IfAlias(alias) => view.alias = Some(alias.clone()),
                LinkAttribute::Address(mac) => view.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                LinkAttribute::Mtu(mtu) => view.mtu = Some(*mtu),
                LinkAttribute::OperState(state) => view.oper_up = *state == State::Up,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            view.kind = Some(kind.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        view
    }
}

pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkInfoView>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(LinkInfoView::from(&msg))),
        Ok(None) => Ok(None),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn all_links(handle: &Handle) -> Result<Vec<LinkInfoView>, rtnetlink::Error> {
    handle
        .link()
        .get()
        .execute()
        .map_ok(|msg| LinkInfoView::from(&msg))
        .try_collect()
        .await
}

/// A routing rule's facts we care about, plus the message to delete it by.
#[derive(Debug, Clone)]
pub struct RuleView {
    pub table: u32,
    pub priority: Option<u32>,
    pub iif: Option<String>,
    pub message: RuleMessage,
}

pub async fn rules(handle: &Handle, version: IpVersion) -> Result<Vec<RuleView>, rtnetlink::Error> {
    handle
        .rule()
        .get(version)
        .execute()
        .map_ok(|message| {
            let mut view = RuleView {
                table: u32::from(message.header.table),
                priority: None,
                iif: None,
                message: message.clone(),
            };
            for attr in &message.attributes {
                match attr {
                    RuleAttribute::Table(table) => view.table = *table,
                    RuleAttribute::Priority(prio) => view.priority = Some(*prio),
                    RuleAttribute::Iifname(name) => view.iif = Some(name.clone()),
                    _ => {}
                }
            }
            view
        })
        .try_collect()
        .await
}

/// A route's facts we care about, plus the message to delete it by.
#[derive(Debug, Clone)]
pub struct RouteView {
    pub table: u32,
    pub destination: Option<IpAddr>,
    pub prefix_len: u8,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub pref_source: Option<IpAddr>,
    pub message: RouteMessage,
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub async fn routes(
    handle: &Handle,
    version: IpVersion,
) -> Result<Vec<RouteView>, rtnetlink::Error> {
    let request = match version {
        IpVersion::V4 => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        IpVersion::V6 => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    };
    handle
        .route()
        .get(request)
        .execute()
        .map_ok(|message| {
            let mut view = RouteView {
                table: u32::from(message.header.table),
                destination: None,
                prefix_len: message.header.destination_prefix_length,
                oif: None,
                gateway: None,
                pref_source: None,
                message: message.clone(),
            };
            for attr in &message.attributes {
                match attr {
                    RouteAttribute::Table(table) => view.table = *table,
                    RouteAttribute::Destination(dst) => view.destination = route_ip(dst),
                    RouteAttribute::Oif(oif) => view.oif = Some(*oif),
                    RouteAttribute::Gateway(gw) => view.gateway = route_ip(gw),
                    RouteAttribute::PrefSource(src) => view.pref_source = route_ip(src),
                    _ => {}
                }
            }
            view
        })
        .try_collect()
        .await
}

/// Addresses on one link as (address, prefix length).
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, rtnetlink::Error> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    Ok(messages
        .iter()
        .filter(|msg| msg.header.index == index)
        .filter_map(|msg| {
            msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(ip) => Some((*ip, msg.header.prefix_len)),
                _ => None,
            })
        })
        .collect())
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
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
}
