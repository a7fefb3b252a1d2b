//! Which pods join the tailnet, and with which hostname and tags.
//!
//! In `annotated` mode (the default) a pod joins when it carries the
//! annotation `tailnet-cni.io/enabled: "true"`, or when its namespace has the
//! label `tailnet-cni.io/enabled: "true"` and the pod does not opt out with
//! `"false"`. In `all` mode every pod joins unless it opts out. The decision
//! is made from the Kubernetes API, and the pod's UID is checked so a
//! recreated pod of the same name is never mistaken for the one being set up.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;

use crate::config::Selection;

pub const ENABLED: &str = "tailnet-cni.io/enabled";
pub const HOSTNAME: &str = "tailnet-cni.io/hostname";
pub const TAGS: &str = "tailnet-cni.io/tags";

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
    #[error("reading pod {namespace}/{name} from the Kubernetes API: {source}")]
    Api {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("no Kubernetes API client: {0}")]
    NoClient(String),
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
    Ok(Decision::Join { hostname, tags })
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
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // The namespace label is a convenience: if it cannot be read, the pod's
    // own annotation still decides.
    let namespace_labels = match namespaces.get(namespace).await {
        Ok(ns) => ns.metadata.labels.unwrap_or_default(),
        Err(error) => {
            tracing::warn!(%error, namespace, "cannot read namespace labels");
            BTreeMap::new()
        }
    };
    Ok(PodMeta {
        uid: pod.metadata.uid,
        annotations: pod.metadata.annotations.unwrap_or_default(),
        namespace_labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(annotations: &[(&str, &str)], ns_labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: Some("uid-1".into()),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            namespace_labels: ns_labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn run(mode: Selection, m: &PodMeta) -> Result<Decision, SelectionError> {
        decide(
            mode,
            &["tag:k8s-pod".into(), "tag:web".into()],
            "default",
            "web",
            "uid-1",
            m,
        )
    }

    #[test]
    fn annotated_mode_needs_an_annotation_or_namespace_label() {
        assert_eq!(
            run(Selection::Annotated, &meta(&[], &[])).unwrap(),
            Decision::Skip
        );
        assert!(matches!(
            run(Selection::Annotated, &meta(&[(ENABLED, "true")], &[])).unwrap(),
            Decision::Join { .. }
        ));
        assert!(matches!(
            run(Selection::Annotated, &meta(&[], &[(ENABLED, "true")])).unwrap(),
            Decision::Join { .. }
        ));
        // A pod can opt out of a labelled namespace.
        assert_eq!(
            run(
                Selection::Annotated,
                &meta(&[(ENABLED, "false")], &[(ENABLED, "true")])
            )
            .unwrap(),
            Decision::Skip
        );
    }

    #[test]
    fn all_mode_takes_every_pod_but_the_opted_out() {
        assert!(matches!(
            run(Selection::All, &meta(&[], &[])).unwrap(),
            Decision::Join { .. }
        ));
        assert_eq!(
            run(Selection::All, &meta(&[(ENABLED, "false")], &[])).unwrap(),
            Decision::Skip
        );
    }

    #[test]
    fn hostname_and_allowed_tags_come_from_annotations() {
        let m = meta(
            &[
                (ENABLED, "true"),
                (HOSTNAME, " nginx "),
                (TAGS, "tag:web, tag:k8s-pod"),
            ],
            &[],
        );
        assert_eq!(
            run(Selection::Annotated, &m).unwrap(),
            Decision::Join {
                hostname: Some("nginx".into()),
                tags: vec!["tag:web".into(), "tag:k8s-pod".into()],
            }
        );
    }

    #[test]
    fn tags_outside_the_allowlist_are_refused_by_name() {
        let m = meta(&[(ENABLED, "true"), (TAGS, "tag:admin")], &[]);
        let err = run(Selection::Annotated, &m).unwrap_err();
        assert!(err.to_string().contains("tag:admin"), "{err}");
    }

    #[test]
    fn a_replaced_pod_is_detected_by_uid() {
        let mut m = meta(&[(ENABLED, "true")], &[]);
        m.uid = Some("uid-2".into());
        let err = run(Selection::Annotated, &m).unwrap_err();
        assert!(matches!(err, SelectionError::UidMismatch { .. }));
    }

    #[tokio::test]
    async fn pods_outside_kubernetes_follow_the_mode() {
        let all = Selector::without_api(Selection::All, vec![]);
        assert!(matches!(
            all.select("", "podman-ctr", "").await.unwrap(),
            Decision::Join { .. }
        ));
        let annotated = Selector::without_api(Selection::Annotated, vec![]);
        assert_eq!(
            annotated.select("", "podman-ctr", "").await.unwrap(),
            Decision::Skip
        );
        assert!(matches!(
            annotated.select("default", "web", "u").await,
            Err(SelectionError::NoClient(_))
        ));
    }
}
