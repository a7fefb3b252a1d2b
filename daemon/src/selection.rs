//! Which pods join the tailnet, and with which hostname and tags.
//!
//! In `annotated` mode (the default) a pod joins when it carries the
//! annotation `tailnet-cni.io/enabled: "true"`. In `namespace` mode, also
//! when its namespace has the label `tailnet-cni.io/enabled: "true"` and the
//! pod does not opt out with `"false"`. In `all` mode every pod joins unless
//! it opts out. The tenant guardrails ([`tenancy`]) then say whether the
//! pod's namespace may join at all, which hostname it gets and which tags it
//! may request.
//!
//! When the runtime passed the pod's annotations with ADD (containerd 1.6+
//! and CRI-O, through the shim), they decide and the API is read only for the
//! namespace's labels, when they can still matter: an API outage then only
//! affects pods whose decision needs them. Otherwise the decision is made
//! from the Kubernetes API, and the pod's UID is checked so a recreated pod
//! of the same name is never mistaken for the one being set up.

pub mod tenancy;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;

use crate::config::{Config, Selection};
use crate::podmgr::peer_routes::RouteRequest;

use self::tenancy::{Admission, Guardrails};

pub use tailnet_cni_proto::selection::{
    ENABLED_ANNOTATION as ENABLED, HOSTNAME_ANNOTATION as HOSTNAME, TAGS_ANNOTATION as TAGS,
};

/// What the API says about a pod and its namespace.
#[derive(Debug, Clone, Default)]
pub struct PodMeta {
    pub uid: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// `None` when they could not be read.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

/// How pods are selected: the mode and the tenant guardrails.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub mode: Selection,
    pub guardrails: Guardrails,
}

impl Policy {
    /// A policy for a cluster without a name (outside Kubernetes, tests):
    /// `allowed_tags` for every namespace, every namespace may opt in, and
    /// requested hostnames go under `{namespace}-`.
    pub fn new(mode: Selection, allowed_tags: Vec<String>) -> Self {
        Self {
            mode,
            guardrails: Guardrails::new("", allowed_tags, Default::default()),
        }
    }

    /// The policy the daemon's config sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            mode: config.selection,
            guardrails: Guardrails::new(
                &config.cluster_name,
                config.allowed_tags.clone(),
                config.tenancy.clone(),
            ),
        }
    }
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Skip,
    Join {
        /// Requested hostname, under `{cluster}-{ns}-` unless the namespace
        /// may choose (else the daemon's `{cluster}-{ns}-{pod}`).
        hostname: Option<String>,
        /// Requested tags, all within the allowlist (else the auth default).
        tags: Vec<String>,
        /// Requested route opt-ins (else the node's defaults).
        routes: RouteRequest,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("pod {namespace}/{name}: UID is {found}, the runtime set up {expected}: the pod was replaced")]
    UidMismatch {
        namespace: String,
        name: String,
        expected: String,
        found: String,
    },
    #[error("pod {namespace}/{name} requests tag {tag:?}, which namespace {namespace:?} may not request (tenancy.tags, else allowed_tags)")]
    TagNotAllowed {
        namespace: String,
        name: String,
        tag: String,
    },
    #[error("pod {namespace}/{name} requests hostname {hostname:?}, which is not a DNS label (1-63 letters, digits or inner hyphens)")]
    InvalidHostname {
        namespace: String,
        name: String,
        hostname: String,
    },
    #[error("pod {namespace}/{name} opts in to the tailnet, but namespace {namespace:?} may not join it (tenancy.namespaces, tenancy.namespace_label)")]
    NamespaceNotAllowed { namespace: String, name: String },
    #[error("pod {namespace}/{name}: whether namespace {namespace:?} may join the tailnet depends on its labels, which cannot be read from the Kubernetes API")]
    NamespaceLabelsUnknown { namespace: String, name: String },
    #[error("reading pod {namespace}/{name} from the Kubernetes API: {source}")]
    Api {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("no Kubernetes API client: {0}")]
    NoClient(String),
}

impl SelectionError {
    /// Whether retrying cannot help: the pod asks for something refused, or
    /// is no longer the pod being set up. Such errors map to CNI code 7
    /// (invalid configuration); the others (the API unreachable or refusing,
    /// no API client) to 11 (try again later).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::UidMismatch { .. }
            | Self::TagNotAllowed { .. }
            | Self::InvalidHostname { .. }
            | Self::NamespaceNotAllowed { .. } => true,
            Self::NamespaceLabelsUnknown { .. } | Self::Api { .. } | Self::NoClient(_) => false,
        }
    }
}

fn flag(map: &BTreeMap<String, String>) -> Option<bool> {
    map.get(ENABLED)
        .map(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Decides for one pod. Pure: unit-tested without an API server.
pub fn decide(
    policy: &Policy,
    namespace: &str,
    name: &str,
    expected_uid: &str,
    meta: &PodMeta,
) -> Result<Decision, SelectionError> {
    if let Some(found) = &meta.uid {
        if !expected_uid.is_empty() && found != expected_uid {
            return Err(SelectionError::UidMismatch {
                namespace: namespace.into(),
                name: name.into(),
                expected: expected_uid.into(),
                found: found.clone(),
            });
        }
    }
    let annotation = flag(&meta.annotations);
    let joins = match (annotation, policy.mode) {
        (Some(explicit), _) => explicit,
        (None, Selection::All) => true,
        (None, Selection::Annotated) => false,
        (None, Selection::Namespace) => meta
            .namespace_labels
            .as_ref()
            .and_then(flag)
            .unwrap_or(false),
    };
    if !joins {
        return Ok(Decision::Skip);
    }
    let guardrails = &policy.guardrails;
    // Guardrails govern Kubernetes namespaces; a container without one
    // (podman) is the node admin's own.
    if !namespace.is_empty() {
        match guardrails.admits(namespace, meta.namespace_labels.as_ref()) {
            Admission::Allowed => {}
            // A pod that asked by itself is told why it cannot; one that
            // only follows the mode or its namespace's label is left alone.
            Admission::Refused if annotation == Some(true) => {
                return Err(SelectionError::NamespaceNotAllowed {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            Admission::Refused => return Ok(Decision::Skip),
            Admission::LabelsUnknown => {
                return Err(SelectionError::NamespaceLabelsUnknown {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
        }
    }
    let requested = meta
        .annotations
        .get(HOSTNAME)
        .map(|h| h.trim())
        .filter(|h| !h.is_empty());
    let hostname = match requested {
        Some(hostname) if !is_dns_label(hostname) => {
            return Err(SelectionError::InvalidHostname {
                namespace: namespace.into(),
                name: name.into(),
                hostname: hostname.into(),
            })
        }
        Some(hostname) => Some(guardrails.hostname(namespace, hostname)),
        None => None,
    };
    let allowed_tags = guardrails.allowed_tags(namespace);
    let mut tags = Vec::new();
    for tag in meta
        .annotations
        .get(TAGS)
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if !allowed_tags.iter().any(|a| a == tag) {
            return Err(SelectionError::TagNotAllowed {
                namespace: namespace.into(),
                name: name.into(),
                tag: tag.into(),
            });
        }
        tags.push(tag.to_string());
    }
    let routes = RouteRequest::from_annotations(&meta.annotations);
    Ok(Decision::Join {
        hostname,
        tags,
        routes,
    })
}

/// Whether `text` can name a node: one DNS label.
fn is_dns_label(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Whether a decision from the runtime's `annotations` depends on the
/// namespace label that opts pods in: only in `namespace` mode, for a pod
/// without the flag.
pub fn needs_namespace_labels(mode: Selection, annotations: &BTreeMap<String, String>) -> bool {
    mode == Selection::Namespace && flag(annotations).is_none()
}

/// Whether a decision from the runtime's `annotations` depends on the
/// namespace's labels at all: for the opt-in label, or for the guardrail
/// label of a pod that would join.
pub fn labels_matter(
    policy: &Policy,
    namespace: &str,
    annotations: &BTreeMap<String, String>,
) -> bool {
    let may_join = match flag(annotations) {
        Some(explicit) => explicit,
        None => policy.mode != Selection::Annotated,
    };
    !namespace.is_empty()
        && (needs_namespace_labels(policy.mode, annotations)
            || (may_join && policy.guardrails.needs_labels(namespace)))
}

/// Decides from the annotations the runtime passed for this very sandbox
/// (so no UID check is needed) and, when [`labels_matter`], the
/// namespace's labels. Pure: unit-tested without an API server.
pub fn decide_from_runtime(
    policy: &Policy,
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    namespace_labels: Option<BTreeMap<String, String>>,
) -> Result<Decision, SelectionError> {
    let meta = PodMeta {
        uid: None,
        annotations: annotations.clone(),
        namespace_labels,
    };
    decide(policy, namespace, name, "", &meta)
}

/// Reads pod metadata from the Kubernetes API.
pub struct Selector {
    policy: Policy,
    client: Option<kube::Client>,
}

impl Selector {
    /// Connects to the API with the in-cluster (or kubeconfig) credentials.
    /// Outside Kubernetes there is no client: pods without Kubernetes
    /// identity then follow `mode` alone.
    pub async fn new(policy: Policy) -> Self {
        let client = match kube::Client::try_default().await {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::info!(%error, "no Kubernetes API: selecting pods by mode alone");
                None
            }
        };
        Self { policy, client }
    }

    /// A selector that never reads the API (outside Kubernetes, tests).
    pub fn without_api(policy: Policy) -> Self {
        Self {
            policy,
            client: None,
        }
    }

    /// Decides for the pod the runtime named. A pod without Kubernetes
    /// identity (a podman container) joins only in `all` mode.
    pub async fn select(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Decision, SelectionError> {
        if namespace.is_empty() || name.is_empty() {
            return Ok(match self.policy.mode {
                Selection::All => Decision::Join {
                    hostname: None,
                    tags: Vec::new(),
                    routes: RouteRequest::default(),
                },
                Selection::Annotated | Selection::Namespace => Decision::Skip,
            });
        }
        let meta = match &self.client {
            Some(client) => fetch(client, namespace, name).await?,
            None if self.policy.mode == Selection::All => PodMeta::default(),
            None => {
                return Err(SelectionError::NoClient(format!(
                    "selection = \"{}\" needs the Kubernetes API to read annotations",
                    tailnet_cni_proto::selection::SelectionMode::from(self.policy.mode).as_str()
                )))
            }
        };
        decide(&self.policy, namespace, name, uid, &meta)
    }

    /// Decides for a pod whose annotations the runtime passed with ADD. The
    /// API is read only for the namespace's labels, and only when they
    /// matter; if they cannot be read the opt-in label counts as absent and
    /// a guardrail that depends on them answers "try again later".
    pub async fn select_from_runtime(
        &self,
        namespace: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Decision, SelectionError> {
        let namespace_labels = if labels_matter(&self.policy, namespace, annotations) {
            match &self.client {
                Some(client) => namespace_labels(client, namespace).await,
                None => None,
            }
        } else {
            Some(BTreeMap::new())
        };
        decide_from_runtime(&self.policy, namespace, name, annotations, namespace_labels)
    }
}

/// The namespace's labels; `None` (and a warning) when they cannot be read.
async fn namespace_labels(
    client: &kube::Client,
    namespace: &str,
) -> Option<BTreeMap<String, String>> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.get(namespace).await {
        Ok(ns) => Some(ns.metadata.labels.unwrap_or_default()),
        Err(error) => {
            tracing::warn!(%error, namespace, "cannot read namespace labels");
            None
        }
    }
}

async fn fetch(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<PodMeta, SelectionError> {
    let api_err = |source: kube::Error| SelectionError::Api {
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(name).await.map_err(api_err)?;
    Ok(PodMeta {
        uid: pod.metadata.uid,
        annotations: pod.metadata.annotations.unwrap_or_default(),
        namespace_labels: namespace_labels(client, namespace).await,
    })
}

#[cfg(test)]
mod tests;
