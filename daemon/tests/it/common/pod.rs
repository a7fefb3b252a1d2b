//! Pods made of `ip netns add` namespaces, added and deleted through the
//! real shim binary with a bridge-like `prevResult`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::process::{run, run_ok, run_with_stdin};
use super::{shim_binary, CNI_PATH};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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
        // Cleanup: nothing is left to do for a child that is already gone.
        self.child.kill().ok();
        self.child.wait().ok();
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
