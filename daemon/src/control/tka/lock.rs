//! One identity's tailnet-lock state: the signature of its current node
//! key, and the rotation key that re-signs every node key after it.
//!
//! The first signature comes from a pre-signed auth key: a rotation
//! signature over the node key, nesting the key's credential, signed by the
//! credential's wrapping key. It also names a fresh per-identity rotation
//! key as its wrapping key, so the wrapping key (meant to be used once) is
//! dropped right away and each node-key rotation is a new rotation
//! signature nesting the previous one, signed by the rotation key, as the
//! official client re-signs with its own tailnet-lock key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use rand::rngs::OsRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::auth_key::Credential;
use super::signature::{NodeKeySignature, SigKind, MAX_NESTING};
use crate::control::keys::NodePublic;

/// Text prefix of a private tailnet-lock key (seed, then public half).
const PRIVATE_PREFIX: &str = "nlpriv:";
/// Text prefix of a public tailnet-lock key, as `RegisterRequest.NLKey`.
pub const PUBLIC_PREFIX: &str = "nlpub:";

/// An identity's signature and rotation key; persisted with its keys,
/// never printed.
#[derive(Clone)]
pub struct NodeLock {
    rotation_key: SigningKey,
    signature: NodeKeySignature,
}

impl std::fmt::Debug for NodeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLock")
            .field("rotation_key", &self.rotation_public())
            .field("chain", &self.signature.depth())
            .finish()
    }
}

impl NodeLock {
    /// Signs `node` by the credential of a pre-signed auth key.
    pub fn sign_by_credential(credential: &Credential, node: &NodePublic) -> Self {
        let rotation_key = SigningKey::generate(&mut OsRng);
        let mut signature = NodeKeySignature::new(SigKind::Rotation);
        signature.pubkey = NodeKeySignature::node_key_bytes(node);
        signature.nested = Some(Box::new(credential.signature.clone()));
        signature.wrapping_pubkey = rotation_key.verifying_key().to_bytes().to_vec();
        sign(&mut signature, &credential.wrapping_key);
        Self {
            rotation_key,
            signature,
        }
    }

    /// The state after the node key was replaced by `node`: a rotation
    /// signature over it that nests the current one. The same node key
    /// keeps its signature.
    pub fn resigned(&self, node: &NodePublic) -> Self {
        let pubkey = NodeKeySignature::node_key_bytes(node);
        if pubkey == self.signature.pubkey {
            return self.clone();
        }
        let mut signature = NodeKeySignature::new(SigKind::Rotation);
        signature.pubkey = pubkey;
        signature.nested = Some(Box::new(self.trimmed()));
        sign(&mut signature, &self.rotation_key);
        Self {
            rotation_key: self.rotation_key.clone(),
            signature,
        }
    }

    /// The current signature, shortened so one more rotation on top of it
    /// stays within the nesting verifiers accept: the first signature (the
    /// one that names the rotation key) is kept, with the newest node keys
    /// re-signed above it.
    fn trimmed(&self) -> NodeKeySignature {
        if self.signature.depth() < MAX_NESTING {
            return self.signature.clone();
        }
        let mut above = Vec::new();
        let mut anchor = &self.signature;
        while anchor.wrapping_pubkey.is_empty() {
            match &anchor.nested {
                Some(nested) if anchor.kind == SigKind::Rotation => {
                    above.push(&anchor.pubkey);
                    anchor = nested;
                }
                // Not a chain this identity built: nothing to keep it by.
                _ => return self.signature.clone(),
            }
        }
        let room = MAX_NESTING.saturating_sub(1 + anchor.depth());
        let mut chain = anchor.clone();
        for pubkey in above.into_iter().take(room).rev() {
            let mut link = NodeKeySignature::new(SigKind::Rotation);
            link.pubkey.clone_from(pubkey);
            link.nested = Some(Box::new(chain));
            sign(&mut link, &self.rotation_key);
            chain = link;
        }
        chain
    }

    /// The signature of the current node key.
    pub fn signature(&self) -> &NodeKeySignature {
        &self.signature
    }

    /// Whether the current signature is over `node`.
    pub fn signs(&self, node: &NodePublic) -> bool {
        self.signature.pubkey == NodeKeySignature::node_key_bytes(node)
    }

    /// The public rotation key.
    pub fn rotation_public(&self) -> [u8; 32] {
        self.rotation_key.verifying_key().to_bytes()
    }
}

fn sign(signature: &mut NodeKeySignature, key: &SigningKey) {
    signature.signature = key.sign(&signature.sig_hash()).to_bytes().to_vec();
}

/// How a [`NodeLock`] is kept in an identity's key file.
#[derive(Serialize, Deserialize)]
struct Stored {
    rotation_key: String,
    signature: String,
}

impl Serialize for NodeLock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            rotation_key: format!(
                "{PRIVATE_PREFIX}{}",
                hex::encode(self.rotation_key.to_keypair_bytes())
            ),
            signature: STANDARD.encode(self.signature.to_cbor()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeLock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let stored = Stored::deserialize(d)?;
        // Errors never repeat the key text.
        let rotation_key = stored
            .rotation_key
            .strip_prefix(PRIVATE_PREFIX)
            .and_then(|text| hex::decode(text).ok())
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .and_then(|bytes| SigningKey::from_keypair_bytes(&bytes).ok())
            .ok_or_else(|| D::Error::custom("invalid tailnet-lock rotation key"))?;
        let bytes = STANDARD
            .decode(&stored.signature)
            .map_err(|_| D::Error::custom("tailnet-lock signature is not base64"))?;
        let signature = NodeKeySignature::from_cbor(&bytes).map_err(D::Error::custom)?;
        Ok(Self {
            rotation_key,
            signature,
        })
    }
}
