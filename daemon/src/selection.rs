//! Which pods join the tailnet, and with which hostname and tags.
//!
//! In `annotated` mode (the default) a pod joins when it carries the
//! annotation `tailnet-cni.io/enabled: "true"`, or when its namespace has the
//! label `tailnet-cni.io/enabled: "true"` and the pod does not opt out with
//! `"false"`. In `all` mode every pod joins unless it opts out.
//!
//! When the runtime passed the pod's annotations with ADD (containerd 1.6+
//! and CRI-O, through the shim), they decide and the API is read only for the
//! namespace label, when that can still matter: an API outage then only
//! affects unannotated pods of labelled namespaces. Otherwise the decision is
//! made from the Kubernetes API, and the pod's UID is checked so a recreated
//! pod of the same name is never mistaken for the one being set up.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;

use crate::config::Selection;
use crate::podmgr::peer_routes::RouteRequest;

pub use tailnet_cni_proto::selection::{
    ENABLED_ANNOTATION as ENABLED, HOSTNAME_ANNOTATION as HOSTNAME, TAGS_ANNOTATION as TAGS,
};

/// What the API says about a pod and its namespace.
#[derive(Debug, Clone, Default)]
pub struct PodMeta {
    pub uid: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub namespace_labels: BTreeMap<String, String>,
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Skip,
    Join {
        /// Requested hostname (else the daemon's `{cluster}-{ns}-{pod}`).
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
    #[error("pod {namespace}/{name} requests tag {tag:?}, which allowed_tags does not allow")]
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
            | Self::InvalidHostname { .. } => true,
            Self::Api { .. } | Self::NoClient(_) => false,
        }
    }
}

fn flag(map: &BTreeMap<String, String>) -> Option<bool> {
    map.get(ENABLED)
        .map(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Decides for one pod. Pure: unit-tested without an API server.
pub fn decide(
    mode: Selection,
    allowed_tags: &[String],
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
    let joins = match (flag(&meta.annotations), mode) {
        (Some(explicit), _) => explicit,
        (None, Selection::All) => true,
        (None, Selection::Annotated) => flag(&meta.namespace_labels).unwrap_or(false),
    };
    if !joins {
        return Ok(Decision::Skip);
    }
    let hostname = meta
        .annotations
        .get(HOSTNAME)
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    if let Some(hostname) = &hostname {
        if !is_dns_label(hostname) {
            return Err(SelectionError::InvalidHostname {
                namespace: namespace.into(),
                name: name.into(),
                hostname: hostname.clone(),
            });
        }
    }
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
/// namespace label: only in `annotated` mode, for a pod without the flag.
pub fn needs_namespace_labels(mode: Selection, annotations: &BTreeMap<String, String>) -> bool {
    mode == Selection::Annotated && flag(annotations).is_none()
}

/// Decides from the annotations the runtime passed for this very sandbox
/// (so no UID check is needed) and, when [`needs_namespace_labels`], the
/// namespace's labels. Pure: unit-tested without an API server.
pub fn decide_from_runtime(
    mode: Selection,
    allowed_tags: &[String],
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    namespace_labels: BTreeMap<String, String>,
) -> Result<Decision, SelectionError> {
    let meta = PodMeta {
        uid: None,
        annotations: annotations.clone(),
        namespace_labels,
    };
    decide(mode, allowed_tags, namespace, name, "", &meta)
}

/// Reads pod metadata from the Kubernetes API.
pub struct Selector {
    mode: Selection,
    allowed_tags: Vec<String>,
    client: Option<kube::Client>,
}

impl Selector {
    /// Connects to the API with the in-cluster (or kubeconfig) credentials.
    /// Outside Kubernetes there is no client: pods without Kubernetes
    /// identity then follow `mode` alone.
    pub async fn new(mode: Selection, allowed_tags: Vec<String>) -> Self {
        let client = match kube::Client::try_default().await {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::info!(%error, "no Kubernetes API: selecting pods by mode alone");
                None
            }
        };
        Self {
            mode,
            allowed_tags,
            client,
        }
    }

    pub fn without_api(mode: Selection, allowed_tags: Vec<String>) -> Self {
        Self {
            mode,
            allowed_tags,
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
            return Ok(match self.mode {
                Selection::All => Decision::Join {
                    hostname: None,
                    tags: Vec::new(),
                    routes: RouteRequest::default(),
                },
                Selection::Annotated => Decision::Skip,
            });
        }
        let meta = match &self.client {
            Some(client) => fetch(client, namespace, name).await?,
            None if self.mode == Selection::All => PodMeta::default(),
            None => {
                return Err(SelectionError::NoClient(
                    "selection = \"annotated\" needs the Kubernetes API to read annotations".into(),
                ))
            }
        };
        decide(self.mode, &self.allowed_tags, namespace, name, uid, &meta)
    }

    /// Decides for a pod whose annotations the runtime passed with ADD. The
    /// API is read only for the namespace label, and only when it matters;
    /// if it cannot be read the label counts as absent.
    pub async fn select_from_runtime(
        &self,
        namespace: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Decision, SelectionError> {
        let namespace_labels = match &self.client {
            Some(client)
                if !namespace.is_empty() && needs_namespace_labels(self.mode, annotations) =>
            {
                namespace_labels(client, namespace).await
            }
            _ => BTreeMap::new(),
        };
        decide_from_runtime(
            self.mode,
            &self.allowed_tags,
            namespace,
            name,
            annotations,
            namespace_labels,
        )
    }
}

/// The namespace's labels. The label is a convenience: if it cannot be
/// read, the pod's own annotation still decides.
async fn namespace_labels(client: &kube::Client, namespace: &str) -> BTreeMap<String, String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.get(namespace).await {
        Ok(ns) => ns.metadata.labels.unwrap_or_default(),
        Err(error) => {
            tracing::warn!(%error, namespace, "cannot read namespace labels");
            BTreeMap::new()
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
