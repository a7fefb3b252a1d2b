//! The daemon as a Kubernetes citizen: Events on pods, annotations with their
//! tailnet addresses, and the watch for tailnet pods that started without the
//! plugin.
//!
//! Nothing here is on the CNI path: the pod manager hands join and failure
//! reports to a bounded queue ([`reporter`]) and returns; a worker posts them.
//! When the API server is down the queue fills and reports are dropped and
//! counted, never waited for.
//!
//! - [`client`]: the few API calls this needs, with typed errors.
//! - [`events`]: the core/v1 Event bodies (pure).
//! - [`annotate`]: the merge patch of a pod's tailnet annotations (pure).
//! - [`reporter`]: the queue and the worker that posts Events and patches.
//! - [`detect`]: which opted-in, running pods have no record here (pure).
//! - [`watchdog`]: the periodic pass over this node's pods.

pub mod annotate;
pub mod client;
pub mod detect;
pub mod events;
pub mod reporter;
pub mod watchdog;

#[cfg(test)]
mod contract_tests;

use serde::Deserialize;

/// The `[kubernetes]` table of the daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeConfig {
    /// This node's name (else the `NODE_NAME` environment variable, which
    /// the DaemonSet sets from `spec.nodeName`).
    pub node_name: Option<String>,
    /// Post an Event on each pod that joins the tailnet or fails to.
    pub events: bool,
    /// Annotate each pod with its tailnet addresses and hostname.
    pub annotate: bool,
    /// How many reports wait for the API at most; more are dropped.
    pub queue_capacity: usize,
    /// Seconds between passes that look for tailnet pods running without
    /// the plugin; 0 turns the watch off.
    pub missing_plugin_interval_secs: u64,
    /// Evict such pods (through the Eviction API, so disruption budgets
    /// hold) so that they are created again with the plugin.
    pub evict_missing_plugin: bool,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            events: true,
            annotate: true,
            queue_capacity: 256,
            missing_plugin_interval_secs: 60,
            evict_missing_plugin: false,
        }
    }
}

impl KubeConfig {
    /// The node's name: configured, else `NODE_NAME`.
    pub fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|name| !name.trim().is_empty())
    }
}

/// A pod as the API names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// Empty when the runtime did not pass it.
    pub uid: String,
}

impl PodRef {
    /// Whether the pod has a Kubernetes identity (a podman container has none).
    pub fn is_kubernetes(&self) -> bool {
        !self.namespace.is_empty() && !self.name.is_empty()
    }
}
