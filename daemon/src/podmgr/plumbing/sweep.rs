//! Crash recovery and CNI GC: the host links and rules of pods no record
//! owns any more.

use std::collections::HashSet;

use tracing::info;

use super::family;
use super::{PlumbError, Plumber, StaleCleanup};
use crate::podmgr::naming::is_owned_link_name;

impl Plumber {
    /// Every `tnt*`/`tnv*` link in the host netns.
    pub async fn list_owned_links(&self) -> Result<Vec<String>, PlumbError> {
        let mut names: Vec<String> = self
            .host_links()
            .await?
            .iter()
            .map(|link| link.name.clone())
            .filter(|name| is_owned_link_name(name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes every owned link not in `keep`, and every rule whose input
    /// interface is an owned name not in `keep` (rules outlive their
    /// devices). For crash recovery and CNI GC.
    pub async fn remove_stale(&self, keep: &HashSet<String>) -> StaleCleanup {
        let mut cleanup = StaleCleanup::default();
        for family in family::on_node() {
            let rules = match self.host_rules(family.version.clone()).await {
                Ok(rules) => rules,
                Err(e) => {
                    cleanup.errors.push(e);
                    continue;
                }
            };
            for rule in rules.iter() {
                let Some(iif) = rule.iif.clone() else {
                    continue;
                };
                if !is_owned_link_name(&iif) || keep.contains(&iif) {
                    continue;
                }
                let table = rule.table;
                match self.delete_host_rule(rule).await {
                    Ok(()) => cleanup.removed_rules.push(format!("{iif} -> {table}")),
                    Err(e) => cleanup.errors.push(e),
                }
            }
        }
        match self.host_links().await {
            Ok(links) => {
                for link in links.iter() {
                    if !is_owned_link_name(&link.name) || keep.contains(&link.name) {
                        continue;
                    }
                    match self.delete_host_link(link).await {
                        Ok(()) => cleanup.removed_links.push(link.name.clone()),
                        Err(e) => cleanup.errors.push(e),
                    }
                }
            }
            Err(e) => cleanup.errors.push(e),
        }
        if !cleanup.removed_links.is_empty() || !cleanup.removed_rules.is_empty() {
            info!(links = ?cleanup.removed_links, rules = ?cleanup.removed_rules, "removed stale pod plumbing");
        }
        cleanup
    }
}
