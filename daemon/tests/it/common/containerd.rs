//! A private containerd (Debian's 1.6) with its CRI plugin, as kubelet's
//! runtime: its own `config.toml` (version 2), root, state and socket,
//! inside the test's network and mount namespace (`scripts/isolated.sh`),
//! with the test bed's static-busybox image imported as both sandbox
//! ("pause") image and container image.
//!
//! containerd shares the test's mount and pid namespaces on purpose: it
//! bind-mounts each pod's network namespace under /run/netns and the daemon
//! must open the same path the shim hands it, and containerd finds a new
//! namespace through /proc, which must show its own pids.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tailnet_testbed::{Missing, Needs};

use super::process::{run_ok, wait_until};

/// The image `scripts/testbed.sh install` builds, when its environment is
/// not exported.
const DEFAULT_IMAGE: &str = "/var/cache/tailnet-cni/cri/busybox-oci.tar";
const DEFAULT_IMAGE_NAME: &str = "localhost/tailnet-cni/busybox:1";

/// The OCI archive of the test image and the name it is imported under.
#[derive(Debug, Clone)]
pub struct Image {
    pub archive: PathBuf,
    pub name: String,
}

/// What a containerd test needs besides the daemon's: containerd, ctr,
/// runc and the image.
pub fn needs(base: Needs) -> Result<Image, tailnet_testbed::Unmet> {
    let archive = std::env::var_os("TAILNET_TEST_CRI_IMAGE")
        .map_or_else(|| PathBuf::from(DEFAULT_IMAGE), PathBuf::from);
    let name = std::env::var("TAILNET_TEST_CRI_IMAGE_NAME")
        .unwrap_or_else(|_| DEFAULT_IMAGE_NAME.to_string());
    let image = if archive.is_file() {
        Ok(Image { archive, name })
    } else {
        Err(Missing::new(
            format!("the CRI test image {} is missing", archive.display()),
            "`scripts/testbed.sh install` (as root) builds it",
        ))
    };
    base.tools(&["containerd", "ctr", "runc"]).with(image)
}

/// Where containerd's CRI finds CNI plugins and the network config, the
/// `[plugins."io.containerd.grpc.v1.cri".cni]` table.
#[derive(Debug, Clone)]
pub struct CniDirs {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
}

/// A running containerd, killed with everything it started on drop.
pub struct Containerd {
    child: Child,
    dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Containerd {
    /// Starts containerd under `dir` with `cni` and imports `image`.
    pub fn start(dir: &Path, cni: &CniDirs, image: &Image) -> Self {
        fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::write(&config, config_toml(dir, &socket, cni, &image.name)).expect("config.toml");
        let log = dir.join("containerd.log");
        let output = fs::File::create(&log).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log handle"))
            .stderr(output)
            .spawn()
            .expect("spawn containerd");
        let containerd = Self {
            child,
            dir: dir.to_path_buf(),
            socket,
            log,
        };
        wait_until(Duration::from_secs(30), "containerd's socket", || {
            containerd.socket.exists().then_some(())
        });
        run_ok(
            Command::new("ctr")
                .arg("--address")
                .arg(&containerd.socket)
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&image.archive),
        );
        containerd
    }

    /// What containerd logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Ignoring failures: the process may already be gone, and
        // everything it left lives in this test's own namespaces.
        let _ignored = self.child.kill();
        let _reaped = self.child.wait();
        kill_shims_of(&self.socket);
        unmount_below(&self.dir);
    }
}

/// containerd's config, as the test bed doc says this machine needs it.
fn config_toml(dir: &Path, socket: &Path, cni: &CniDirs, sandbox_image: &str) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # This machine refuses the negative oom_score_adj a sandbox asks for.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        bin_dir = cni.bin_dir.display(),
        conf_dir = cni.conf_dir.display(),
    )
}

/// Kills the runc shims this containerd started (they outlive it by
/// design), and with them any container a failed test left running. They
/// are the processes started with `-address <socket>`.
fn kill_shims_of(socket: &Path) {
    let mut marker = b"\0-address\0".to_vec();
    marker.extend_from_slice(socket.as_os_str().as_bytes());
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(marker.len()).any(|window| window == marker) {
            // Ignoring failures: the shim may have exited meanwhile.
            let _ignored = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Detaches every mount containerd left under `dir` (container root
/// filesystems, shm), deepest first, so the test's tempdir can go.
fn unmount_below(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|target| Path::new(target).starts_with(dir))
        .collect();
    targets.sort_by_key(|target| std::cmp::Reverse(target.len()));
    for target in targets {
        // Ignoring failures: a mount may go with its parent.
        let _ignored = umount2(target, MntFlags::MNT_DETACH);
    }
}
