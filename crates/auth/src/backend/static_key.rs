//! A pre-made auth key from a file: for control servers without a key-minting API.

use std::path::PathBuf;

use super::{AuthKey, MintParams, NodeRef};
use crate::error::AuthError;
use crate::secret::Secret;

/// Hands out the key in `key_file`, read afresh on each mint so rotating the file (or the
/// Kubernetes secret behind it) needs no restart. The key must be reusable.
#[derive(Debug)]
pub struct StaticBackend {
    key_file: PathBuf,
}

impl StaticBackend {
    pub(crate) fn new(key_file: PathBuf) -> Self {
        Self { key_file }
    }

    pub(crate) async fn mint_key(&self, params: &MintParams) -> Result<AuthKey, AuthError> {
        let path = self.key_file.clone();
        let key = tokio::task::spawn_blocking(move || Secret::from_file(&path))
            .await
            .map_err(|err| AuthError::Io {
                path: self.key_file.clone(),
                source: std::io::Error::other(err.to_string()),
            })??;
        tracing::debug!(
            hostname = %params.hostname,
            key_file = %self.key_file.display(),
            "static key: tags, ephemerality and lifetime are those of the pre-made key"
        );
        Ok(AuthKey {
            key,
            id: None,
            expires: None,
        })
    }

    pub(crate) fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError> {
        tracing::debug!(
            node_id = node.node_id,
            node_key = %node.node_key,
            "static key backend cannot remove nodes; leaving it to the control server"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params() -> MintParams {
        MintParams {
            hostname: "pod-a".to_owned(),
            tags: vec![],
            ephemeral: true,
            ttl: Duration::from_secs(60),
            description: "d".to_owned(),
        }
    }

    #[tokio::test]
    async fn rereads_the_file_on_each_mint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authkey");
        std::fs::write(&path, "tskey-auth-first\n").unwrap();
        let backend = StaticBackend::new(path.clone());
        assert_eq!(
            backend.mint_key(&params()).await.unwrap().key.expose(),
            "tskey-auth-first"
        );
        std::fs::write(&path, "tskey-auth-second\n").unwrap();
        let key = backend.mint_key(&params()).await.unwrap();
        assert_eq!(key.key.expose(), "tskey-auth-second");
        assert_eq!(key.id, None);
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let backend = StaticBackend::new(dir.path().join("gone"));
        let err = backend.mint_key(&params()).await.unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn removal_is_a_no_op() {
        let backend = StaticBackend::new(PathBuf::from("/nonexistent"));
        let node = NodeRef {
            node_id: 1,
            stable_id: "n1".to_owned(),
            node_key: "nodekey:00".to_owned(),
        };
        assert!(backend.remove_node(&node).is_ok());
    }
}
