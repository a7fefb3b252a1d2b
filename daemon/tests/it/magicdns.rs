//! MagicDNS inside pods, end to end: rscale with MagicDNS on (its admin
//! API's DNS settings: `magic_dns`, `base_domain`), the real daemon and
//! podman containers that ask 100.100.100.100 with busybox `nslookup`.
//!
//! - the official tailscaled peer resolves by its short and full name, A
//!   and AAAA, to the addresses it reports itself (asking 100.100.100.100
//!   and fd7a:115c:a1e0::53), and a pod fetches a page from it by name;
//! - a cluster-style name is answered by the upstream (a DNS server on
//!   loopback this test runs, standing in for the cluster DNS);
//! - once the tailnet policy hides one pod from another, its name gets
//!   NXDOMAIN there while the peer's still resolves.
//!
//! busybox's static `nc` cannot resolve names in a bare rootfs (static
//! glibc has no NSS there), so "by name" means: resolved through MagicDNS
//! by `nslookup`, then connected to.
//!
//! Own private test bed: the DNS settings and the policy are tailnet-wide.
//! Runs under `scripts/isolated.sh` as root with the test bed's environment
//! (`scripts/test-in-netns.sh` provides all of it); skips, saying why,
//! otherwise (fails under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tailnet_wire::dns::{Query, Rcode};

use crate::common::netns::serve_hello;
use crate::common::podman::{self, BUSYBOX};
use crate::common::{
    self, require, run, take_turn, wait_until, Bed, Daemon, DaemonOptions, PrivateBed,
};

const DOMAIN: &str = "tailnet.test";
/// The name the stand-in cluster DNS knows, and its answer.
const CLUSTER_NAME: &str = "kube-dns.kube-system.svc.cluster.local";
const CLUSTER_IP: &str = "10.43.0.10";

fn prerequisites() -> Result<Bed, common::Unmet> {
    common::daemon_bed(&["podman", BUSYBOX, "nsenter"])
}

fn admin(bed: &Bed, method: &str, path: &str, body: Option<&Value>) -> Value {
    bed.admin()
        .call(method, path, body)
        .unwrap_or_else(|e| panic!("admin API: {e}"))
}

/// The cluster DNS's stand-in on loopback: [`CLUSTER_NAME`] has an A
/// record, every other name is NXDOMAIN. Stops when dropped.
struct ClusterDns {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ClusterDns {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let cluster_ip: IpAddr = CLUSTER_IP.parse().expect("address");
            while !stopped.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Query::parse(&buf[..n]) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let answer = if query.name == CLUSTER_NAME {
                    query.answer(&[cluster_ip], 30, 512)
                } else {
                    query.error(Rcode::NxDomain)
                };
                // The resolver asks again if this is lost.
                socket.send_to(&answer, from).ok();
            }
        });
        Self {
            addr,
            queries,
            stop,
        }
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// podman with the daemon's shim; removes its containers on drop.
struct Pods {
    root: podman::Podman,
    names: Vec<String>,
}

impl Pods {
    fn new(dir: &Path, daemon: &Daemon) -> Self {
        let setup = podman::Setup {
            network: "tailnet-dns",
            bridge: "cni-tndns",
            subnet: "10.89.53.0/24",
            rootfs_dirs: &[],
            applets: &[
                "sh", "sleep", "nslookup", "nc", "printf", "sed", "tr", "tail",
            ],
            page: "unused\n",
        };
        Self {
            root: podman::Podman::create(dir, &daemon.socket, &setup),
            names: Vec::new(),
        }
    }

    fn start(&mut self, name: &str, daemon: &Daemon) {
        let out = run(self
            .root
            .cmd()
            .args(["run", "-d", "--cgroups=disabled"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args(["--network", "tailnet-dns", "--name", name, "--rootfs"])
            .arg(self.root.dir.join("rootfs"))
            .args(["/bin/sleep", "3600"]));
        assert!(
            out.status.success(),
            "podman run {name}: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log_text()
        );
        self.names.push(name.to_string());
    }

    fn exec(&self, name: &str, script: &str) -> Output {
        run(self
            .root
            .cmd()
            .args(["exec", name, "/bin/sh", "-c", script]))
    }

    /// `nslookup -type=<qtype> <host> 100.100.100.100` in the pod.
    fn lookup(&self, pod: &str, host: &str, qtype: &str) -> Lookup {
        self.lookup_via(pod, host, qtype, "100.100.100.100")
    }

    /// The same, asking MagicDNS at `server`.
    fn lookup_via(&self, pod: &str, host: &str, qtype: &str, server: &str) -> Lookup {
        let out = self.exec(pod, &format!("nslookup -type={qtype} {host} {server} 2>&1"));
        Lookup::read(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for name in &self.names {
            // Cleanup: a container already gone needs nothing more.
            self.root
                .cmd()
                .args(["rm", "-f", "-t", "0", name])
                .output()
                .ok();
        }
    }
}

/// What busybox `nslookup` printed.
#[derive(Debug)]
struct Lookup {
    addrs: Vec<IpAddr>,
    nxdomain: bool,
    text: String,
}

impl Lookup {
    fn read(text: &str) -> Self {
        // The server's own "Address:" line carries its port (…:53) and
        // does not parse as a bare address.
        let addrs = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Address:"))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        Self {
            addrs,
            nxdomain: text.contains("NXDOMAIN"),
            text: text.to_string(),
        }
    }
}

/// A pod's hostname (its MagicDNS short name) and IPv4, by pod name.
fn pod_identity(daemon: &Daemon, pod: &str) -> (String, String) {
    let suffix = format!("-{pod}");
    let pods = daemon.pods();
    let text = |p: &Value, field: &str| p[field].as_str().unwrap_or_default().to_string();
    pods.iter()
        .map(|p| (text(p, "hostname"), text(p, "ipv4")))
        .find(|(hostname, _)| hostname.ends_with(&suffix))
        .unwrap_or_else(|| panic!("no pod *{suffix} among {pods:?}"))
}

#[test]
fn pods_resolve_tailnet_names_and_forward_the_rest() {
    require!(prerequisites());
    let _turn = take_turn();
    let private = PrivateBed::up();
    let bed = &private.bed();
    let dns = json!({"magic_dns": true, "base_domain": DOMAIN,
                     "nameservers": [], "search_domains": [DOMAIN]});
    admin(bed, "PUT", "/api/v1/admin/dns", Some(&dns));
    let cluster = ClusterDns::start();
    let work = tempfile::tempdir().expect("tempdir");
    let mut options =
        DaemonOptions::default_reconcile(&bed.control_url, &bed.admin_token_file, "dns");
    options.extra_config = format!("dns_upstream = \"{}\"\n", cluster.addr);
    let daemon = Daemon::start(work.path(), options);
    let mut pods = Pods::new(&work.path().join("podman"), &daemon);
    pods.start("asker", &daemon);
    pods.start("other", &daemon);
    let (_, asker_ip) = pod_identity(&daemon, "asker");
    let (other_host, _) = pod_identity(&daemon, "other");

    // The peer, by its full and its short name, A and AAAA: the addresses
    // it reports itself.
    let peer_v4 = IpAddr::V4(bed.peer_ipv4);
    let peer_v6 = IpAddr::V6(bed.peer_ipv6);
    let full = format!("peer.{DOMAIN}");
    for (host, qtype, expected) in [
        (full.as_str(), "a", peer_v4),
        (full.as_str(), "aaaa", peer_v6),
        ("peer", "a", peer_v4),
        ("peer", "aaaa", peer_v6),
    ] {
        let found = wait_until(
            Duration::from_secs(60),
            &format!("{host} ({qtype}) to resolve in the pod"),
            || {
                let lookup = pods.lookup("asker", host, qtype);
                (!lookup.addrs.is_empty()).then_some(lookup)
            },
        );
        assert_eq!(
            found.addrs,
            vec![expected],
            "{host} {qtype}: {}",
            found.text
        );
    }

    // MagicDNS's IPv6 address answers too (the pod routes the tailnet's
    // whole fd7a:115c:a1e0::/48 to its engine).
    let over_v6 = pods.lookup_via("asker", &full, "aaaa", "fd7a:115c:a1e0::53");
    assert_eq!(over_v6.addrs, vec![peer_v6], "{}", over_v6.text);

    // A page from the peer, by name. The userspace peer hands tailnet
    // connections to its own loopback, where this server listens.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    serve_hello(listener);
    let script = format!(
        "ip=$(nslookup -type=a {full} 100.100.100.100 | sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p' | tail -n1); \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 \"$ip\" {port} | tr -d '\\r' | sed '1,/^$/d'"
    );
    let page = wait_until(
        Duration::from_secs(60),
        "the pod to fetch the peer's page by name",
        || {
            let out = pods.exec("asker", &script);
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            (!body.is_empty()).then_some(body)
        },
    );
    assert_eq!(page, "hello from the pod\n");

    // A cluster name goes to the upstream and comes back.
    let before = cluster.queries.load(Ordering::SeqCst);
    let lookup = pods.lookup("asker", CLUSTER_NAME, "a");
    assert_eq!(
        lookup.addrs,
        vec![CLUSTER_IP.parse::<IpAddr>().unwrap()],
        "{}",
        lookup.text
    );
    assert!(cluster.queries.load(Ordering::SeqCst) > before);
    let missing = pods.lookup("asker", "nothing.svc.cluster.local", "a");
    assert!(missing.nxdomain, "{}", missing.text);

    // Under the default policy the other pod is visible, and resolves.
    let other_full = format!("{other_host}.{DOMAIN}");
    let visible = pods.lookup("asker", &other_full, "a");
    assert_eq!(visible.addrs.len(), 1, "{}", visible.text);
    let tailnet_queries = cluster.queries.load(Ordering::SeqCst);

    // A policy that connects the asking pod with the peer only: the other
    // pod leaves its netmap, so its name no longer exists there.
    let policy = json!({
        "groups": [],
        "rules": [
            {"action": "accept", "sources": [asker_ip], "destinations": [format!("{}:*", bed.peer_ipv4)]},
            {"action": "accept", "sources": [bed.peer_ipv4.to_string()], "destinations": [format!("{asker_ip}:*")]}
        ]
    });
    admin(bed, "PUT", "/api/v1/admin/policy", Some(&policy));
    let hidden = wait_until(
        Duration::from_secs(60),
        "the hidden pod's name to stop resolving",
        || {
            let lookup = pods.lookup("asker", &other_full, "a");
            lookup.nxdomain.then_some(lookup)
        },
    );
    assert!(hidden.addrs.is_empty(), "{}", hidden.text);
    let still = pods.lookup("asker", &full, "a");
    assert_eq!(still.addrs, vec![peer_v4], "{}", still.text);
    // Tailnet names never went to the cluster DNS.
    assert_eq!(cluster.queries.load(Ordering::SeqCst), tailnet_queries);
}
