//! Where k3s keeps its CNI plugins.
//!
//! k3s points containerd at the directory holding `host-local`:
//! `<data-dir>/data/<hash>/bin` in releases before October 2024,
//! `<data-dir>/data/cni` after. The containerd config it generates names
//! that dir; when it does not (or is not there yet), the layout itself is
//! read. The hash changes with every k3s upgrade, so this is looked up again
//! on every pass of the installer.

use std::path::{Path, PathBuf};

use super::containerd::{self, CniDirs};
use super::{host_path, io_err, InstallError};

/// The plugin whose presence marks a dir as k3s' CNI bin dir.
const MARKER_PLUGIN: &str = "host-local";

/// The containerd config k3s generates under its data dir.
pub fn containerd_config(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/etc/containerd/config.toml")
}

/// The CNI conf dir k3s uses unless its containerd config says otherwise.
pub fn default_conf_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/etc/cni/net.d")
}

/// The CNI dirs of a k3s node (host paths), or `None` when `data_dir` shows
/// no sign of k3s. Fails when k3s is there but no bin dir can be found.
pub fn cni_dirs(host_root: &Path, data_dir: &Path) -> Result<Option<CniDirs>, InstallError> {
    let config = host_path(host_root, &containerd_config(data_dir));
    let from_config = match std::fs::read_to_string(&config) {
        Ok(text) => Some(containerd::cni_dirs(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("reading", &config)(e)),
    };
    let mut dirs = from_config.clone().unwrap_or_default();
    if dirs.bin_dirs.is_empty() {
        dirs.bin_dirs = bin_dirs_from_layout(host_root, &data_dir.join("data"))?;
    }
    if from_config.is_none() && dirs.bin_dirs.is_empty() {
        return Ok(None);
    }
    if dirs.bin_dirs.is_empty() {
        return Err(InstallError::K3sBinDirNotFound {
            data_dir: data_dir.to_path_buf(),
        });
    }
    dirs.conf_dir
        .get_or_insert_with(|| default_conf_dir(data_dir));
    Ok(Some(dirs))
}

/// `data/cni` when it holds the plugins, else the current `data/<hash>/bin`,
/// else every `data/<hash>/bin` that does.
fn bin_dirs_from_layout(host_root: &Path, data: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let has_plugins = |dir: &Path| {
        // k3s' plugins are symlinks into the hash dir; an absolute one does
        // not resolve from inside a container, so do not follow it.
        host_path(host_root, &dir.join(MARKER_PLUGIN))
            .symlink_metadata()
            .is_ok()
    };
    let cni = data.join("cni");
    if has_plugins(&cni) {
        return Ok(vec![cni]);
    }
    let host_data = host_path(host_root, data);
    if let Ok(target) = std::fs::read_link(host_data.join("current")) {
        if let Some(hash) = target.file_name() {
            let bin = data.join(hash).join("bin");
            if has_plugins(&bin) {
                return Ok(vec![bin]);
            }
        }
    }
    let entries = match std::fs::read_dir(&host_data) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", &host_data)(e)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        // `current` and `previous` are symlinks to hash dirs.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| data.join(e.file_name()).join("bin"))
        .filter(|bin| has_plugins(bin))
        .collect();
    found.sort();
    Ok(found)
}
