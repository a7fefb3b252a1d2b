//! Which tailnet pods run without the plugin, decided without I/O.
//!
//! A pod is missing the plugin when it is scheduled to this node, is
//! `Running` and not being deleted, does not use the host's network (the
//! runtime never calls a CNI plugin for those), opted in by the rules of [`crate::selection`], and no
//! pod record here names it. A pod whose selection would be refused (a tag
//! not allowed, say) is not counted: the plugin would not have set it up
//! either.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

use super::PodRef;
use crate::selection::{decide_from_runtime, labels_matter, Decision, Policy};

/// A pod as the node's pod list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPod {
    pub pod: PodRef,
    /// `status.phase` is `Running`.
    pub running: bool,
    /// `spec.hostNetwork`: no CNI call is ever made for it.
    pub host_network: bool,
    /// `metadata.deletionTimestamp` is set: it is going away already.
    pub terminating: bool,
    pub annotations: BTreeMap<String, String>,
}

impl ListedPod {
    /// Reads what detection needs from an API object; `None` for an object
    /// without a namespace or name.
    pub fn from_api(pod: &Pod) -> Option<Self> {
        let namespace = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        Some(Self {
            pod: PodRef {
                namespace,
                name,
                uid: pod.metadata.uid.clone().unwrap_or_default(),
            },
            running: pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Running"),
            host_network: pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        })
    }
}

/// Whether a record for `known` stands for `listed`: same UID when both
/// have one, else the same namespace and name.
fn same_pod(known: &PodRef, listed: &PodRef) -> bool {
    if !known.uid.is_empty() && !listed.uid.is_empty() {
        return known.uid == listed.uid;
    }
    known.namespace == listed.namespace && known.name == listed.name
}

/// Running pods with a pod network, not being deleted, and no record here:
/// the only ones whose selection still needs deciding.
pub fn unrecorded<'a>(listed: &'a [ListedPod], known: &[PodRef]) -> Vec<&'a ListedPod> {
    listed
        .iter()
        .filter(|p| p.running && !p.host_network && !p.terminating)
        .filter(|p| !known.iter().any(|k| same_pod(k, &p.pod)))
        .collect()
}

/// The namespaces whose labels decide for some of `candidates`.
pub fn namespaces_to_read(policy: &Policy, candidates: &[&ListedPod]) -> BTreeSet<String> {
    candidates
        .iter()
        .filter(|p| labels_matter(policy, &p.pod.namespace, &p.annotations))
        .map(|p| p.pod.namespace.clone())
        .collect()
}

/// The candidates that opted in: these run without the plugin. A namespace
/// missing from `namespace_labels` counts as unlabelled.
pub fn missing_plugin(
    policy: &Policy,
    candidates: &[&ListedPod],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<PodRef> {
    candidates
        .iter()
        .filter(|p| {
            let labels = namespace_labels
                .get(&p.pod.namespace)
                .cloned()
                .unwrap_or_default();
            matches!(
                decide_from_runtime(
                    policy,
                    &p.pod.namespace,
                    &p.pod.name,
                    &p.annotations,
                    Some(labels)
                ),
                Ok(Decision::Join { .. })
            )
        })
        .map(|p| p.pod.clone())
        .collect()
}

#[cfg(test)]
mod tests;
