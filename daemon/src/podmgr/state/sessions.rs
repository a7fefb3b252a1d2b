//! The peers a pod had live WireGuard sessions with, one small file per pod
//! (`<state_dir>/sessions/<container_id>.json`), so a restarted daemon can
//! re-handshake with them at once. Written only when the set changes.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{check_id, write_private_atomic, StateError, RECORD_SUFFIX, SESSIONS_DIR};
use crate::wg::engine::ResumePeer;

/// Format of the file; a newer one is read as far as it is understood.
const SESSIONS_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    /// The pod's UDP port: peers keep sending to it after a restart.
    #[serde(default)]
    udp_port: Option<u16>,
    peers: Vec<PeerOnDisk>,
}

/// What a pod's sessions need to resume after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RememberedSessions {
    /// The local UDP port the sessions used.
    pub udp_port: Option<u16>,
    /// The peers with live sessions.
    pub peers: Vec<ResumePeer>,
}

#[derive(Serialize, Deserialize)]
struct PeerOnDisk {
    /// The peer's node key, hex.
    node_key: String,
    /// The direct endpoint the session last used.
    #[serde(default)]
    direct: Option<SocketAddr>,
}

/// One pod's remembered session peers.
#[derive(Debug, Clone)]
pub struct SessionPeersFile {
    container_id: String,
    path: PathBuf,
}

impl SessionPeersFile {
    /// The file of `container_id` under `state_dir`, after validating the id.
    pub fn of(state_dir: &Path, container_id: &str) -> Result<Self, StateError> {
        check_id(container_id)?;
        Ok(Self {
            container_id: container_id.to_string(),
            path: state_dir
                .join(SESSIONS_DIR)
                .join(format!("{container_id}{RECORD_SUFFIX}")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remembered sessions; none when the file is absent. Entries whose
    /// key does not parse are skipped: a peer missed costs one rekey
    /// timeout, not the pod.
    pub fn load(&self) -> Result<RememberedSessions, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(RememberedSessions::default())
            }
            Err(source) => {
                return Err(StateError::Io {
                    op: "reading",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let on_disk: OnDisk =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        let peers = on_disk
            .peers
            .into_iter()
            .filter_map(|peer| {
                let mut node_key = [0u8; 32];
                hex::decode_to_slice(&peer.node_key, &mut node_key).ok()?;
                Some(ResumePeer {
                    node_key,
                    direct: peer.direct,
                })
            })
            .collect();
        Ok(RememberedSessions {
            udp_port: on_disk.udp_port,
            peers,
        })
    }

    /// Replaces what is remembered atomically.
    pub fn save(&self, sessions: &RememberedSessions) -> Result<(), StateError> {
        let on_disk = OnDisk {
            version: SESSIONS_VERSION,
            udp_port: sessions.udp_port,
            peers: sessions
                .peers
                .iter()
                .map(|peer| PeerOnDisk {
                    node_key: hex::encode(peer.node_key),
                    direct: peer.direct,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&on_disk).map_err(|source| StateError::Encode {
            container_id: self.container_id.clone(),
            source,
        })?;
        write_private_atomic(&self.path, &bytes)
    }

    /// Deletes the file; absent is fine.
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                op: "removing",
                path: self.path.clone(),
                source,
            }),
        }
    }
}
