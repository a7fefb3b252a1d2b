//! The `local` table's rule, moved behind the pods' rules.
//!
//! The kernel looks up table `local` first (rule 0): a packet a pod sends to
//! any address of the node (a node-local tailscaled's 100.x or fd7a address,
//! the node's own IP, anything in `local`) would be delivered to the host
//! before the pod's `iif` rule could send it to its TUN. As VRF setups and
//! Cilium do, the unconditional `lookup local` rule is re-added right behind
//! the pods' rules and the one ahead of them deleted, in that order, so the
//! node is never without one. Done per family on every setup; a node where
//! it already sits behind (moved by us or by other software) is left alone.

use rtnetlink::IpVersion;
use tracing::info;

use super::family::Family;
use super::{netlink_err, PlumbError, Plumber};
use crate::podmgr::nl::{self, is_exists, is_not_found, RuleView};

/// The kernel's `local` table (`RT_TABLE_LOCAL`).
pub(super) const LOCAL_TABLE: u32 = 255;

/// The unconditional `lookup local` rules that a pod rule at `pod_priority`
/// would not be ahead of (equal priorities are evaluated in insertion
/// order, and the kernel's own rule came first).
pub(super) fn local_rules_ahead(rules: &[RuleView], pod_priority: u32) -> Vec<&RuleView> {
    rules
        .iter()
        .filter(|rule| is_local_lookup(rule) && rule.priority.unwrap_or(0) <= pod_priority)
        .collect()
}

fn is_local_lookup(rule: &RuleView) -> bool {
    rule.matches_all && rule.table == LOCAL_TABLE
}

/// Where the moved rule goes: right behind the pods' rules, so that only
/// rules at the same few priorities change places with it.
fn moved_priority(pod_priority: u32) -> u32 {
    pod_priority.saturating_add(1)
}

impl Plumber {
    /// Makes sure no unconditional `lookup local` rule of `family` sits
    /// ahead of the pods' rules at `pod_priority`.
    pub(super) async fn move_local_rule_behind(
        &self,
        family: &Family,
        pod_priority: u32,
    ) -> Result<(), PlumbError> {
        let rules = self.host_rules(family.version.clone()).await?;
        let ahead = local_rules_ahead(&rules, pod_priority);
        if ahead.is_empty() {
            return Ok(());
        }
        let behind = rules.iter().any(|rule| {
            is_local_lookup(rule) && rule.priority.is_some_and(|prio| prio > pod_priority)
        });
        if !behind {
            let priority = moved_priority(pod_priority);
            add_local_rule(self, family.version.clone(), priority)
                .await
                .map_err(netlink_err(format!(
                    "adding {} rule {priority}: lookup local",
                    family.name
                )))?;
            info!(
                family = family.name,
                priority, "moved the local table's rule behind the pods' rules"
            );
        }
        for rule in ahead {
            // A concurrent setup, answered by the same dump, may have
            // deleted it first.
            match nl::delete_rule(&self.host, rule.message.clone()).await {
                Err(error) if is_not_found(&error) => Ok(()),
                other => other,
            }
            .map_err(netlink_err(format!(
                "deleting {} rule {}: lookup local",
                family.name,
                rule.priority.unwrap_or(0)
            )))?;
        }
        Ok(())
    }
}

/// A concurrent setup may have added the same rule first.
async fn add_local_rule(
    plumber: &Plumber,
    version: IpVersion,
    priority: u32,
) -> Result<(), rtnetlink::Error> {
    match nl::add_lookup_rule(&plumber.host, version, LOCAL_TABLE, priority).await {
        Err(error) if is_exists(&error) => Ok(()),
        other => other,
    }
}
