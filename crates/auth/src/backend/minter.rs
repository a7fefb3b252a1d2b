//! The cluster's minter (`tailnet-cnid minter`): the node holds only its service account
//! token, and the minter, which holds the control server's credentials, mints for it.

use std::path::PathBuf;

use url::Url;

use super::{post_json, AuthKey, MintParams, NodeRef};
use crate::error::AuthError;
use crate::http::{endpoint, ApiClient};
use crate::minter_api::{MintRequest, MintResponse, MINT_PATH};
use crate::secret::Secret;

/// Asks the minter for each key, authenticated by the node's projected service account
/// token.
#[derive(Debug)]
pub struct MinterBackend {
    api: ApiClient,
    api_url: Url,
    token_file: PathBuf,
}

impl MinterBackend {
    pub(crate) fn new(api: ApiClient, api_url: Url, token_file: PathBuf) -> Self {
        Self {
            api,
            api_url,
            token_file,
        }
    }

    pub(crate) async fn mint_key(&self, params: &MintParams) -> Result<AuthKey, AuthError> {
        // The kubelet rotates a projected token in place: read it afresh for every key.
        let path = self.token_file.clone();
        let token = tokio::task::spawn_blocking(move || Secret::from_file(&path))
            .await
            .map_err(|err| AuthError::Config(format!("reading the token file: {err}")))??;
        let segments: Vec<&str> = MINT_PATH.split('/').filter(|s| !s.is_empty()).collect();
        let url = endpoint(&self.api_url, &segments);
        let body = MintRequest {
            hostname: params.hostname.clone(),
            tags: params.tags.clone(),
        };
        let minted: MintResponse = post_json(&self.api, &url, &token, &body).await?;
        if minted.key.is_empty() {
            return Err(self.api.response_error(&url, "empty `key`"));
        }
        Ok(AuthKey {
            key: Secret::new(minted.key),
            id: minted.id,
            expires: minted
                .expires_at_unix_secs
                .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok()),
        })
    }

    /// A node holds no credential that can delete devices: its own logout (which the
    /// daemon sends before it calls this) is the removal; what a failed logout leaves is
    /// left to the key's ephemerality or the tailnet's admin.
    pub(crate) fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError> {
        tracing::debug!(
            backend = self.api.backend(),
            node_id = node.node_id,
            "no device removal from a node: its logout was the removal, an ephemeral key the fallback"
        );
        Ok(())
    }
}
