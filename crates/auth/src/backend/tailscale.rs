//! The Tailscale API: keys through an OAuth client, `POST /api/v2/tailnet/{tailnet}/keys`,
//! `DELETE /api/v2/device/{id}`.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use url::Url;

use super::{removal_outcome, AuthKey, MintParams, NodeRef};
use crate::error::AuthError;
use crate::http::{decode_json, endpoint, ApiClient, ApiRequest, ApiResponse};
use crate::oauth::OAuthTokenSource;
use crate::secret::Secret;

/// Mints keys through the Tailscale API with an OAuth client's access tokens.
#[derive(Debug)]
pub struct TailscaleBackend {
    api: ApiClient,
    api_url: Url,
    tailnet: String,
    oauth: OAuthTokenSource,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateKey<'a> {
    capabilities: Capabilities<'a>,
    expiry_seconds: u64,
    description: &'a str,
}

#[derive(Serialize)]
struct Capabilities<'a> {
    devices: DeviceCapabilities<'a>,
}

#[derive(Serialize)]
struct DeviceCapabilities<'a> {
    create: CreateCapability<'a>,
}

#[derive(Serialize)]
struct CreateCapability<'a> {
    reusable: bool,
    ephemeral: bool,
    preauthorized: bool,
    tags: &'a [String],
}

#[derive(Deserialize)]
struct CreatedKey {
    id: String,
    key: String,
    #[serde(default)]
    expires: Option<String>,
}

impl TailscaleBackend {
    pub(crate) fn new(
        api: ApiClient,
        api_url: Url,
        client_id: Secret,
        client_secret: Secret,
        tailnet: String,
    ) -> Self {
        let token_url = endpoint(&api_url, &["api", "v2", "oauth", "token"]);
        let oauth = OAuthTokenSource::new(api.clone(), token_url, client_id, client_secret);
        Self {
            api,
            api_url,
            tailnet,
            oauth,
        }
    }

    pub(crate) async fn mint_key(&self, params: &MintParams) -> Result<AuthKey, AuthError> {
        if params.tags.is_empty() {
            return Err(AuthError::Request {
                backend: self.api.backend(),
                reason: "keys minted with an OAuth client must carry tags; set `tags` in [auth] \
                         or in the request"
                    .to_owned(),
            });
        }
        let url = endpoint(
            &self.api_url,
            &["api", "v2", "tailnet", &self.tailnet, "keys"],
        );
        let body = CreateKey {
            capabilities: Capabilities {
                devices: DeviceCapabilities {
                    create: CreateCapability {
                        reusable: false,
                        ephemeral: params.ephemeral,
                        preauthorized: true,
                        tags: &params.tags,
                    },
                },
            },
            expiry_seconds: params.ttl.as_secs(),
            description: &params.description,
        };
        let request = ApiRequest::json(reqwest::Method::POST, &url, None, &body)?;
        let response = self.send_authorized(request).await?;
        if !response.status.is_success() {
            return Err(self.api.api_error(
                &crate::error::display_url(&url),
                response.status,
                &response.body,
                &[],
            ));
        }
        let created: CreatedKey = decode_json(&self.api, &url, &response.body)?;
        if created.key.is_empty() {
            return Err(self.api.response_error(&url, "empty `key`"));
        }
        Ok(AuthKey {
            key: Secret::new(created.key),
            id: Some(created.id),
            expires: created
                .expires
                .and_then(|text| time::OffsetDateTime::parse(&text, &Rfc3339).ok()),
        })
    }

    /// Deletes the device by its stable ID (the API's `nodeId`), or the numeric ID when
    /// the stable one is unknown.
    pub(crate) async fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError> {
        let device_id = if node.stable_id.is_empty() {
            node.node_id.to_string()
        } else {
            node.stable_id.clone()
        };
        let url = endpoint(&self.api_url, &["api", "v2", "device", &device_id]);
        let request = ApiRequest::new(reqwest::Method::DELETE, &url, None);
        let response = self.send_authorized(request).await?;
        removal_outcome(&self.api, &url, node, response, &[])
    }

    /// Sends with a bearer access token; a 401/403 with a cached token refreshes it once,
    /// since the token may have been revoked or expired early.
    async fn send_authorized(&self, mut request: ApiRequest<'_>) -> Result<ApiResponse, AuthError> {
        let mut access = self.oauth.token().await?;
        loop {
            request.bearer = Some(access.token.clone());
            let result = self.api.send(&request, &[access.token.expose()]).await;
            match result {
                Err(AuthError::Unauthorized { .. }) if !access.fresh => {
                    tracing::info!(
                        backend = self.api.backend(),
                        "access token rejected; fetching a new one"
                    );
                    self.oauth.invalidate(&access.token).await;
                    access = self.oauth.token().await?;
                }
                other => return other,
            }
        }
    }
}
