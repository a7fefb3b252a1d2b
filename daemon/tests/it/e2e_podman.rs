//! End to end through a real CNI runtime: podman 4 (CNI backend) chains
//! Debian's `bridge` + `host-local` and then our shim, which talks to a real
//! `tailnet-cnid`, which registers the container with the real control server
//! (rscale) of the test bed, where an official tailscaled peer runs.
//!
//! Everything must share one network and mount namespace: run under
//! `scripts/isolated.sh` (as `make test` does), which sets
//! `TAILNET_ISOLATED=1`; the test bed's environment must be exported
//! (`source <(scripts/testbed.sh env)`). Otherwise these tests say why and
//! skip (fail under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::podman::{self, BUSYBOX};
use crate::common::{
    self, links_named, our_rules, peer_fetch_within, require, run, run_ok, run_with_stdin,
    shim_binary, take_turn, wait_until, Bed, Daemon, DaemonOptions, CNI_PATH,
};

fn prerequisites() -> Result<Bed, common::Unmet> {
    common::daemon_bed(&["podman", BUSYBOX, "curl", "nsenter", "ip"])
}

/// A daemon with its own state dir and socket, stopped on drop.
fn start_daemon(dir: &Path, bed: &Bed) -> Daemon {
    let options = DaemonOptions::default_reconcile(&bed.control_url, &bed.admin_token_file, "e2e");
    Daemon::start(dir, options)
}

/// podman with private storage and a conflist chaining bridge + our shim.
struct Podman {
    root: podman::Podman,
}

impl Podman {
    /// `bridge` and `subnet` must differ between tests running at once.
    fn new(dir: &Path, daemon_socket: &Path, bridge: &str, subnet: &str) -> Self {
        let setup = podman::Setup {
            network: "tailnet-e2e",
            bridge,
            subnet,
            rootfs_dirs: &[],
            applets: &["sh", "sleep", "ip", "httpd", "wget", "cat", "echo"],
            page: "hello from a pod on the tailnet\n",
        };
        Self {
            root: podman::Podman::create(dir, daemon_socket, &setup),
        }
    }

    fn cmd(&self) -> Command {
        self.root.cmd()
    }

    /// Starts a container serving a page on port 80.
    fn run_web(&self, name: &str) -> Output {
        run(self
            .cmd()
            .args([
                "run",
                "-d",
                "--cgroups=disabled",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args(["--network", "tailnet-e2e", "--name", name, "--rootfs"])
            .arg(self.root.dir.join("rootfs"))
            .args(["/bin/httpd", "-f", "-p", "80", "-h", "/www"]))
    }

    fn exec(&self, name: &str, args: &[&str]) -> Output {
        run(self.cmd().args(["exec", name]).args(args))
    }

    fn remove(&self, name: &str) {
        run_ok(self.cmd().args(["rm", "-f", "-t", "0", name]));
    }

    fn cached_result(&self, name: &str) -> Value {
        let id = run_ok(self.cmd().args(["inspect", name, "--format", "{{.Id}}"]));
        let path = format!("/var/lib/cni/results/tailnet-e2e-{}-eth0", id.trim());
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str::<Value>(&text).expect("cached result")["result"].clone()
    }
}

fn admin_nodes(bed: &Bed) -> Value {
    bed.admin().get("/api/v1/admin/nodes").expect("admin API")
}

fn peer_fetch(bed: &Bed, url: &str) -> Output {
    peer_fetch_within(&bed.peer_socks5, url, 20)
}

/// Runs the shim's CHECK as a runtime would, with the cached result.
fn shim_check(socket: &Path, container_id: &str, netns: &str, cached: &Value) -> Output {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "tailnet-e2e",
        "type": "tailnet-cni",
        "daemonSocket": socket.display().to_string(),
        "prevResult": cached,
    });
    run_with_stdin(
        Command::new(shim_binary())
            .env("CNI_COMMAND", "CHECK")
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH),
        conf.to_string().as_bytes(),
    )
}

#[test]
fn a_podman_container_joins_the_tailnet_and_leaves_nothing_behind() {
    let bed = require!(prerequisites());
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let mut daemon = start_daemon(dir, &bed);
    let podman = Podman::new(
        &dir.join("podman"),
        &daemon.socket,
        "cni-tne2e1",
        "10.89.21.0/24",
    );

    let started = podman.run_web("web1");
    assert!(
        started.status.success(),
        "podman run failed: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&started.stderr),
        fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
    );

    // The daemon knows the pod, with the address rscale assigned.
    let status = daemon.status();
    let pod = status["pods"][0].clone();
    let ipv4 = pod["ipv4"].as_str().unwrap_or_default().to_string();
    let ipv6 = pod["ipv6"].as_str().unwrap_or_default().to_string();
    assert!(ipv4.starts_with("100."), "{status}");
    assert!(ipv6.starts_with("fd7a:115c:a1e0:"), "{status}");
    let nodes = admin_nodes(&bed);
    let node_id = nodes
        .get("nodes")
        .unwrap_or(&nodes)
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| {
            let text = n.to_string();
            text.contains(&format!("\"{ipv4}\"")) || text.contains(&format!("\"{ipv4}/32\""))
        })
        .and_then(|n| n["id"].as_i64())
        .unwrap_or_else(|| panic!("rscale does not list {ipv4}: {nodes}"));

    // Inside the container: eth0 from the bridge, ts0 with the tailnet address.
    let addrs = podman.exec("web1", &["ip", "addr"]);
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains("10.89.21."), "{addrs}");
    assert!(addrs.contains(&format!("{ipv4}/32")), "{addrs}");
    assert!(addrs.contains("ts0"), "{addrs}");

    // The runtime keeps the bridge address as the pod address and lists ts0.
    let cached = podman.cached_result("web1");
    assert!(
        cached["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .starts_with("10.89.21."),
        "{cached}"
    );
    let names: Vec<&str> = cached["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(names.contains(&"ts0"), "{cached}");
    assert!(
        cached.to_string().contains(&format!("{ipv4}/32")),
        "{cached}"
    );

    // The official tailscaled peer fetches the page over the tailnet.
    let page = wait_until(
        Duration::from_secs(60),
        "the peer to fetch the pod's page",
        || {
            let out = peer_fetch(&bed, &format!("http://{ipv4}/"));
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert_eq!(page, "hello from a pod on the tailnet\n");
    let page6 = wait_until(
        Duration::from_secs(30),
        "the peer to fetch over IPv6",
        || {
            let out = peer_fetch(&bed, &format!("http://[{ipv6}]/"));
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert_eq!(page6, "hello from a pod on the tailnet\n");

    // A restarted daemon brings the pod back with the same address and no
    // new node in the tailnet.
    // Other tests register nodes of their own concurrently: count ours.
    let ours = |nodes: Value| nodes.to_string().matches("\"e2e-web1").count();
    let nodes_before = ours(admin_nodes(&bed));
    assert!(nodes_before > 0, "rscale lists no node named e2e-web1");
    daemon.restart();
    let status = daemon.status();
    assert_eq!(status["pods"][0]["ipv4"], json!(ipv4), "{status}");
    let nodes_after = ours(admin_nodes(&bed));
    assert_eq!(nodes_before, nodes_after, "restart created nodes");
    wait_until(
        Duration::from_secs(60),
        "the page after a daemon restart",
        || {
            peer_fetch(&bed, &format!("http://{ipv4}/"))
                .status
                .success()
                .then_some(())
        },
    );

    // CHECK passes while the setup is intact and fails once ts0 lost its
    // address (DEL below must still clean up the drifted pod).
    let id = run_ok(
        podman
            .cmd()
            .args(["inspect", "web1", "--format", "{{.Id}}"]),
    );
    let netns = run_ok(podman.cmd().args([
        "inspect",
        "web1",
        "--format",
        "{{.NetworkSettings.SandboxKey}}",
    ]));
    let check = |cached: &Value| shim_check(&daemon.socket, id.trim(), netns.trim(), cached);
    let ok = check(&cached);
    assert!(
        ok.status.success(),
        "CHECK failed on an intact pod: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    run_ok(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.trim()))
            .args(["ip", "addr", "del", &format!("{ipv4}/32"), "dev", "ts0"]),
    );
    let drifted = check(&cached);
    assert!(
        !drifted.status.success(),
        "CHECK passed after ts0 lost its address"
    );
    let error: Value = serde_json::from_slice(&drifted.stdout).expect("CNI error json");
    assert!(
        error["msg"].as_str().unwrap_or_default().contains(&ipv4),
        "{error}"
    );

    // Stopping the container runs DEL: nothing of the pod remains.
    podman.remove("web1");
    assert!(
        links_named(&["tnt"]).is_empty(),
        "TUN left: {:?}",
        links_named(&["tnt"])
    );
    assert!(
        links_named(&["tnv"]).is_empty(),
        "veth left: {:?}",
        links_named(&["tnv"])
    );
    assert!(our_rules().is_empty(), "rules left: {:?}", our_rules());
    let records: Vec<_> = fs::read_dir(daemon.state_dir.join("pods"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "state left: {records:?}");
    let status = daemon.status();
    assert_eq!(status["pods"], json!([]), "{status}");
    // ...and the pod's node is disabled in the tailnet.
    let node = bed
        .admin()
        .get(&format!("/api/v1/admin/nodes/{node_id}"))
        .expect("admin API");
    assert_eq!(node["status"], json!("disabled"), "{node}");
}

#[test]
fn twenty_containers_start_in_parallel_with_distinct_addresses() {
    let bed = require!(prerequisites());
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let daemon = start_daemon(dir, &bed);
    let podman = Podman::new(
        &dir.join("podman"),
        &daemon.socket,
        "cni-tne2e2",
        "10.89.22.0/24",
    );
    let names: Vec<String> = (0..20).map(|i| format!("par{i}")).collect();
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| s.spawn(|| podman.run_web(n)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (name, out) in names.iter().zip(&outputs) {
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
    }
    let status = daemon.status();
    let mut addresses: Vec<String> = status["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(|p| p["ipv4"].as_str().map(str::to_string))
        .collect();
    assert_eq!(addresses.len(), 20, "{status}");
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 20, "addresses not distinct: {status}");
    for name in &names {
        podman.remove(name);
    }
    assert!(
        links_named(&["tnt"]).is_empty(),
        "TUN left: {:?}",
        links_named(&["tnt"])
    );
}
