use std::os::unix::fs::PermissionsExt;

use super::*;

/// A statically linked executable, as the installer accepts it.
fn shim_bytes() -> Vec<u8> {
    elf::tests::tiny_elf(None)
}

fn args(root: &Path) -> InstallArgs {
    InstallArgs {
        shim: Some(root.join("build/tailnet-cni")),
        bin_dirs: vec![root.join("bin-a"), root.join("bin-b")],
        k3s_data_dir: root.join("k3s"),
        containerd_config: root.join("containerd/config.toml"),
        crio_config: root.join("crio/crio.conf"),
        conf_dir: Some(root.join("net.d")),
        daemon_socket: PathBuf::from("/run/tailnet-cni/daemon.sock"),
        if_name: "ts0".into(),
        mtu: None,
        watch: false,
        host_root: PathBuf::from("/"),
        watch_interval_secs: 1,
        daemon_readyz: None,
        selection: None,
    }
}

fn setup(root: &Path) {
    std::fs::create_dir_all(root.join("build")).unwrap();
    for bin in ["bin-a", "bin-b"] {
        std::fs::create_dir_all(root.join(bin)).unwrap();
    }
    std::fs::write(root.join("build/tailnet-cni"), shim_bytes()).unwrap();
    std::fs::create_dir_all(root.join("net.d")).unwrap();
    std::fs::write(
        root.join("net.d/10-flannel.conflist"),
        r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"portmap"}]}"#,
    )
    .unwrap();
}

#[tokio::test]
async fn install_then_uninstall_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root);
    let original = std::fs::read_to_string(root.join("net.d/10-flannel.conflist")).unwrap();
    install(&args(root)).await.unwrap();
    for bin in ["bin-a", "bin-b"] {
        let path = root.join(bin).join("tailnet-cni");
        assert_eq!(std::fs::read(&path).unwrap(), shim_bytes());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
    }
    let chained = std::fs::read_to_string(root.join("net.d/10-flannel.conflist")).unwrap();
    assert!(chained.contains("\"tailnet-cni\""));
    // No temp files are left where libcni would look.
    let leftovers: Vec<_> = std::fs::read_dir(root.join("net.d"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty());

    uninstall(&args(root)).await.unwrap();
    let restored = std::fs::read_to_string(root.join("net.d/10-flannel.conflist")).unwrap();
    let a: serde_json::Value = serde_json::from_str(&original).unwrap();
    let b: serde_json::Value = serde_json::from_str(&restored).unwrap();
    assert_eq!(a, b);
    assert!(!root.join("bin-a/tailnet-cni").exists());
}

/// Our entry in the primary conflist.
fn chained_entry(root: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(root.join("net.d/10-flannel.conflist")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let plugins = doc["plugins"].as_array().unwrap();
    plugins
        .iter()
        .find(|p| p["type"] == conflist::PLUGIN_TYPE)
        .cloned()
        .unwrap_or_else(|| panic!("not chained: {text}"))
}

#[tokio::test]
async fn the_entry_names_the_daemons_selection_mode_and_asks_for_annotations() {
    for (mode, text) in [
        (SelectionMode::Annotated, "annotated"),
        (SelectionMode::Namespace, "namespace"),
        (SelectionMode::All, "all"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        setup(root);
        let mut a = args(root);
        a.selection = Some(mode);
        install(&a).await.unwrap();
        let ours = chained_entry(root);
        assert_eq!(ours["selection"], text);
        assert_eq!(
            ours["capabilities"][conflist::POD_ANNOTATIONS_CAPABILITY],
            true
        );
    }
    // Without the daemon's config the entry names no mode: the shim then
    // forwards every pod, never skipping one the daemon would take.
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    install(&args(dir.path())).await.unwrap();
    assert_eq!(chained_entry(dir.path()).get("selection"), None);
}

#[tokio::test]
async fn install_removes_only_its_own_leftover_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root);
    std::fs::create_dir_all(root.join("bin-a")).unwrap();
    let leftovers = [
        root.join("bin-a/.tailnet-cni.tmp.1.0"),
        root.join("net.d/.10-flannel.conflist.tmp.1.3"),
    ];
    let foreign = [
        root.join("bin-a/.flannel.tmp.1.0"),
        root.join("net.d/.10-flannel.conflist.swp"),
        root.join("bin-a/.tailnet-cni.tmp.x.0"),
        root.join("bin-a/.tailnet-cni.old.tmp.1.0"),
    ];
    for path in leftovers.iter().chain(&foreign) {
        std::fs::write(path, b"partial").unwrap();
    }
    install(&args(root)).await.unwrap();
    for path in &leftovers {
        assert!(!path.exists(), "{} was left", path.display());
    }
    for path in &foreign {
        assert!(path.exists(), "{} was removed", path.display());
    }
}

#[test]
fn conflist_rewrite_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root);
    let path = root.join("net.d/10-flannel.conflist");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let entry = entry(&args(root));
    assert_eq!(
        apply_conflist(&root.join("net.d"), &entry).unwrap(),
        ChainOutcome::Appended
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn rewritten_conflist_gets_the_entry_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root);
    let args = args(root);
    let entry = entry(&args);
    let conf = root.join("net.d");
    assert_eq!(
        apply_conflist(&conf, &entry).unwrap(),
        ChainOutcome::Appended
    );
    assert_eq!(
        apply_conflist(&conf, &entry).unwrap(),
        ChainOutcome::Unchanged
    );
    // What k3s does when its agent restarts.
    std::fs::write(
        conf.join("10-flannel.conflist"),
        r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"}]}"#,
    )
    .unwrap();
    assert_eq!(
        apply_conflist(&conf, &entry).unwrap(),
        ChainOutcome::Appended
    );
}

/// The plugin types of the primary conflist, in order.
fn plugin_types(conflist: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(conflist).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|plugin| plugin["type"].as_str().unwrap().to_string())
        .collect()
}

/// A flannel conflist with these plugin types, as a runtime writes it.
fn flannel_conflist(types: &[&str]) -> String {
    let plugins: Vec<_> = types
        .iter()
        .map(|t| format!(r#"{{"type":"{t}"}}"#))
        .collect();
    format!(
        r#"{{"name":"cbr0","cniVersion":"1.0.0","plugins":[{}]}}"#,
        plugins.join(",")
    )
}

/// A set-up root, its conf dir and the primary conflist in it.
fn installed_root() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let conf = dir.path().join("net.d");
    let path = conf.join("10-flannel.conflist");
    (dir, conf, path)
}

#[test]
fn a_conflist_rewritten_during_our_edit_keeps_both_changes() {
    let (dir, conf, path) = installed_root();
    let mut rewrites = 0;
    // k3s rewriting its conflist after our read, before our replace: in
    // place the first time, by rename the second.
    let runtime_rewrites = |path: &Path| {
        rewrites += 1;
        match rewrites {
            1 => std::fs::write(path, flannel_conflist(&["flannel", "portmap", "bandwidth"]))
                .unwrap(),
            2 => {
                let incoming = path.with_extension("incoming");
                std::fs::write(&incoming, flannel_conflist(&["flannel", "bandwidth"])).unwrap();
                std::fs::rename(&incoming, path).unwrap();
            }
            _ => {}
        }
    };

    let outcome = apply_conflist_with(&conf, &entry(&args(dir.path())), runtime_rewrites).unwrap();

    assert_eq!(outcome, ChainOutcome::Appended);
    assert_eq!(rewrites, 3, "the edit was redone after each rewrite");
    assert_eq!(plugin_types(&path), ["flannel", "bandwidth", "tailnet-cni"]);
    let names: Vec<_> = std::fs::read_dir(&conf).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
}

#[test]
fn a_conflist_that_never_stops_changing_is_left_to_the_next_pass() {
    let (dir, conf, path) = installed_root();
    let mut rewrites = 0;
    let runtime_rewrites = |path: &Path| {
        rewrites += 1;
        std::fs::write(path, flannel_conflist(&vec!["flannel"; rewrites])).unwrap();
    };

    let err = apply_conflist_with(&conf, &entry(&args(dir.path())), runtime_rewrites).unwrap_err();

    assert!(
        matches!(err, InstallError::ConflistKeepsChanging { attempts, .. } if attempts == CONFLIST_EDIT_ATTEMPTS),
        "{err:?}"
    );
    assert_eq!(rewrites, CONFLIST_EDIT_ATTEMPTS);
    // The last rewrite is what stays, unedited.
    assert_eq!(plugin_types(&path), vec!["flannel"; CONFLIST_EDIT_ATTEMPTS]);
}

#[test]
fn missing_primary_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = apply_conflist(dir.path(), &entry(&args(dir.path()))).unwrap_err();
    assert!(matches!(err, InstallError::NoPrimaryConfig(_)));
    assert!(err.to_string().contains("primary CNI"));
}

#[test]
fn layout_prefers_containerd_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("containerd")).unwrap();
    std::fs::write(
        root.join("containerd/config.toml"),
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"/var/lib/rancher/k3s/data/cni\"]\n  conf_dir = \"/var/lib/rancher/k3s/agent/etc/cni/net.d\"\n",
    )
    .unwrap();
    let mut a = args(root);
    a.bin_dirs.clear();
    a.conf_dir = None;
    a.containerd_config = PathBuf::from("/containerd/config.toml");
    a.host_root = root.to_path_buf();
    std::fs::create_dir_all(root.join("var/lib/rancher/k3s/data/cni")).unwrap();
    let layout = Layout::resolve(&a).unwrap();
    assert_eq!(
        layout,
        Layout {
            bin_dirs: vec![root.join("var/lib/rancher/k3s/data/cni")],
            conf_dir: root.join("var/lib/rancher/k3s/agent/etc/cni/net.d"),
        }
    );
}

#[test]
fn a_shim_that_needs_a_loader_is_never_installed() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let dynamic = dir.path().join("dynamic-shim");
    std::fs::write(
        &dynamic,
        elf::tests::tiny_elf(Some("/lib64/ld-linux-x86-64.so.2")),
    )
    .unwrap();
    let err = install_shim(&dynamic, std::slice::from_ref(&bin)).unwrap_err();
    assert!(
        matches!(&err, InstallError::ShimNeedsLoader { interpreter } if interpreter == "/lib64/ld-linux-x86-64.so.2"),
        "{err}"
    );
    assert!(!bin.join(conflist::PLUGIN_TYPE).exists());
    // A system binary linked against glibc, when the host has one.
    if Path::new("/bin/true").exists() {
        let err = install_shim(Path::new("/bin/true"), std::slice::from_ref(&bin)).unwrap_err();
        assert!(matches!(err, InstallError::ShimNeedsLoader { .. }), "{err}");
        assert!(!bin.join(conflist::PLUGIN_TYPE).exists());
    }
    std::fs::create_dir_all(&bin).unwrap();
    let static_shim = dir.path().join("static-shim");
    std::fs::write(&static_shim, elf::tests::tiny_elf(None)).unwrap();
    install_shim(&static_shim, std::slice::from_ref(&bin)).unwrap();
    assert_eq!(
        std::fs::read(bin.join(conflist::PLUGIN_TYPE)).unwrap(),
        elf::tests::tiny_elf(None)
    );
}

/// Answers every `/readyz` with `status_line` until the test ends.
async fn fake_readyz(status_line: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            // The request is not looked at, and a client that hung up fails its own checks.
            drop(conn.read(&mut buf).await);
            conn.write_all(format!("{status_line}\r\n\r\n").as_bytes())
                .await
                .ok();
        }
    });
    addr
}

fn is_chained(root: &Path) -> bool {
    let text = std::fs::read_to_string(root.join("net.d/10-flannel.conflist")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["type"] == conflist::PLUGIN_TYPE)
}

#[tokio::test]
async fn chains_only_once_the_daemon_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root);
    let mut a = args(root);
    a.daemon_readyz = Some(fake_readyz("HTTP/1.1 503 Service Unavailable").await);
    let err = install(&a).await.unwrap_err();
    assert!(
        matches!(
            err,
            InstallError::NotReady(ready::NotReady::Status { status: 503, .. })
        ),
        "{err}"
    );
    // The shim is staged, the conflist untouched.
    assert_eq!(
        std::fs::read(root.join("bin-a/tailnet-cni")).unwrap(),
        shim_bytes()
    );
    assert!(!is_chained(root));

    a.daemon_readyz = Some(fake_readyz("HTTP/1.1 200 OK").await);
    install(&a).await.unwrap();
    assert!(is_chained(root));
}

#[tokio::test]
async fn chains_only_once_every_bin_dir_has_the_shim() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root);
    std::fs::remove_dir(root.join("bin-b")).unwrap();
    let err = install(&args(root)).await.unwrap_err();
    assert!(
        matches!(&err, InstallError::BinDirMissing(d) if *d == root.join("bin-b")),
        "{err}"
    );
    assert!(!root.join("bin-b").exists());
    assert!(!is_chained(root));
    std::fs::create_dir(root.join("bin-b")).unwrap();
    install(&args(root)).await.unwrap();
    assert!(is_chained(root));
    assert!(root.join("bin-b/tailnet-cni").exists());
}

#[tokio::test]
async fn uninstall_leaves_the_primary_config_as_it_was_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root);
    let primary = root.join("net.d/10-flannel.conflist");
    let other = root.join("net.d/20-other.conflist");
    let other_text = "{\"name\":\"other\",\"plugins\":[{\"type\":\"tailnet-cni\"}]}";
    std::fs::write(&other, other_text).unwrap();
    let original = std::fs::read(&primary).unwrap();
    let beside = root.join("bin-a/flannel");
    std::fs::write(&beside, b"primary plugin").unwrap();

    install(&args(root)).await.unwrap();
    assert!(is_chained(root));
    for _ in 0..2 {
        uninstall(&args(root)).await.unwrap();
        assert_eq!(std::fs::read(&primary).unwrap(), original);
        for bin in ["bin-a", "bin-b"] {
            assert!(!root.join(bin).join(conflist::PLUGIN_TYPE).exists());
        }
        // Only our entry in the primary config, only our binary.
        assert_eq!(std::fs::read_to_string(&other).unwrap(), other_text);
        assert_eq!(std::fs::read(&beside).unwrap(), b"primary plugin");
    }
}

#[tokio::test]
async fn uninstall_with_nothing_installed_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut a = args(root);
    a.conf_dir = Some(root.join("no-such-net.d"));
    uninstall(&a).await.unwrap();
}
