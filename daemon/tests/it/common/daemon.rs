//! A real `tailnet-cnid`, started with a config of the test's own.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tailnet_testbed::Bed;

use super::process::{run_ok, wait_until};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

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
    /// The config's `selection` (`all` unless a test needs another).
    pub selection: String,
    /// Top-level config lines added as they are (e.g. `dns_upstream = ...`).
    pub extra_config: String,
    /// The config's `pool_size`: 0 (no warm identities, so a test sees
    /// only its pods' nodes) unless a test of the pool sets it.
    pub pool_size: usize,
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
            selection: "all".into(),
            extra_config: String::new(),
            pool_size: 0,
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
                 control_url = \"{url}\"\nallow_insecure_http = {insecure}\nselection = \"{selection}\"\nhealth_addr = \"{health}\"\n\
                 reconcile_interval_secs = {reconcile}\nlog_format = \"{format}\"\npool_size = {pool}\n{extra}\n[auth]\n{auth}",
                socket = socket.display(),
                state = state_dir.display(),
                cluster = options.cluster,
                url = options.control_url,
                insecure = options.control_url.starts_with("http://"),
                reconcile = options.reconcile_secs,
                format = if options.json_logs { "json" } else { "text" },
                auth = options.auth,
                selection = options.selection,
                extra = options.extra_config,
                pool = options.pool_size,
            ),
        )
        .expect("daemon config");
        let log = dir.join("daemon.log");
        let child = spawn(&config, &log, &socket, &options);
        let mut daemon = Self {
            child,
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
        // Nothing is left to do for a child that is already gone.
        self.child.kill().ok();
        self.child.wait().ok();
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
        run_ok(Command::new("curl").args([
            "-fsS",
            "--max-time",
            "10",
            &format!("http://{}/metrics", self.health),
        ]))
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
    // Absent unless an earlier daemon was killed.
    fs::remove_file(socket).ok();
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
    if let Ok(pid) = i32::try_from(child.id()) {
        // Fails only when the daemon has already exited.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .ok();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing is left to do for a child that exited meanwhile.
    child.kill().ok();
    child.wait().ok();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
