//! A pod identity's key file: written before anything can register the
//! keys, rewritten (atomically, 0600) whenever the session rotates the node
//! key, read back when the daemon resumes the pod after a restart.

use std::path::{Path, PathBuf};

use super::state::{write_private_atomic, StateError};
use crate::control::{IdentityKeys, KeyStore, KeyStoreError};

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("encoding keys: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("saving keys: {0}")]
    Write(#[source] StateError),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding {}: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Replaces the key file at `path` with `keys`.
pub fn write_keys(path: &Path, keys: &IdentityKeys) -> Result<(), KeyFileError> {
    let bytes = serde_json::to_vec(keys).map_err(KeyFileError::Encode)?;
    write_private_atomic(path, &bytes).map_err(KeyFileError::Write)
}

/// The keys saved at `path`.
pub fn read_keys(path: &Path) -> Result<IdentityKeys, KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| KeyFileError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// The pod's key file as the session's key store.
pub struct IdentityFile(pub PathBuf);

impl KeyStore for IdentityFile {
    fn save(&self, keys: &IdentityKeys) -> Result<(), KeyStoreError> {
        write_keys(&self.0, keys).map_err(KeyStoreError::new)
    }
}
