//! One identity's keys, how a node key is replaced, and where the daemon
//! keeps them.
//!
//! A rotation is two-phase so a crash at any point keeps the identity: the
//! new node key is saved together with the previous one (`old_node`) before
//! the server sees it; the previous key is dropped only after the server
//! accepted the new one. A restart in between registers again with
//! `OldNodeKey` set, which servers accept whether or not the first attempt
//! reached them.

use std::error::Error;

use serde::{Deserialize, Serialize};

use super::keys::{NodePublic, PrivateKey};
use super::tka::NodeLock;

/// Saves an identity's keys durably (the daemon: an atomic 0600 file).
pub trait KeyStore: Send + Sync + 'static {
    /// Must not return before the keys are on stable storage.
    fn save(&self, keys: &IdentityKeys) -> Result<(), KeyStoreError>;
}

/// Why a [`KeyStore`] could not save keys. Its cause must not contain key
/// material: it is logged.
#[derive(Debug, thiserror::Error)]
#[error("saving identity keys: {source}")]
pub struct KeyStoreError {
    #[source]
    source: Box<dyn Error + Send + Sync>,
}

impl KeyStoreError {
    /// Wraps the store's own error (encoding, I/O, ...).
    pub fn new(source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

/// One identity's keys: persisted by the daemon (0600), never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdentityKeys {
    pub machine: PrivateKey,
    pub node: PrivateKey,
    pub disco: PrivateKey,
    /// The node key being replaced, while the server has not yet confirmed
    /// `node` (sent as `OldNodeKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_node: Option<PrivateKey>,
    /// On a tailnet with tailnet lock: the node key's signature and the
    /// key that re-signs it on rotation (from a pre-signed auth key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<NodeLock>,
}

impl std::fmt::Debug for IdentityKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKeys")
            .field("node", &self.node_public())
            .field("rotating", &self.old_node.is_some())
            .field("signed", &self.lock.is_some())
            .finish_non_exhaustive()
    }
}

impl IdentityKeys {
    /// Fresh keys: pods never share a machine key.
    pub fn generate() -> Self {
        Self {
            machine: PrivateKey::generate(),
            node: PrivateKey::generate(),
            disco: PrivateKey::generate(),
            old_node: None,
            lock: None,
        }
    }

    pub fn node_public(&self) -> NodePublic {
        NodePublic(self.node.public())
    }

    /// What `RegisterRequest.OldNodeKey` carries: the key being replaced,
    /// or the zero key.
    pub fn old_node_public(&self) -> NodePublic {
        NodePublic(self.old_node.as_ref().map_or([0; 32], PrivateKey::public))
    }

    pub fn node_private_bytes(&self) -> [u8; 32] {
        self.node.to_bytes()
    }

    pub fn disco_private_bytes(&self) -> [u8; 32] {
        self.disco.to_bytes()
    }

    /// Phase one: a new node key replaces the current one, which is kept as
    /// `old_node`; a signed key's successor is signed by a rotation
    /// signature nesting the current signature. Only valid once the server
    /// confirmed the current key (no rotation pending): otherwise which key
    /// the server knows is unclear, and `None` is returned.
    pub fn begin_rotation(&self) -> Option<Self> {
        if self.old_node.is_some() {
            return None;
        }
        let node = PrivateKey::generate();
        let lock = self
            .lock
            .as_ref()
            .map(|lock| lock.resigned(&NodePublic(node.public())));
        Some(Self {
            machine: self.machine.clone(),
            node,
            disco: self.disco.clone(),
            old_node: Some(self.node.clone()),
            lock,
        })
    }

    /// What `RegisterRequest.NodeKeySignature` carries: the current node
    /// key's signature, when the identity has one.
    pub fn node_key_signature(&self) -> Option<&NodeLock> {
        self.lock
            .as_ref()
            .filter(|lock| lock.signs(&self.node_public()))
    }

    /// Phase two: the server accepted `node`; the old key is forgotten.
    /// Returns whether anything changed.
    pub fn finish_rotation(&mut self) -> bool {
        self.old_node.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_debug_shows_only_the_public_node_key() {
        let keys = IdentityKeys::generate();
        let shown = format!("{keys:?}");
        assert!(shown.contains("nodekey["), "{shown}");
        assert!(!shown.contains(&hex::encode(keys.node.to_bytes())));
        let json = serde_json::to_string(&keys).unwrap();
        assert!(!json.contains("old_node"), "no pending rotation: {json}");
        let back: IdentityKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(back.node_public(), keys.node_public());
        assert!(back.old_node.is_none());
    }

    #[test]
    fn rotation_keeps_machine_and_disco_and_remembers_the_known_key() {
        let keys = IdentityKeys::generate();
        assert!(keys.old_node_public().is_zero());
        let rotating = keys.begin_rotation().unwrap();
        assert_eq!(rotating.machine.public(), keys.machine.public());
        assert_eq!(rotating.disco.public(), keys.disco.public());
        assert_ne!(rotating.node_public(), keys.node_public());
        assert_eq!(rotating.old_node_public(), keys.node_public());

        // Survives a save and load in the middle of the rotation.
        let json = serde_json::to_string(&rotating).unwrap();
        let loaded: IdentityKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded.old_node_public(), keys.node_public());
        assert_eq!(loaded.node_public(), rotating.node_public());

        // No second rotation before the server confirmed the first.
        assert!(loaded.begin_rotation().is_none());

        let mut done = loaded.clone();
        assert!(done.finish_rotation());
        assert!(!done.finish_rotation());
        assert!(done.old_node_public().is_zero());
        assert_eq!(done.node_public(), rotating.node_public());
        assert!(done.begin_rotation().is_some());
    }

    #[test]
    fn files_written_before_rotation_existed_still_load() {
        let keys = IdentityKeys::generate();
        let old_format = serde_json::json!({
            "machine": keys.machine, "node": keys.node, "disco": keys.disco,
        });
        let loaded: IdentityKeys = serde_json::from_value(old_format).unwrap();
        assert_eq!(loaded.node_public(), keys.node_public());
        assert!(loaded.old_node.is_none());
    }
}
