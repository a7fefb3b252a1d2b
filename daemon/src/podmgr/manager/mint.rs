//! Auth keys for new identities, minted when a control session asks.

use std::sync::Arc;

use tailnet_auth::{AuthBackend, KeyRequest, Secret};

use crate::control::{AuthKeySource, MintError};

/// Mints a fresh auth key for one identity through the auth backend.
pub struct MintKey {
    auth: Arc<AuthBackend>,
    request: KeyRequest,
}

impl MintKey {
    /// Mints keys for `request` through `auth`.
    pub fn new(auth: Arc<AuthBackend>, request: KeyRequest) -> Self {
        Self { auth, request }
    }
}

#[tonic::async_trait]
impl AuthKeySource for MintKey {
    async fn auth_key(&self) -> Result<Secret, MintError> {
        self.auth
            .mint_key(&self.request)
            .await
            .map(|key| key.key)
            .map_err(MintError::new)
    }
}
