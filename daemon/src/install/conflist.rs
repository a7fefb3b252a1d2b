//! Chaining our plugin into the primary CNI network config.
//!
//! The runtime uses the lexicographically first `.conflist`/`.conf`/`.json`
//! file of its conf dir. We append our plugin to that file's `plugins` list
//! (after flannel, portmap, bandwidth...) so we run last and see the full
//! prevResult. k3s rewrites its flannel conflist whenever its agent starts,
//! which silently drops the entry: the installer's next pass re-applies it.

mod splice;

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The `type` our plugin entry carries: the shim's binary name.
pub const PLUGIN_TYPE: &str = "tailnet-cni";

pub use tailnet_cni_proto::selection::{SelectionMode, POD_ANNOTATIONS_CAPABILITY};
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEntry {
    pub daemon_socket: PathBuf,
    pub if_name: String,
    pub mtu: Option<u32>,
    /// Written as `selection`; without it the shim forwards every pod.
    pub selection: Option<SelectionMode>,
}

impl PluginEntry {
    fn to_json(&self) -> Value {
        let mut entry = Map::new();
        entry.insert("type".into(), json!(PLUGIN_TYPE));
        entry.insert(
            "capabilities".into(),
            json!({ POD_ANNOTATIONS_CAPABILITY: true }),
        );
        entry.insert(
            "daemonSocket".into(),
            json!(self.daemon_socket.to_string_lossy()),
        );
        entry.insert("ifName".into(), json!(self.if_name));
        if let Some(mtu) = self.mtu {
            entry.insert("mtu".into(), json!(mtu));
        }
        if let Some(selection) = self.selection {
            entry.insert("selection".into(), json!(selection.as_str()));
        }
        Value::Object(entry)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Shape { path: PathBuf, msg: String },
}

/// What [`chain`] did to a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainOutcome {
    /// Our entry was missing and has been appended.
    Appended,
    /// Our entry was there with other settings and has been updated.
    Updated,
    /// Our entry was already there, identical: nothing to write.
    Unchanged,
}

/// Adds (or refreshes) our plugin entry at the end of a conflist. A single
/// plugin `.conf` is turned into a conflist with our plugin after it, which is
/// what the runtime would chain anyway.
pub fn chain(
    path: &Path,
    text: &str,
    entry: &PluginEntry,
) -> Result<(String, ChainOutcome), ConflistError> {
    let mut doc: Value = serde_json::from_str(text).map_err(|source| ConflistError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let shape = |msg: &str| ConflistError::Shape {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| shape("top level is not an object"))?;
    let was_conflist = obj.contains_key("plugins");
    if !was_conflist {
        // A single-plugin .conf: move its plugin keys into a plugins list.
        let mut plugin = Map::new();
        for key in obj.keys().cloned().collect::<Vec<_>>() {
            if key != "cniVersion" && key != "name" && key != "disableCheck" {
                if let Some(v) = obj.remove(&key) {
                    plugin.insert(key, v);
                }
            }
        }
        obj.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
    }
    let plugins = obj
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| shape("\"plugins\" is not a list"))?;
    let wanted = entry.to_json();
    let ours = plugins
        .iter()
        .position(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE));
    let outcome = match ours {
        Some(i) if plugins[i] == wanted && i + 1 == plugins.len() => ChainOutcome::Unchanged,
        Some(i) => {
            // Keep any extra keys an operator added by hand; ours win.
            let existing = plugins.remove(i);
            let mut merged = existing.clone();
            if let (Some(m), Some(w)) = (merged.as_object_mut(), wanted.as_object()) {
                for (k, v) in w {
                    m.insert(k.clone(), v.clone());
                }
            }
            let changed = merged != existing || i != plugins.len();
            plugins.push(merged);
            if changed {
                ChainOutcome::Updated
            } else {
                ChainOutcome::Unchanged
            }
        }
        None => {
            let compact = wanted.to_string();
            plugins.push(wanted);
            if was_conflist {
                let appended =
                    splice::plugins_array(text).map(|array| splice::append(text, &array, &compact));
                if let Some(out) = appended.filter(|out| same_document(out, &doc)) {
                    return Ok((out, ChainOutcome::Appended));
                }
            }
            ChainOutcome::Appended
        }
    };
    if outcome == ChainOutcome::Unchanged {
        return Ok((text.to_string(), outcome));
    }
    let mut out = serde_json::to_string_pretty(&doc).map_err(|source| ConflistError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    out.push('\n');
    Ok((out, outcome))
}

/// Removes our entry; returns `None` when there was none.
pub fn unchain(path: &Path, text: &str) -> Result<Option<String>, ConflistError> {
    let mut doc: Value = serde_json::from_str(text).map_err(|source| ConflistError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let Some(plugins) = doc.get_mut("plugins").and_then(Value::as_array_mut) else {
        return Ok(None);
    };
    let is_ours = |p: &Value| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE);
    let ours: Vec<usize> = (0..plugins.len())
        .filter(|&i| is_ours(&plugins[i]))
        .collect();
    if ours.is_empty() {
        return Ok(None);
    }
    plugins.retain(|p| !is_ours(p));
    let removed = splice::plugins_array(text).and_then(|array| splice::remove(text, &array, &ours));
    if let Some(out) = removed.filter(|out| same_document(out, &doc)) {
        return Ok(Some(out));
    }
    let mut out = serde_json::to_string_pretty(&doc).map_err(|source| ConflistError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    out.push('\n');
    Ok(Some(out))
}

/// Whether `text` parses to `doc`: the check on every edit made as text.
fn same_document(text: &str, doc: &Value) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|parsed| parsed == *doc)
}

/// The config file the runtime uses: the first by name among `.conflist`,
/// `.conf` and `.json` files (libcni's rule).
pub fn primary_config(conf_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(conf_dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    candidates.sort();
    Ok(candidates.into_iter().next())
}

#[cfg(test)]
mod tests;
