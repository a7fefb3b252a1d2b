//! Reading the CNI dirs out of a containerd config.
//!
//! containerd 1.x (config version 2) keeps them under
//! `[plugins."io.containerd.grpc.v1.cri".cni]` as `bin_dir`/`conf_dir`;
//! containerd 2.x (version 3, what current k3s writes) under
//! `[plugins.'io.containerd.cri.v1.runtime'.cni]`, with `bin_dirs` as a list.

use std::path::PathBuf;

use toml::Value;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniDirs {
    pub bin_dirs: Vec<PathBuf>,
    pub conf_dir: Option<PathBuf>,
}

const CRI_PLUGINS: [&str; 2] = ["io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"];

/// The CNI dirs the config names; empty when it names none or is not TOML
/// (k3s omits the table when it does not manage CNI itself).
pub fn cni_dirs(config_text: &str) -> CniDirs {
    let Ok(doc) = config_text.parse::<toml::Table>() else {
        return CniDirs::default();
    };
    let mut dirs = CniDirs::default();
    for plugin in CRI_PLUGINS {
        let Some(cni) = doc
            .get("plugins")
            .and_then(|p| p.get(plugin))
            .and_then(|p| p.get("cni"))
        else {
            continue;
        };
        let mut push = |s: &str| {
            let path = PathBuf::from(s);
            if !s.is_empty() && !dirs.bin_dirs.contains(&path) {
                dirs.bin_dirs.push(path);
            }
        };
        if let Some(list) = cni.get("bin_dirs").and_then(Value::as_array) {
            list.iter().filter_map(Value::as_str).for_each(&mut push);
        }
        if let Some(dir) = cni.get("bin_dir").and_then(Value::as_str) {
            push(dir);
        }
        if dirs.conf_dir.is_none() {
            dirs.conf_dir = cni
                .get("conf_dir")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_k3s_containerd2_config() {
        let text = r#"
version = 3
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/var/lib/rancher/k3s/data/cni"]
  conf_dir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
"#;
        let dirs = cni_dirs(text);
        assert_eq!(
            dirs.bin_dirs,
            vec![PathBuf::from("/var/lib/rancher/k3s/data/cni")]
        );
        assert_eq!(
            dirs.conf_dir,
            Some(PathBuf::from("/var/lib/rancher/k3s/agent/etc/cni/net.d"))
        );
    }

    #[test]
    fn reads_containerd1_config() {
        let text = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/bin"
  conf_dir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
"#;
        let dirs = cni_dirs(text);
        assert_eq!(dirs.bin_dirs, vec![PathBuf::from("/bin")]);
        assert!(dirs.conf_dir.is_some());
    }

    #[test]
    fn missing_table_or_garbage_gives_nothing() {
        assert_eq!(cni_dirs("version = 3\n"), CniDirs::default());
        assert_eq!(cni_dirs("this is [not toml"), CniDirs::default());
    }
}
