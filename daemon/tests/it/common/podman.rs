//! podman with private storage, a busybox rootfs and a conflist chaining
//! `bridge` + the tailnet shim: the runtime side of the end-to-end tests.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::{shim_binary, CNI_PATH};

pub const BUSYBOX: &str = "/usr/bin/busybox";

/// What differs between the tests' podman setups.
pub struct Setup<'a> {
    /// The CNI network name (and conflist file name).
    pub network: &'a str,
    /// Must differ between tests running at once.
    pub bridge: &'a str,
    /// Must differ between tests running at once.
    pub subnet: &'a str,
    /// Extra directories in the rootfs.
    pub rootfs_dirs: &'a [&'a str],
    /// busybox applets linked into the rootfs.
    pub applets: &'a [&'a str],
    /// `/www/index.html` in the rootfs.
    pub page: &'a str,
}

/// A podman root under `dir`.
pub struct Podman {
    pub dir: PathBuf,
}

impl Podman {
    pub fn create(dir: &Path, daemon_socket: &Path, setup: &Setup<'_>) -> Self {
        let base = [
            "bin",
            "net.d",
            "rootfs/bin",
            "rootfs/www",
            "root",
            "runroot",
            "tmp",
            "static",
            "volumes",
        ];
        for sub in base.iter().chain(setup.rootfs_dirs) {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            symlink(
                Path::new(CNI_PATH).join(plugin),
                dir.join("bin").join(plugin),
            )
            .expect("link");
        }
        symlink(shim_binary(), dir.join("bin/tailnet-cni")).expect("link shim");
        fs::copy(BUSYBOX, dir.join("rootfs/bin/busybox")).expect("busybox");
        for applet in setup.applets {
            symlink("busybox", dir.join("rootfs/bin").join(applet)).expect("applet");
        }
        fs::write(dir.join("rootfs/www/index.html"), setup.page).expect("page");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": setup.network,
            "plugins": [
                {"type": "bridge", "bridge": setup.bridge, "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": setup.subnet}]]}},
                {"type": "tailnet-cni", "daemonSocket": daemon_socket.display().to_string(),
                 "timeoutSeconds": 90}
            ]
        });
        fs::write(
            dir.join(format!("net.d/{}.conflist", setup.network)),
            conflist.to_string(),
        )
        .expect("conflist");
        let d = dir.display();
        fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend=\"cni\"\ncni_plugin_dirs=[\"{d}/bin\"]\nnetwork_config_dir=\"{d}/net.d\"\n\
                 [engine]\ncgroup_manager=\"cgroupfs\"\nevents_logger=\"file\"\ntmp_dir=\"{d}/tmp\"\n\
                 static_dir=\"{d}/static\"\nvolume_path=\"{d}/volumes\"\n"
            ),
        )
        .expect("containers.conf");
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// A `podman` command against this root.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        cmd
    }
}
