//! A k3s-shaped node: a root filesystem laid out as k3s lays out its data
//! dir (static busybox as `/bin`, no glibc, no dynamic loader; k3s'
//! containerd config and its flannel-named conflist), for each layout the
//! installer supports: `data/<hash>/bin` (k3s before October 2024),
//! `data/cni` (after) and a custom `--data-dir`. The project's installer
//! runs against it with `--host-root`, then Debian's containerd, configured
//! as k3s configures its own (bin_dir and conf_dir inside that root),
//! starts a plain pod and a tailnet pod through CRI.
//!
//! The flannel plugin is not available here: the flannel-named conflist
//! (`10-flannel.conflist`, network `cbr0`, as k3s writes it) delegates to
//! the reference `bridge` + `host-local` instead, which is what flannel
//! itself delegates to on a node.
//!
//! One containerd start per layout. Runs under `scripts/isolated.sh`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tailnet_cni_proto::selection::ENABLED_ANNOTATION;

use crate::common::containerd::{self, CniDirs, Containerd, Image};
use crate::common::cri::{Cri, PodSpec};
use crate::common::installer::{install, static_shim};
use crate::common::{
    self, links_named, require, run, take_turn, Bed, Daemon, DaemonOptions, CNI_PATH,
};

/// Busybox applets the node's `/bin` offers, as the rancher/k3s image does.
const APPLETS: [&str; 6] = ["sh", "ls", "cat", "mount", "ip", "sleep"];
/// The plugins k3s ships in its CNI bin dir (flannel aside).
const PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];
/// An install hash, as k3s names its versioned data dirs.
const HASH: &str = "9f2c1d7e4b3a5c6d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";

/// Where one layout keeps its CNI plugins.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// `data/<hash>/bin`, with `data/current` pointing at the hash dir.
    HashBin,
    /// `data/cni`.
    DataCni,
    /// `data/cni` below a custom `--data-dir`.
    CustomDataDir,
}

impl Layout {
    /// k3s' data dir, as a path on the node.
    fn data_dir(self) -> &'static str {
        match self {
            Self::HashBin | Self::DataCni => "/var/lib/rancher/k3s",
            Self::CustomDataDir => "/srv/k3s",
        }
    }

    /// The CNI bin dir k3s' containerd config names, as a path on the node.
    fn bin_dir(self) -> String {
        match self {
            Self::HashBin => format!("{}/data/{HASH}/bin", self.data_dir()),
            Self::DataCni | Self::CustomDataDir => format!("{}/data/cni", self.data_dir()),
        }
    }

    fn conf_dir(self) -> String {
        format!("{}/agent/etc/cni/net.d", self.data_dir())
    }
}

fn prerequisites() -> Result<(Bed, Image, PathBuf), common::Unmet> {
    let bed = common::daemon_bed(&["chroot"])?;
    let image = containerd::needs(common::isolated_root())?;
    let shim = common::isolated_root().with(static_shim())?;
    Ok((bed, image, shim))
}

/// `path` (a path on the node) inside the node's root `root`.
fn on_node(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Lays out a k3s node under `root` and returns the CNI dirs Debian's
/// containerd is to use (the node's, seen from this host).
fn k3s_node(root: &Path, layout: Layout, subnet: &str, bridge: &str) -> CniDirs {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("node /bin");
    fs::copy("/bin/busybox", bin.join("busybox")).expect("static busybox");
    for applet in APPLETS {
        symlink("busybox", bin.join(applet)).expect("applet link");
    }
    let cni = CniDirs {
        bin_dir: on_node(root, &layout.bin_dir()),
        conf_dir: on_node(root, &layout.conf_dir()),
    };
    fs::create_dir_all(&cni.bin_dir).expect("k3s CNI bin dir");
    fs::create_dir_all(&cni.conf_dir).expect("k3s CNI conf dir");
    for plugin in PLUGINS {
        symlink(Path::new(CNI_PATH).join(plugin), cni.bin_dir.join(plugin)).expect("plugin link");
    }
    if let Layout::HashBin = layout {
        symlink(
            HASH,
            on_node(root, &format!("{}/data/current", layout.data_dir())),
        )
        .expect("data/current");
    }
    let containerd_dir = on_node(root, &format!("{}/agent/etc/containerd", layout.data_dir()));
    fs::create_dir_all(&containerd_dir).expect("k3s containerd dir");
    fs::write(
        containerd_dir.join("config.toml"),
        k3s_containerd_config(layout),
    )
    .expect("k3s containerd config");
    let flannel = json!({
        "name": "cbr0",
        "cniVersion": "1.0.0",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]},
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    fs::write(
        cni.conf_dir.join("10-flannel.conflist"),
        flannel.to_string(),
    )
    .expect("flannel conflist");
    cni
}

/// The containerd config k3s generates (its template's CRI part) for
/// `layout`: the installer reads the CNI dirs from it.
fn k3s_containerd_config(layout: Layout) -> String {
    format!(
        r#"version = 2

[plugins."io.containerd.internal.v1.opt"]
  path = "{data}/agent/containerd"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "10010"
  enable_selinux = false
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  sandbox_image = "rancher/mirrored-pause:3.6"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  disable_snapshot_annotations = true

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{bin}"
  conf_dir = "{conf}"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
"#,
        data = layout.data_dir(),
        bin = layout.bin_dir(),
        conf = layout.conf_dir(),
    )
}

/// The node has no dynamic loader: only a static binary runs there.
fn assert_runs_in_node_root(root: &Path, layout: Layout) {
    assert!(
        !root.join("lib64").exists() && !root.join("lib").exists(),
        "the node root has a loader dir"
    );
    let shim = format!("{}/tailnet-cni", layout.bin_dir());
    let version = run(Command::new("chroot")
        .arg(root)
        .arg(&shim)
        .env("CNI_COMMAND", "VERSION"));
    assert!(
        version.status.success(),
        "{layout:?}: the installed shim does not run in the node's root: {}",
        String::from_utf8_lossy(&version.stderr)
    );
}

/// Installs into one layout, then a plain pod and a tailnet pod start
/// through CRI and are torn down.
fn node_runs_both_pods(
    work: &Path,
    daemon: &Daemon,
    image: &Image,
    shim: &Path,
    layout: Layout,
    index: usize,
) {
    let root = work.join(format!("node-{index}"));
    let subnet_prefix = format!("10.89.{}.", 41 + index);
    let cni = k3s_node(
        &root,
        layout,
        &format!("{subnet_prefix}0/24"),
        &format!("cni-tk3s{index}"),
    );
    let readyz = daemon.health.clone();
    let installed = install(
        shim,
        daemon,
        &[
            "--host-root".as_ref(),
            root.as_os_str(),
            "--k3s-data-dir".as_ref(),
            layout.data_dir().as_ref(),
            "--daemon-readyz".as_ref(),
            readyz.as_ref(),
        ],
    );
    assert!(
        installed.status.success(),
        "{layout:?}: install failed: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let conflist: Value = serde_json::from_str(
        &fs::read_to_string(cni.conf_dir.join("10-flannel.conflist")).expect("conflist"),
    )
    .expect("conflist json");
    assert_eq!(
        conflist["plugins"][2]["type"],
        json!("tailnet-cni"),
        "{layout:?}: {conflist}"
    );
    assert_runs_in_node_root(&root, layout);

    let containerd = Containerd::start(&work.join(format!("containerd-{index}")), &cni, image);
    let mut cri = Cri::connect(&containerd.socket).expect("CRI socket");
    let explain = |status: tonic::Status| -> ! {
        panic!(
            "{layout:?}: {status}\ndaemon log:\n{}\ncontainerd log:\n{}",
            daemon.log_text(),
            containerd.log_text()
        )
    };

    let plain = cri
        .run_pod(&PodSpec::new("default", &format!("plain-{index}")))
        .unwrap_or_else(|status| explain(status));
    let plain_ip = cri.pod_ip(&plain).unwrap_or_else(|status| explain(status));
    assert!(
        plain_ip.starts_with(&subnet_prefix),
        "{layout:?}: {plain_ip}"
    );

    let tailnet_pod =
        PodSpec::new("default", &format!("tailnet-{index}")).annotated(ENABLED_ANNOTATION, "true");
    let sandbox = cri
        .run_pod(&tailnet_pod)
        .unwrap_or_else(|status| explain(status));
    let app = cri
        .start_container(&sandbox, "app", &image.name, &["/bin/sleep", "3600"])
        .unwrap_or_else(|status| explain(status));
    let pods = daemon.pods();
    assert_eq!(pods.len(), 1, "{layout:?}: {pods:?}");
    let ipv4 = pods[0]["ipv4"].as_str().unwrap_or_default().to_string();
    assert!(ipv4.starts_with("100."), "{layout:?}: {pods:?}");
    let ts0 = cri
        .exec(&app, &["ip", "-4", "addr", "show", "ts0"])
        .unwrap_or_else(|status| explain(status));
    assert!(
        ts0.stdout.contains(&format!("{ipv4}/32")),
        "{layout:?}: ts0 lacks {ipv4}: {} {}",
        ts0.stdout,
        ts0.stderr
    );

    for sandbox in [&plain, &sandbox] {
        cri.stop_and_remove_pod(sandbox)
            .unwrap_or_else(|status| explain(status));
    }
    assert_eq!(daemon.pods(), Vec::<Value>::new(), "{layout:?}");
    assert_eq!(links_named(&["tnt", "tnv"]), Vec::<String>::new());
}

#[test]
fn every_k3s_layout_starts_a_plain_and_a_tailnet_pod() {
    let (bed, image, shim) = require!(prerequisites());
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let daemon = Daemon::start(
        &dir.join("daemon"),
        DaemonOptions {
            selection: "annotated".into(),
            ..DaemonOptions::default_reconcile(&bed.control_url, &bed.admin_token_file, "k3s")
        },
    );
    let layouts = [Layout::HashBin, Layout::DataCni, Layout::CustomDataDir];
    for (index, layout) in layouts.into_iter().enumerate() {
        node_runs_both_pods(dir, &daemon, &image, &shim, layout, index);
    }
}
