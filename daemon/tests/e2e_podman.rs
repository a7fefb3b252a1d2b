//! End to end through a real CNI runtime: podman 4 (CNI backend) chains
//! Debian's `bridge` + `host-local` and then our shim, which talks to a real
//! `tailnet-cnid`, which registers the container with the real control server
//! (rscale) of the test bed, where an official tailscaled peer runs.
//!
//! Everything must share one network and mount namespace: run under
//! `scripts/isolated.sh` (as `make test` does), which sets
//! `TAILNET_ISOLATED=1`; the test bed's environment must be exported
//! (`source <(scripts/testbed.sh env)`). Otherwise these tests say why and
//! skip.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PLUGIN_DIR: &str = "/usr/lib/cni";
const BUSYBOX: &str = "/usr/bin/busybox";

struct Bed {
    control_url: String,
    admin_token_file: String,
    tailscale: String,
    peer_socket: String,
    peer_socks5: String,
}

/// One daemon per node is the design: a daemon removes links it does not
/// own when it starts. The tests here each run a daemon in the same network
/// namespace, so they take turns (nextest runs tests as separate processes:
/// a file lock, not a mutex).
struct Turn {
    _lock: std::fs::File,
}

fn take_turn() -> Turn {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("tailnet-cni-e2e.lock"))
        .expect("lock file");
    // SAFETY: flock on an open descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock failed");
    Turn { _lock: file }
}

fn prerequisites() -> Result<Bed, String> {
    if std::env::var("TAILNET_ISOLATED").as_deref() != Ok("1") {
        return Err("not inside scripts/isolated.sh (TAILNET_ISOLATED != 1)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root".into());
    }
    for path in ["/usr/bin/podman", BUSYBOX, "/usr/bin/curl"] {
        if !Path::new(path).exists() {
            return Err(format!("{path} is missing"));
        }
    }
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    Ok(Bed {
        control_url: var("TAILNET_TEST_CONTROL_URL")?,
        admin_token_file: var("TAILNET_TEST_ADMIN_TOKEN_FILE")?,
        tailscale: var("TAILNET_TEST_TAILSCALE_BIN")?,
        peer_socket: var("TAILNET_TEST_PEER_SOCKET")?,
        peer_socks5: var("TAILNET_TEST_PEER_SOCKS5")?,
    })
}

/// The workspace's target dir holding both binaries.
fn shim_binary() -> PathBuf {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_tailnet-cnid"));
    daemon.with_file_name("tailnet-cni")
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    output
}

fn run_ok(cmd: &mut Command) -> String {
    let output = run(cmd);
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A running daemon with its own state dir and socket; killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    state_dir: PathBuf,
    config: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, bed: &Bed) -> Self {
        let socket = dir.join("daemon.sock");
        let state_dir = dir.join("state");
        let config = dir.join("tailnet-cnid.toml");
        fs::write(
            &config,
            format!(
                r#"socket = "{socket}"
state_dir = "{state}"
cluster_name = "e2e"
control_url = "{url}"
selection = "all"

[auth]
kind = "rscale"
api_url = "{url}"
token_file = "{token}"
tags = []
"#,
                socket = socket.display(),
                state = state_dir.display(),
                url = bed.control_url,
                token = bed.admin_token_file,
            ),
        )
        .expect("daemon config");
        let mut daemon = Self {
            child: spawn_daemon(&config, dir),
            socket,
            state_dir,
            config,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        let child = &mut self.child;
        wait_until(Duration::from_secs(30), "the daemon socket", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("daemon exited early: {status}");
            }
            socket.exists().then_some(())
        });
    }

    fn restart(&mut self, dir: &Path) {
        stop(&mut self.child);
        self.child = spawn_daemon(&self.config, dir);
        self.wait_ready();
    }

    fn status(&self) -> Value {
        let out = run_ok(
            Command::new(env!("CARGO_BIN_EXE_tailnet-cnid"))
                .args(["status", "--json", "--socket"])
                .arg(&self.socket),
        );
        serde_json::from_str(&out).expect("status json")
    }
}

fn spawn_daemon(config: &Path, dir: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .expect("daemon log");
    Command::new(env!("CARGO_BIN_EXE_tailnet-cnid"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("TAILNET_CNID_LOG", "info,tailnet_cnid=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn daemon")
}

fn stop(child: &mut Child) {
    // SIGTERM first: the daemon shuts down cleanly and keeps pods.
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// podman with private storage and a conflist chaining bridge + our shim.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// `bridge` and `subnet` must differ between tests running at once.
    fn new(dir: &Path, daemon_socket: &Path, bridge: &str, subnet: &str) -> Self {
        for sub in [
            "bin",
            "net.d",
            "rootfs/bin",
            "rootfs/www",
            "root",
            "runroot",
            "tmp",
            "static",
            "volumes",
        ] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            symlink(
                Path::new(PLUGIN_DIR).join(plugin),
                dir.join("bin").join(plugin),
            )
            .expect("link");
        }
        symlink(shim_binary(), dir.join("bin/tailnet-cni")).expect("link shim");
        fs::copy(BUSYBOX, dir.join("rootfs/bin/busybox")).expect("busybox");
        for applet in ["sh", "sleep", "ip", "httpd", "wget", "cat", "echo"] {
            symlink("busybox", dir.join("rootfs/bin").join(applet)).expect("applet");
        }
        fs::write(
            dir.join("rootfs/www/index.html"),
            "hello from a pod on the tailnet\n",
        )
        .expect("page");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "tailnet-e2e",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}},
                {"type": "tailnet-cni", "daemonSocket": daemon_socket.display().to_string(),
                 "timeoutSeconds": 90}
            ]
        });
        fs::write(dir.join("net.d/tailnet-e2e.conflist"), conflist.to_string()).expect("conflist");
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

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        cmd
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
            .arg(self.dir.join("rootfs"))
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

fn links_named(prefix: &str) -> Vec<String> {
    let out = run_ok(Command::new("ip").args(["-j", "link", "show"]));
    let links: Value = serde_json::from_str(&out).expect("ip -j link");
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn rules_at_our_priority() -> Vec<Value> {
    let mut rules = Vec::new();
    for family in ["-4", "-6"] {
        let out = run_ok(Command::new("ip").args([family, "-j", "rule", "show"]));
        let list: Value = serde_json::from_str(&out).expect("ip -j rule");
        rules.extend(
            list.as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["priority"] == json!(5100))
                .cloned(),
        );
    }
    rules
}

fn admin_get(bed: &Bed, path: &str) -> Value {
    let token = fs::read_to_string(&bed.admin_token_file).expect("admin token");
    let out = run_ok(Command::new("curl").args([
        "-fsS",
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        &format!("{}{path}", bed.control_url),
    ]));
    serde_json::from_str(&out).expect("admin API json")
}

fn admin_nodes(bed: &Bed) -> Value {
    admin_get(bed, "/api/v1/admin/nodes")
}

fn peer_fetch(bed: &Bed, url: &str) -> Output {
    run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "--socks5-hostname",
        &bed.peer_socks5,
        url,
    ]))
}

/// Runs the shim's CHECK as a runtime would, with the cached result.
fn shim_check(socket: &Path, container_id: &str, netns: &str, cached: &Value) -> Output {
    use std::io::Write;
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "tailnet-e2e",
        "type": "tailnet-cni",
        "daemonSocket": socket.display().to_string(),
        "prevResult": cached,
    });
    let mut child = Command::new(shim_binary())
        .env("CNI_COMMAND", "CHECK")
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", PLUGIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shim");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write conf");
    child.wait_with_output().expect("shim output")
}

#[test]
fn a_podman_container_joins_the_tailnet_and_leaves_nothing_behind() {
    let bed = match prerequisites() {
        Ok(bed) => bed,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let mut daemon = Daemon::start(dir, &bed);
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
    daemon.restart(dir);
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
        links_named("tnt").is_empty(),
        "TUN left: {:?}",
        links_named("tnt")
    );
    assert!(
        links_named("tnv").is_empty(),
        "veth left: {:?}",
        links_named("tnv")
    );
    assert!(
        rules_at_our_priority().is_empty(),
        "rules left: {:?}",
        rules_at_our_priority()
    );
    let records: Vec<_> = fs::read_dir(daemon.state_dir.join("pods"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "state left: {records:?}");
    let status = daemon.status();
    assert_eq!(status["pods"], json!([]), "{status}");
    // ...and the pod's node is disabled in the tailnet.
    let node = admin_get(&bed, &format!("/api/v1/admin/nodes/{node_id}"));
    assert_eq!(node["status"], json!("disabled"), "{node}");
    let _ = (&bed.tailscale, &bed.peer_socket);
}

#[test]
fn twenty_containers_start_in_parallel_with_distinct_addresses() {
    let bed = match prerequisites() {
        Ok(bed) => bed,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let _turn = take_turn();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let daemon = Daemon::start(dir, &bed);
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
        links_named("tnt").is_empty(),
        "TUN left: {:?}",
        links_named("tnt")
    );
}
