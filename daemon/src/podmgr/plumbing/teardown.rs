//! DEL (and setup's rollback): a pod's rules, its host links (which take
//! the pod end, addresses, neighbours and routes with them), a pod end
//! orphaned some other way, and whatever is left in the pod's table.

use std::collections::HashSet;
use std::path::Path;

use netlink_packet_route::link::InfoKind;
use rtnetlink::Handle;
use tracing::{debug, info, warn};

use super::family::{self, Family};
use super::{
    alias_for, is_pod_table, netlink_err, open_pod_netns, tun_op, PlumbError, Plumber, PodNet,
    TeardownErrors,
};
use crate::podmgr::nl::{self, format_mac, LinkInfoView};
use crate::podmgr::tun;

impl Plumber {
    /// Removes a pod's plumbing. Keeps going after errors, treats missing
    /// pieces (and a missing netns) as already removed, and returns every
    /// error it met.
    pub async fn teardown(
        &self,
        pod_net: &PodNet,
        netns_path: Option<&Path>,
    ) -> Result<(), TeardownErrors> {
        let pod = match netns_path {
            Some(path) => match open_pod_netns(path).await {
                Ok((_netns, pod)) => Some(pod),
                Err(error) => {
                    debug!(netns = %path.display(), %error, "pod netns gone; tearing down the host side only");
                    None
                }
            },
            None => None,
        };
        let result = self.teardown_inner(pod_net, pod.as_ref()).await;
        match &result {
            Ok(()) => info!(container_id = %pod_net.container_id, "pod network torn down"),
            Err(errors) => {
                warn!(container_id = %pod_net.container_id, %errors, "pod network teardown incomplete")
            }
        }
        result
    }

    pub(super) async fn teardown_inner(
        &self,
        pod_net: &PodNet,
        pod: Option<&Handle>,
    ) -> Result<(), TeardownErrors> {
        let mut errors = Vec::new();
        self.delete_rules(pod_net, &mut errors).await;
        self.delete_host_links(pod_net, &mut errors).await;
        if let Some(pod) = pod {
            delete_orphaned_pod_end(pod, pod_net, &mut errors).await;
        }
        self.delete_table_routes(pod_net, &mut errors).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TeardownErrors(errors))
        }
    }

    /// Rules outlive their devices: every rule of the pod's table or naming
    /// one of its host links, in each family it was plumbed with.
    async fn delete_rules(&self, pod_net: &PodNet, errors: &mut Vec<PlumbError>) {
        let names: HashSet<&str> = pod_net.host_links().into_iter().collect();
        for family in plumbed_families(pod_net) {
            let rules = match self.host_rules(family.version.clone()).await {
                Ok(rules) => rules,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for rule in rules.iter() {
                let ours = is_pod_table(rule.table, pod_net)
                    || rule.iif.as_deref().is_some_and(|iif| names.contains(iif));
                if ours {
                    if let Err(e) = self.delete_host_rule(rule).await {
                        errors.push(e);
                    }
                }
            }
        }
    }

    /// Deleting the host veth takes its pod end with it. A link of ours by
    /// name but marked for another container is left alone.
    async fn delete_host_links(&self, pod_net: &PodNet, errors: &mut Vec<PlumbError>) {
        let ours = alias_for(&pod_net.container_id);
        for name in pod_net.host_links() {
            match nl::link_by_name(&self.host, name).await {
                Ok(Some(link)) => match &link.alias {
                    Some(alias) if *alias != ours => errors.push(PlumbError::NameCollision {
                        link: name.to_string(),
                        alias: alias.clone(),
                    }),
                    _ => {
                        if let Err(e) = self.delete_host_link(&link).await {
                            errors.push(e);
                        }
                    }
                },
                Ok(None) => {}
                Err(e) => errors.push(netlink_err(format!("looking up {name}"))(e)),
            }
        }
    }

    /// Routes normally vanish with their devices; sweep what is left.
    async fn delete_table_routes(&self, pod_net: &PodNet, errors: &mut Vec<PlumbError>) {
        for family in plumbed_families(pod_net) {
            let routes = match self.host_routes(family.version.clone()).await {
                Ok(routes) => routes,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for route in routes.iter().filter(|r| is_pod_table(r.table, pod_net)) {
                if let Err(e) = nl::delete_route(&self.host, route.message.clone()).await {
                    errors.push(netlink_err(format!(
                        "deleting a {} route in table {}",
                        family.name, pod_net.table
                    ))(e));
                }
            }
        }
    }

    pub(super) async fn delete_host_link(&self, link: &LinkInfoView) -> Result<(), PlumbError> {
        match nl::delete_link(&self.host, link.index).await {
            Ok(()) => Ok(()),
            Err(e) if link.kind == Some(InfoKind::Tun) => {
                // Some kernels refuse RTM_DELLINK for TUNs; dropping
                // persistence removes it once no descriptor holds it.
                debug!(tun = %link.name, error = %e, "netlink delete refused; clearing persistence");
                tun_op(&link.name, "release", tun::release_persistent_tun).await
            }
            Err(e) => Err(netlink_err(format!("deleting {}", link.name))(e)),
        }
    }

    pub(super) async fn delete_host_rule(&self, rule: &nl::RuleView) -> Result<(), PlumbError> {
        let description = format!("deleting rule iif {:?} lookup {}", rule.iif, rule.table);
        nl::delete_rule(&self.host, rule.message.clone())
            .await
            .map_err(netlink_err(description))
    }
}

/// The families the pod was plumbed with that the kernel still has (one
/// booted without IPv6 since holds no IPv6 rule or route to remove).
fn plumbed_families(pod_net: &PodNet) -> impl Iterator<Item = &'static Family> + '_ {
    family::plumbed(pod_net)
        .map(|(family, _)| family)
        .filter(|family| family.on_node())
}

/// A pod end that lost its host peer some other way. Only the very device
/// we created (same MAC) is ours: an interface that already existed when a
/// setup failed belongs to someone else.
async fn delete_orphaned_pod_end(pod: &Handle, pod_net: &PodNet, errors: &mut Vec<PlumbError>) {
    if pod_net.pod_mac.is_empty() {
        return;
    }
    match nl::link_by_name(pod, &pod_net.pod_if_name).await {
        Ok(Some(link))
            if link.kind == Some(InfoKind::Veth)
                && link.mac.map(|m| format_mac(&m)).as_deref()
                    == Some(pod_net.pod_mac.as_str()) =>
        {
            if let Err(e) = nl::delete_link(pod, link.index).await {
                errors.push(netlink_err(format!(
                    "deleting {} in pod",
                    pod_net.pod_if_name
                ))(e));
            }
        }
        Ok(_) => {}
        Err(e) => errors.push(netlink_err(format!(
            "looking up {} in pod",
            pod_net.pod_if_name
        ))(e)),
    }
}
