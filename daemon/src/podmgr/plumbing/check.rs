//! CHECK: is a pod's plumbing still as setup left it, for exactly the
//! families it was plumbed with?

use std::net::IpAddr;

use rtnetlink::Handle;

use super::family::{self, Family};
use super::local_rule::local_rules_ahead;
use super::{netlink_err, open_pod_netns, require_link, PlumbError, Plumber, PodNet, PodNetSpec};
use crate::podmgr::nl::{self, LinkInfoView};

impl Plumber {
    /// Verifies that a pod's plumbing is still as [`setup`](Self::setup)
    /// left it. An IPv6 address that setup left out (see
    /// [`PodNet::ipv6_omitted`]) is expected to be absent.
    pub async fn check(&self, pod_net: &PodNet, spec: &PodNetSpec) -> Result<(), PlumbError> {
        if !records_spec(pod_net, spec) {
            return Err(PlumbError::Drift(
                "recorded addresses or interface name differ from the requested ones".into(),
            ));
        }
        let tun = require_link(&self.host, &pod_net.tun_name).await?;
        let host_veth = require_link(&self.host, &pod_net.host_veth).await?;
        for link in [&tun, &host_veth] {
            if !link.up {
                return Err(PlumbError::Drift(format!("{} is down", link.name)));
            }
        }

        let (_netns, pod) = open_pod_netns(&spec.netns_path).await?;
        let pod_link = nl::link_by_name(&pod, &spec.if_name)
            .await
            .map_err(netlink_err(format!("looking up {} in pod", spec.if_name)))?
            .ok_or_else(|| {
                PlumbError::Missing(format!(
                    "{} in pod {}",
                    spec.if_name,
                    spec.netns_path.display()
                ))
            })?;
        if !pod_link.up {
            return Err(PlumbError::Drift(format!(
                "{} in pod is down",
                spec.if_name
            )));
        }
        check_pod_addresses(&pod, &pod_link, pod_net).await?;

        for (family, address) in family::plumbed(pod_net) {
            check_pod_route(&pod, &pod_link, family).await?;
            self.check_table(family, address, pod_net, &tun, &host_veth)
                .await?;
            self.check_rules(family, pod_net).await?;
        }
        Ok(())
    }

    async fn check_table(
        &self,
        family: &Family,
        address: IpAddr,
        pod_net: &PodNet,
        tun: &LinkInfoView,
        host_veth: &LinkInfoView,
    ) -> Result<(), PlumbError> {
        let routes = self.host_routes(family.version.clone()).await?;
        let has_default = routes
            .iter()
            .any(|r| r.table == pod_net.table && r.prefix_len == 0 && r.oif == Some(tun.index));
        let has_pod_route = routes.iter().any(|r| {
            r.table == pod_net.table
                && r.destination == Some(address)
                && r.prefix_len == family.host_prefix_len
                && r.oif == Some(host_veth.index)
        });
        if !has_default || !has_pod_route {
            return Err(PlumbError::Drift(format!(
                "table {} lacks its {} routes",
                pod_net.table, family.name
            )));
        }
        Ok(())
    }

    async fn check_rules(&self, family: &Family, pod_net: &PodNet) -> Result<(), PlumbError> {
        let rules = self.host_rules(family.version.clone()).await?;
        for iif in pod_net.host_links() {
            if !rules.iter().any(|r| {
                r.table == pod_net.table
                    && r.priority == Some(pod_net.rule_priority)
                    && r.iif.as_deref() == Some(iif)
            }) {
                return Err(PlumbError::Drift(format!(
                    "{} rule iif {iif} lookup {} missing",
                    family.name, pod_net.table
                )));
            }
        }
        // A pod plumbed by a release that did not move the rule (its rules
        // at another priority) resumes as it was; re-creating it protects it.
        if pod_net.rule_priority == self.options.rule_priority
            && !local_rules_ahead(&rules, pod_net.rule_priority).is_empty()
        {
            return Err(PlumbError::Drift(format!(
                "{} rule lookup local is ahead of the pod's rules",
                family.name
            )));
        }
        Ok(())
    }
}

/// Whether the record is what setup makes of `spec`: the same interface and
/// addresses, less an IPv6 address setup had to leave out.
pub(super) fn records_spec(pod_net: &PodNet, spec: &PodNetSpec) -> bool {
    let expected_ipv6 = spec.ipv6.filter(|_| pod_net.ipv6_omitted.is_none());
    pod_net.ipv4 == spec.ipv4
        && pod_net.ipv6 == expected_ipv6
        && pod_net.pod_if_name == spec.if_name
}

/// The pod's interface carries exactly the plumbed addresses (its own
/// link-local one aside).
async fn check_pod_addresses(
    pod: &Handle,
    pod_link: &LinkInfoView,
    pod_net: &PodNet,
) -> Result<(), PlumbError> {
    let mut found: Vec<(IpAddr, u8)> = nl::addresses(pod, pod_link.index)
        .await
        .map_err(netlink_err("listing pod addresses"))?
        .into_iter()
        .filter(|(ip, _)| !is_ipv6_link_local(ip))
        .collect();
    found.sort();
    let mut expected: Vec<(IpAddr, u8)> = family::plumbed(pod_net)
        .map(|(family, address)| (address, family.host_prefix_len))
        .collect();
    expected.sort();
    if found != expected {
        return Err(PlumbError::Drift(format!(
            "{} has addresses {found:?}, expected {expected:?}",
            pod_link.name
        )));
    }
    Ok(())
}

async fn check_pod_route(
    pod: &Handle,
    pod_link: &LinkInfoView,
    family: &Family,
) -> Result<(), PlumbError> {
    let routes = nl::routes(pod, family.version.clone())
        .await
        .map_err(netlink_err("listing pod routes"))?;
    if !routes.iter().any(|r| {
        r.destination == Some(family.tailnet)
            && r.prefix_len == family.tailnet_prefix_len
            && r.oif == Some(pod_link.index)
    }) {
        return Err(PlumbError::Drift(format!(
            "pod route to {}/{} missing",
            family.tailnet, family.tailnet_prefix_len
        )));
    }
    Ok(())
}

pub(super) fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}
