//! The pod's routes to accepted subnet routes: one route per prefix through
//! its tailnet interface and link-local gateway, like the route to the
//! tailnet range that setup adds, kept equal to what the netmap offers.
//!
//! Only subnet routes get a pod route. An exit node gets none: the pod's
//! default route belongs to the cluster network, and taking it (or covering
//! it with two half-default routes) would send cluster traffic, DNS and the
//! API server into the tailnet.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use netlink_packet_route::route::{RouteHeader, RouteScope};
use rtnetlink::Handle;

use super::family::{Family, FAMILIES};
use super::{netlink_err, open_pod_netns, require_link, PlumbError, PodNet};
use crate::podmgr::nl::{self, is_exists, Route};

/// The route from a pod to `destination/prefix_len` through its gateway.
pub(super) fn pod_route(
    family: &Family,
    pod_if: u32,
    address: IpAddr,
    (destination, prefix_len): (IpAddr, u8),
) -> Route {
    Route {
        table: u32::from(RouteHeader::RT_TABLE_MAIN),
        destination,
        prefix_len,
        gateway: Some(family.pod_gateway),
        oif: pod_if,
        pref_source: Some(address),
        scope: RouteScope::Universe,
        onlink: family.gateway_onlink,
    }
}

/// `prefix` with its host bits cleared, as the kernel wants a destination.
pub fn network_of((addr, len): (IpAddr, u8)) -> (IpAddr, u8) {
    let masked = match addr {
        IpAddr::V4(v4) => {
            let len = u32::from(len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let len = u32::from(len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    };
    (masked, len)
}

/// Where a pod's subnet routes live: its namespace and tailnet interface,
/// with the addresses that were plumbed (a family without one gets no
/// routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRouteTarget {
    pub netns: PathBuf,
    pub if_name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl PodRouteTarget {
    /// The target for a plumbed pod.
    pub fn of(netns: PathBuf, pod_net: &PodNet) -> Self {
        Self {
            netns,
            if_name: pod_net.pod_if_name.clone(),
            ipv4: pod_net.ipv4,
            ipv6: pod_net.ipv6,
        }
    }

    fn address_of(&self, family: &Family) -> Option<IpAddr> {
        match family.tailnet {
            IpAddr::V4(_) => self.ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => self.ipv6.map(IpAddr::V6),
        }
    }

    /// Makes the pod's routes through its tailnet interface, other than the
    /// one to the tailnet range, exactly `subnets`: missing ones are added,
    /// others removed. What is there is read each time, so routes a
    /// previous daemon left are adopted or removed too.
    pub async fn apply(&self, subnets: &[(IpAddr, u8)]) -> Result<(), PlumbError> {
        let (_netns, pod) = open_pod_netns(&self.netns).await?;
        let link = require_link(&pod, &self.if_name).await?;
        for family in FAMILIES {
            let Some(address) = self.address_of(family) else {
                continue;
            };
            let wanted: BTreeSet<(IpAddr, u8)> = subnets
                .iter()
                .filter(|(addr, _)| addr.is_ipv4() == family.tailnet.is_ipv4())
                .map(|&prefix| network_of(prefix))
                .collect();
            let present = self.present(&pod, family, link.index).await?;
            for route in present {
                let prefix = (
                    route.destination.unwrap_or_else(|| family.unspecified()),
                    route.prefix_len,
                );
                if !wanted.contains(&prefix) {
                    nl::delete_route(&pod, route.message)
                        .await
                        .map_err(netlink_err(format!(
                            "removing the route to {}/{} in the pod",
                            prefix.0, prefix.1
                        )))?;
                }
            }
            for prefix in wanted {
                let route = pod_route(family, link.index, address, prefix);
                match nl::add_route(&pod, &route).await {
                    Err(error) if !is_exists(&error) => {
                        return Err(PlumbError::Netlink {
                            op: format!("adding the route to {}/{} in the pod", prefix.0, prefix.1),
                            source: error,
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The family's routes through the pod's gateway on `pod_if` in the
    /// main table, without the one to the tailnet range.
    async fn present(
        &self,
        pod: &Handle,
        family: &Family,
        pod_if: u32,
    ) -> Result<Vec<nl::RouteView>, PlumbError> {
        let routes = nl::routes(pod, family.version.clone())
            .await
            .map_err(netlink_err(format!(
                "listing {} routes in the pod",
                family.name
            )))?;
        let tailnet = (Some(family.tailnet), family.tailnet_prefix_len);
        Ok(routes
            .into_iter()
            .filter(|r| {
                r.table == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && r.oif == Some(pod_if)
                    && r.gateway == Some(family.pod_gateway)
                    && (r.destination, r.prefix_len) != tailnet
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_lose_their_host_bits() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network_of((ip("10.99.0.5"), 24)), (ip("10.99.0.0"), 24));
        assert_eq!(network_of((ip("10.99.0.5"), 32)), (ip("10.99.0.5"), 32));
        assert_eq!(network_of((ip("10.99.0.5"), 0)), (ip("0.0.0.0"), 0));
        assert_eq!(network_of((ip("fd00:99::1"), 64)), (ip("fd00:99::"), 64));
        assert_eq!(network_of((ip("fd00:99::1"), 128)), (ip("fd00:99::1"), 128));
    }
}
