//! Headscale's REST API: `POST /api/v1/preauthkey`, `DELETE /api/v1/node/{id}`.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use url::Url;

use super::{expiry_from_now, post_json, removal_outcome, AuthKey, MintParams, NodeRef};
use crate::error::AuthError;
use crate::http::{endpoint, ApiClient, ApiRequest};
use crate::secret::Secret;

/// Mints pre-auth keys through Headscale's API with an API key.
#[derive(Debug)]
pub struct HeadscaleBackend {
    api: ApiClient,
    api_url: Url,
    token: Secret,
    user: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatePreAuthKey<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    reusable: bool,
    ephemeral: bool,
    expiration: String,
    acl_tags: &'a [String],
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatePreAuthKeyResponse {
    pre_auth_key: PreAuthKey,
}

#[derive(Deserialize)]
struct PreAuthKey {
    key: String,
    /// A uint64, which grpc-gateway encodes as a JSON string; older releases sent a number.
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    expiration: Option<String>,
}

impl HeadscaleBackend {
    pub(crate) fn new(api: ApiClient, api_url: Url, token: Secret, user: Option<String>) -> Self {
        Self {
            api,
            api_url,
            token,
            user,
        }
    }

    pub(crate) async fn mint_key(&self, params: &MintParams) -> Result<AuthKey, AuthError> {
        let url = endpoint(&self.api_url, &["api", "v1", "preauthkey"]);
        let expiration = expiry_from_now(params.ttl)
            .format(&Rfc3339)
            .map_err(|err| AuthError::Request {
                backend: self.api.backend(),
                reason: format!("cannot format the expiry: {err}"),
            })?;
        let body = CreatePreAuthKey {
            user: self.user.as_deref(),
            reusable: false,
            ephemeral: params.ephemeral,
            expiration,
            acl_tags: &params.tags,
        };
        let created: CreatePreAuthKeyResponse =
            post_json(&self.api, &url, &self.token, &body).await?;
        let pre_auth_key = created.pre_auth_key;
        if pre_auth_key.key.is_empty() {
            return Err(self.api.response_error(&url, "empty `preAuthKey.key`"));
        }
        let id = match pre_auth_key.id {
            Some(serde_json::Value::String(id)) => Some(id),
            Some(serde_json::Value::Number(id)) => Some(id.to_string()),
            _ => None,
        };
        Ok(AuthKey {
            key: Secret::new(pre_auth_key.key),
            id,
            expires: pre_auth_key
                .expiration
                .and_then(|text| time::OffsetDateTime::parse(&text, &Rfc3339).ok()),
        })
    }

    pub(crate) async fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError> {
        let node_id = node.node_id.to_string();
        let url = endpoint(&self.api_url, &["api", "v1", "node", &node_id]);
        let token = self.token.expose();
        let request = ApiRequest::new(reqwest::Method::DELETE, &url, Some(&self.token));
        let response = self.api.send(&request, &[token]).await?;
        removal_outcome(&self.api, &url, node, response, &[token])
    }
}
