//! Where a session gets an auth key when the control server wants one.

use std::error::Error;

use tailnet_auth::{AuthError, Secret};

/// Mints an auth key when the control server wants one.
#[tonic::async_trait]
pub trait AuthKeySource: Send + Sync + 'static {
    /// A fresh key; it is redacted wherever it is printed.
    async fn auth_key(&self) -> Result<Secret, MintError>;
}

/// Why no auth key could be had. Its cause must not contain secrets: it is
/// logged and can reach a pod's events.
#[derive(Debug, thiserror::Error)]
#[error("minting an auth key: {source}")]
pub struct MintError {
    #[source]
    source: Box<dyn Error + Send + Sync>,
}

impl MintError {
    /// Wraps the key source's own error.
    pub fn new(source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }

    /// Whether minting again soon can help: the key source is an auth backend that could
    /// not reach its API (or the cluster's minter), not one that refused.
    pub fn is_temporary(&self) -> bool {
        self.source
            .downcast_ref::<AuthError>()
            .is_some_and(AuthError::is_temporary)
    }
}
