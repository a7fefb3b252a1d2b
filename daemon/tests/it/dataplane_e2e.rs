//! The data plane end to end: podman containers joined by the real daemon
//! (through the CNI shim) to the test bed's tailnet, with the official
//! tailscaled peer on the other side.
//!
//! - the tailnet policy set in the real control server (rscale's admin API)
//!   reaches the pod as its packet filter: the peer's new connections are
//!   refused where the policy says so, the pod's own connections to the peer
//!   still get their replies (own private test bed: the policy is global);
//! - two pods of one node reach each other at their tailnet addresses, both
//!   ways and over both families;
//! - ICMP and TCP across the pods' 1280-byte `ts0` MTU: 1400-byte pings are
//!   fragmented by the sender and reassembled by the receiver (IPv4 and IPv6);
//! - a pod that forges a source address gets nothing through;
//! - a bulk transfer (1 GiB unless TAILNET_E2E_TRANSFER_BYTES says otherwise)
//!   arrives intact both ways between a pod and the peer.
//!
//! Runs under `scripts/isolated.sh` (TAILNET_ISOLATED=1) as root with the
//! test bed's environment (`scripts/test-in-netns.sh` provides all of it);
//! skips, saying why, otherwise (fails under `CI=true` or
//! `TAILNET_TEST_REQUIRE=1`).

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::podman::{self, BUSYBOX};
use crate::common::{
    self, peer_fetch_within, require, run, run_ok, run_within, take_turn, wait_until, Bed, Daemon,
    DaemonOptions, PrivateBed,
};

const MIB: u64 = 1 << 20;
/// How long a bulk transfer may make no progress at all.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one direction of the bulk transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(1800);

fn prerequisites() -> Result<Bed, common::Unmet> {
    common::daemon_bed(&["podman", BUSYBOX, "curl", "nsenter", "sha256sum"])
}

fn admin(bed: &Bed, method: &str, path: &str, body: Option<&Value>) -> Value {
    bed.admin()
        .call(method, path, body)
        .unwrap_or_else(|e| panic!("admin API: {e}"))
}

/// A daemon with its own state dir and socket, stopped on drop.
fn start_daemon(dir: &Path, bed: &Bed) -> Daemon {
    let options = DaemonOptions::default_reconcile(&bed.control_url, &bed.admin_token_file, "dp");
    Daemon::start(dir, options)
}

/// podman with private storage and a conflist chaining bridge + our shim;
/// removes its containers on drop.
struct Podman {
    root: podman::Podman,
    containers: std::cell::RefCell<Vec<String>>,
}

impl Podman {
    /// `bridge` and `subnet` must differ between tests running at once.
    fn new(dir: &Path, daemon_socket: &Path, bridge: &str, subnet: &str) -> Self {
        let setup = podman::Setup {
            network: "tailnet-dp",
            bridge,
            subnet,
            rootfs_dirs: &["rootfs/data", "rootfs/tmp"],
            applets: &[
                "sh",
                "sleep",
                "ip",
                "httpd",
                "cat",
                "echo",
                "nc",
                "head",
                "sha256sum",
                "ping",
                "ping6",
                "seq",
                "netstat",
                "tee",
                "wc",
                "mkfifo",
                "tail",
                "grep",
                "tr",
                "sed",
            ],
            page: "hello from a pod\n",
        };
        Self {
            root: podman::Podman::create(dir, daemon_socket, &setup),
            containers: Default::default(),
        }
    }

    fn cmd(&self) -> Command {
        self.root.cmd()
    }

    /// Starts a container serving its page on ports 80 and 8081.
    fn run_web(&self, name: &str, daemon: &Daemon) {
        let out = run(self
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
            .args(["--network", "tailnet-dp", "--name", name, "--rootfs"])
            .arg(self.root.dir.join("rootfs"))
            .args([
                "/bin/sh",
                "-c",
                "httpd -p 8081 -h /www && exec httpd -f -p 80 -h /www",
            ]));
        assert!(
            out.status.success(),
            "podman run {name}: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log_text()
        );
        self.containers.borrow_mut().push(name.to_string());
    }

    fn exec(&self, name: &str, script: &str) -> Output {
        run(self.cmd().args(["exec", name, "/bin/sh", "-c", script]))
    }

    fn netns(&self, name: &str) -> String {
        run_ok(self.cmd().args([
            "inspect",
            name,
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
        ]))
        .trim()
        .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in self.containers.borrow().iter() {
            // Cleanup: a container already gone needs nothing more.
            self.cmd().args(["rm", "-f", "-t", "0", name]).output().ok();
        }
    }
}

/// A pod's tailnet addresses as the daemon reports them.
struct PodAddrs {
    ipv4: String,
    ipv6: String,
}

fn pod_addrs(daemon: &Daemon, hostname_suffix: &str) -> PodAddrs {
    let status = daemon.status();
    let pod = status["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["hostname"]
                .as_str()
                .is_some_and(|h| h.ends_with(hostname_suffix))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no pod *{hostname_suffix} in {status}"));
    PodAddrs {
        ipv4: pod["ipv4"].as_str().unwrap_or_default().to_string(),
        ipv6: pod["ipv6"].as_str().unwrap_or_default().to_string(),
    }
}

/// The peer fetches `url` over the tailnet (its SOCKS5 proxy).
fn peer_fetch(bed: &Bed, url: &str, max_time: u32) -> Output {
    peer_fetch_within(&bed.peer_socks5, url, max_time)
}

fn fetched(out: &Output) -> Option<String> {
    (out.status.success() && !out.stdout.is_empty())
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A shell line for a container that fetches `/` from `host:port` with
/// HTTP/1.0 over busybox `nc` (busybox's static `wget` crashes in a bare
/// rootfs) and prints only the body (nothing when the fetch failed).
fn http_get(host: &str, port: u16) -> String {
    format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {host} {port} | tr -d '\\r' | sed '1,/^$/d'"
    )
}

/// A TCP connection made by the peer (through its SOCKS5 proxy, no auth).
fn peer_connect(bed: &Bed, ip: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(&bed.peer_socks5)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&[5, 1, 0])?;
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello)?;
    let ip: Ipv4Addr = ip.parse().map_err(std::io::Error::other)?;
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Err(std::io::Error::other(format!(
            "SOCKS5 connect refused ({})",
            reply[1]
        )));
    }
    // Bounded: a stalled tunnel fails the write that waits on it.
    s.set_read_timeout(Some(STALL_TIMEOUT))?;
    s.set_write_timeout(Some(STALL_TIMEOUT))?;
    Ok(s)
}

/// An HTTP server on the namespace's loopback: the userspace tailscaled
/// peer forwards tailnet connections to its own loopback services, so pods
/// reach this at `http://<peer>:<port>/`.
fn loopback_http(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut request = [0u8; 1024];
            // The request is not looked at, and a client that hung up fails its own checks.
            drop(conn.read(&mut request));
            write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .ok();
        }
    });
    port
}

// ---------------------------------------------------------------- (a) ACLs --

#[test]
fn tailnet_policy_filters_the_peers_connections_but_not_the_pods_replies() {
    require!(prerequisites());
    let _turn = take_turn();
    // The policy is tailnet-wide: change it only on a bed of our own.
    let t0 = Instant::now();
    let progress = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
    let private = PrivateBed::up();
    let bed = &private.bed();
    let work = tempfile::tempdir().expect("tempdir");
    progress("private test bed up");
    let daemon = start_daemon(work.path(), bed);
    let podman = Podman::new(
        &work.path().join("podman"),
        &daemon.socket,
        "cni-tndp1",
        "10.89.41.0/24",
    );
    progress("daemon up");
    podman.run_web("acl", &daemon);
    let pod = pod_addrs(&daemon, "-acl");
    progress("pod running");

    // The default policy allows everything: both ports answer the peer.
    for port in [80, 8081] {
        let page = wait_until(
            Duration::from_secs(60),
            "the peer to reach the pod under the default policy",
            || {
                fetched(&peer_fetch(
                    bed,
                    &format!("http://{}:{port}/", pod.ipv4),
                    10,
                ))
            },
        );
        assert_eq!(page, "hello from a pod\n");
    }
    assert_eq!(daemon.pod(&pod.ipv4)["filtered_packets"], json!(0));
    progress("default policy: both ports answer");

    // Now: the pod may reach the peer anywhere; the peer may reach only the
    // pod's port 8081.
    let policy = json!({
        "groups": [],
        "rules": [
            {"action": "accept", "sources": [pod.ipv4], "destinations": [format!("{}:*", bed.peer_ipv4)]},
            {"action": "accept", "sources": [bed.peer_ipv4], "destinations": [format!("{}:8081", pod.ipv4)]}
        ]
    });
    admin(bed, "PUT", "/api/v1/admin/policy", Some(&policy));
    let stored = admin(bed, "GET", "/api/v1/admin/policy", None);
    assert_eq!(
        stored["rules"].as_array().map(Vec::len),
        Some(2),
        "{stored}"
    );
    progress("policy applied");

    // Port 80 stops answering once the new filter reaches the pod, and the
    // pod's engine counts the refused packets.
    wait_until(
        Duration::from_secs(60),
        "the pod's filter to refuse the peer on port 80",
        || {
            let refused = !peer_fetch(bed, &format!("http://{}:80/", pod.ipv4), 5)
                .status
                .success();
            let filtered = daemon.pod(&pod.ipv4)["filtered_packets"]
                .as_u64()
                .unwrap_or(0);
            (refused && filtered > 0).then_some(())
        },
    );
    // Still refused a moment later (not a transient failure).
    assert!(
        !peer_fetch(bed, &format!("http://{}:80/", pod.ipv4), 5)
            .status
            .success(),
        "port 80 answered the peer against the policy"
    );
    progress("port 80 refused");
    // The allowed port still answers.
    let page = wait_until(
        Duration::from_secs(30),
        "the peer to reach the allowed port",
        || fetched(&peer_fetch(bed, &format!("http://{}:8081/", pod.ipv4), 10)),
    );
    assert_eq!(page, "hello from a pod\n");
    progress("port 8081 served");

    // The pod's own connections to the peer work: their replies pass the
    // pod's filter although no rule lets the peer in on those ports.
    let port = loopback_http("hello from the peer\n");
    let script = http_get(&bed.peer_ipv4.to_string(), port);
    let reply = wait_until(
        Duration::from_secs(30),
        "the pod to fetch from the peer",
        || {
            let out = podman.exec("acl", &script);
            fetched(&out)
        },
    );
    assert_eq!(reply, "hello from the peer\n");
    progress("pod fetched from the peer");
    // ICMP echo from the pod: the replies are answers to the pod's requests.
    let ping = podman.exec("acl", &format!("ping -c 3 -W 5 {}", bed.peer_ipv4));
    assert!(
        ping.status.success(),
        "pod ping to the peer: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    progress("pod pinged the peer");
}

// ------------------------------------------------- (b), (d), (e): two pods --

/// A daemon with two pods on the shared test bed.
struct TwoPods {
    podman: Podman,
    daemon: Daemon,
    a: PodAddrs,
    b: PodAddrs,
    _work: tempfile::TempDir,
}

fn two_pods(bed: &Bed, bridge: &str, subnet: &str, names: [&str; 2]) -> TwoPods {
    let work = tempfile::tempdir().expect("tempdir");
    let daemon = start_daemon(work.path(), bed);
    let podman = Podman::new(&work.path().join("podman"), &daemon.socket, bridge, subnet);
    podman.run_web(names[0], &daemon);
    podman.run_web(names[1], &daemon);
    let a = pod_addrs(&daemon, &format!("-{}", names[0]));
    let b = pod_addrs(&daemon, &format!("-{}", names[1]));
    TwoPods {
        podman,
        daemon,
        a,
        b,
        _work: work,
    }
}

#[test]
fn two_pods_on_one_node_reach_each_other_across_a_1280_mtu() {
    let bed = require!(prerequisites());
    let _turn = take_turn();
    let pods = two_pods(&bed, "cni-tndp2", "10.89.42.0/24", ["pa", "pb"]);
    let (a, b) = (&pods.a, &pods.b);

    // (b) Each pod fetches the other's page at its tailnet addresses.
    for (from, to) in [("pa", &b.ipv4), ("pb", &a.ipv4)] {
        let script = http_get(to, 80);
        let page = wait_until(Duration::from_secs(60), "pod to pod over IPv4", || {
            fetched(&pods.podman.exec(from, &script))
        });
        assert_eq!(page, "hello from a pod\n", "{from} -> {to}");
    }
    for (from, to) in [("pa", &b.ipv6), ("pb", &a.ipv6)] {
        let script = http_get(to, 80);
        let page = wait_until(Duration::from_secs(30), "pod to pod over IPv6", || {
            fetched(&pods.podman.exec(from, &script))
        });
        assert_eq!(page, "hello from a pod\n", "{from} -> {to}");
    }

    // (d) ts0 has the tailnet MTU of 1280.
    let link = pods.podman.exec("pa", "ip link show ts0");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("mtu 1280"), "{link}");
    // A datagram that fills the MTU exactly crosses whole (1252 + 8 + 20).
    let full = pods
        .podman
        .exec("pa", &format!("ping -c 2 -W 5 -s 1252 {}", b.ipv4));
    assert!(
        full.status.success(),
        "1280-byte ping: {}",
        String::from_utf8_lossy(&full.stdout)
    );
    // Larger ones are fragmented by the sending kernel (IPv4 without DF,
    // IPv6 at the source), every fragment crosses the tunnel, and the
    // receiving kernel reassembles them; the reply comes back the same way.
    for (cmd, to) in [("ping", &b.ipv4), ("ping6", &b.ipv6)] {
        let out = pods
            .podman
            .exec("pa", &format!("{cmd} -c 3 -W 5 -s 1400 {to}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd} -s 1400 {to}: {text}");
        assert!(text.contains("1408 bytes from"), "{text}");
    }
    // No pod filtered anything: the default policy allows all, and the
    // fragments (which carry no ports) were let through.
    for pod in [&a.ipv4, &b.ipv4] {
        assert_eq!(pods.daemon.pod(pod)["filtered_packets"], json!(0));
    }
}

#[test]
fn a_pod_forging_its_source_address_gets_nothing_through() {
    let bed = require!(prerequisites());
    let _turn = take_turn();
    let pods = two_pods(&bed, "cni-tndp3", "10.89.43.0/24", ["fa", "fb"]);
    let (a, b) = (&pods.a, &pods.b);
    // The session between the two pods is up.
    let script = http_get(&b.ipv4, 80);
    wait_until(Duration::from_secs(60), "pod to pod", || {
        fetched(&pods.podman.exec("fa", &script))
    });

    // Pod fa gets a second, foreign address on ts0 (another tailnet address,
    // not its own) and pings fb from it.
    let netns = pods.podman.netns("fa");
    let forged = "100.100.99.99";
    run_ok(Command::new("nsenter").arg(format!("--net={netns}")).args([
        "ip",
        "addr",
        "add",
        &format!("{forged}/32"),
        "dev",
        "ts0",
    ]));
    let rx_before = pods.daemon.pod(&b.ipv4)["rx_bytes"].as_u64().unwrap_or(0);
    let tx_before = pods.daemon.pod(&a.ipv4)["tx_bytes"].as_u64().unwrap_or(0);
    let out = pods
        .podman
        .exec("fa", &format!("ping -c 5 -W 1 -I {forged} {}", b.ipv4));
    assert!(
        !out.status.success(),
        "a forged-source ping was answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Statistics are published at least once a second: let them catch up.
    std::thread::sleep(Duration::from_secs(2));
    let rx_after = pods.daemon.pod(&b.ipv4)["rx_bytes"].as_u64().unwrap_or(0);
    let tx_after = pods.daemon.pod(&a.ipv4)["tx_bytes"].as_u64().unwrap_or(0);
    assert_eq!(rx_after, rx_before, "forged packets reached the other pod");
    assert_eq!(tx_after, tx_before, "forged packets left the pod's engine");

    // The same ping from the pod's own address is answered (the counters
    // above were able to move).
    let out = pods
        .podman
        .exec("fa", &format!("ping -c 2 -W 5 -I {} {}", a.ipv4, b.ipv4));
    assert!(
        out.status.success(),
        "ping from the real address: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(pods.daemon.pod(&b.ipv4)["rx_bytes"].as_u64().unwrap_or(0) > rx_after);
}

// ------------------------------------------------------ (c) bulk transfer --

/// Bytes to move each way: TAILNET_E2E_TRANSFER_BYTES (rounded up to whole
/// MiB), 1 GiB by default.
fn transfer_bytes() -> u64 {
    let bytes = std::env::var("TAILNET_E2E_TRANSFER_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1 << 30);
    bytes.div_ceil(MIB).max(1) * MIB
}

/// A 1 MiB chunk of pseudo-random bytes (xorshift: incompressible, and no
/// two offsets within it alike).
fn chunk() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..MIB / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// A `sha256sum` process fed incrementally.
struct Sha256 {
    child: Child,
}

impl Sha256 {
    fn new() -> Self {
        let child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sha256sum");
        Self { child }
    }

    fn update(&mut self, data: &[u8]) {
        self.child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(data)
            .expect("hash input");
    }

    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().expect("sha256sum output");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

fn expected_digest(chunk: &[u8], chunks: u64) -> String {
    let mut h = Sha256::new();
    for _ in 0..chunks {
        h.update(chunk);
    }
    h.finish()
}

/// The first connection to `listener`; panics after `timeout`.
fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let conn = wait_until(timeout, "the pod to connect to the sink", || {
        listener.accept().ok().map(|(conn, _)| conn)
    });
    conn.set_nonblocking(false).expect("blocking connection");
    conn
}

fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

#[test]
fn bulk_transfer_between_a_pod_and_the_peer_arrives_intact_both_ways() {
    let bed = require!(prerequisites());
    let _turn = take_turn();
    let total = transfer_bytes();
    let chunks = total / MIB;
    let data = chunk();
    let expected = expected_digest(&data, chunks);

    let work = tempfile::tempdir().expect("tempdir");
    let daemon = start_daemon(work.path(), &bed);
    let podman = Podman::new(
        &work.path().join("podman"),
        &daemon.socket,
        "cni-tndp4",
        "10.89.44.0/24",
    );
    fs::write(podman.root.dir.join("rootfs/data/chunk"), &data).expect("chunk");
    podman.run_web("bulk", &daemon);
    let pod = pod_addrs(&daemon, "-bulk");
    wait_until(Duration::from_secs(60), "the peer to reach the pod", || {
        fetched(&peer_fetch(&bed, &format!("http://{}/", pod.ipv4), 10))
    });

    // Peer → pod: the pod hashes exactly `total` bytes from its listener and
    // records the digest and the count, while the connection stays open
    // (closing it early would race the last bytes against the proxy's
    // teardown). nc's stdin never ends: at EOF nc would half-close, and the
    // peer's SOCKS5 proxy ends a connection at the first half-close.
    run_ok(podman.cmd().args([
        "exec",
        "-d",
        "bulk",
        "/bin/sh",
        "-c",
        &format!(
            "mkfifo /tmp/fifo; wc -c < /tmp/fifo > /tmp/count & \
             tail -f /dev/null | nc -l -p 9001 | head -c {total} | tee /tmp/fifo | sha256sum > /tmp/sum"
        ),
    ]));
    // Connect only once nc listens: a refused early attempt would not be
    // seen until the first write.
    wait_until(Duration::from_secs(30), "the pod's listener", || {
        let out = podman.exec("bulk", "netstat -ltn | grep -q ':9001 '");
        out.status.success().then_some(())
    });
    let started = Instant::now();
    let mut conn = peer_connect(&bed, &pod.ipv4, 9001).expect("connect to the pod");
    for sent in 0..chunks {
        conn.write_all(&data)
            .unwrap_or_else(|e| panic!("send to the pod after {sent} MiB: {e}"));
    }
    let (got, count) = wait_until(TRANSFER_TIMEOUT, "the pod's digest", || {
        let out = podman.exec("bulk", "cat /tmp/count && cat /tmp/sum");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        let count = words.next()?.parse::<u64>().ok()?;
        let digest = words.next().filter(|d| d.len() == 64)?.to_string();
        Some((digest, count))
    });
    let inbound = started.elapsed();
    drop(conn);
    assert_eq!(count, total, "peer -> pod cut short");
    assert_eq!(got, expected, "peer -> pod data corrupted or cut short");
    eprintln!(
        "peer -> pod: {total} bytes in {:.1} s ({:.1} MiB/s), path {}",
        inbound.as_secs_f64(),
        mib_per_sec(total, inbound),
        daemon.pod(&pod.ipv4)["path"]
    );

    // Pod → peer: the pod sends to a sink on the peer's loopback.
    let sink = TcpListener::bind("127.0.0.1:0").expect("sink");
    let sink_port = sink.local_addr().expect("addr").port();
    let hasher = std::thread::spawn(move || {
        let mut conn = accept_within(&sink, STALL_TIMEOUT);
        conn.set_read_timeout(Some(STALL_TIMEOUT))
            .expect("read timeout");
        let mut h = Sha256::new();
        let mut left = total;
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = conn.read(&mut buf[..want]).expect("read");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        (total - left, h.finish())
    });
    let started = Instant::now();
    let sender = run_within(
        podman.cmd().args([
            "exec",
            "bulk",
            "/bin/sh",
            "-c",
            &format!(
                "for i in $(seq {chunks}); do cat /data/chunk; done | nc {} {sink_port}",
                bed.peer_ipv4
            ),
        ]),
        TRANSFER_TIMEOUT,
    );
    let (received, digest) = hasher.join().expect("sink thread");
    let outbound = started.elapsed();
    assert_eq!(
        received,
        total,
        "pod -> peer cut short: {}",
        String::from_utf8_lossy(&sender.stderr)
    );
    assert_eq!(digest, expected, "pod -> peer data corrupted");
    eprintln!(
        "pod -> peer: {total} bytes in {:.1} s ({:.1} MiB/s), path {}",
        outbound.as_secs_f64(),
        mib_per_sec(total, outbound),
        daemon.pod(&pod.ipv4)["path"]
    );
}
