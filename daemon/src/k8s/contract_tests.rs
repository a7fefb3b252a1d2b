//! Contract tests: every call against a local HTTP double that answers as
//! the Kubernetes API reference documents (paths, verbs, content types,
//! field selectors, Event and Eviction bodies), and fails the request
//! otherwise.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::client::KubeApi;
use super::reporter::{Posting, Reporter};
use super::watchdog::{Watchdog, WatchdogConfig};
use super::PodRef;
use crate::config::Selection;
use crate::metrics::Metrics;
use crate::podmgr::manager::seams::JoinReports;
use crate::podmgr::state::{PodPhase, PodRecord, StateStore, RECORD_VERSION};
use crate::selection::Policy;
use crate::selection::ENABLED;

/// One request as the double saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: Option<String>,
    content_type: Option<String>,
    body: Value,
}

/// The API server double: records each request and answers from `pods`.
#[derive(Clone, Default)]
struct Double {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The PodList items for `GET /api/v1/pods`.
    pods: Arc<Mutex<Vec<Value>>>,
}

impl Double {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let double = self.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let double = double.clone();
                async move { double.answer(method, uri, headers, body) }
            },
        );
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serving the API double");
        });
        addr
    }

    /// An accepted eviction deletes the pod: it lists with a
    /// `deletionTimestamp` from now on.
    fn mark_deleted(&self, ns: &str, name: &str) {
        if let Ok(mut pods) = self.pods.lock() {
            for pod in pods.iter_mut() {
                let meta = &mut pod["metadata"];
                if meta["namespace"] == ns && meta["name"] == name {
                    meta["deletionTimestamp"] = json!("2026-01-02T03:04:05Z");
                }
            }
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn answer(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(Seen {
                method: method.clone(),
                path: uri.path().to_string(),
                query: uri.query().map(str::to_string),
                content_type: content_type.clone(),
                body: parsed.clone(),
            });
        }
        let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
        let json_body = content_type.as_deref() == Some("application/json");
        match (method.as_str(), segments.as_slice()) {
            ("POST", ["api", "v1", "namespaces", ns, "events"]) if json_body => {
                let ok = parsed["apiVersion"] == "v1"
                    && parsed["kind"] == "Event"
                    && parsed["metadata"]["namespace"] == *ns
                    && parsed["involvedObject"]["kind"] == "Pod";
                if ok {
                    created(parsed)
                } else {
                    invalid("not a core/v1 Event for a pod of this namespace")
                }
            }
            ("PATCH", ["api", "v1", "namespaces", ns, "pods", name])
                if content_type.as_deref() == Some("application/merge-patch+json") =>
            {
                let mut pod = pod_object(ns, name, "u1", &[], "Running");
                pod["metadata"]["annotations"] = parsed["metadata"]["annotations"].clone();
                respond(StatusCode::OK, pod)
            }
            ("GET", ["api", "v1", "pods"]) => {
                let items = self.pods.lock().map(|p| p.clone()).unwrap_or_default();
                let list = json!({
                    "apiVersion": "v1",
                    "kind": "PodList",
                    "metadata": {"resourceVersion": "7"},
                    "items": items,
                });
                respond(StatusCode::OK, list)
            }
            ("GET", ["api", "v1", "namespaces", ns]) => {
                let labels = if *ns == "team" {
                    json!({ENABLED: "true"})
                } else {
                    json!({})
                };
                let namespace = json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns, "labels": labels},
                });
                respond(StatusCode::OK, namespace)
            }
            ("POST", ["api", "v1", "namespaces", ns, "pods", name, "eviction"]) if json_body => {
                let ok = parsed["apiVersion"] == "policy/v1"
                    && parsed["kind"] == "Eviction"
                    && parsed["metadata"]["name"] == *name
                    && parsed["metadata"]["namespace"] == *ns;
                if ok {
                    self.mark_deleted(ns, name);
                    created(json!({
                        "apiVersion": "v1",
                        "kind": "Status",
                        "metadata": {},
                        "status": "Success",
                        "code": 201,
                    }))
                } else {
                    invalid("not a policy/v1 Eviction of this pod")
                }
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                status_failure(404, "NotFound", "no such route"),
            ),
        }
    }
}

/// A JSON answer, as the API server sends every one.
fn respond(status: StatusCode, object: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        object.to_string(),
    )
        .into_response()
}

fn created(object: Value) -> Response {
    respond(StatusCode::CREATED, object)
}

fn invalid(message: &str) -> Response {
    respond(
        StatusCode::UNPROCESSABLE_ENTITY,
        status_failure(422, "Invalid", message),
    )
}

fn status_failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn pod_object(ns: &str, name: &str, uid: &str, annotations: &[(&str, &str)], phase: &str) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "uid": uid, "annotations": annotations},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": phase},
    })
}

async fn api_for(addr: SocketAddr) -> KubeApi {
    let uri = format!("http://{addr}").parse().expect("a loopback URL");
    let client = kube::Client::try_from(kube::Config::new(uri)).expect("a client for the double");
    KubeApi::new(client)
}

fn web() -> PodRef {
    PodRef {
        namespace: "apps".into(),
        name: "web".into(),
        uid: "u1".into(),
    }
}

/// Waits until the double has seen `n` requests.
async fn seen_at_least(double: &Double, n: usize) -> Vec<Seen> {
    for _ in 0..200 {
        let seen = double.seen();
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    double.seen()
}

/// A reporter that posts Events and annotations through `api`.
fn reporter_on(api: KubeApi, capacity: usize) -> (Reporter, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let posting = Posting {
        events: true,
        annotate: true,
    };
    let reporter = Reporter::spawn(api, "node-a".into(), posting, capacity, metrics.clone());
    (reporter, metrics)
}

#[tokio::test]
async fn contract_a_join_patches_the_annotations_then_posts_a_normal_event() {
    let double = Double::default();
    let api = api_for(double.start().await).await;
    let (reporter, metrics) = reporter_on(api, 8);
    let addresses = [
        "100.64.0.7".parse().unwrap(),
        "fd7a:115c:a1e0::7".parse().unwrap(),
    ];
    reporter.joined(&web(), "homelab-apps-web", &addresses);

    let seen = seen_at_least(&double, 2).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let patch = &seen[0];
    assert_eq!(
        (patch.method.as_str(), patch.path.as_str()),
        ("PATCH", "/api/v1/namespaces/apps/pods/web")
    );
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        patch.body,
        json!({"metadata": {"annotations": {
            "tailnet-cni.io/addresses": "100.64.0.7,fd7a:115c:a1e0::7",
            "tailnet-cni.io/tailnet-hostname": "homelab-apps-web",
        }}})
    );
    let event = &seen[1];
    assert_eq!(
        (event.method.as_str(), event.path.as_str()),
        ("POST", "/api/v1/namespaces/apps/events")
    );
    assert_eq!(event.content_type.as_deref(), Some("application/json"));
    let body = &event.body;
    assert_eq!(body["type"], "Normal");
    assert_eq!(body["reason"], "TailnetJoined");
    assert_eq!(
        body["involvedObject"],
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": "apps", "name": "web", "uid": "u1"})
    );
    assert_eq!(
        body["source"],
        json!({"component": "tailnet-cnid", "host": "node-a"})
    );
    assert_eq!(body["reportingInstance"], "node-a");
    assert_eq!(body["count"], 1);
    assert!(body["firstTimestamp"].is_string() && body["eventTime"].is_string());
    assert_eq!(metrics.kube_api_errors.get(), 0);
}

#[tokio::test]
async fn contract_a_failure_posts_a_warning_without_the_errors_text() {
    let double = Double::default();
    let api = api_for(double.start().await).await;
    let (reporter, metrics) = reporter_on(api, 8);
    reporter.failed(&web(), tailnet_cni_proto::cni_code::AUTH_FAILURE);

    let seen = seen_at_least(&double, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // No annotation for a pod that did not join: only the Event.
    let seen_now = double.seen();
    assert_eq!(seen_now.len(), 1, "{seen_now:?}");
    let body = &seen[0].body;
    assert_eq!(seen[0].path, "/api/v1/namespaces/apps/events");
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["reason"], "TailnetJoinFailed");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("CNI error 101"), "{message}");
    assert_eq!(
        metrics.kube_api_errors.get(),
        0,
        "the double refused the Event"
    );
}

#[tokio::test]
async fn contract_reports_never_wait_for_a_silent_api() {
    // Accepts connections and never answers: the worker is stuck on its
    // first call, the queue (capacity 2) fills, the rest are dropped.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let (reporter, metrics) = reporter_on(api_for(addr).await, 2);
    // Let the worker take the first report and block on it.
    reporter.failed(&web(), 100);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        reporter.failed(&web(), 100);
    }
    assert_eq!(metrics.kube_reports_dropped.get(), 8);
    held.abort();
}

#[tokio::test]
async fn contract_pods_are_listed_by_node_and_missing_ones_reported_and_evicted() {
    let double = Double::default();
    if let Ok(mut pods) = double.pods.lock() {
        pods.extend([
            pod_object("apps", "web", "u1", &[(ENABLED, "true")], "Running"),
            pod_object("apps", "old", "u2", &[(ENABLED, "true")], "Running"),
            pod_object("apps", "plain", "u3", &[], "Running"),
            pod_object("team", "api", "u4", &[], "Running"),
            pod_object("apps", "starting", "u5", &[(ENABLED, "true")], "Pending"),
        ]);
    }
    let api = api_for(double.start().await).await;
    let state = tempfile::tempdir().expect("a temporary dir");
    let records = StateStore::open(state.path()).expect("a state store");
    records
        .save(&PodRecord {
            container_id: "c1".into(),
            netns: "/var/run/netns/c1".into(),
            if_name: "ts0".into(),
            namespace: "apps".into(),
            name: "web".into(),
            uid: "u1".into(),
            hostname: "homelab-apps-web".into(),
            ipv4: None,
            ipv6: None,
            pod_net: None,
            identity_file: None,
            node_id: None,
            stable_id: None,
            state: PodPhase::Running,
            created_at: 0,
            version: RECORD_VERSION,
            tags: Vec::new(),
            routes: Default::default(),
        })
        .expect("saving a record");
    let metrics = Arc::new(Metrics::default());
    let config = WatchdogConfig {
        node: "node-a".into(),
        policy: Policy::new(Selection::Namespace, Vec::new()),
        events: true,
        evict: true,
    };
    let mut watchdog = Watchdog::new(api, records, config, metrics.clone());

    let missing = watchdog.pass().await.expect("a pass");
    let names: Vec<&str> = missing.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["old", "api"]);
    assert_eq!(metrics.pods_missing_plugin.get(), 2);

    let seen = double.seen();
    let list = &seen[0];
    assert_eq!(
        (list.method.as_str(), list.path.as_str()),
        ("GET", "/api/v1/pods")
    );
    let query = list.query.as_deref().unwrap_or_default();
    let selector: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert!(
        selector.contains(&("fieldSelector".into(), "spec.nodeName=node-a".into())),
        "{query}"
    );
    // Only the namespace whose label can decide is read.
    let reads: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == Method::GET && s.path.starts_with("/api/v1/namespaces/"))
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(
        reads,
        ["/api/v1/namespaces/apps", "/api/v1/namespaces/team"]
    );
    let evictions: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.ends_with("/eviction"))
        .collect();
    assert_eq!(evictions.len(), 2);
    assert_eq!(
        evictions[0].path,
        "/api/v1/namespaces/apps/pods/old/eviction"
    );
    assert_eq!(
        evictions[0].body,
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": "old", "namespace": "apps"}})
    );
    let events: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.ends_with("/events"))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].body["reason"], "TailnetPluginMissingEvicted");
    assert_eq!(events[1].body["involvedObject"]["name"], "api");
    assert_eq!(metrics.kube_api_errors.get(), 0);

    // Evicted pods are being deleted: no longer missing, nothing posted.
    let before = double.seen().len();
    let again = watchdog.pass().await.expect("a second pass");
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(metrics.pods_missing_plugin.get(), 0);
    let posted_again = double.seen()[before..]
        .iter()
        .filter(|s| s.method == Method::POST)
        .count();
    assert_eq!(posted_again, 0);
}

#[tokio::test]
async fn contract_without_eviction_the_pod_only_gets_a_warning() {
    let double = Double::default();
    if let Ok(mut pods) = double.pods.lock() {
        pods.push(pod_object(
            "apps",
            "old",
            "u2",
            &[(ENABLED, "true")],
            "Running",
        ));
    }
    let api = api_for(double.start().await).await;
    let state = tempfile::tempdir().expect("a temporary dir");
    let records = StateStore::open(state.path()).expect("a state store");
    let config = WatchdogConfig {
        node: "node-a".into(),
        policy: Policy::new(Selection::Annotated, Vec::new()),
        events: true,
        evict: false,
    };
    let mut watchdog = Watchdog::new(api, records, config, Arc::new(Metrics::default()));
    assert_eq!(watchdog.pass().await.expect("a pass").len(), 1);
    let seen = double.seen();
    assert!(
        seen.iter().all(|s| !s.path.ends_with("/eviction")),
        "{seen:?}"
    );
    let events: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.ends_with("/events"))
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body["reason"], "TailnetPluginMissing");
    assert_eq!(events[0].body["type"], "Warning");

    // Still missing on the next pass: counted, but reported only once.
    let before = double.seen().len();
    assert_eq!(watchdog.pass().await.expect("a second pass").len(), 1);
    let posted_again = double.seen()[before..]
        .iter()
        .filter(|s| s.method == Method::POST)
        .count();
    assert_eq!(posted_again, 0);
}
