//! A scriptable HTTP double on 127.0.0.1 that records every request and the peak number of
//! requests it was serving at once.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tailnet_auth::{AuthBackend, AuthConfig, BackendOptions, RetryPolicy};

/// One request as the double saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// The double's answer to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// How long to hold the request before answering (to observe overlap).
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// Chooses the reply; gets the request and how many earlier requests had the same path.
pub type Responder = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

struct DoubleState {
    responder: Box<Responder>,
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

pub struct Double {
    pub url: String,
    state: Arc<DoubleState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Double {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Double {
    pub async fn start(
        responder: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let state = Arc::new(DoubleState {
            responder: Box::new(responder),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, server }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(
    State(state): State<Arc<DoubleState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let recorded = Recorded {
        method,
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
    };
    let earlier = {
        let mut requests = state.requests.lock().unwrap();
        let earlier = requests.iter().filter(|r| r.path == recorded.path).count();
        requests.push(recorded.clone());
        earlier
    };
    let reply = (state.responder)(&recorded, earlier);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// Retries quick enough for tests; `Retry-After` is still honoured up to 5 s.
pub fn fast_options() -> BackendOptions {
    BackendOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_retry_after: Duration::from_secs(5),
        },
        ..BackendOptions::default()
    }
}

/// Secret files for a test, deleted with the directory.
pub struct SecretDir {
    pub dir: tempfile::TempDir,
}

impl SecretDir {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        writeln!(file, "{content}").unwrap();
        path
    }
}

pub fn backend_from_toml(text: &str) -> AuthBackend {
    let config: AuthConfig = toml::from_str(text).unwrap();
    AuthBackend::with_options(&config, fast_options()).unwrap()
}

/// A backend of `kind` that sends `token` (read from the secret file `token_name`) as its
/// bearer token to the double at `url`, tagging keys `tag:k8s-pod`; `extra` adds config lines.
pub fn bearer_backend(
    secrets: &SecretDir,
    kind: &str,
    token_name: &str,
    token: &str,
    url: &str,
    extra: &str,
) -> AuthBackend {
    let token_file = secrets.write(token_name, token);
    backend_from_toml(&format!(
        "kind = \"{kind}\"\napi_url = \"{url}\"\ntoken_file = \"{}\"\ntags = [\"tag:k8s-pod\"]\n{extra}\n",
        token_file.display()
    ))
}

/// Answers a path's first request with `first` and the later ones (numbered as the
/// [`Responder`] numbers them) with `then`: a transient failure the backend should retry.
pub fn failing_first(
    first: Reply,
    then: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static {
    move |_, n| if n == 0 { first.clone() } else { then(n) }
}

/// Asserts the `Authorization` header is `Bearer <token>` exactly.
pub fn assert_bearer(request: &Recorded, token: &str) {
    assert_eq!(
        request.header("authorization").as_deref(),
        Some(format!("Bearer {token}").as_str()),
        "{} {}",
        request.method,
        request.path
    );
}
