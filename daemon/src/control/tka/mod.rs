//! Tailnet lock (Go's `tka`), the part a node needs: node-key signatures
//! in their CBOR form, pre-signed auth keys, and signing a pod's node key
//! at registration and again at every rotation. Sans-IO.
//!
//! - [`cbor`]: the canonical CBOR items signatures are made of.
//! - [`signature`]: `NodeKeySignature`, its digest, chain verification.
//! - [`auth_key`]: the `--TL` suffix of a pre-signed auth key.
//! - [`lock`]: an identity's signature and rotation key.

pub mod auth_key;
pub mod cbor;
pub mod lock;
pub mod signature;

pub use auth_key::{AuthKey, AuthKeyError, Credential};
pub use lock::NodeLock;
pub use signature::{NodeKeySignature, SigKind, SignatureError, VerifyError};

#[cfg(test)]
pub(crate) mod tests;
