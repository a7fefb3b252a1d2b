//! A double of the Kubernetes TokenReview API, answering exactly as its
//! reference documents: `POST /apis/authentication.k8s.io/v1/tokenreviews`
//! with a `TokenReview` body is answered `201 Created` with the review and its
//! `status`; a token that is unknown, expired or bound to none of the
//! requested audiences (the API server's own when `spec.audiences` is empty)
//! gets `status.user = {}` and `status.error`, not an HTTP error. The caller
//! itself must present the reviewer's token (401 `Status` otherwise), as the
//! minter's service account does; any other path or verb is a 404 `Status`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The API server's own audience, for tokens not bound to another.
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// A service account token the double's "API server" issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    /// `namespace/name`.
    pub service_account: String,
    pub audiences: Vec<String>,
    pub node: String,
}

#[derive(Default)]
struct Inner {
    tokens: Vec<IssuedToken>,
    failing: bool,
    seen: Vec<SeenReview>,
}

/// The double; serves until dropped.
pub struct TokenReviewApi {
    pub url: String,
    reviewer_token: String,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TokenReviewApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One request as the double saw it.
#[derive(Debug, Clone)]
pub struct SeenReview {
    pub method: Method,
    pub path: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: Value,
}

impl TokenReviewApi {
    /// Starts on a loopback port of the current runtime; `reviewer_token` is
    /// what the minter must authenticate with.
    pub async fn start(reviewer_token: &str, tokens: Vec<IssuedToken>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let inner = Arc::new(Mutex::new(Inner {
            tokens,
            ..Inner::default()
        }));
        let state = (inner.clone(), reviewer_token.to_owned());
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (inner, reviewer) = state.clone();
                async move { answer(&inner, &reviewer, method, uri, headers, body) }
            },
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serving the TokenReview double");
        });
        Self {
            url,
            reviewer_token: reviewer_token.to_owned(),
            inner,
            server,
        }
    }

    /// The API server fails from now on (`503 ServiceUnavailable`), as an
    /// overloaded or restarting one does.
    pub fn fail_from_now(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.failing = true;
        }
    }

    pub fn seen(&self) -> Vec<SeenReview> {
        self.inner
            .lock()
            .map(|inner| inner.seen.clone())
            .unwrap_or_default()
    }

    /// A kubeconfig that points at the double with the reviewer's token.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {url}\n\
                 users:\n- name: minter\n  user:\n    token: {token}\ncontexts:\n- name: double\n  context:\n    \
                 cluster: double\n    user: minter\ncurrent-context: double\n",
                url = self.url,
                token = self.reviewer_token,
            ),
        )
        .expect("kubeconfig");
        path
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        })
        .to_string(),
    )
        .into_response()
}

fn answer(
    inner: &Mutex<Inner>,
    reviewer: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = text(header::CONTENT_TYPE);
    let authorization = text(header::AUTHORIZATION);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Ok(mut inner) = inner.lock() else {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "poisoned",
        );
    };
    inner.seen.push(SeenReview {
        method: method.clone(),
        path: uri.path().to_owned(),
        content_type: content_type.clone(),
        authorization: authorization.clone(),
        body: parsed.clone(),
    });
    if inner.failing {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    if authorization.as_deref() != Some(&format!("Bearer {reviewer}")) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if method != Method::POST || uri.path() != REVIEW_PATH {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let well_formed = content_type.as_deref() == Some("application/json")
        && parsed["apiVersion"] == "authentication.k8s.io/v1"
        && parsed["kind"] == "TokenReview"
        && parsed["spec"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty());
    if !well_formed {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a TokenReview",
        );
    }
    let token = parsed["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = match parsed["spec"]["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => vec![API_SERVER_AUDIENCE.to_owned()],
    };
    let review_status = match inner.tokens.iter().find(|issued| issued.token == token) {
        None => {
            json!({"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"})
        }
        Some(issued) => {
            let granted: Vec<&String> = wanted
                .iter()
                .filter(|a| issued.audiences.contains(a))
                .collect();
            if granted.is_empty() {
                json!({"user": {}, "error": format!(
                    "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}, unknown]",
                    issued.audiences, wanted
                )})
            } else {
                let (namespace, name) = issued
                    .service_account
                    .split_once('/')
                    .unwrap_or(("default", "default"));
                json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{namespace}:{name}"),
                        "uid": "4e3d6b2a-7c1f-4a8e-9b0d-2f5c8e1a3b7d",
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
                        "extra": {
                            "authentication.kubernetes.io/credential-id": ["JTI=5b1e0c7d-1f3a-4c2b-8d9e-6a7f0b1c2d3e"],
                            "authentication.kubernetes.io/node-name": [issued.node],
                            "authentication.kubernetes.io/pod-name": [format!("{name}-x7k2p")],
                        }
                    },
                    "audiences": granted,
                })
            }
        }
    };
    let mut review = parsed.clone();
    review["metadata"] = json!({"creationTimestamp": null});
    review["status"] = review_status;
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        review.to_string(),
    )
        .into_response()
}
