//! The minting endpoint: review the caller's token, check the policy, mint
//! through the configured backend, answer as `tailnet_auth::minter_api`
//! documents.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tailnet_auth::minter_api::{MintRefusal, MintRequest, MintResponse, MINT_PATH};
use tailnet_auth::{AuthBackend, KeyRequest, Secret};
use tracing::{info, warn};

use super::policy::{Policy, Refusal};
use super::review::{ReviewError, TokenReviewer};

/// What a request needs: who vouches for tokens, who may mint what, and
/// the backend holding the control server's credentials.
pub struct Minter {
    pub reviewer: TokenReviewer,
    pub policy: Policy,
    pub backend: AuthBackend,
}

/// The minter's routes: `POST /v1/keys` and `GET /healthz`.
pub fn router(minter: Arc<Minter>) -> Router {
    Router::new()
        .route(MINT_PATH, post(mint))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(minter)
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn refuse(status: StatusCode, error: impl ToString) -> Response {
    json(
        status,
        &MintRefusal {
            error: error.to_string(),
        },
    )
}

fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Secret::new(token))
}

async fn mint(State(minter): State<Arc<Minter>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = bearer(&headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "a bearer token is required");
    };
    let caller = match minter.reviewer.review(&token).await {
        Ok(caller) => caller,
        Err(error @ ReviewError::Rejected(_)) => {
            warn!(%error, "refused a caller");
            return refuse(StatusCode::UNAUTHORIZED, error);
        }
        Err(error @ (ReviewError::Unavailable(_) | ReviewError::TimedOut(_))) => {
            warn!(%error, "cannot review a caller's token");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, error);
        }
    };
    // The body is read only for a caller the API server vouched for.
    let request: MintRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return refuse(StatusCode::BAD_REQUEST, error),
    };
    let tags = match minter.policy.authorize(&caller.username, &request) {
        Ok(tags) => tags,
        Err(refusal) => {
            warn!(caller = %caller.username, node = ?caller.node, %refusal, "refused a key");
            let status = match refusal {
                Refusal::NotACaller { .. } => StatusCode::FORBIDDEN,
                Refusal::TagNotAllowed { .. } | Refusal::BadHostname(_) => StatusCode::BAD_REQUEST,
            };
            return refuse(status, refusal);
        }
    };
    let key_request = KeyRequest {
        hostname: request.hostname.clone(),
        tags,
        ephemeral: None,
        description: String::new(),
    };
    match minter.backend.mint_key(&key_request).await {
        Ok(key) => {
            info!(
                caller = %caller.username,
                node = caller.node.as_deref().unwrap_or("-"),
                hostname = %request.hostname,
                key_id = key.id.as_deref().unwrap_or("-"),
                "minted a key for a node"
            );
            let body = MintResponse {
                key: key.key.expose().to_owned(),
                id: key.id,
                expires_at_unix_secs: key.expires.map(|at| at.unix_timestamp()),
            };
            json(StatusCode::CREATED, &body)
        }
        Err(error) => {
            warn!(caller = %caller.username, hostname = %request.hostname, %error, "minting failed");
            // The node tries again later only when that can help; a refusal
            // by the control server's API needs its admin.
            let status = if error.is_temporary() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            refuse(status, error)
        }
    }
}
