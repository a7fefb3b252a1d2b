//! Kubelet's path: Debian's containerd with its CRI plugin, driven through
//! CRI as kubelet drives it (RunPodSandbox, a container, StopPodSandbox,
//! RemovePodSandbox), runs the reference `bridge` + `host-local` +
//! `portmap` conflist into which the project's installer chained the
//! static shim, which talks to a real `tailnet-cnid` registered with the
//! test bed's control server, where an official tailscaled runs.
//!
//! No Kubernetes API exists here: whatever the daemon knows of a pod's
//! annotations came from containerd, through the
//! `io.kubernetes.cri.pod-annotations` capability the installer declares.
//! Runs under `scripts/isolated.sh` (as `make test` does).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tailnet_cni_proto::selection::{
    ENABLED_ANNOTATION, HOSTNAME_ANNOTATION, POD_ANNOTATIONS_CAPABILITY,
};

use crate::common::containerd::{self, CniDirs, Containerd, Image};
use crate::common::cri::{Cri, PodSpec};
use crate::common::daemon::stop;
use crate::common::installer::{install, static_shim};
use crate::common::{
    self, links_named, our_rules, peer_fetch_within, require, take_turn, wait_until, Bed, Daemon,
    DaemonOptions, CNI_PATH,
};

/// The primary network's subnet: the pod IP kubelet sees comes from it.
const SUBNET_PREFIX: &str = "10.89.31.";
const PAGE: &str = "hello from a CRI pod on the tailnet\n";

fn prerequisites() -> Result<(Bed, Image, std::path::PathBuf), common::Unmet> {
    let bed = common::daemon_bed(&["curl"])?;
    let image = containerd::needs(common::isolated_root())?;
    let shim = common::isolated_root().with(static_shim())?;
    Ok((bed, image, shim))
}

/// A node's CNI dirs: the reference plugins in a bin dir of their own and
/// the primary conflist, as a cluster's network add-on leaves them.
fn node_cni(dir: &Path) -> CniDirs {
    let cni = CniDirs {
        bin_dir: dir.join("opt-cni-bin"),
        conf_dir: dir.join("net.d"),
    };
    fs::create_dir_all(&cni.bin_dir).expect("bin dir");
    fs::create_dir_all(&cni.conf_dir).expect("conf dir");
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        symlink(Path::new(CNI_PATH).join(plugin), cni.bin_dir.join(plugin)).expect("plugin link");
    }
    // containerd 1.6's CNI library refuses cniVersion 1.1.0.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni-trcri0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{SUBNET_PREFIX}0/24")}]]},
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    fs::write(
        cni.conf_dir.join("10-bridge.conflist"),
        conflist.to_string(),
    )
    .expect("conflist");
    cni
}

fn chained_entry(cni: &CniDirs) -> Option<Value> {
    let text = fs::read_to_string(cni.conf_dir.join("10-bridge.conflist")).ok()?;
    let conflist: Value = serde_json::from_str(&text).ok()?;
    conflist["plugins"]
        .as_array()?
        .iter()
        .find(|plugin| plugin["type"] == "tailnet-cni")
        .cloned()
}

/// The installer's arguments for this node.
fn install_args<'a>(cni: &'a CniDirs, readyz: &'a str) -> Vec<&'a OsStr> {
    vec![
        OsStr::new("--bin-dir"),
        cni.bin_dir.as_os_str(),
        OsStr::new("--conf-dir"),
        cni.conf_dir.as_os_str(),
        OsStr::new("--daemon-readyz"),
        OsStr::new(readyz),
    ]
}

fn admin_node_id(bed: &Bed, ipv4: &str) -> i64 {
    let nodes = bed.admin().get("/api/v1/admin/nodes").expect("admin API");
    nodes
        .get("nodes")
        .unwrap_or(&nodes)
        .as_array()
        .into_iter()
        .flatten()
        .find(|node| node.to_string().contains(&format!("\"{ipv4}")))
        .and_then(|node| node["id"].as_i64())
        .unwrap_or_else(|| panic!("rscale does not list {ipv4}: {nodes}"))
}

#[test]
fn a_cri_pod_joins_through_the_annotation_capability_and_leaves_nothing() {
    let (bed, image, shim) = require!(prerequisites());
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let mut daemon = Daemon::start(
        &dir.join("daemon"),
        DaemonOptions {
            selection: "annotated".into(),
            ..DaemonOptions::default_reconcile(&bed.control_url, &bed.admin_token_file, "cri")
        },
    );
    let cni = node_cni(dir);
    let readyz = daemon.health.clone();

    // The installer chains only once the daemon answers /readyz.
    stop(&mut daemon.child);
    let refused = install(&shim, &daemon, &install_args(&cni, &readyz));
    assert!(
        !refused.status.success(),
        "the installer chained while the daemon was down"
    );
    assert_eq!(
        chained_entry(&cni),
        None,
        "chained while the daemon was down"
    );
    daemon.start_again();
    let installed = install(&shim, &daemon, &install_args(&cni, &readyz));
    assert!(
        installed.status.success(),
        "install failed: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let entry = chained_entry(&cni).expect("our entry in the conflist");
    assert_eq!(
        entry["capabilities"][POD_ANNOTATIONS_CAPABILITY],
        json!(true)
    );
    assert_eq!(entry["selection"], json!("annotated"));
    assert_eq!(
        fs::read(cni.bin_dir.join("tailnet-cni")).expect("installed shim"),
        fs::read(&shim).expect("static shim"),
    );

    let containerd = Containerd::start(&dir.join("containerd"), &cni, &image);
    let mut cri = Cri::connect(&containerd.socket).expect("CRI socket");

    // A pod that did not opt in starts while the daemon is stopped.
    stop(&mut daemon.child);
    let plain = cri
        .run_pod(&PodSpec::new("default", "plain"))
        .unwrap_or_else(|status| {
            panic!(
                "RunPodSandbox of a plain pod with the daemon down: {status}\n{}",
                containerd.log_text()
            )
        });
    let plain_ip = cri.pod_ip(&plain).expect("PodSandboxStatus");
    assert!(plain_ip.starts_with(SUBNET_PREFIX), "pod IP {plain_ip:?}");
    cri.stop_and_remove_pod(&plain)
        .expect("teardown of the plain pod with the daemon down");
    daemon.start_again();

    // An annotated pod joins; the hostname it asks for can only have come
    // from the runtime's annotations.
    let hostname = format!("cri-kubelet-{}", std::process::id());
    let pod = PodSpec::new("default", "web")
        .annotated(ENABLED_ANNOTATION, "true")
        .annotated(HOSTNAME_ANNOTATION, &hostname);
    let sandbox = cri.run_pod(&pod).unwrap_or_else(|status| {
        panic!(
            "RunPodSandbox of a tailnet pod: {status}\ndaemon log:\n{}\ncontainerd log:\n{}",
            daemon.log_text(),
            containerd.log_text()
        )
    });
    let pod_ip = cri.pod_ip(&sandbox).expect("PodSandboxStatus");
    assert!(pod_ip.starts_with(SUBNET_PREFIX), "pod IP {pod_ip:?}");
    let web = cri
        .start_container(
            &sandbox,
            "web",
            &image.name,
            &["/bin/httpd", "-f", "-p", "80", "-h", "/www"],
        )
        .unwrap_or_else(|status| panic!("web container: {status}\n{}", containerd.log_text()));

    let pods = daemon.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    // Tenancy places a requested name under `{cluster}-{namespace}-`.
    assert_eq!(
        pods[0]["hostname"],
        json!(format!("cri-default-{hostname}")),
        "{pods:?}"
    );
    let ipv4 = pods[0]["ipv4"].as_str().unwrap_or_default().to_string();
    assert!(ipv4.starts_with("100."), "{pods:?}");
    let node_id = admin_node_id(&bed, &ipv4);

    let ts0 = cri
        .exec(&web, &["ip", "-4", "addr", "show", "ts0"])
        .expect("ExecSync");
    assert_eq!(ts0.exit_code, 0, "ip addr show ts0: {}", ts0.stderr);
    assert!(
        ts0.stdout.contains(&format!("{ipv4}/32")),
        "ts0 lacks {ipv4}: {}",
        ts0.stdout
    );

    let page = wait_until(
        Duration::from_secs(60),
        "the official tailscaled to fetch the pod's page",
        || {
            let out = peer_fetch_within(&bed.peer_socks5, &format!("http://{ipv4}/"), 20);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert_eq!(page, PAGE);

    // StopPodSandbox + RemovePodSandbox: nothing of the pod remains.
    cri.stop_and_remove_pod(&sandbox)
        .expect("teardown of the tailnet pod");
    assert_eq!(links_named(&["tnt", "tnv"]), Vec::<String>::new());
    assert!(our_rules().is_empty(), "rules left: {:?}", our_rules());
    assert_eq!(daemon.state_files(), Vec::<std::path::PathBuf>::new());
    assert_eq!(daemon.pods(), Vec::<Value>::new());
    let node = bed
        .admin()
        .get(&format!("/api/v1/admin/nodes/{node_id}"))
        .expect("admin API");
    assert_eq!(node["status"], json!("disabled"), "{node}");
}
