//! Tenant guardrails: what a namespace's pods may ask of the tailnet.
//!
//! The cluster admin decides, in the daemon's config, which namespaces may
//! put pods on the tailnet (a list, or a namespace label that only someone
//! allowed to edit namespaces can set), which namespaces' pods may choose
//! their hostname (the others get theirs under `{cluster}-{namespace}-`),
//! and which tags each namespace may request.

use std::collections::BTreeMap;

use crate::config::Tenancy;
use crate::podmgr::hostname::namespaced_hostname;

/// Whether a namespace may put pods on the tailnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    Refused,
    /// Only the namespace's labels can tell, and they could not be read.
    LabelsUnknown,
}

/// The guardrails of one cluster, as configured.
#[derive(Debug, Clone, Default)]
pub struct Guardrails {
    cluster: String,
    allowed_tags: Vec<String>,
    tenancy: Tenancy,
}

impl Guardrails {
    /// `allowed_tags` holds for every namespace without its own list.
    pub fn new(cluster: &str, allowed_tags: Vec<String>, tenancy: Tenancy) -> Self {
        Self {
            cluster: cluster.to_string(),
            allowed_tags,
            tenancy,
        }
    }

    fn listed(&self, namespace: &str) -> bool {
        self.tenancy
            .namespaces
            .iter()
            .flatten()
            .any(|listed| listed == namespace)
    }

    fn restricted(&self) -> bool {
        self.tenancy.namespaces.is_some() || self.tenancy.namespace_label.is_some()
    }

    /// Whether admitting `namespace` depends on its labels.
    pub fn needs_labels(&self, namespace: &str) -> bool {
        self.tenancy.namespace_label.is_some() && !self.listed(namespace)
    }

    /// Whether `namespace` may put pods on the tailnet; `labels` are its
    /// labels, `None` when they could not be read.
    pub fn admits(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> Admission {
        if !self.restricted() || self.listed(namespace) {
            return Admission::Allowed;
        }
        let Some(label) = &self.tenancy.namespace_label else {
            return Admission::Refused;
        };
        match labels {
            None => Admission::LabelsUnknown,
            Some(labels) => match labels.get(label) {
                Some(value) if value.trim().eq_ignore_ascii_case("true") => Admission::Allowed,
                _ => Admission::Refused,
            },
        }
    }

    /// The hostname a pod of `namespace` gets for the one it requested: as
    /// requested where the namespace may choose, else under its prefix.
    pub fn hostname(&self, namespace: &str, requested: &str) -> String {
        let chooses = self
            .tenancy
            .hostname_namespaces
            .iter()
            .any(|listed| listed == namespace);
        if chooses {
            requested.to_string()
        } else {
            namespaced_hostname(&self.cluster, namespace, requested)
        }
    }

    /// The tags a pod of `namespace` may request.
    pub fn allowed_tags(&self, namespace: &str) -> &[String] {
        self.tenancy
            .tags
            .get(namespace)
            .unwrap_or(&self.allowed_tags)
    }
}
