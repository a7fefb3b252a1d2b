//! Contract tests of the rscale backend.
//!
//! These run the backend against a local double that follows rscale's documented admin API
//! exactly (`POST /api/v1/admin/auth-keys` answering 201 `{"auth_key":{…},"key":"rsk_…"}`,
//! `POST /api/v1/admin/nodes/{id}/disable`, `Authorization: Bearer <admin token>`), so that
//! retries and error paths can be exercised; `rscale_live.rs` runs against the real server
//! when the test bed is up.

use std::time::{Duration, Instant};

use serde_json::json;
use tailnet_auth::{AuthBackend, AuthError, KeyRequest, NodeRef};
use time::OffsetDateTime;

use crate::common::{
    assert_bearer, backend_from_toml, bearer_backend, failing_first, Double, Recorded, Reply,
    SecretDir,
};

const ADMIN_TOKEN: &str = "break-glass-token-0123456789abcdef";
const AUTH_KEYS_PATH: &str = "/api/v1/admin/auth-keys";

fn issued_reply(n: usize, expires_at: i64) -> Reply {
    Reply::json(
        201,
        json!({
            "auth_key": {
                "id": format!("ak_{n}"),
                "description": "tailnet-cni web-0",
                "tags": ["tag:k8s-pod"],
                "reusable": false,
                "ephemeral": true,
                "expires_at_unix_secs": expires_at,
                "created_at_unix_secs": 1_795_000_000u64,
                "last_used_at_unix_secs": null,
                "revoked_at_unix_secs": null,
                "usage_count": 0,
                "state": "active"
            },
            "key": format!("rsk_{n}_9f8e7d6c5b4a39281706f5e4d3c2b1a0")
        }),
    )
}

fn backend(secrets: &SecretDir, double: &Double, extra: &str) -> AuthBackend {
    let url = &double.url;
    bearer_backend(
        secrets,
        "rscale",
        "rscale-admin-token",
        ADMIN_TOKEN,
        url,
        extra,
    )
}

#[tokio::test]
async fn mints_a_single_use_key_with_the_documented_body() {
    let double = Double::start(|_: &Recorded, n| issued_reply(n, 1_795_000_600)).await;
    let secrets = SecretDir::new();
    let backend = backend(&secrets, &double, "key_ttl_secs = 300");

    let before = OffsetDateTime::now_utc().unix_timestamp();
    let request = KeyRequest {
        hostname: "web-0".to_owned(),
        ephemeral: Some(false),
        ..KeyRequest::default()
    };
    let key = backend.mint_key(&request).await.unwrap();
    let after = OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(key.key.expose(), "rsk_0_9f8e7d6c5b4a39281706f5e4d3c2b1a0");
    assert_eq!(key.id.as_deref(), Some("ak_0"));
    assert_eq!(
        key.expires,
        Some(OffsetDateTime::from_unix_timestamp(1_795_000_600).unwrap())
    );

    let requests = double.requests_to(AUTH_KEYS_PATH);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_bearer(&requests[0], ADMIN_TOKEN);
    let body = requests[0].json();
    let expires_at = body["expires_at_unix_secs"].as_i64().unwrap();
    assert!(
        (before + 300..=after + 300).contains(&expires_at),
        "{expires_at}"
    );
    assert_eq!(
        body,
        json!({
            "description": "tailnet-cni web-0",
            "tags": ["tag:k8s-pod"],
            "reusable": false,
            "ephemeral": false,
            "expires_at_unix_secs": expires_at
        })
    );
}

#[tokio::test]
async fn honours_retry_after_on_429_then_succeeds() {
    let double = Double::start(failing_first(
        Reply::json(
            429,
            json!({"error": {"code": "rate_limited", "message": "slow down"}}),
        )
        .with_header("retry-after", "1"),
        |n| issued_reply(n, 1_795_000_600),
    ))
    .await;
    let secrets = SecretDir::new();
    let started = Instant::now();
    let key = backend(&secrets, &double, "")
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(key.id.as_deref(), Some("ak_1"));
}

#[tokio::test]
async fn retries_500_then_succeeds() {
    let double = Double::start(failing_first(
        Reply::json(
            500,
            json!({"error": {"code": "internal", "message": "database unavailable"}}),
        ),
        |n| issued_reply(n, 1_795_000_600),
    ))
    .await;
    let secrets = SecretDir::new();
    let key = backend(&secrets, &double, "")
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap();
    assert_eq!(key.id.as_deref(), Some("ak_1"));
    assert_eq!(double.requests_to(AUTH_KEYS_PATH).len(), 2);
}

#[tokio::test]
async fn rejected_admin_token_is_unauthorized() {
    let double = Double::start(|_: &Recorded, _| {
        Reply::json(401, json!({"error": {"code": "unauthorized", "message": "missing or invalid bearer token"}}))
            .with_header("www-authenticate", "Bearer")
    })
    .await;
    let secrets = SecretDir::new();
    let err = backend(&secrets, &double, "")
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Unauthorized { backend: "rscale", status: 401, url }
            if url == &format!("{}{AUTH_KEYS_PATH}", double.url)),
        "{err}"
    );
    assert!(!err.to_string().contains(ADMIN_TOKEN));
}

#[tokio::test]
async fn success_without_a_key_is_an_unexpected_response() {
    let double =
        Double::start(|_: &Recorded, _| Reply::json(201, json!({"auth_key": {"id": "ak_0"}})))
            .await;
    let secrets = SecretDir::new();
    let err = backend(&secrets, &double, "")
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Response {
                backend: "rscale",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_server_is_reported_with_its_url() {
    // Bind then drop a listener so the port is very likely closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secrets = SecretDir::new();
    let token_file = secrets.write("rscale-admin-token", ADMIN_TOKEN);
    let backend = backend_from_toml(&format!(
        "kind = \"rscale\"\napi_url = \"http://127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let err = backend
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap_err();
    match &err {
        AuthError::Unreachable { backend, url, .. } => {
            assert_eq!(*backend, "rscale");
            assert_eq!(url, &format!("http://127.0.0.1:{port}{AUTH_KEYS_PATH}"));
        }
        other => panic!("expected Unreachable, got {other}"),
    }
}

fn node() -> NodeRef {
    NodeRef {
        node_id: 7,
        stable_id: "n7".to_owned(),
        node_key: "nodekey:ef".to_owned(),
    }
}

#[tokio::test]
async fn removal_disables_the_node() {
    let double =
        Double::start(|_: &Recorded, _| Reply::json(200, json!({"id": 7, "disabled": true}))).await;
    let secrets = SecretDir::new();
    backend(&secrets, &double, "")
        .remove_node(&node())
        .await
        .unwrap();
    let posts = double.requests_to("/api/v1/admin/nodes/7/disable");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].method, "POST");
    assert_bearer(&posts[0], ADMIN_TOKEN);
}

#[tokio::test]
async fn removing_an_unknown_node_succeeds_but_other_errors_fail() {
    let double = Double::start(|_: &Recorded, _| {
        Reply::json(
            404,
            json!({"error": {"code": "not_found", "message": "node 7 not found"}}),
        )
    })
    .await;
    let secrets = SecretDir::new();
    backend(&secrets, &double, "")
        .remove_node(&node())
        .await
        .unwrap();

    let conflict = Double::start(|_: &Recorded, _| {
        Reply::json(
            409,
            json!({"error": {"code": "conflict", "message": "node is locked"}}),
        )
    })
    .await;
    let err = backend(&secrets, &conflict, "")
        .remove_node(&node())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Api { status: 409, .. }), "{err}");
}
