//! OAuth 2.0 client-credentials access tokens for the Tailscale API, cached and refreshed
//! single-flight: concurrent callers wait for one refresh instead of each fetching a token.

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, TokenResponse, TokenUrl};
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use crate::error::{display_url, redact_excerpt, AuthError};
use crate::http::{ApiClient, ApiRequest};
use crate::secret::Secret;

/// Token lifetime assumed when the server omits `expires_in` (Tailscale's tokens last 1 h).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Refresh this long before expiry so a token never expires between check and use.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// An access token as handed to a caller.
#[derive(Debug, Clone)]
pub(crate) struct AccessToken {
    pub token: Secret,
    /// Fetched by this very call: a 401 with it is final, not a stale cache.
    pub fresh: bool,
}

/// Fetches and caches client-credentials tokens from one token endpoint.
#[derive(Debug)]
pub(crate) struct OAuthTokenSource {
    api: ApiClient,
    token_url: Url,
    client_id: Secret,
    client_secret: Secret,
    cached: Mutex<Option<CachedToken>>,
}

/// When to refresh a token that lives `lifetime` from `fetched_at`.
fn refresh_deadline(fetched_at: Instant, lifetime: Duration) -> Instant {
    let margin = (lifetime / 4).min(MAX_REFRESH_MARGIN);
    fetched_at + lifetime.saturating_sub(margin)
}

impl OAuthTokenSource {
    pub(crate) fn new(
        api: ApiClient,
        token_url: Url,
        client_id: Secret,
        client_secret: Secret,
    ) -> Self {
        Self {
            api,
            token_url,
            client_id,
            client_secret,
            cached: Mutex::new(None),
        }
    }

    /// A valid access token, from the cache or from one refresh shared by all waiters.
    pub(crate) async fn token(&self) -> Result<AccessToken, AuthError> {
        // The lock covers only the check-and-refresh; API calls using the token run unlocked.
        let mut cached = self.cached.lock().await;
        if let Some(entry) = cached.as_ref() {
            if Instant::now() < entry.refresh_at {
                return Ok(AccessToken {
                    token: entry.token.clone(),
                    fresh: false,
                });
            }
        }
        let fetched_at = Instant::now();
        let (token, lifetime) = self.fetch().await?;
        *cached = Some(CachedToken {
            token: token.clone(),
            refresh_at: refresh_deadline(fetched_at, lifetime),
        });
        tracing::debug!(
            backend = self.api.backend(),
            lifetime_secs = lifetime.as_secs(),
            "fetched OAuth access token"
        );
        Ok(AccessToken { token, fresh: true })
    }

    /// Drops `rejected` from the cache (unless another caller already replaced it).
    pub(crate) async fn invalidate(&self, rejected: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|entry| &entry.token == rejected)
        {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<(Secret, Duration), AuthError> {
        let client = BasicClient::new(ClientId::new(self.client_id.expose().to_owned()))
            .set_client_secret(ClientSecret::new(self.client_secret.expose().to_owned()))
            .set_token_uri(TokenUrl::from_url(self.token_url.clone()))
            // Tailscale documents the credentials as form fields, not HTTP Basic.
            .set_auth_type(AuthType::RequestBody);
        let transport = Transport(self);
        let response = client
            .exchange_client_credentials()
            .request_async(&transport)
            .await
            .map_err(|err| self.token_error(err))?;
        let token = response.access_token().secret();
        if token.is_empty() {
            return Err(self
                .api
                .response_error(&self.token_url, "empty `access_token`"));
        }
        let lifetime = response
            .expires_in()
            .filter(|lifetime| !lifetime.is_zero())
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok((Secret::new(token.clone()), lifetime))
    }

    /// Sends the token request the oauth2 crate built through the shared retrying client.
    async fn execute(
        &self,
        request: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, AuthError> {
        let (parts, body) = request.into_parts();
        let url = Url::parse(&parts.uri.to_string())
            .map_err(|err| AuthError::Config(format!("OAuth token URL is invalid: {err}")))?;
        let mut api_request = ApiRequest::new(parts.method, &url, None);
        api_request.headers = parts.headers;
        api_request.body = Some(body);
        let response = self
            .api
            .send(&api_request, &[self.client_secret.expose()])
            .await?;
        let mut answer = oauth2::HttpResponse::new(response.body);
        *answer.status_mut() = response.status;
        *answer.headers_mut() = response.headers;
        Ok(answer)
    }

    fn token_error(
        &self,
        err: RequestTokenError<AuthError, oauth2::basic::BasicErrorResponse>,
    ) -> AuthError {
        let url = display_url(&self.token_url);
        match err {
            RequestTokenError::Request(inner) => inner,
            // RFC 6749 §5.2 error bodies come with 400 (401 was already mapped by `execute`);
            // the oauth2 crate does not hand the status on.
            RequestTokenError::ServerResponse(response) => match response.error() {
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => AuthError::Unauthorized {
                    backend: self.api.backend(),
                    url,
                    status: 400,
                },
                other => AuthError::Api {
                    backend: self.api.backend(),
                    url,
                    status: 400,
                    body: redact_excerpt(
                        format!(
                            "{}: {}",
                            other.as_ref(),
                            response.error_description().map_or("", String::as_str)
                        )
                        .as_bytes(),
                        &[self.client_secret.expose()],
                    ),
                },
            },
            RequestTokenError::Parse(parse, _body) => AuthError::Response {
                backend: self.api.backend(),
                url,
                reason: format!("token response does not parse at `{}`", parse.path()),
            },
            RequestTokenError::Other(reason) => AuthError::Response {
                backend: self.api.backend(),
                url,
                reason,
            },
        }
    }
}

/// Hands the oauth2 crate's token requests to the shared retrying client. A named type with a
/// boxed `Send` future, because a closure here makes callers' futures lose `Send`.
struct Transport<'s>(&'s OAuthTokenSource);

impl<'c> oauth2::AsyncHttpClient<'c> for Transport<'_> {
    type Error = AuthError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, AuthError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.0.execute(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_before_expiry() {
        let start = Instant::now();
        assert_eq!(
            refresh_deadline(start, Duration::from_secs(3600)),
            start + Duration::from_secs(3540)
        );
        // Short-lived tokens keep three quarters of their life.
        assert_eq!(
            refresh_deadline(start, Duration::from_secs(40)),
            start + Duration::from_secs(30)
        );
    }
}
