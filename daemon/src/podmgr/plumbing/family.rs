//! What differs between IPv4 and IPv6 in a pod's plumbing, as data: setup,
//! check and teardown walk [`FAMILIES`] instead of repeating themselves per
//! family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::route::RouteScope;
use rtnetlink::IpVersion;

use super::PodNet;
use crate::podmgr::sysctl;

/// Link-local next hops inside the pod; answered by a permanent neighbour
/// entry, so no ARP/NDP or proxy_arp is involved.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 1);
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
pub const TAILNET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
pub const TAILNET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48);

/// One address family's part of a pod's plumbing.
#[derive(Debug)]
pub(super) struct Family {
    /// "IPv4" or "IPv6", for messages.
    pub name: &'static str,
    pub version: IpVersion,
    /// Root of the family's sysctls; absent when the kernel has no such
    /// family at all.
    pub sysctl_root: &'static str,
    /// Prefix length of a single address: the pod's own address and its
    /// route in the pod's table.
    pub host_prefix_len: u8,
    /// The tailnet range the pod routes to its gateway.
    pub tailnet: IpAddr,
    pub tailnet_prefix_len: u8,
    pub pod_gateway: IpAddr,
    /// The gateway lies outside every prefix on the pod's link.
    pub gateway_onlink: bool,
    /// Scope of the routes in the pod's table.
    pub table_route_scope: RouteScope,
    /// No duplicate address detection: the address is ours by control's
    /// assignment, and a tentative address could not be a source yet.
    pub skip_dad: bool,
    /// Global forwarding switch.
    pub forwarding: &'static str,
    /// A global reverse-path filter that, when not "0", overrules the one
    /// written on the links.
    pub global_rp_filter: Option<&'static str>,
    /// Settings written on both host links (TUN and host veth).
    pub link_sysctls: &'static [LinkSysctl],
}

/// `net.<family>.conf.<link>.<name> = value`.
#[derive(Debug)]
pub(super) struct LinkSysctl {
    pub name: &'static str,
    pub value: &'static str,
    /// Written on the TUN only.
    pub tun_only: bool,
}

impl LinkSysctl {
    pub fn key(&self, family: &Family, link: &str) -> String {
        format!("{}.conf.{link}.{}", family.sysctl_root, self.name)
    }
}

/// rp_filter would drop packets whose source is reachable only through the
/// pod's own table (the reverse lookup does not see `iif` rules, so with a
/// node-local tailscaled it points at tailscale0); the `iif` rules ahead of
/// `local` are what keep a pod's packets on its path. A TUN
/// carries packets from the node's own tailnet address, hence accept_local.
const IPV4_LINK_SYSCTLS: &[LinkSysctl] = &[
    LinkSysctl {
        name: "rp_filter",
        value: "0",
        tun_only: false,
    },
    LinkSysctl {
        name: "accept_local",
        value: "1",
        tun_only: true,
    },
];

/// No IPv6 autoconfiguration: these links carry only routed traffic. No
/// link-local address either, so nothing (RS, MLD) is sent into the engine.
const IPV6_LINK_SYSCTLS: &[LinkSysctl] = &[
    LinkSysctl {
        name: "accept_ra",
        value: "0",
        tun_only: false,
    },
    LinkSysctl {
        name: "autoconf",
        value: "0",
        tun_only: false,
    },
    LinkSysctl {
        name: "addr_gen_mode",
        value: "1",
        tun_only: false,
    },
];

pub(super) static IPV4: Family = Family {
    name: "IPv4",
    version: IpVersion::V4,
    sysctl_root: "net.ipv4",
    host_prefix_len: 32,
    tailnet: IpAddr::V4(TAILNET_V4.0),
    tailnet_prefix_len: TAILNET_V4.1,
    pod_gateway: IpAddr::V4(POD_GATEWAY_V4),
    gateway_onlink: true,
    table_route_scope: RouteScope::Link,
    skip_dad: false,
    forwarding: "net.ipv4.ip_forward",
    global_rp_filter: Some("net.ipv4.conf.all.rp_filter"),
    link_sysctls: IPV4_LINK_SYSCTLS,
};

pub(super) static IPV6: Family = Family {
    name: "IPv6",
    version: IpVersion::V6,
    sysctl_root: "net.ipv6",
    host_prefix_len: 128,
    tailnet: IpAddr::V6(TAILNET_V6.0),
    tailnet_prefix_len: TAILNET_V6.1,
    // Link-local: on the link by definition.
    pod_gateway: IpAddr::V6(POD_GATEWAY_V6),
    gateway_onlink: false,
    table_route_scope: RouteScope::Universe,
    skip_dad: true,
    forwarding: "net.ipv6.conf.all.forwarding",
    global_rp_filter: None,
    link_sysctls: IPV6_LINK_SYSCTLS,
};

pub(super) static FAMILIES: [&Family; 2] = [&IPV4, &IPV6];

impl Family {
    /// The pod's address of this family, if it was plumbed.
    pub fn address_of(&self, pod_net: &PodNet) -> Option<IpAddr> {
        match self.version {
            IpVersion::V4 => pod_net.ipv4.map(IpAddr::V4),
            IpVersion::V6 => pod_net.ipv6.map(IpAddr::V6),
        }
    }

    /// The unspecified address, the destination of the family's default route.
    pub fn unspecified(&self) -> IpAddr {
        match self.version {
            IpVersion::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpVersion::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// Whether the kernel of the calling thread's namespace has this family.
    pub fn on_node(&self) -> bool {
        sysctl::exists(self.sysctl_root)
    }
}

/// The families a pod was plumbed with, each with the pod's address.
pub(super) fn plumbed(pod_net: &PodNet) -> impl Iterator<Item = (&'static Family, IpAddr)> + '_ {
    FAMILIES
        .into_iter()
        .filter_map(|family| family.address_of(pod_net).map(|address| (family, address)))
}

/// The families this node's kernel has; leftovers can only be of these.
pub(super) fn on_node() -> impl Iterator<Item = &'static Family> {
    FAMILIES.into_iter().filter(|family| family.on_node())
}
