//! Which dirs the runtime reads: every CNI bin dir and the conf dir.
//!
//! Each runtime found on the node contributes its dirs: k3s (its generated
//! containerd config, else its data layout), a standalone containerd, CRI-O.
//! With none of them, the upstream default `/opt/cni/bin`. The host's own
//! system dirs are never used, even when a config names one.

use std::path::{Path, PathBuf};

use super::containerd::{self, CniDirs};
use super::{crio, host_path, io_err, k3s, InstallArgs, InstallError};

/// The CNI bin dir containerd and CRI-O use when their config names none.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// The CNI conf dir used when no config names one.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// The host's system dirs: writing the shim there would put it on every
/// user's `PATH` and beside the distribution's own files.
pub const SYSTEM_BIN_DIRS: [&str; 6] = [
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

/// The dirs the runtime reads, as seen below `--host-root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub bin_dirs: Vec<PathBuf>,
    pub conf_dir: PathBuf,
}

impl Layout {
    /// Resolves the dirs from the arguments and the configs on the host.
    /// Called again on every pass: a k3s upgrade moves its bin dir.
    pub fn resolve(args: &InstallArgs) -> Result<Self, InstallError> {
        let found = if args.bin_dirs.is_empty() {
            runtime_dirs(args)?
        } else {
            CniDirs {
                bin_dirs: args.bin_dirs.clone(),
                conf_dir: None,
            }
        };
        let mut bin_dirs: Vec<PathBuf> = Vec::new();
        for dir in found.bin_dirs {
            if SYSTEM_BIN_DIRS
                .iter()
                .any(|system| dir == Path::new(system))
            {
                return Err(InstallError::SystemBinDir(dir));
            }
            let dir = host_path(&args.host_root, &dir);
            if !bin_dirs.contains(&dir) {
                bin_dirs.push(dir);
            }
        }
        if bin_dirs.is_empty() {
            return Err(InstallError::NoBinDir);
        }
        let conf_dir = args
            .conf_dir
            .clone()
            .or(found.conf_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONF_DIR));
        Ok(Self {
            bin_dirs,
            conf_dir: host_path(&args.host_root, &conf_dir),
        })
    }

    /// Fails on the first bin dir that is not there: below the host root it
    /// means the dir is not on a host mount, and creating it would put the
    /// shim where the runtime never looks.
    pub fn require_bin_dirs(&self) -> Result<(), InstallError> {
        match self.bin_dirs.iter().find(|dir| !dir.is_dir()) {
            Some(dir) => Err(InstallError::BinDirMissing(dir.clone())),
            None => Ok(()),
        }
    }
}

/// The dirs of every runtime found on the host (host paths), the conf dir
/// of the first that names one.
fn runtime_dirs(args: &InstallArgs) -> Result<CniDirs, InstallError> {
    let mut sources: Vec<CniDirs> = Vec::new();
    if let Some(dirs) = k3s::cni_dirs(&args.host_root, &args.k3s_data_dir)? {
        sources.push(dirs);
    }
    let containerd_config = host_path(&args.host_root, &args.containerd_config);
    match std::fs::read_to_string(&containerd_config) {
        Ok(text) => sources.push(containerd::cni_dirs(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("reading", &containerd_config)(e)),
    }
    if let Some(dirs) = crio::cni_dirs(&host_path(&args.host_root, &args.crio_config))? {
        sources.push(dirs);
    }
    if sources.is_empty() {
        sources.push(CniDirs::default());
    }
    let mut merged = CniDirs::default();
    for source in sources {
        let bin_dirs = if source.bin_dirs.is_empty() {
            vec![PathBuf::from(DEFAULT_BIN_DIR)]
        } else {
            source.bin_dirs
        };
        for dir in bin_dirs {
            if !merged.bin_dirs.contains(&dir) {
                merged.bin_dirs.push(dir);
            }
        }
        if merged.conf_dir.is_none() {
            merged.conf_dir = source.conf_dir;
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests;
