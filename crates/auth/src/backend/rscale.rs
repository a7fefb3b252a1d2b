//! rscale's admin API: `POST /api/v1/admin/auth-keys`, `POST /api/v1/admin/nodes/{id}/disable`.

use serde::{Deserialize, Serialize};
use url::Url;

use super::{expiry_from_now, post_json, removal_outcome, AuthKey, MintParams, NodeRef};
use crate::error::AuthError;
use crate::http::{endpoint, ApiClient, ApiRequest};
use crate::secret::Secret;

/// Mints keys through rscale's admin API with its admin token.
#[derive(Debug)]
pub struct RscaleBackend {
    api: ApiClient,
    api_url: Url,
    token: Secret,
}

#[derive(Serialize)]
struct CreateAuthKey<'a> {
    description: &'a str,
    tags: &'a [String],
    reusable: bool,
    ephemeral: bool,
    expires_at_unix_secs: i64,
}

#[derive(Deserialize)]
struct IssuedAuthKey {
    auth_key: IssuedAuthKeyRecord,
    key: String,
}

#[derive(Deserialize)]
struct IssuedAuthKeyRecord {
    id: String,
    #[serde(default)]
    expires_at_unix_secs: Option<i64>,
}

impl RscaleBackend {
    pub(crate) fn new(api: ApiClient, api_url: Url, token: Secret) -> Self {
        Self {
            api,
            api_url,
            token,
        }
    }

    pub(crate) async fn mint_key(&self, params: &MintParams) -> Result<AuthKey, AuthError> {
        let url = endpoint(&self.api_url, &["api", "v1", "admin", "auth-keys"]);
        let body = CreateAuthKey {
            description: &params.description,
            tags: &params.tags,
            reusable: false,
            ephemeral: params.ephemeral,
            expires_at_unix_secs: expiry_from_now(params.ttl).unix_timestamp(),
        };
        let issued: IssuedAuthKey = post_json(&self.api, &url, &self.token, &body).await?;
        if issued.key.is_empty() {
            return Err(self.api.response_error(&url, "empty `key`"));
        }
        Ok(AuthKey {
            key: Secret::new(issued.key),
            id: Some(issued.auth_key.id),
            expires: issued
                .auth_key
                .expires_at_unix_secs
                .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok()),
        })
    }

    /// rscale has no node deletion (DELETE answers 405); disabling is its removal.
    pub(crate) async fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError> {
        let node_id = node.node_id.to_string();
        let url = endpoint(
            &self.api_url,
            &["api", "v1", "admin", "nodes", &node_id, "disable"],
        );
        let token = self.token.expose();
        let request = ApiRequest::new(reqwest::Method::POST, &url, Some(&self.token));
        let response = self.api.send(&request, &[token]).await?;
        removal_outcome(&self.api, &url, node, response, &[token])
    }
}
