//! Harness for the reliability tests: a real `tailnet-cnid` driven through
//! the real shim binary, pods made of `ip netns add` namespaces with a
//! bridge-like `prevResult`, and the host-wide accounting (links, rules,
//! routes, state files, descriptors, tasks, memory, tailnet nodes) that
//! shows whether anything leaked.
//!
//! Everything runs inside `scripts/isolated.sh` with the test bed's
//! environment exported; tests that share the network namespace take
//! turns through a file lock.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod admin_http;
pub mod mint;
pub mod netns;
pub mod podman;

pub const CNI_PATH: &str = "/usr/lib/cni";
/// Priority of the daemon's `ip rule`s.
pub const RULE_PRIORITY: u64 = 5100;
/// The daemon's per-pod routing tables: `tables::DEFAULT_TABLE_BASE` and
/// its count.
pub const TABLE_BASE: u64 = 0x7c00_0000;
pub const TABLE_COUNT: u64 = 0x0001_0000;

/// The shared test bed (rscale with DERP, the tailscaled peer).
#[derive(Debug, Clone)]
pub struct Bed {
    pub control_url: String,
    pub admin_token_file: PathBuf,
    pub peer_socks5: String,
}

/// Why tests that need `scripts/isolated.sh`, root and `tools` cannot run here.
pub fn isolated_root_with(tools: &[&str]) -> Result<(), String> {
    if std::env::var("TAILNET_ISOLATED").as_deref() != Ok("1") {
        return Err("not inside scripts/isolated.sh (TAILNET_ISOLATED != 1)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root".into());
    }
    for path in tools {
        if !Path::new(path).exists() {
            return Err(format!("{path} is missing"));
        }
    }
    Ok(())
}

/// Why the tests cannot run here, or the bed they run against.
pub fn prerequisites() -> Result<Bed, String> {
    isolated_root_with(&["/usr/bin/busybox", "/usr/bin/curl"])?;
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    Ok(Bed {
        control_url: var("TAILNET_TEST_CONTROL_URL")?,
        admin_token_file: var("TAILNET_TEST_ADMIN_TOKEN_FILE")?.into(),
        peer_socks5: var("TAILNET_TEST_PEER_SOCKS5")?,
    })
}

/// Skips the calling test (returning from it) when the bed is absent.
#[macro_export]
macro_rules! bed_or_skip {
    () => {
        match common::prerequisites() {
            Ok(bed) => bed,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        }
    };
}

/// A daemon removes links no record of its own names; daemons of different
/// tests in one network namespace must not overlap. Same lock file as the
/// other daemon-driving tests.
pub struct Turn {
    _lock: fs::File,
}

pub fn take_turn() -> Turn {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("tailnet-cni-e2e.lock"))
        .expect("lock file");
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock failed");
    Turn { _lock: file }
}

pub fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tailnet-cnid")).with_file_name("tailnet-cni")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `cmd` with `input` on its stdin, capturing its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("child output")
}

pub fn run_ok(cmd: &mut Command) -> String {
    let output = run(cmd);
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A short random suffix, so names of one run never meet those of an
/// earlier run against the same control server.
pub fn run_tag() -> String {
    let mut bytes = [0u8; 3];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("urandom");
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// ---- the daemon -------------------------------------------------------------

/// How to configure one daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub cluster: String,
    pub control_url: String,
    /// `[auth]` table body.
    pub auth: String,
    pub reconcile_secs: u64,
    pub json_logs: bool,
    /// `TAILNET_CNID_LOG`.
    pub log_filter: String,
    /// `TAILNET_CNID_CRASH_AT`, for this start only.
    pub crash_at: Option<String>,
}

impl DaemonOptions {
    pub fn new(bed: &Bed, cluster: &str) -> Self {
        Self::for_server(&bed.control_url, &bed.admin_token_file, cluster)
    }

    pub fn for_server(control_url: &str, token_file: &Path, cluster: &str) -> Self {
        Self {
            cluster: cluster.to_string(),
            control_url: control_url.to_string(),
            auth: format!(
                "kind = \"rscale\"\napi_url = \"{control_url}\"\ntoken_file = \"{}\"\ntags = []\n",
                token_file.display()
            ),
            reconcile_secs: 0,
            json_logs: false,
            log_filter: "info,tailnet_cnid=debug".into(),
            crash_at: None,
        }
    }

    /// As [`Self::for_server`], reconciling at the daemon's default interval.
    pub fn default_reconcile(control_url: &str, token_file: &Path, cluster: &str) -> Self {
        Self {
            reconcile_secs: 60,
            ..Self::for_server(control_url, token_file, cluster)
        }
    }
}

/// A running daemon with its own state dir, socket and health port.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub health: String,
    pub options: DaemonOptions,
}

impl Daemon {
    pub fn start(dir: &Path, options: DaemonOptions) -> Self {
        fs::create_dir_all(dir).expect("daemon dir");
        let socket = dir.join("daemon.sock");
        let state_dir = dir.join("state");
        let config = dir.join("tailnet-cnid.toml");
        let health = format!("127.0.0.1:{}", free_port());
        fs::write(
            &config,
            format!(
                "socket = \"{socket}\"\nstate_dir = \"{state}\"\ncluster_name = \"{cluster}\"\n\
                 control_url = \"{url}\"\nselection = \"all\"\nhealth_addr = \"{health}\"\n\
                 reconcile_interval_secs = {reconcile}\nlog_format = \"{format}\"\n\n[auth]\n{auth}",
                socket = socket.display(),
                state = state_dir.display(),
                cluster = options.cluster,
                url = options.control_url,
                reconcile = options.reconcile_secs,
                format = if options.json_logs { "json" } else { "text" },
                auth = options.auth,
            ),
        )
        .expect("daemon config");
        let log = dir.join("daemon.log");
        let child = spawn(&config, &log, &socket, &options);
        let mut daemon = Self {
            child,
            dir: dir.to_path_buf(),
            socket,
            state_dir,
            config,
            log,
            health,
            options,
        };
        daemon.wait_ready();
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the socket: it is bound only after recovery finished.
    pub fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        let log = self.log.clone();
        let child = &mut self.child;
        wait_until(Duration::from_secs(60), "the daemon socket", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "daemon exited early: {status}\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            socket.exists().then_some(())
        });
    }

    /// SIGKILL: no shutdown path runs, the socket file stays behind.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again with the same config and state, without a crash step.
    pub fn restart(&mut self) {
        self.restart_with_crash(None);
    }

    /// Starts again with the same config and state, set to kill itself at
    /// `step` (`TAILNET_CNID_CRASH_AT`) when given.
    pub fn restart_with_crash(&mut self, step: Option<&str>) {
        stop(&mut self.child);
        self.options.crash_at = step.map(str::to_string);
        self.child = spawn(&self.config, &self.log, &self.socket, &self.options);
        self.wait_ready();
    }

    /// Starts again after the process is gone (killed or crashed).
    pub fn start_again(&mut self) {
        self.restart();
    }

    /// Waits for the process to end by itself (an injected crash).
    /// `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn status(&self) -> Value {
        let out = run_ok(
            Command::new(env!("CARGO_BIN_EXE_tailnet-cnid"))
                .args(["status", "--json", "--socket"])
                .arg(&self.socket),
        );
        serde_json::from_str(&out).expect("status json")
    }

    /// The pod with tailnet address `ipv4` in the daemon's status.
    pub fn pod(&self, ipv4: &str) -> Value {
        let status = self.status();
        status["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["ipv4"] == json!(ipv4))
            .cloned()
            .unwrap_or_else(|| panic!("no pod {ipv4} in {status}"))
    }

    pub fn pods(&self) -> Vec<Value> {
        self.status()["pods"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        run_ok(Command::new("curl").args(["-fsS", &format!("http://{}/metrics", self.health)]))
    }

    /// A gauge's value from `/metrics` (no labels).
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} "))?.trim().parse().ok())
    }

    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Files under the state dir's `pods/` and `identities/` (temporary
    /// files included).
    pub fn state_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for sub in ["pods", "identities"] {
            if let Ok(dir) = fs::read_dir(self.state_dir.join(sub)) {
                files.extend(dir.filter_map(Result::ok).map(|e| e.path()));
            }
        }
        files.sort();
        files
    }
}

fn spawn(config: &Path, log: &Path, socket: &Path, options: &DaemonOptions) -> Child {
    // A killed daemon leaves its socket; readiness is the new one appearing.
    let _ = fs::remove_file(socket);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("daemon log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailnet-cnid"));
    cmd.arg("--config")
        .arg(config)
        .arg("run")
        .env("TAILNET_CNID_LOG", &options.log_filter)
        .env_remove("TAILNET_CNID_CRASH_AT")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(step) = &options.crash_at {
        cmd.env("TAILNET_CNID_CRASH_AT", step);
    }
    cmd.spawn().expect("spawn daemon")
}

/// SIGTERM, then SIGKILL after 10 s.
pub fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill with our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

// ---- pods -------------------------------------------------------------------

/// A pod: a network namespace made with `ip netns add`, deleted on drop.
pub struct Pod {
    pub name: String,
    pub container_id: String,
    pub netns: String,
    pub netns_path: PathBuf,
    pub bridge_ip: String,
}

impl Pod {
    /// `name` must be unique among live pods (it names the netns).
    pub fn create(name: &str, index: u32) -> Self {
        let netns = format!("tnrel-{name}");
        run_ok(Command::new("ip").args(["netns", "add", &netns]));
        run_ok(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        let digest = hex(name.as_bytes());
        Self {
            name: name.to_string(),
            container_id: format!("c0ffee{digest}"),
            netns_path: PathBuf::from(format!("/run/netns/{netns}")),
            netns,
            bridge_ip: format!(
                "10.{}.{}.{}/16",
                90 + (index >> 16) % 10,
                (index >> 8) & 0xff,
                index & 0xff
            ),
        }
    }

    /// Deletes the netns (a pod the runtime removed).
    pub fn remove_netns(&self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.netns]));
    }

    pub fn exists(&self) -> bool {
        self.netns_path.exists()
    }

    /// What a bridge plugin before us would have returned.
    pub fn prev_result(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01",
                            "sandbox": self.netns_path.display().to_string()}],
            "ips": [{"address": self.bridge_ip, "interface": 0}],
        })
    }

    /// Runs the shim for ADD, DEL or CHECK.
    pub fn shim(&self, command: &str, socket: &Path, prev: Option<&Value>) -> ShimOutcome {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "tnrel",
            "type": "tailnet-cni",
            "daemonSocket": socket.display().to_string(),
            "timeoutSeconds": 90,
        });
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns_path.display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", CNI_PATH.to_string()),
            (
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=rel;K8S_POD_NAME={}", self.name),
            ),
        ];
        shim(&conf, &env)
    }

    pub fn add(&self, socket: &Path) -> ShimOutcome {
        self.shim("ADD", socket, Some(&self.prev_result()))
    }

    pub fn del(&self, socket: &Path) -> ShimOutcome {
        self.shim("DEL", socket, None)
    }

    /// The pod's tailnet hostname for `cluster` (see `podmgr::hostname`).
    pub fn hostname(&self, cluster: &str) -> String {
        format!("{cluster}-rel-{}", self.name)
    }

    /// Runs a command inside the pod.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args))
    }

    /// Serves `page` on port 80 inside the pod until the child is killed.
    pub fn serve(&self, dir: &Path, page: &str) -> Server {
        let www = dir.join(format!("www-{}", self.name));
        fs::create_dir_all(&www).expect("www");
        fs::write(www.join("index.html"), page).expect("page");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "/usr/bin/busybox",
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
            ])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("httpd");
        Server { child }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.remove_netns();
    }
}

pub struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one shim run printed and how long it took.
#[derive(Debug)]
pub struct ShimOutcome {
    pub success: bool,
    pub stdout: Value,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ShimOutcome {
    /// The CNI error code, when the shim failed.
    pub fn code(&self) -> Option<u64> {
        (!self.success)
            .then(|| self.stdout["code"].as_u64())
            .flatten()
    }

    /// The pod's tailnet IPv4 from an ADD result.
    pub fn tailnet_ipv4(&self) -> Option<String> {
        self.stdout["ips"].as_array()?.iter().find_map(|ip| {
            let address = ip["address"].as_str()?;
            address
                .starts_with("100.")
                .then(|| address.trim_end_matches("/32").to_string())
        })
    }

    #[track_caller]
    pub fn expect_ok(&self, what: &str) -> &Self {
        assert!(
            self.success,
            "{what} failed: {} {}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn shim(conf: &Value, env: &[(&str, String)]) -> ShimOutcome {
    let started = Instant::now();
    let out = run_with_stdin(
        Command::new(shim_binary())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
        conf.to_string().as_bytes(),
    );
    ShimOutcome {
        success: out.status.success(),
        stdout: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

// ---- host-wide accounting ----------------------------------------------------

/// What a process's descriptors point at, with its TCP connections.
pub fn describe_fds(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        let mut targets: Vec<String> = dir
            .filter_map(Result::ok)
            .filter_map(|e| fs::read_link(e.path()).ok())
            .map(|t| t.display().to_string())
            .collect();
        targets.sort();
        out.push_str(&targets.join("\n"));
    }
    let ss = run(Command::new("ss").args(["-tanp"]));
    for line in String::from_utf8_lossy(&ss.stdout).lines() {
        if line.contains(&format!("pid={pid},")) {
            out.push('\n');
            out.push_str(line);
        }
    }
    out
}

/// Links in the host netns whose name starts with one of `prefixes`.
pub fn links_named(prefixes: &[&str]) -> Vec<String> {
    let out = run_ok(Command::new("ip").args(["-j", "link", "show"]));
    let links: Value = serde_json::from_str(&out).expect("ip -j link");
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// `tnt*`/`tnv*` links in the host netns.
pub fn our_links() -> Vec<String> {
    links_named(&["tnt", "tnv"])
}

/// `ip rule`s at the daemon's priority, both families.
pub fn our_rules() -> Vec<Value> {
    let mut rules = Vec::new();
    for family in ["-4", "-6"] {
        let out = run_ok(Command::new("ip").args([family, "-j", "rule", "show"]));
        let list: Value = serde_json::from_str(&out).expect("ip -j rule");
        rules.extend(
            list.as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["priority"] == json!(RULE_PRIORITY))
                .cloned(),
        );
    }
    rules
}

/// Routes in any of the daemon's per-pod tables, or through its links.
pub fn our_routes() -> Vec<Value> {
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let out = run_ok(Command::new("ip").args([family, "-j", "route", "show", "table", "all"]));
        let list: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        routes.extend(
            list.as_array()
                .into_iter()
                .flatten()
                .filter(|r| {
                    let table = r["table"]
                        .as_u64()
                        .or_else(|| r["table"].as_str().and_then(|t| t.parse().ok()));
                    let in_range =
                        table.is_some_and(|t| (TABLE_BASE..TABLE_BASE + TABLE_COUNT).contains(&t));
                    let dev = r["dev"].as_str().unwrap_or_default();
                    in_range || dev.starts_with("tnt") || dev.starts_with("tnv")
                })
                .cloned(),
        );
    }
    routes
}

/// Everything of ours left on the host: empty when nothing leaked.
pub fn host_leaks() -> Vec<String> {
    let mut leaks: Vec<String> = our_links()
        .into_iter()
        .map(|l| format!("link {l}"))
        .collect();
    leaks.extend(our_rules().into_iter().map(|r| format!("rule {r}")));
    leaks.extend(our_routes().into_iter().map(|r| format!("route {r}")));
    leaks
}

// ---- the control server's view ----------------------------------------------

pub struct Admin {
    pub url: String,
    pub token_file: PathBuf,
}

impl Admin {
    pub fn of(bed: &Bed) -> Self {
        Self {
            url: bed.control_url.clone(),
            token_file: bed.admin_token_file.clone(),
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let token = fs::read_to_string(&self.token_file).expect("admin token");
        let out = run_ok(Command::new("curl").args([
            "-fsS",
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
            &format!("{}{path}", self.url),
        ]));
        serde_json::from_str(&out).expect("admin API json")
    }

    pub fn nodes(&self) -> Vec<Value> {
        let nodes = self.get("/api/v1/admin/nodes");
        nodes
            .get("nodes")
            .unwrap_or(&nodes)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Nodes whose hostname starts with `prefix` and that are not disabled.
    pub fn enabled_nodes(&self, prefix: &str) -> Vec<Value> {
        self.nodes()
            .into_iter()
            .filter(|n| node_named(n, prefix) && n["status"] != json!("disabled"))
            .collect()
    }

    /// Every node whose hostname starts with `prefix`.
    pub fn nodes_named(&self, prefix: &str) -> Vec<Value> {
        self.nodes()
            .into_iter()
            .filter(|n| node_named(n, prefix))
            .collect()
    }

    /// Mints a reusable auth key.
    pub fn mint_reusable(&self) -> String {
        let token = fs::read_to_string(&self.token_file).expect("admin token");
        let out = run_ok(Command::new("curl").args([
            "-fsS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
            "-d",
            r#"{"description":"reliability","tags":[],"reusable":true,"ephemeral":false}"#,
            &format!("{}/api/v1/admin/auth-keys", self.url),
        ]));
        let v: Value = serde_json::from_str(&out).expect("auth key json");
        v["key"].as_str().expect("key").to_string()
    }
}

fn node_named(node: &Value, prefix: &str) -> bool {
    ["hostname", "name", "given_name", "givenName"]
        .iter()
        .filter_map(|field| node[*field].as_str())
        .any(|name| name.starts_with(prefix))
}

/// The tailscaled peer fetches `url` through its SOCKS5 proxy.
pub fn peer_fetch(socks5: &str, url: &str) -> Output {
    peer_fetch_within(socks5, url, 10)
}

/// [`peer_fetch`], giving up after `max_secs`.
pub fn peer_fetch_within(socks5: &str, url: &str, max_secs: u32) -> Output {
    run(Command::new("curl").args([
        "-sS",
        "--max-time",
        &max_secs.to_string(),
        "--socks5-hostname",
        socks5,
        url,
    ]))
}

pub fn wait_for_page(socks5: &str, url: &str, timeout: Duration) -> String {
    wait_until(timeout, &format!("the peer to fetch {url}"), || {
        let out = peer_fetch(socks5, url);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
}

/// A private test bed (own PostgreSQL, rscale and peer), brought down on
/// drop: for tests that stop the control server.
pub struct PrivateBed {
    pub dir: tempfile::TempDir,
}

fn testbed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/testbed.sh")
}

impl PrivateBed {
    pub fn up() -> Self {
        let bed = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        bed.run("up");
        bed
    }

    pub fn run(&self, command: &str) -> String {
        let out = Command::new(testbed_script())
            .arg(command)
            .env("TAILNET_TESTBED_DIR", self.dir.path())
            .output()
            .expect("testbed.sh");
        assert!(
            out.status.success(),
            "testbed.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name))
            .expect(name)
            .trim()
            .to_string()
    }

    pub fn bed(&self) -> Bed {
        Bed {
            control_url: format!("http://127.0.0.1:{}", self.read("rscale.port")),
            admin_token_file: self.dir.path().join("admin-token"),
            peer_socks5: format!("127.0.0.1:{}", self.read("peer.socks5")),
        }
    }

    pub fn stop_control_server(&self) {
        let pid: i32 = self.read("rscale.pid").parse().expect("pid");
        // SAFETY: kill with a pid from our own bed's pid file.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_until(Duration::from_secs(10), "rscale to stop", || {
            // SAFETY: signal 0 only probes for the process.
            (unsafe { libc::kill(pid, 0) } != 0).then_some(())
        });
    }
}

impl Drop for PrivateBed {
    fn drop(&mut self) {
        let _ = Command::new(testbed_script())
            .arg("down")
            .env("TAILNET_TESTBED_DIR", self.dir.path())
            .output();
    }
}
