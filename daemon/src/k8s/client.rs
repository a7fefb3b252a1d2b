//! The API calls the daemon makes for visibility, each one request with a
//! typed error: create an Event, merge-patch a pod, list this node's pods,
//! read a namespace's labels, evict a pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;

/// Which call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    CreateEvent,
    PatchPod,
    ListPods,
    GetNamespace,
    EvictPod,
}

/// A call the API server refused or that never reached it.
#[derive(Debug, thiserror::Error)]
#[error("Kubernetes API call {call:?} failed: {source}")]
pub struct ApiError {
    pub call: Call,
    #[source]
    pub source: Box<kube::Error>,
}

impl ApiError {
    fn of(call: Call) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self {
            call,
            source: Box::new(source),
        }
    }
}

/// The daemon's client for these calls.
#[derive(Clone)]
pub struct KubeApi {
    client: kube::Client,
}

impl KubeApi {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// `POST /api/v1/namespaces/{ns}/events`.
    pub async fn create_event(&self, event: &Event) -> Result<(), ApiError> {
        let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        events
            .create(&PostParams::default(), event)
            .await
            .map(drop)
            .map_err(ApiError::of(Call::CreateEvent))
    }

    /// `PATCH /api/v1/namespaces/{ns}/pods/{name}` with
    /// `application/merge-patch+json`.
    pub async fn merge_patch_pod(
        &self,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<(), ApiError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(drop)
            .map_err(ApiError::of(Call::PatchPod))
    }

    /// `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`: every pod
    /// scheduled to this node, in every namespace.
    pub async fn pods_on_node(&self, node: &str) -> Result<Vec<Pod>, ApiError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
        pods.list(&params)
            .await
            .map(|list| list.items)
            .map_err(ApiError::of(Call::ListPods))
    }

    /// `GET /api/v1/namespaces/{ns}`: the namespace's labels.
    pub async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .get(namespace)
            .await
            .map(|ns| ns.metadata.labels.unwrap_or_default())
            .map_err(ApiError::of(Call::GetNamespace))
    }

    /// `POST /api/v1/namespaces/{ns}/pods/{name}/eviction` with a policy/v1
    /// Eviction: honours the pod's disruption budgets, unlike a delete.
    pub async fn evict_pod(&self, namespace: &str, name: &str) -> Result<(), ApiError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // Built here rather than by `Api::evict`, whose body names neither
        // apiVersion nor kind.
        let eviction = Eviction {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            delete_options: None,
        };
        pods.create_subresource::<_, serde_json::Value>(
            "eviction",
            name,
            &PostParams::default(),
            &eviction,
        )
        .await
        .map(drop)
        .map_err(ApiError::of(Call::EvictPod))
    }
}
