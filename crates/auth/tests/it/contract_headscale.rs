//! Contract tests of the Headscale backend.
//!
//! No Headscale server runs here, so these tests run the backend against a local double that
//! follows Headscale's documented REST API exactly (`docs/ref/api.md`, `hscontrol/api/v1`):
//! `POST /api/v1/preauthkey` and `DELETE /api/v1/node/{nodeId}` with
//! `Authorization: Bearer <API key>`, answering with the documented response shapes and with
//! 429/500/401/404 where a test needs them.

use std::time::{Duration, Instant};

use serde_json::json;
use tailnet_auth::{AuthBackend, AuthError, KeyRequest, NodeRef};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::common::{
    assert_bearer, bearer_backend, failing_first, Double, Recorded, Reply, SecretDir,
};

const API_KEY: &str = "hskey-api-AbCdEf123456-0123456789abcdefghij";
const PREAUTHKEY_PATH: &str = "/api/v1/preauthkey";

fn preauthkey_reply(n: usize) -> Reply {
    Reply::json(
        200,
        json!({
            "preAuthKey": {
                "user": {"id": "1", "name": "pods"},
                "id": format!("{}", 40 + n),
                "key": format!("hskey-auth-{n:04}-0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
                "reusable": false,
                "ephemeral": true,
                "used": false,
                "expiration": "2026-11-23T08:10:00Z",
                "createdAt": "2026-11-23T08:00:00Z",
                "aclTags": ["tag:k8s-pod"]
            }
        }),
    )
}

fn backend(secrets: &SecretDir, double: &Double, extra: &str) -> AuthBackend {
    let url = &double.url;
    bearer_backend(
        secrets,
        "headscale",
        "headscale-api-key",
        API_KEY,
        url,
        extra,
    )
}

#[tokio::test]
async fn mints_a_single_use_tagged_preauth_key() {
    let double = Double::start(|_: &Recorded, n| preauthkey_reply(n)).await;
    let secrets = SecretDir::new();
    let backend = backend(&secrets, &double, "user = \"1\"\nkey_ttl_secs = 900");

    let before = OffsetDateTime::now_utc();
    let key = backend
        .mint_key(&KeyRequest::for_hostname("web-0"))
        .await
        .unwrap();
    let after = OffsetDateTime::now_utc();
    assert_eq!(
        key.key.expose(),
        "hskey-auth-0000-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    );
    assert_eq!(key.id.as_deref(), Some("40"));
    assert_eq!(
        key.expires,
        Some(time::macros::datetime!(2026-11-23 08:10:00 UTC))
    );

    let requests = double.requests_to(PREAUTHKEY_PATH);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_bearer(&requests[0], API_KEY);
    assert_eq!(
        requests[0].header("content-type").as_deref(),
        Some("application/json")
    );
    let body = requests[0].json();
    let expiration = OffsetDateTime::parse(body["expiration"].as_str().unwrap(), &Rfc3339).unwrap();
    let ttl = time::Duration::seconds(900);
    assert!(expiration >= (before + ttl).replace_nanosecond(0).unwrap());
    assert!(expiration <= after + ttl);
    assert_eq!(
        body,
        json!({
            "user": "1",
            "reusable": false,
            "ephemeral": false,
            "expiration": body["expiration"].clone(),
            "aclTags": ["tag:k8s-pod"]
        })
    );
}

#[tokio::test]
async fn user_is_omitted_for_tagged_keys_when_not_configured() {
    let double = Double::start(|_: &Recorded, n| preauthkey_reply(n)).await;
    let secrets = SecretDir::new();
    let backend = backend(&secrets, &double, "ephemeral = true");
    let request = KeyRequest {
        hostname: "db-0".to_owned(),
        tags: vec!["tag:db".to_owned()],
        ..KeyRequest::default()
    };
    backend.mint_key(&request).await.unwrap();
    let body = double.requests_to(PREAUTHKEY_PATH)[0].json();
    assert!(body.get("user").is_none(), "{body}");
    assert_eq!(body["aclTags"], json!(["tag:db"]));
    assert_eq!(body["ephemeral"], json!(true));
}

#[tokio::test]
async fn numeric_key_ids_from_older_releases_are_accepted() {
    let double = Double::start(|_: &Recorded, _| {
        Reply::json(
            200,
            json!({"preAuthKey": {"id": 7, "key": "0123456789abcdef0123456789abcdef0123456789abcdef"}}),
        )
    })
    .await;
    let secrets = SecretDir::new();
    let key = backend(&secrets, &double, "")
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap();
    assert_eq!(key.id.as_deref(), Some("7"));
    assert_eq!(key.expires, None);
}

#[tokio::test]
async fn honours_retry_after_on_429_then_succeeds() {
    let double = Double::start(failing_first(
        Reply::json(429, json!({"code": 8, "message": "slow down"}))
            .with_header("retry-after", "1"),
        preauthkey_reply,
    ))
    .await;
    let secrets = SecretDir::new();
    let backend = backend(&secrets, &double, "");
    let started = Instant::now();
    let key = backend
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(key.id.as_deref(), Some("41"));
}

#[tokio::test]
async fn retries_500_then_succeeds() {
    let double = Double::start(failing_first(
        Reply::json(500, json!({"code": 13, "message": "database is locked"})),
        preauthkey_reply,
    ))
    .await;
    let secrets = SecretDir::new();
    let key = backend(&secrets, &double, "")
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap();
    assert_eq!(key.id.as_deref(), Some("41"));
    assert_eq!(double.requests_to(PREAUTHKEY_PATH).len(), 2);
}

#[tokio::test]
async fn rejected_api_key_is_unauthorized_without_retry() {
    let double = Double::start(|_: &Recorded, _| Reply::empty(401)).await;
    let secrets = SecretDir::new();
    let err = backend(&secrets, &double, "")
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap_err();
    match &err {
        AuthError::Unauthorized {
            backend,
            url,
            status,
        } => {
            assert_eq!(*backend, "headscale");
            assert_eq!(*status, 401);
            assert_eq!(url, &format!("{}{PREAUTHKEY_PATH}", double.url));
        }
        other => panic!("expected Unauthorized, got {other}"),
    }
    assert_eq!(double.requests().len(), 1);
}

#[tokio::test]
async fn client_errors_are_reported_with_the_servers_message() {
    let double = Double::start(|_: &Recorded, _| {
        Reply::json(400, json!({"code": 3, "message": "user not found"}))
    })
    .await;
    let secrets = SecretDir::new();
    let err = backend(&secrets, &double, "user = \"99\"")
        .mint_key(&KeyRequest::for_hostname("p"))
        .await
        .unwrap_err();
    match &err {
        AuthError::Api { status, body, .. } => {
            assert_eq!(*status, 400);
            assert!(body.contains("user not found"), "{body}");
        }
        other => panic!("expected Api, got {other}"),
    }
    assert_eq!(double.requests().len(), 1);
}

fn node() -> NodeRef {
    NodeRef {
        node_id: 42,
        stable_id: "ignored-by-headscale".to_owned(),
        node_key: "nodekey:cd".to_owned(),
    }
}

#[tokio::test]
async fn deletes_the_node_by_numeric_id() {
    let double = Double::start(|_: &Recorded, _| Reply::json(200, json!({}))).await;
    let secrets = SecretDir::new();
    backend(&secrets, &double, "")
        .remove_node(&node())
        .await
        .unwrap();
    let deletes = double.requests_to("/api/v1/node/42");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].method, "DELETE");
    assert_bearer(&deletes[0], API_KEY);
}

#[tokio::test]
async fn deleting_an_unknown_node_succeeds() {
    let double = Double::start(|_: &Recorded, _| {
        Reply::json(404, json!({"code": 5, "message": "node not found"}))
    })
    .await;
    let secrets = SecretDir::new();
    backend(&secrets, &double, "")
        .remove_node(&node())
        .await
        .unwrap();
    assert_eq!(double.requests().len(), 1);
}
