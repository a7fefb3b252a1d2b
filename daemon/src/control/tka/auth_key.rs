//! Pre-signed ("wrapped") auth keys: an auth key followed by
//! `--TL<credential>-<wrapping private key>`, both in unpadded standard
//! base64, as `tailscale lock sign <auth key>` prints them.
//!
//! The credential is a [`SigKind::Credential`] signature by a tailnet-lock
//! key that delegates signing to the wrapping key; the wrapping private key
//! (ed25519, seed then public half) signs the node key of whoever registers
//! with the auth key. Both halves are secrets: nothing here prints them.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use tailnet_auth::Secret;

use super::signature::{NodeKeySignature, SigKind, SignatureError};

/// Separates the auth key from the tailnet-lock suffix.
const LOCK_SUFFIX: &str = "--TL";
/// Separates the credential from the wrapping private key.
const PART_SEPARATOR: char = '-';

/// Why a pre-signed auth key cannot be used. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthKeyError {
    #[error("the tailnet-lock suffix has no '-' between credential and private key")]
    MissingSeparator,
    #[error("the tailnet-lock {part} is not unpadded base64")]
    NotBase64 { part: &'static str },
    #[error("the tailnet-lock credential is malformed: {0}")]
    Credential(#[from] SignatureError),
    #[error("the tailnet-lock suffix holds a {0:?} signature, not a credential")]
    NotACredential(SigKind),
    #[error("the tailnet-lock credential has no valid ed25519 signature by its key id")]
    CredentialUnsigned,
    #[error("the tailnet-lock private key is {0} bytes, not 64")]
    PrivateKeyLength(usize),
    #[error("the tailnet-lock private key does not match its own public half")]
    PrivateKeyInconsistent,
    #[error("the tailnet-lock private key is not the one the credential delegates to")]
    NotTheWrappingKey,
}

/// A minted auth key, split into what control sees and what signs.
#[derive(Debug, Clone)]
pub struct AuthKey {
    /// What is sent as `Auth.AuthKey`: the key without the lock suffix.
    pub key: Secret,
    /// Present when the key was pre-signed for a locked tailnet.
    pub credential: Option<Credential>,
}

/// A credential and the wrapping key it delegates to.
#[derive(Clone)]
pub struct Credential {
    pub signature: NodeKeySignature,
    pub wrapping_key: SigningKey,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("authority", &hex::encode(&self.signature.key_id))
            .finish_non_exhaustive()
    }
}

impl AuthKey {
    /// Splits `minted` at the lock suffix, if any, and checks the suffix:
    /// a malformed one is an error (the key was meant for a locked
    /// tailnet, and sending it unsigned would only be refused later).
    pub fn parse(minted: &Secret) -> Result<Self, AuthKeyError> {
        let Some((key, suffix)) = minted.expose().split_once(LOCK_SUFFIX) else {
            return Ok(Self {
                key: minted.clone(),
                credential: None,
            });
        };
        let (credential, private) = suffix
            .split_once(PART_SEPARATOR)
            .ok_or(AuthKeyError::MissingSeparator)?;
        let credential = decode(credential, "credential")?;
        let private = decode(private, "private key")?;
        Ok(Self {
            key: Secret::new(key),
            credential: Some(Credential::new(&credential, &private)?),
        })
    }
}

fn decode(part: &str, name: &'static str) -> Result<Vec<u8>, AuthKeyError> {
    STANDARD_NO_PAD
        .decode(part)
        .map_err(|_| AuthKeyError::NotBase64 { part: name })
}

impl Credential {
    fn new(credential: &[u8], private: &[u8]) -> Result<Self, AuthKeyError> {
        let signature = NodeKeySignature::from_cbor(credential)?;
        if signature.kind != SigKind::Credential {
            return Err(AuthKeyError::NotACredential(signature.kind));
        }
        // An ed25519 authority key's id is the key itself: the credential
        // can be checked here, so a damaged one fails now, not at control.
        let authority = <[u8; 32]>::try_from(&signature.key_id[..])
            .ok()
            .and_then(|id| VerifyingKey::from_bytes(&id).ok())
            .ok_or(AuthKeyError::CredentialUnsigned)?;
        if signature.verify_credential(&authority).is_err() {
            return Err(AuthKeyError::CredentialUnsigned);
        }
        let keypair = <&[u8; 64]>::try_from(private)
            .map_err(|_| AuthKeyError::PrivateKeyLength(private.len()))?;
        let wrapping_key = SigningKey::from_keypair_bytes(keypair)
            .map_err(|_| AuthKeyError::PrivateKeyInconsistent)?;
        if wrapping_key.verifying_key().as_bytes()[..] != signature.wrapping_pubkey[..] {
            return Err(AuthKeyError::NotTheWrappingKey);
        }
        Ok(Self {
            signature,
            wrapping_key,
        })
    }
}
