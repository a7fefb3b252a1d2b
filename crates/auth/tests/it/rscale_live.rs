//! The rscale backend against a real rscale server (the test bed).
//!
//! Needs the test bed's environment (`source <(scripts/testbed.sh env)`, as
//! `scripts/test-in-netns.sh` provides it); skips, saying why, without it
//! (fails under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::path::Path;

use tailnet_auth::{AuthBackend, AuthConfig, AuthError, KeyRequest, NodeRef};
use tailnet_testbed::{require, Bed};
use time::OffsetDateTime;

fn backend(control_url: &str, token_file: &Path) -> AuthBackend {
    let token_file = token_file.display();
    let config: AuthConfig = toml::from_str(&format!(
        "kind = \"rscale\"\napi_url = \"{control_url}\"\ntoken_file = \"{token_file}\"\n\
         tags = [\"tag:k8s-pod\"]\nkey_ttl_secs = 300\n"
    ))
    .unwrap();
    AuthBackend::from_config(&config).unwrap()
}

#[tokio::test]
async fn mints_keys_and_disables_nodes_on_real_rscale() {
    let bed = require!(Bed::from_env());
    let backend = backend(&bed.control_url, &bed.admin_token_file);

    let before = OffsetDateTime::now_utc();
    let first = backend
        .mint_key(&KeyRequest::for_hostname("auth-live-a"))
        .await
        .unwrap();
    let second = backend
        .mint_key(&KeyRequest::for_hostname("auth-live-b"))
        .await
        .unwrap();
    assert!(
        first.key.expose().starts_with("rsk_"),
        "unexpected key shape"
    );
    assert_ne!(first.key.expose(), second.key.expose());
    assert!(first.id.is_some());
    assert_ne!(first.id, second.id);
    let expires = first.expires.expect("rscale reports the expiry it stored");
    let ttl = time::Duration::seconds(300);
    assert!(expires >= (before + ttl).replace_nanosecond(0).unwrap() - time::Duration::seconds(1));
    assert!(expires <= OffsetDateTime::now_utc() + ttl + time::Duration::seconds(1));

    // A node ID rscale has never issued: 404, which counts as already removed.
    let missing = NodeRef {
        node_id: i64::MAX,
        stable_id: String::new(),
        node_key: "nodekey:00".to_owned(),
    };
    backend.remove_node(&missing).await.unwrap();
}

#[tokio::test]
async fn wrong_admin_token_is_unauthorized_on_real_rscale() {
    let bed = require!(Bed::from_env());
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-admin-token-0000000000\n").unwrap();
    let backend = backend(&bed.control_url, &wrong);
    let err = backend
        .mint_key(&KeyRequest::for_hostname("auth-live-c"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Unauthorized {
                backend: "rscale",
                ..
            }
        ),
        "{err}"
    );
}

/// Registers a node with `key` through rscale's native registration API; returns the node
/// as rscale reports it, or the HTTP status of a refusal.
async fn register_node(
    control_url: &str,
    key: &str,
    hostname: &str,
) -> Result<serde_json::Value, u16> {
    let response = reqwest::Client::new()
        .post(format!("{control_url}/api/v1/register/nodes"))
        .json(&serde_json::json!({"auth_key": key, "hostname": hostname, "tags": []}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    if !status.is_success() {
        return Err(status.as_u16());
    }
    let body: serde_json::Value = response.json().await.unwrap();
    Ok(body["node"].clone())
}

#[tokio::test]
async fn minted_key_registers_one_node_which_removal_disables() {
    let bed = require!(Bed::from_env());
    let backend = backend(&bed.control_url, &bed.admin_token_file);
    // rscale refuses a hostname it already knows; the test bed may outlive one run.
    let run = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let hostname = format!("auth-live-{run:x}");
    let key = backend
        .mint_key(&KeyRequest::for_hostname(hostname.clone()))
        .await
        .unwrap();

    let node = register_node(&bed.control_url, key.key.expose(), &hostname)
        .await
        .unwrap();
    assert_eq!(node["tags"], serde_json::json!(["tag:k8s-pod"]));
    // Minted keys are single-use.
    let reuse = register_node(
        &bed.control_url,
        key.key.expose(),
        &format!("{hostname}-again"),
    )
    .await;
    assert!(reuse.is_err(), "a minted key was accepted twice");

    let node_ref = NodeRef {
        node_id: node["id"].as_i64().unwrap(),
        stable_id: node["stable_id"].as_str().unwrap_or_default().to_owned(),
        node_key: "nodekey:unused".to_owned(),
    };
    backend.remove_node(&node_ref).await.unwrap();

    let after = bed
        .admin()
        .get(&format!("/api/v1/admin/nodes/{}", node_ref.node_id))
        .unwrap();
    assert_eq!(after["status"], serde_json::json!("disabled"), "{after}");
    // Removing again is idempotent.
    backend.remove_node(&node_ref).await.unwrap();
}
