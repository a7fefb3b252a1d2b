//! Per-pod state on disk: one JSON record per container under
//! `<state_dir>/pods/<container_id>.json`, written atomically with mode 0600.
//!
//! A record is either the old or the new version after a crash, never a torn
//! mix: it is written to a temporary file in the same directory, synced,
//! renamed over the old one, and the directory is synced.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};
use tailnet_cni_proto::atomic_file::{atomic_write, parse_temp_file_name};
use tailnet_cni_proto::validate::InvalidContainerId;

use super::naming::validate_container_id;
use super::peer_routes::RouteRequest;
use super::plumbing::PodNet;

mod sessions;

pub use sessions::{RememberedFilter, RememberedSessions, SessionPeersFile};

const PODS_DIR: &str = "pods";
const IDENTITIES_DIR: &str = "identities";
const SESSIONS_DIR: &str = "sessions";
const RECORD_SUFFIX: &str = ".json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid container id {container_id:?}: {source}")]
    InvalidContainerId {
        container_id: String,
        source: InvalidContainerId,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("corrupt pod record {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("encoding pod record for {container_id}: {source}")]
    Encode {
        container_id: String,
        source: serde_json::Error,
    },
    #[error("pod record {path} holds container id {found:?}, expected {expected:?}")]
    Mismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a pod is in its lifecycle; persisted so a restarted daemon knows
/// what to resume or clean up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodPhase {
    /// ADD accepted, nothing created yet.
    Pending,
    /// Tailnet identity registered with control.
    Registered,
    /// Devices, addresses, rules and routes in place.
    Plumbed,
    /// Data plane running for the pod.
    Running,
    /// DEL in progress.
    Deleting,
}

/// The record format this daemon writes. Version 1 (no `version` field)
/// had no `tags`; it reads as version 2 with none.
pub const RECORD_VERSION: u32 = 2;

/// Records written before the format carried a version.
fn unversioned() -> u32 {
    1
}

/// Everything the daemon must remember about one pod across restarts.
/// Holds no secrets: the identity keys live in `identity_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Format of the record as read; [`StateStore::save`] always writes
    /// [`RECORD_VERSION`].
    #[serde(default = "unversioned")]
    pub version: u32,
    pub container_id: String,
    /// Network namespace path the runtime gave us.
    pub netns: PathBuf,
    /// CNI ifName inside the pod (e.g. `ts0`).
    pub if_name: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Tailnet machine name.
    pub hostname: String,
    /// ACL tags the pod asked for (and selection allowed); a restarted
    /// daemon registers again with them if its node key needs a new auth key.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Host and pod plumbing, once set up.
    #[serde(default)]
    pub pod_net: Option<PodNet>,
    /// File holding the pod's node and machine keys.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// Control server's numeric node id.
    #[serde(default)]
    pub node_id: Option<i64>,
    /// Control server's stable node id.
    #[serde(default)]
    pub stable_id: Option<String>,
    /// The route opt-ins the pod's annotations asked for.
    #[serde(default, skip_serializing_if = "RouteRequest::is_default")]
    pub routes: RouteRequest,
    pub state: PodPhase,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

#[derive(Debug)]
pub struct LoadedRecords {
    pub records: Vec<PodRecord>,
    /// Files that could not be read or parsed; reported, not fatal.
    pub errors: Vec<StateError>,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
    pods_dir: PathBuf,
    /// When this process opened the store: a temporary file with our pid
    /// but written before then is a previous daemon's (in a container the
    /// daemon is PID 1 on every start).
    opened_at: SystemTime,
}

impl StateStore {
    /// Opens (creating if needed, mode 0700) `<state_dir>/pods`,
    /// `<state_dir>/identities` and `<state_dir>/sessions`.
    pub fn open(state_dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = state_dir.into();
        let pods_dir = root.join(PODS_DIR);
        let identities_dir = root.join(IDENTITIES_DIR);
        for dir in [&root, &pods_dir, &identities_dir, &root.join(SESSIONS_DIR)] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating directory", dir))?;
        }
        // Directories made by an older or foreign setup may be wider; ours
        // hold key material, so narrow them.
        for dir in [&pods_dir, &identities_dir] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restricting directory", dir))?;
        }
        let opened_at = filesystem_now(&pods_dir)?;
        Ok(Self {
            root,
            pods_dir,
            opened_at,
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.root
    }

    /// `<state_dir>/pods/<container_id>.json`, after validating the id.
    pub fn record_path(&self, container_id: &str) -> Result<PathBuf, StateError> {
        check_id(container_id)?;
        Ok(self.pods_dir.join(format!("{container_id}{RECORD_SUFFIX}")))
    }

    /// `<state_dir>/identities/<container_id>.json`, after validating the id.
    pub fn identity_path(&self, container_id: &str) -> Result<PathBuf, StateError> {
        check_id(container_id)?;
        Ok(self
            .root
            .join(IDENTITIES_DIR)
            .join(format!("{container_id}{RECORD_SUFFIX}")))
    }

    /// Replaces a pod's record atomically, in the current format.
    pub fn save(&self, record: &PodRecord) -> Result<(), StateError> {
        let path = self.record_path(&record.container_id)?;
        let current = PodRecord {
            version: RECORD_VERSION,
            ..record.clone()
        };
        let bytes = serde_json::to_vec_pretty(&current).map_err(|source| StateError::Encode {
            container_id: record.container_id.clone(),
            source,
        })?;
        write_private_atomic(&path, &bytes)
    }

    /// The record of one container, or `None` if there is none.
    pub fn load(&self, container_id: &str) -> Result<Option<PodRecord>, StateError> {
        let path = self.record_path(container_id)?;
        match fs::read(&path) {
            Ok(bytes) => parse_record(&path, &bytes, Some(container_id)).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// Every record; unreadable or corrupt files are listed in `errors` and
    /// do not stop the others from loading.
    pub fn load_all(&self) -> Result<LoadedRecords, StateError> {
        let entries = fs::read_dir(&self.pods_dir).map_err(io_err("listing", &self.pods_dir))?;
        let mut loaded = LoadedRecords {
            records: Vec::new(),
            errors: Vec::new(),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    loaded.errors.push(io_err("listing", &self.pods_dir)(e));
                    continue;
                }
            };
            let file_name = entry.file_name();
            let Some(container_id) = file_name
                .to_str()
                .and_then(|name| name.strip_suffix(RECORD_SUFFIX))
            else {
                continue;
            };
            // Temporary files of interrupted writes start with '.'; they
            // fail validation and are skipped here.
            if validate_container_id(container_id).is_err() {
                continue;
            }
            let path = entry.path();
            match fs::read(&path) {
                Ok(bytes) => match parse_record(&path, &bytes, Some(container_id)) {
                    Ok(record) => loaded.records.push(record),
                    Err(e) => loaded.errors.push(e),
                },
                Err(e) => loaded.errors.push(io_err("reading", &path)(e)),
            }
        }
        loaded
            .records
            .sort_by(|a, b| a.container_id.cmp(&b.container_id));
        Ok(loaded)
    }

    /// Container ids that have a record file, whether or not it parses.
    pub fn container_ids(&self) -> Result<HashSet<String>, StateError> {
        ids_in(&self.pods_dir)
    }

    /// Container ids that have an identity (key) file.
    pub fn identity_ids(&self) -> Result<HashSet<String>, StateError> {
        ids_in(&self.root.join(IDENTITIES_DIR))
    }

    /// Deletes a container's identity file; absent is fine.
    pub fn remove_identity(&self, container_id: &str) -> Result<(), StateError> {
        let path = self.identity_path(container_id)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Deletes temporary files that writes of an earlier process left when
    /// it died between creating and renaming them, also one that had our
    /// pid (a containerised daemon is PID 1 every time). This process's own
    /// are kept: one of its writes may be in flight.
    pub fn remove_stray_temp_files(&self) -> Result<usize, StateError> {
        let mut removed = 0;
        for dir in [
            self.pods_dir.clone(),
            self.root.join(IDENTITIES_DIR),
            self.root.join(SESSIONS_DIR),
        ] {
            let entries = fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = parse_temp_file_name(&name).map(|temp| temp.writer_pid) else {
                    continue;
                };
                if pid == std::process::id() && !self.written_before_open(&entry) {
                    continue;
                }
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing", &entry.path())(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Whether a directory entry was last written before this process
    /// opened the store; one that cannot be told is assumed ours, in flight.
    fn written_before_open(&self, entry: &fs::DirEntry) -> bool {
        entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| modified < self.opened_at)
    }

    /// Deletes a container's record and the peers its sessions had.
    /// Returns false if there was no record.
    pub fn remove(&self, container_id: &str) -> Result<bool, StateError> {
        let path = self.record_path(container_id)?;
        SessionPeersFile::of(&self.root, container_id)?.remove()?;
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.pods_dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }
}

/// The time the filesystem stamps on what is written in `dir` from now on:
/// its stamps come from a coarser clock than `SystemTime::now()`, which
/// would take a file written just after for an older one.
fn filesystem_now(dir: &Path) -> Result<SystemTime, StateError> {
    let file = File::open(dir).map_err(io_err("opening", dir))?;
    futimens(&file, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW)
        .map_err(|errno| io_err("touching", dir)(errno.into()))?;
    file.metadata()
        .and_then(|metadata| metadata.modified())
        .map_err(io_err("reading the time of", dir))
}

/// Valid container ids of the `<id>.json` files in `dir`.
fn ids_in(dir: &Path) -> Result<HashSet<String>, StateError> {
    let mut ids = HashSet::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_suffix(RECORD_SUFFIX))
            .filter(|id| validate_container_id(id).is_ok())
        {
            ids.insert(id.to_string());
        }
    }
    Ok(ids)
}

fn check_id(container_id: &str) -> Result<(), StateError> {
    validate_container_id(container_id).map_err(|source| StateError::InvalidContainerId {
        container_id: container_id.to_string(),
        source,
    })
}

fn parse_record(
    path: &Path,
    bytes: &[u8],
    expected_id: Option<&str>,
) -> Result<PodRecord, StateError> {
    let record: PodRecord =
        serde_json::from_slice(bytes).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(expected) = expected_id {
        if record.container_id != expected {
            return Err(StateError::Mismatch {
                path: path.to_path_buf(),
                expected: expected.to_string(),
                found: record.container_id,
            });
        }
    }
    Ok(record)
}

/// Replaces `path` with `bytes` atomically; the file has mode 0600 from the
/// moment it exists (it may hold private keys). The parent directory must
/// exist.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    atomic_write(path, bytes, 0o600).map_err(|e| StateError::Io {
        op: e.step.as_str(),
        path: e.path,
        source: e.source,
    })
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

#[cfg(test)]
mod tests;
