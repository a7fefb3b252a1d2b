//! Reading the CNI dirs out of CRI-O's config.
//!
//! CRI-O reads `crio.conf` and then every `crio.conf.d/*.conf` in name
//! order, later files overriding earlier ones; the CNI dirs are
//! `[crio.network] plugin_dirs` and `network_dir`.

use std::path::{Path, PathBuf};

use toml::Value;

use super::containerd::CniDirs;
use super::{io_err, InstallError};

/// The CNI dirs CRI-O's config (at `config`, already below the host root)
/// names, or `None` when neither it nor its drop-in dir exists.
pub fn cni_dirs(config: &Path) -> Result<Option<CniDirs>, InstallError> {
    let mut files = Vec::new();
    if config.is_file() {
        files.push(config.to_path_buf());
    }
    let drop_ins = config.with_extension("conf.d");
    match std::fs::read_dir(&drop_ins) {
        Ok(entries) => {
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("listing", &drop_ins)(e)),
    }
    if files.is_empty() {
        return Ok(None);
    }
    let mut dirs = CniDirs::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(io_err("reading", &file))?;
        apply(&text, &mut dirs);
    }
    Ok(Some(dirs))
}

/// Applies one config file's `[crio.network]` settings over `dirs`.
fn apply(text: &str, dirs: &mut CniDirs) {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return;
    };
    let Some(network) = doc.get("crio").and_then(|c| c.get("network")) else {
        return;
    };
    if let Some(list) = network.get("plugin_dirs").and_then(Value::as_array) {
        dirs.bin_dirs = list
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
    }
    if let Some(dir) = network
        .get("network_dir")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        dirs.conf_dir = Some(PathBuf::from(dir));
    }
}
