//! A node-key signature: the CBOR map tailnet lock certifies a node key
//! with, its signing digest, and how a verifier checks a chain of them.
//!
//! Field numbers: 1 kind (always present), 2 the certified node key
//! (`"np"` followed by its 32 bytes), 3 the id of the authority key that
//! signed it, 4 the ed25519 signature, 5 the nested signature a rotation
//! builds on, 6 the wrapping public key that may sign over this one. Empty
//! fields are left out. The digest signed is BLAKE2s-256 of the canonical
//! encoding without field 4.

use blake2::{Blake2s256, Digest};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use super::cbor::{self, CborError, Reader};
use crate::control::keys::NodePublic;

/// The nesting bound a verifier decodes signatures with: a rotation chain
/// longer than this is refused, so the signer keeps chains within it.
pub const MAX_NESTING: usize = 16;

/// The binary form of a node key inside a signature: a type prefix, then
/// the 32 key bytes.
const NODE_KEY_PREFIX: &[u8; 2] = b"np";

/// What a signature certifies and with which key it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigKind {
    /// A node key, signed by an authority key (`key_id`).
    Direct = 1,
    /// A node key, signed by the wrapping key of the nested signature.
    Rotation = 2,
    /// A wrapping key (no node key), signed by an authority key: a
    /// delegation, meant to be nested in a rotation.
    Credential = 3,
}

impl SigKind {
    fn from_wire(value: u64) -> Result<Self, SignatureError> {
        match value {
            1 => Ok(Self::Direct),
            2 => Ok(Self::Rotation),
            3 => Ok(Self::Credential),
            other => Err(SignatureError::UnknownKind(other)),
        }
    }
}

/// Why bytes are not a usable node-key signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature encoding: {0}")]
    Cbor(#[from] CborError),
    #[error("signature has unknown kind {0}")]
    UnknownKind(u64),
    #[error("signature has no kind")]
    MissingKind,
}

/// Why a signature does not authorize a node key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature certifies another node key")]
    OtherNodeKey,
    #[error("a rotation signature nests no signature")]
    NothingNested,
    #[error("a {0:?} signature cannot nest another")]
    UnexpectedNesting(SigKind),
    #[error("no wrapping key authorizes the rotation")]
    NoWrappingKey,
    #[error("the signing key is not a valid ed25519 public key")]
    BadKey,
    #[error("the ed25519 signature does not verify")]
    BadSignature,
}

/// A node-key signature (Go's `tka.NodeKeySignature`). Public data: it is
/// sent to control and gossiped to peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKeySignature {
    pub kind: SigKind,
    /// The node key certified, in its binary form (empty for credentials).
    pub pubkey: Vec<u8>,
    /// The authority key that signed (direct and credential signatures).
    pub key_id: Vec<u8>,
    /// 64 bytes of ed25519 signature over [`Self::sig_hash`].
    pub signature: Vec<u8>,
    pub nested: Option<Box<NodeKeySignature>>,
    /// The ed25519 key allowed to sign a rotation that nests this one.
    pub wrapping_pubkey: Vec<u8>,
}

impl NodeKeySignature {
    /// An unsigned signature of `kind` with every other field empty.
    pub fn new(kind: SigKind) -> Self {
        Self {
            kind,
            pubkey: Vec::new(),
            key_id: Vec::new(),
            signature: Vec::new(),
            nested: None,
            wrapping_pubkey: Vec::new(),
        }
    }

    /// The canonical CBOR encoding: what is sent and what is hashed.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(&mut out, true);
        out
    }

    fn encode(&self, out: &mut Vec<u8>, with_signature: bool) {
        let fields: [(u64, &[u8]); 4] = [
            (2, &self.pubkey),
            (3, &self.key_id),
            (4, if with_signature { &self.signature } else { &[] }),
            (6, &self.wrapping_pubkey),
        ];
        let present = fields.iter().filter(|(_, v)| !v.is_empty()).count();
        cbor::map(out, 1 + present + usize::from(self.nested.is_some()));
        cbor::unsigned(out, 1);
        cbor::unsigned(out, self.kind as u64);
        for (key, value) in &fields[..3] {
            if !value.is_empty() {
                cbor::unsigned(out, *key);
                cbor::bytes(out, value);
            }
        }
        if let Some(nested) = &self.nested {
            cbor::unsigned(out, 5);
            // A nested signature is encoded whole: its own signature is
            // part of what the outer one signs.
            nested.encode(out, true);
        }
        let (key, value) = fields[3];
        if !value.is_empty() {
            cbor::unsigned(out, key);
            cbor::bytes(out, value);
        }
    }

    /// Decodes a signature; fields this version does not know are skipped.
    pub fn from_cbor(input: &[u8]) -> Result<Self, SignatureError> {
        let mut reader = Reader::new(input, MAX_NESTING);
        let signature = Self::decode(&mut reader, 1)?;
        reader.finish()?;
        Ok(signature)
    }

    fn decode(reader: &mut Reader<'_>, depth: usize) -> Result<Self, SignatureError> {
        let mut kind = None;
        let mut sig = Self::new(SigKind::Direct);
        let mut invalid = None;
        reader.map(depth, |r, key| {
            match key {
                1 => match SigKind::from_wire(r.unsigned()?) {
                    Ok(found) => kind = Some(found),
                    Err(e) => invalid = Some(e),
                },
                2 => sig.pubkey = r.bytes()?.to_vec(),
                3 => sig.key_id = r.bytes()?.to_vec(),
                4 => sig.signature = r.bytes()?.to_vec(),
                5 => match Self::decode(r, depth + 1) {
                    Ok(nested) => sig.nested = Some(Box::new(nested)),
                    Err(SignatureError::Cbor(e)) => return Err(e),
                    Err(e) => invalid = Some(e),
                },
                6 => sig.wrapping_pubkey = r.bytes()?.to_vec(),
                _ => r.skip(depth + 1)?,
            }
            Ok(())
        })?;
        if let Some(e) = invalid {
            return Err(e);
        }
        sig.kind = kind.ok_or(SignatureError::MissingKind)?;
        Ok(sig)
    }

    /// The digest the signature is over: BLAKE2s-256 of the encoding with
    /// the signature field left out.
    pub fn sig_hash(&self) -> [u8; 32] {
        let mut unsigned = Vec::with_capacity(128);
        self.encode(&mut unsigned, false);
        Blake2s256::digest(&unsigned).into()
    }

    /// The binary form of `node` that `pubkey` holds.
    pub fn node_key_bytes(node: &NodePublic) -> Vec<u8> {
        let mut out = Vec::with_capacity(34);
        out.extend_from_slice(NODE_KEY_PREFIX);
        out.extend_from_slice(&node.0);
        out
    }

    /// The key that must sign a rotation nesting this signature: its own
    /// wrapping key, else (for a rotation) its nested one's.
    pub fn wrapping_public(&self) -> Option<&[u8]> {
        if !self.wrapping_pubkey.is_empty() {
            return Some(&self.wrapping_pubkey);
        }
        match (&self.kind, &self.nested) {
            (SigKind::Rotation, Some(nested)) => nested.wrapping_public(),
            _ => None,
        }
    }

    /// How many signatures the chain holds, this one included.
    pub fn depth(&self) -> usize {
        1 + self.nested.as_ref().map_or(0, |nested| nested.depth())
    }

    /// Checks, as a tailnet-lock verifier does, that this signature
    /// authorizes `node` and that its chain ends in a signature by
    /// `authority` (an ed25519 key trusted by the tailnet's lock).
    pub fn verify(&self, node: &NodePublic, authority: &VerifyingKey) -> Result<(), VerifyError> {
        self.verify_for(Some(&Self::node_key_bytes(node)), authority)
    }

    /// Checks a credential's own signature by `authority`.
    pub fn verify_credential(&self, authority: &VerifyingKey) -> Result<(), VerifyError> {
        self.verify_for(None, authority)
    }

    fn verify_for(&self, node: Option<&[u8]>, authority: &VerifyingKey) -> Result<(), VerifyError> {
        if self.kind != SigKind::Credential && node != Some(&self.pubkey[..]) {
            return Err(VerifyError::OtherNodeKey);
        }
        let digest = self.sig_hash();
        match self.kind {
            SigKind::Rotation => {
                let nested = self.nested.as_ref().ok_or(VerifyError::NothingNested)?;
                let wrapping = nested.wrapping_public().ok_or(VerifyError::NoWrappingKey)?;
                let key: [u8; 32] = wrapping.try_into().map_err(|_| VerifyError::BadKey)?;
                let key = VerifyingKey::from_bytes(&key).map_err(|_| VerifyError::BadKey)?;
                check(&key, &digest, &self.signature)?;
                let nested_node =
                    (nested.kind != SigKind::Credential).then_some(&nested.pubkey[..]);
                nested.verify_for(nested_node, authority)
            }
            SigKind::Direct | SigKind::Credential => {
                if self.nested.is_some() {
                    return Err(VerifyError::UnexpectedNesting(self.kind));
                }
                check(authority, &digest, &self.signature)
            }
        }
    }
}

fn check(key: &VerifyingKey, digest: &[u8; 32], signature: &[u8]) -> Result<(), VerifyError> {
    let signature = Signature::from_slice(signature).map_err(|_| VerifyError::BadSignature)?;
    key.verify(digest, &signature)
        .map_err(|_| VerifyError::BadSignature)
}
