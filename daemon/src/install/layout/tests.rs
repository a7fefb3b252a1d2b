use std::os::unix::fs::symlink;

use super::*;

/// Arguments that find everything on their own, below `root`.
fn args(root: &Path) -> InstallArgs {
    InstallArgs {
        shim: None,
        bin_dirs: Vec::new(),
        k3s_data_dir: PathBuf::from(crate::install::K3S_DATA_DIR),
        containerd_config: PathBuf::from(crate::install::CONTAINERD_CONFIG),
        crio_config: PathBuf::from(crate::install::CRIO_CONFIG),
        conf_dir: None,
        daemon_socket: PathBuf::from("/run/tailnet-cni/daemon.sock"),
        if_name: "ts0".into(),
        mtu: None,
        watch: false,
        host_root: root.to_path_buf(),
        watch_interval_secs: 1,
        daemon_readyz: None,
        selection: None,
    }
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn mkdir(root: &Path, path: &str) {
    std::fs::create_dir_all(root.join(path)).unwrap();
}

fn resolve(root: &Path) -> Layout {
    let layout = Layout::resolve(&args(root)).unwrap();
    layout.require_bin_dirs().unwrap();
    layout
}

const K3S_NET_D: &str = "var/lib/rancher/k3s/agent/etc/cni/net.d";

#[test]
fn k3s_after_october_2024_uses_data_cni() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mkdir(root, "var/lib/rancher/k3s/data/abc123/bin");
    write(root, "var/lib/rancher/k3s/data/abc123/bin/cni", "");
    mkdir(root, "var/lib/rancher/k3s/data/cni");
    // As k3s makes them: absolute symlinks, dangling inside a container.
    symlink(
        "/var/lib/rancher/k3s/data/abc123/bin/cni",
        root.join("var/lib/rancher/k3s/data/cni/host-local"),
    )
    .unwrap();
    assert_eq!(
        resolve(root),
        Layout {
            bin_dirs: vec![root.join("var/lib/rancher/k3s/data/cni")],
            conf_dir: root.join(K3S_NET_D),
        }
    );
}

#[test]
fn k3s_before_october_2024_uses_the_current_hash_dir_and_follows_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for hash in ["old111", "new222"] {
        write(
            root,
            &format!("var/lib/rancher/k3s/data/{hash}/bin/host-local"),
            "",
        );
    }
    let data = root.join("var/lib/rancher/k3s/data");
    symlink("/var/lib/rancher/k3s/data/old111", data.join("current")).unwrap();
    assert_eq!(resolve(root).bin_dirs, vec![data.join("old111/bin")]);
    // An upgrade moves `current`; the next pass follows it.
    std::fs::remove_file(data.join("current")).unwrap();
    symlink("/var/lib/rancher/k3s/data/new222", data.join("current")).unwrap();
    assert_eq!(resolve(root).bin_dirs, vec![data.join("new222/bin")]);
    // Without `current`, every hash dir with the plugins.
    std::fs::remove_file(data.join("current")).unwrap();
    assert_eq!(
        resolve(root).bin_dirs,
        vec![data.join("new222/bin"), data.join("old111/bin")]
    );
}

#[test]
fn k3s_generated_containerd_config_names_the_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "srv/k3s/agent/etc/containerd/config.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/srv/k3s/data/feed/bin\"\n  conf_dir = \"/srv/k3s/agent/etc/cni/net.d\"\n",
    );
    mkdir(root, "srv/k3s/data/feed/bin");
    let mut a = args(root);
    a.k3s_data_dir = PathBuf::from("/srv/k3s");
    let layout = Layout::resolve(&a).unwrap();
    layout.require_bin_dirs().unwrap();
    assert_eq!(
        layout,
        Layout {
            bin_dirs: vec![root.join("srv/k3s/data/feed/bin")],
            conf_dir: root.join("srv/k3s/agent/etc/cni/net.d"),
        }
    );
}

#[test]
fn k3s_without_any_plugin_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "var/lib/rancher/k3s/agent/etc/containerd/config.toml",
        "version = 3\n",
    );
    let err = Layout::resolve(&args(root)).unwrap_err();
    assert!(
        matches!(err, InstallError::K3sBinDirNotFound { .. }),
        "{err}"
    );
}

#[test]
fn containerd_v2_and_v3_configs() {
    for config in [
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n",
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"/usr/lib/cni\"]\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "etc/containerd/config.toml", config);
        mkdir(root, "usr/lib/cni");
        assert_eq!(
            resolve(root),
            Layout {
                bin_dirs: vec![root.join("usr/lib/cni")],
                conf_dir: root.join("etc/cni/net.d"),
            }
        );
    }
}

#[test]
fn containerd_without_cni_settings_uses_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "etc/containerd/config.toml", "version = 2\n");
    mkdir(root, "opt/cni/bin");
    assert_eq!(resolve(root).bin_dirs, vec![root.join("opt/cni/bin")]);
}

#[test]
fn crio_drop_ins_override_the_main_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "etc/crio/crio.conf",
        "[crio.network]\nplugin_dirs = [\"/opt/cni/bin\"]\nnetwork_dir = \"/etc/cni/net.d/\"\n",
    );
    write(
        root,
        "etc/crio/crio.conf.d/10-plugins.conf",
        "[crio.network]\nplugin_dirs = [\"/opt/cni/bin\", \"/usr/libexec/cni\"]\n",
    );
    write(
        root,
        "etc/crio/crio.conf.d/README",
        "plugin_dirs = nonsense",
    );
    mkdir(root, "opt/cni/bin");
    mkdir(root, "usr/libexec/cni");
    assert_eq!(
        resolve(root),
        Layout {
            bin_dirs: vec![root.join("opt/cni/bin"), root.join("usr/libexec/cni")],
            conf_dir: root.join("etc/cni/net.d"),
        }
    );
}

#[test]
fn nothing_found_means_opt_cni_bin() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mkdir(root, "opt/cni/bin");
    assert_eq!(
        resolve(root),
        Layout {
            bin_dirs: vec![root.join("opt/cni/bin")],
            conf_dir: root.join("etc/cni/net.d"),
        }
    );
}

#[test]
fn a_dir_not_on_a_host_mount_is_refused_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let layout = Layout::resolve(&args(root)).unwrap();
    let err = layout.require_bin_dirs().unwrap_err();
    assert!(
        matches!(&err, InstallError::BinDirMissing(d) if *d == root.join("opt/cni/bin")),
        "{err}"
    );
    assert!(!root.join("opt").exists());
}

#[test]
fn system_dirs_are_never_used() {
    for system in ["/bin", "/usr/bin/"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "etc/containerd/config.toml",
            &format!("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{system}\"\n"),
        );
        mkdir(root, system.trim_start_matches('/'));
        let err = Layout::resolve(&args(root)).unwrap_err();
        assert!(matches!(err, InstallError::SystemBinDir(_)), "{err}");
    }
}
