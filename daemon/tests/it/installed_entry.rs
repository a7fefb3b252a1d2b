//! The plugin entry exactly as the installer writes it, handed to the shim
//! the way a runtime does: with the daemon's `selection = "annotated"`, the
//! ADD and CHECK of a pod that did not opt in are answered by the shim alone
//! and the daemon's socket never sees a connection. Needs the static shim
//! (the installer installs nothing else), no root.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{require, run, run_with_stdin, Missing, Needs, Unmet};

/// The reference plugins' conflist, as a node without k3s has it.
const BRIDGE_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/16"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

/// The static shim `scripts/build-shim.sh` puts in `<target>/static`.
fn static_shim() -> Result<PathBuf, Unmet> {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../static/tailnet-cni");
    let found = if path.is_file() {
        Ok(path)
    } else {
        Err(Missing::new(
            format!("no static shim at {}", path.display()),
            "build it with scripts/build-shim.sh",
        ))
    };
    Needs::new().with(found)
}

/// A socket where the daemon would listen, counting who connects.
struct FakeSocket {
    stop: Arc<AtomicBool>,
    counter: std::thread::JoinHandle<usize>,
}

impl FakeSocket {
    fn listen(path: &Path) -> Self {
        let listener = UnixListener::bind(path).expect("bind the daemon socket");
        listener.set_nonblocking(true).expect("non-blocking socket");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let counter = std::thread::spawn(move || {
            let mut connections = 0;
            // Drains connections made before the stop too.
            loop {
                match listener.accept() {
                    // Dropping the stream fails the caller at once.
                    Ok(_) => connections += 1,
                    Err(_) if stopped.load(Ordering::SeqCst) => return connections,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { stop, counter }
    }

    fn connections(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.counter.join().expect("counter thread")
    }
}

/// What the bridge plugin answered before us.
fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": "/var/run/netns/cni-test"}],
        "ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 0}],
        "dns": {}
    })
}

/// Our entry from the conflist, as libcni hands it to the plugin: the
/// list's name and version, the previous result, and `runtimeConfig` with
/// the pod's annotations because the entry declares the capability.
fn runtime_config(conflist: &Value, annotations: Value) -> Vec<u8> {
    let ours = conflist["plugins"]
        .as_array()
        .and_then(|plugins| plugins.iter().find(|p| p["type"] == "tailnet-cni"))
        .cloned()
        .unwrap_or_else(|| panic!("the installer chained no entry: {conflist}"));
    let capability = "io.kubernetes.cri.pod-annotations";
    assert_eq!(ours["capabilities"][capability], true, "{ours}");
    let mut config = ours;
    config["cniVersion"] = conflist["cniVersion"].clone();
    config["name"] = conflist["name"].clone();
    config["prevResult"] = prev_result();
    config["runtimeConfig"] = json!({ capability: annotations });
    serde_json::to_vec(&config).expect("json")
}

fn shim_call(shim: &Path, command: &str, config: &[u8]) -> std::process::Output {
    run_with_stdin(
        Command::new(shim)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "installedentry0")
            .env("CNI_NETNS", "/var/run/netns/cni-test")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=9d1c",
            ),
        config,
    )
}

#[test]
fn unannotated_pods_never_reach_the_daemon_through_the_installed_entry() {
    let static_shim = require!(static_shim());
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path();
    let (bin_dir, conf_dir) = (root.join("bin"), root.join("net.d"));
    for dir in [&bin_dir, &conf_dir] {
        std::fs::create_dir_all(dir).expect("dir");
    }
    let conflist_path = conf_dir.join("10-bridge.conflist");
    std::fs::write(&conflist_path, BRIDGE_CONFLIST).expect("conflist");
    let socket = root.join("daemon.sock");
    let daemon_config = root.join("tailnet-cnid.toml");
    std::fs::write(
        &daemon_config,
        "cluster_name = \"homelab\"\ncontrol_url = \"http://127.0.0.1:9\"\nallow_insecure_http = true\n\
         selection = \"annotated\"\n[auth]\nkind = \"static\"\nkey_file = \"/nonexistent\"\n",
    )
    .expect("daemon config");

    let installed = run(Command::new(env!("CARGO_BIN_EXE_tailnet-cnid"))
        .arg("--config")
        .arg(&daemon_config)
        .arg("install")
        .arg("--shim")
        .arg(&static_shim)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--conf-dir")
        .arg(&conf_dir)
        .arg("--daemon-socket")
        .arg(&socket));
    assert!(
        installed.status.success(),
        "install: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let conflist: Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist_path).expect("conflist"))
            .expect("conflist json");
    let shim = bin_dir.join("tailnet-cni");

    let unannotated = runtime_config(&conflist, json!({"kubernetes.io/config.seen": "now"}));
    let daemon = FakeSocket::listen(&socket);
    let added = shim_call(&shim, "ADD", &unannotated);
    assert!(
        added.status.success(),
        "ADD: {}",
        String::from_utf8_lossy(&added.stdout)
    );
    let answer: Value = serde_json::from_slice(&added.stdout).expect("ADD result");
    assert_eq!(answer, prev_result());
    let checked = shim_call(&shim, "CHECK", &unannotated);
    assert!(checked.status.success(), "CHECK");
    assert_eq!(
        daemon.connections(),
        0,
        "an unannotated pod reached the daemon"
    );

    // DEL still asks a daemon that is up (the pod may have joined under an
    // earlier selection) and succeeds without one.
    std::fs::remove_file(&socket).expect("remove the socket");
    let deleted = shim_call(&shim, "DEL", &unannotated);
    assert!(
        deleted.status.success(),
        "DEL: {}",
        String::from_utf8_lossy(&deleted.stdout)
    );

    // The same entry forwards a pod that opted in: the socket above would
    // have seen the others.
    let annotated = runtime_config(&conflist, json!({"tailnet-cni.io/enabled": "true"}));
    let daemon = FakeSocket::listen(&socket);
    let output = shim_call(&shim, "ADD", &annotated);
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        daemon.connections() >= 1,
        "an opted-in pod was not forwarded"
    );
}
