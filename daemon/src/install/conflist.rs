//! Chaining our plugin into the primary CNI network config.
//!
//! The runtime uses the lexicographically first `.conflist`/`.conf`/`.json`
//! file of its conf dir. We append our plugin to that file's `plugins` list
//! (after flannel, portmap, bandwidth...) so we run last and see the full
//! prevResult. k3s rewrites its flannel conflist whenever its agent starts,
//! which silently drops the entry: [`super::watch`] re-applies it.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The `type` our plugin entry carries: the shim's binary name.
pub const PLUGIN_TYPE: &str = "tailnet-cni";

/// The capability that makes containerd (1.6+) and CRI-O pass the pod's
/// annotations in `runtimeConfig`, so the shim can skip pods that did not
/// opt in without asking the daemon.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// How the daemon selects pods, as the shim needs to know it: the entry's
/// `selection` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySelection {
    /// Only the pod annotation opts in: the shim skips unannotated pods.
    Annotated,
    /// Namespace labels may opt pods in: only the daemon can tell.
    Namespace,
    /// Every pod that does not opt out joins.
    All,
}

impl EntrySelection {
    fn as_str(self) -> &'static str {
        match self {
            Self::Annotated => "annotated",
            Self::Namespace => "namespace",
            Self::All => "all",
        }
    }
}

/// Plugin keys we write into our entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEntry {
    pub daemon_socket: PathBuf,
    pub if_name: String,
    pub mtu: Option<u32>,
    /// Written as `selection`; without it the shim forwards every pod.
    pub selection: Option<EntrySelection>,
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
    if !obj.contains_key("plugins") {
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
            plugins.push(wanted);
            ChainOutcome::Appended
        }
    };
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
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    if plugins.len() == before {
        return Ok(None);
    }
    let mut out = serde_json::to_string_pretty(&doc).map_err(|source| ConflistError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    out.push('\n');
    Ok(Some(out))
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
mod tests {
    use super::*;

    /// k3s' flannel conflist as its agent writes it (pkg/agent/flannel).
    const K3S_FLANNEL: &str = r#"{
  "name":"cbr0",
  "cniVersion":"1.0.0",
  "plugins":[
    {"type":"flannel","delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}},
    {"type":"portmap","capabilities":{"portMappings":true}},
    {"type":"bandwidth","capabilities":{"bandwidth":true}}
  ]
}"#;

    /// The upstream kube-flannel manifest's cni-conf.json.
    const KUBE_FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

    /// A single-plugin .conf (Debian's bridge example).
    const BRIDGE_CONF: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "mynet",
  "type": "bridge",
  "bridge": "cni0",
  "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}
}"#;

    fn entry() -> PluginEntry {
        PluginEntry {
            daemon_socket: PathBuf::from("/run/tailnet-cni/daemon.sock"),
            if_name: "ts0".into(),
            mtu: Some(1280),
            selection: None,
        }
    }

    fn types(text: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(text).unwrap();
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn appends_after_every_primary_plugin_and_keeps_them_intact() {
        let path = Path::new("10-flannel.conflist");
        for original in [K3S_FLANNEL, KUBE_FLANNEL] {
            let (out, outcome) = chain(path, original, &entry()).unwrap();
            assert_eq!(outcome, ChainOutcome::Appended);
            let mut expected = types(original);
            expected.push(PLUGIN_TYPE.to_string());
            assert_eq!(types(&out), expected);
            let before: Value = serde_json::from_str(original).unwrap();
            let after: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(before["name"], after["name"]);
            assert_eq!(before["cniVersion"], after["cniVersion"]);
            assert_eq!(before["plugins"][0], after["plugins"][0]);
            let ours = after["plugins"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(ours["daemonSocket"], "/run/tailnet-cni/daemon.sock");
            assert_eq!(ours["ifName"], "ts0");
            assert_eq!(ours["mtu"], 1280);
            assert_eq!(
                ours["capabilities"],
                json!({POD_ANNOTATIONS_CAPABILITY: true})
            );
            assert_eq!(ours.get("selection"), None);
        }
    }

    #[test]
    fn selection_is_written_when_known() {
        let path = Path::new("10-flannel.conflist");
        for (selection, text) in [
            (EntrySelection::Annotated, "annotated"),
            (EntrySelection::Namespace, "namespace"),
            (EntrySelection::All, "all"),
        ] {
            let mut with_selection = entry();
            with_selection.selection = Some(selection);
            let (out, _) = chain(path, K3S_FLANNEL, &with_selection).unwrap();
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["plugins"][3]["selection"], text);
            assert_eq!(
                v["plugins"][3]["capabilities"][POD_ANNOTATIONS_CAPABILITY],
                true
            );
        }
    }

    #[test]
    fn chaining_twice_is_a_no_op() {
        let path = Path::new("10-flannel.conflist");
        let (once, _) = chain(path, K3S_FLANNEL, &entry()).unwrap();
        let (twice, outcome) = chain(path, &once, &entry()).unwrap();
        assert_eq!(outcome, ChainOutcome::Unchanged);
        assert_eq!(once, twice);
    }

    #[test]
    fn changed_settings_update_the_entry_in_place() {
        let path = Path::new("10-flannel.conflist");
        let (once, _) = chain(path, K3S_FLANNEL, &entry()).unwrap();
        let mut other = entry();
        other.mtu = Some(1400);
        let (out, outcome) = chain(path, &once, &other).unwrap();
        assert_eq!(outcome, ChainOutcome::Updated);
        assert_eq!(types(&out).iter().filter(|t| *t == PLUGIN_TYPE).count(), 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["plugins"][3]["mtu"], 1400);
    }

    #[test]
    fn single_plugin_conf_becomes_a_chain() {
        let (out, outcome) = chain(Path::new("10-bridge.conf"), BRIDGE_CONF, &entry()).unwrap();
        assert_eq!(outcome, ChainOutcome::Appended);
        assert_eq!(types(&out), vec!["bridge", PLUGIN_TYPE]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["name"], "mynet");
        assert_eq!(v["plugins"][0]["ipam"]["subnet"], "10.22.0.0/16");
    }

    #[test]
    fn unchain_restores_the_original_plugins() {
        let path = Path::new("10-flannel.conflist");
        let (chained, _) = chain(path, K3S_FLANNEL, &entry()).unwrap();
        let restored = unchain(path, &chained).unwrap().unwrap();
        let a: Value = serde_json::from_str(K3S_FLANNEL).unwrap();
        let b: Value = serde_json::from_str(&restored).unwrap();
        assert_eq!(a, b);
        assert!(unchain(path, K3S_FLANNEL).unwrap().is_none());
    }

    #[test]
    fn broken_files_are_reported_by_name() {
        let err = chain(Path::new("/etc/cni/net.d/x.conflist"), "{", &entry()).unwrap_err();
        assert!(err.to_string().contains("/etc/cni/net.d/x.conflist"));
        let err = chain(Path::new("y.conflist"), r#"{"plugins": 3}"#, &entry()).unwrap_err();
        assert!(err.to_string().contains("not a list"));
    }

    #[test]
    fn primary_config_is_the_first_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["20-other.conflist", "10-flannel.conflist", "05-notes.txt"] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        let first = primary_config(dir.path()).unwrap().unwrap();
        assert_eq!(first.file_name().unwrap(), "10-flannel.conflist");
    }
}
