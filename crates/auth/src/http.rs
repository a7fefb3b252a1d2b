//! The HTTP edge shared by the API backends: one `reqwest::Client` (rustls, system roots plus
//! an optional extra CA), bounded concurrency, retries, and status classification.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode};
use tokio::sync::Semaphore;
use url::Url;

use crate::error::{display_url, redact_excerpt, AuthError};
use crate::retry::{parse_retry_after, RetryPolicy};
use crate::secret::Secret;

/// Tuning of an API backend's HTTP behaviour.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// When and how often a failed request is tried again.
    pub retry: RetryPolicy,
    /// Requests in flight at once to one backend. Bounds the load a burst of pod creations
    /// puts on the control server without serialising them.
    pub max_in_flight: usize,
    /// Timeout of the TCP (and TLS) connect of one attempt.
    pub connect_timeout: Duration,
    /// Whole-request timeout of one attempt.
    pub request_timeout: Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            max_in_flight: 16,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// How long an idle keep-alive connection to an API stays open.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds the client every backend of one daemon shares.
pub(crate) fn build_http_client(
    ca_file: Option<&Path>,
    options: &BackendOptions,
) -> Result<reqwest::Client, AuthError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        // A redirect on a POST that carries a bearer token is never what these APIs do.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        // Keys are minted in bursts (pods starting together); a connection
        // idle for longer than that is released instead of held for 90 s.
        .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
        .user_agent(concat!("tailnet-cni/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
            AuthError::Config(format!("ca_file {} is not PEM: {err}", path.display()))
        })?;
        if certs.is_empty() {
            return Err(AuthError::Config(format!(
                "ca_file {} holds no certificate",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|err| AuthError::Config(format!("cannot build the HTTP client: {err}")))
}

/// `base` with `segments` appended as path segments (each percent-encoded).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// One API call, rebuilt into a fresh `reqwest` request for every attempt.
#[derive(Debug)]
pub(crate) struct ApiRequest<'a> {
    pub method: reqwest::Method,
    pub url: &'a Url,
    /// Sent as `Authorization: Bearer …`.
    pub bearer: Option<Secret>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Option<Vec<u8>>,
}

impl<'a> ApiRequest<'a> {
    /// A request without a body.
    pub(crate) fn new(method: reqwest::Method, url: &'a Url, bearer: Option<&Secret>) -> Self {
        Self {
            method,
            url,
            bearer: bearer.cloned(),
            headers: reqwest::header::HeaderMap::new(),
            body: None,
        }
    }

    /// A request with a JSON body.
    pub(crate) fn json(
        method: reqwest::Method,
        url: &'a Url,
        bearer: Option<&Secret>,
        body: &impl serde::Serialize,
    ) -> Result<Self, AuthError> {
        let body = serde_json::to_vec(body)
            .map_err(|err| AuthError::Config(format!("cannot encode request body: {err}")))?;
        let mut request = Self::new(method, url, bearer);
        request.headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        request.body = Some(body);
        Ok(request)
    }

    fn build(&self, http: &reqwest::Client) -> RequestBuilder {
        let mut builder = http
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(token) = &self.bearer {
            builder = builder.bearer_auth(token.expose());
        }
        if let Some(body) = &self.body {
            builder = builder.body(body.clone());
        }
        builder
    }
}

/// A response whose status the caller interprets (anything but 401/403/429/5xx).
#[derive(Debug)]
pub(crate) struct ApiResponse {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// One backend's view of the shared client: its name for errors, its concurrency bound,
/// its retry policy.
#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    http: reqwest::Client,
    backend: &'static str,
    in_flight: Arc<Semaphore>,
    retry: RetryPolicy,
}

enum Attempt {
    Done(ApiResponse),
    Retry {
        error: AuthError,
        retry_after: Option<Duration>,
    },
}

impl ApiClient {
    pub(crate) fn new(
        http: reqwest::Client,
        backend: &'static str,
        options: &BackendOptions,
    ) -> Self {
        Self {
            http,
            backend,
            in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            retry: options.retry.clone(),
        }
    }

    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }

    /// Sends `request`, retrying 429, 5xx and transport failures. 401/403 become
    /// [`AuthError::Unauthorized`]. `secrets` are the values sent with the request; they are
    /// scrubbed from any error body excerpt.
    pub(crate) async fn send(
        &self,
        request: &ApiRequest<'_>,
        secrets: &[&str],
    ) -> Result<ApiResponse, AuthError> {
        let shown_url = display_url(request.url);
        let attempts = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let outcome = self.attempt_once(request, &shown_url, secrets).await?;
            match outcome {
                Attempt::Done(response) => return Ok(response),
                Attempt::Retry { error, retry_after } => {
                    if attempt >= attempts {
                        tracing::warn!(
                            backend = self.backend,
                            url = %shown_url,
                            attempts,
                            error = %error,
                            "giving up on API request"
                        );
                        return Err(error);
                    }
                    let delay = self
                        .retry
                        .delay(attempt, retry_after, rand::random::<f64>());
                    tracing::info!(
                        backend = self.backend,
                        url = %shown_url,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        error = %error,
                        "retrying API request"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt_once(
        &self,
        request: &ApiRequest<'_>,
        shown_url: &str,
        secrets: &[&str],
    ) -> Result<Attempt, AuthError> {
        // Held for the attempt only, not across the backoff sleep.
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| AuthError::Unreachable {
                backend: self.backend,
                url: shown_url.to_owned(),
                reason: "backend is shutting down".to_owned(),
            })?;
        // A transport failure, sending or reading the body, is worth a retry.
        let unreachable = |err: reqwest::Error| Attempt::Retry {
            error: AuthError::Unreachable {
                backend: self.backend,
                url: shown_url.to_owned(),
                reason: transport_reason(err),
            },
            retry_after: None,
        };
        let response = match request.build(&self.http).send().await {
            Ok(response) => response,
            Err(err) => return Ok(unreachable(err)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body.to_vec(),
            Err(err) => return Ok(unreachable(err)),
        };
        tracing::debug!(
            backend = self.backend,
            url = %shown_url,
            status = status.as_u16(),
            "API response"
        );
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(AuthError::Unauthorized {
                backend: self.backend,
                url: shown_url.to_owned(),
                status: status.as_u16(),
            });
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, time::OffsetDateTime::now_utc()));
            return Ok(Attempt::Retry {
                error: self.api_error(shown_url, status, &body, secrets),
                retry_after,
            });
        }
        Ok(Attempt::Done(ApiResponse {
            status,
            headers,
            body,
        }))
    }

    /// The error for an unexpected status, with a scrubbed excerpt of the body.
    pub(crate) fn api_error(
        &self,
        shown_url: &str,
        status: StatusCode,
        body: &[u8],
        secrets: &[&str],
    ) -> AuthError {
        AuthError::Api {
            backend: self.backend,
            url: shown_url.to_owned(),
            status: status.as_u16(),
            body: redact_excerpt(body, secrets),
        }
    }

    /// The error for a success response whose body does not match the documented shape.
    pub(crate) fn response_error(&self, url: &Url, reason: impl Into<String>) -> AuthError {
        AuthError::Response {
            backend: self.backend,
            url: display_url(url),
            reason: reason.into(),
        }
    }
}

/// A transport error's cause chain, without the URL (the caller names it once).
fn transport_reason(err: reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connect failed"
    } else {
        "request failed"
    };
    let mut reason = kind.to_owned();
    let err = err.without_url();
    let mut source = err.source();
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

/// Decodes a JSON success body, reporting only the failing field path (never the values,
/// which may include the freshly minted key).
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    api: &ApiClient,
    url: &Url,
    body: &[u8],
) -> Result<T, AuthError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    T::deserialize(&mut deserializer).map_err(|err| {
        api.response_error(
            url,
            format!(
                "body does not match the documented shape ({:?} error at line {} column {})",
                err.classify(),
                err.line(),
                err.column()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_appends_encoded_segments_to_base_path() {
        let base = Url::parse("https://api.example.com/prefix/").unwrap();
        assert_eq!(
            endpoint(&base, &["api", "v2", "device", "n/1 x"]).as_str(),
            "https://api.example.com/prefix/api/v2/device/n%2F1%20x"
        );
        let bare = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            endpoint(&bare, &["api", "v1", "preauthkey"]).as_str(),
            "http://127.0.0.1:8080/api/v1/preauthkey"
        );
    }

    #[test]
    fn decode_error_reports_position_not_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Shape {
            count: u32,
        }
        let client = build_http_client(None, &BackendOptions::default()).unwrap();
        let api = ApiClient::new(client, "test", &BackendOptions::default());
        let url = Url::parse("http://127.0.0.1:1/x").unwrap();
        let err =
            decode_json::<Shape>(&api, &url, br#"{"count":"tskey-auth-SECRET"}"#).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AuthError::Response { .. }));
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("column"), "{text}");
    }

    #[test]
    fn bad_ca_file_is_a_config_error_naming_it() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"not a certificate").unwrap();
        let err = build_http_client(Some(file.path()), &BackendOptions::default()).unwrap_err();
        assert!(matches!(err, AuthError::Config(_)), "{err}");
        assert!(err.to_string().contains(&file.path().display().to_string()));
    }
}
