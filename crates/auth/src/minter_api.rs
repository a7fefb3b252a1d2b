//! The minter's HTTP contract, shared by the node's client (`kind = "minter"`) and the
//! minter itself (`tailnet-cnid minter`).
//!
//! One endpoint: `POST /v1/keys` with `Authorization: Bearer <service account token>` and a
//! JSON [`MintRequest`]; `201 Created` with a [`MintResponse`]. Every refusal carries a
//! [`MintRefusal`] body: `401` the token is not accepted, `403` the token's identity may not
//! mint, `400` the request asks for what the caller may not have, `422` the control server's
//! API refused the minter; `503` means the minter cannot reach the Kubernetes API or the
//! control server's API right now, and only that is worth trying again.

use serde::{Deserialize, Serialize};

/// The path of the one minting endpoint.
pub const MINT_PATH: &str = "/v1/keys";

/// What a node asks the minter for: one key for one new pod identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// The pod identity's hostname, for the key's description and the minter's audit log.
    pub hostname: String,
    /// Tags for the node; empty asks for the caller's default tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A freshly minted, single-use, pre-authorized key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintResponse {
    /// The auth key.
    pub key: String,
    /// The control server's ID of the key, when it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When the key stops being accepted (Unix seconds), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix_secs: Option<i64>,
}

impl std::fmt::Debug for MintResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintResponse")
            .field("key", &"[redacted]")
            .field("id", &self.id)
            .field("expires_at_unix_secs", &self.expires_at_unix_secs)
            .finish()
    }
}

/// The body of a refusal: why, in words meant for the pod's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintRefusal {
    /// What the caller may not have, never a secret.
    pub error: String,
}
