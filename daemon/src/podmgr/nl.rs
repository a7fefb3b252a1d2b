//! The plumbing's only door to rtnetlink: the queries and every change it
//! makes (links, addresses, neighbours, routes, rules), and how kernel
//! errors are told apart.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVeth, RuleAddRequest};

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
    /// Matches every packet and only looks up its table: no selector
    /// (addresses, interfaces, marks, ports, ...), no inversion, no suppressor.
    pub matches_all: bool,
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
                matches_all: message.header.src_len == 0
                    && message.header.dst_len == 0
                    && message.header.tos == 0
                    && message.header.flags.is_empty()
                    && message.header.action == RuleAction::ToTable,
                message: message.clone(),
            };
            for attr in &message.attributes {
                match attr {
                    RuleAttribute::Table(table) => view.table = *table,
                    RuleAttribute::Priority(prio) => view.priority = Some(*prio),
                    RuleAttribute::Iifname(name) => {
                        view.iif = Some(name.clone());
                        view.matches_all = false;
                    }
                    // The kernel reports "no suppressor" as all ones.
                    RuleAttribute::Protocol(_)
                    | RuleAttribute::SuppressPrefixLen(u32::MAX)
                    | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
                    _ => view.matches_all = false,
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

/// Sets a link's alias (how the plumbing marks its devices) and, when
/// given, its MTU.
pub async fn set_link_alias(
    handle: &Handle,
    index: u32,
    alias: &str,
    mtu: Option<u32>,
) -> Result<(), rtnetlink::Error> {
    let mut change = LinkUnspec::new_with_index(index).alias(alias.to_string());
    if let Some(mtu) = mtu {
        change = change.mtu(mtu);
    }
    handle.link().set(change.build()).execute().await
}

pub async fn set_link_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// Creates a veth pair whose peer is born inside `peer_netns` under its
/// final name, so it never appears in the caller's namespace.
pub async fn add_veth(
    handle: &Handle,
    name: &str,
    peer_name: &str,
    mtu: u32,
    peer_netns: BorrowedFd<'_>,
) -> Result<(), rtnetlink::Error> {
    let peer = LinkUnspec::new_with_name(peer_name)
        .mtu(mtu)
        .setns_by_fd(peer_netns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(name, peer_name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .build();
    handle.link().add(veth).execute().await
}

/// Deletes a link; one already gone counts as deleted.
pub async fn delete_link(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    forgive_not_found(handle.link().del(index).execute().await)
}

/// Adds `ip/prefix_len` to a link. `skip_dad` leaves out IPv6 duplicate
/// address detection, so the address is usable as a source at once.
pub async fn add_address(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    prefix_len: u8,
    skip_dad: bool,
) -> Result<(), rtnetlink::Error> {
    let mut request = handle.address().add(index, ip, prefix_len);
    if skip_dad {
        request.message_mut().header.flags = AddressHeaderFlags::Nodad;
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request.execute().await
}

/// Adds (or replaces, so a retry is idempotent) a permanent neighbour entry.
pub async fn add_permanent_neighbour(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    mac: &[u8; 6],
) -> Result<(), rtnetlink::Error> {
    // Permanent is the request's default state.
    handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .replace()
        .execute()
        .await
}

/// A unicast route as the plumbing writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    /// Destination prefix; a zero length makes it the family's default route.
    pub destination: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub pref_source: Option<IpAddr>,
    pub scope: RouteScope,
    /// The gateway is reachable on the link without a covering prefix.
    pub onlink: bool,
}

impl Route {
    fn message(&self) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = match self.destination {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.destination_prefix_length = self.prefix_len;
        message.header.protocol = RouteProtocol::Static;
        message.header.scope = self.scope;
        message.header.kind = RouteType::Unicast;
        if self.onlink {
            message.header.flags.insert(RouteFlags::Onlink);
        }
        // Table numbers above 255 only fit the attribute.
        message.header.table = u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        message.attributes.push(RouteAttribute::Table(self.table));
        if self.prefix_len > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(self.destination.into()));
        }
        if let Some(gateway) = self.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(gateway.into()));
        }
        message.attributes.push(RouteAttribute::Oif(self.oif));
        if let Some(source) = self.pref_source {
            message
                .attributes
                .push(RouteAttribute::PrefSource(source.into()));
        }
        message
    }
}

pub async fn add_route(handle: &Handle, route: &Route) -> Result<(), rtnetlink::Error> {
    handle.route().add(route.message()).execute().await
}

/// Deletes a route as a dump reported it; one already gone counts as deleted.
pub async fn delete_route(handle: &Handle, route: RouteMessage) -> Result<(), rtnetlink::Error> {
    forgive_not_found(handle.route().del(route).execute().await)
}

/// Adds `iif <iif> lookup <table>` at `priority`.
pub async fn add_rule(
    handle: &Handle,
    version: IpVersion,
    iif: &str,
    table: u32,
    priority: u32,
) -> Result<(), rtnetlink::Error> {
    execute_rule(
        lookup_rule(handle, table, priority).input_interface(iif),
        version,
    )
    .await
}

/// Adds `lookup <table>` for every packet at `priority`.
pub async fn add_lookup_rule(
    handle: &Handle,
    version: IpVersion,
    table: u32,
    priority: u32,
) -> Result<(), rtnetlink::Error> {
    execute_rule(lookup_rule(handle, table, priority), version).await
}

fn lookup_rule(handle: &Handle, table: u32, priority: u32) -> RuleAddRequest {
    handle
        .rule()
        .add()
        .table_id(table)
        .priority(priority)
        .action(RuleAction::ToTable)
}

async fn execute_rule(request: RuleAddRequest, version: IpVersion) -> Result<(), rtnetlink::Error> {
    match version {
        IpVersion::V4 => request.v4().execute().await,
        IpVersion::V6 => request.v6().execute().await,
    }
}

/// Deletes a rule as a dump reported it; one already gone counts as deleted.
pub async fn delete_rule(handle: &Handle, rule: RuleMessage) -> Result<(), rtnetlink::Error> {
    forgive_not_found(handle.rule().del(rule).execute().await)
}

fn forgive_not_found(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests;
