//! Peer routes as the official client installs them, against the real
//! test bed: the official tailscaled (kernel TUN) is a subnet router for
//! 10.99.0.0/24 and an exit node, both approved through rscale's routes API;
//! a host namespace sits behind it on that subnet. Two pods join through the
//! real daemon and shim: `opted` accepts routes and selects the router as
//! its exit node, `plain` opts into nothing.
//!
//! - `opted` gets a route to the subnet in its namespace, and fetches a page
//!   from the host through it; `plain` gets none;
//! - with a route of its own into `ts0`, `opted` sends to an address
//!   beyond the subnet through its exit node; `plain`, with the same route,
//!   sends nothing;
//! - a packet from the host with a forged tailnet source (the test bed
//!   peer's address) never reaches `opted`, though the same packet from the
//!   host's own subnet address does;
//! - `plain` does not take the host's subnet packets, only the router's own;
//! - what `opted` sends to a tailnet address no peer owns is dropped, not
//!   sent to its exit node.
//!
//! Runs under `scripts/isolated.sh` as root with the test bed's environment
//! (`scripts/test-in-netns.sh` provides it); skips, saying why, otherwise
//! (fails under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tailnet_cni_proto::selection::{
    ACCEPT_ROUTES_ANNOTATION, ENABLED_ANNOTATION, EXIT_NODE_ANNOTATION, POD_ANNOTATIONS_CAPABILITY,
};
use tailnet_cnid::podmgr::plumbing::POD_GATEWAY_V4;

use crate::common::keys::NodeCleanup;
use crate::common::netns::{ip, serve_hello, Netns};
use crate::common::peer::{peer_status, tailscale, OwnTailscaled};
use crate::common::{
    self, require, run, run_ok, shim, wait_until, Bed, Daemon, DaemonOptions, Pod, CNI_PATH,
};

const SUBNET: &str = "10.99.0.0/24";
const ROUTER_SIDE: &str = "10.99.0.1";
const HOST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// Outside every route but the exit node's.
const BEYOND: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
/// In the tailnet range, assigned to no node.
const UNASSIGNED: Ipv4Addr = Ipv4Addr::new(100, 127, 1, 1);
const POD_PORT: u16 = 9999;
const SETTLE: Duration = Duration::from_secs(90);

fn prerequisites() -> Result<Bed, common::Unmet> {
    common::isolated_root()
        .tools(&["ip", "curl", "sysctl"])
        .tun()
        .file(
            common::shim_binary(),
            "build the shim first: `cargo build -p tailnet-cni`",
        )
        .bed()
}

/// The official tailscaled on a kernel TUN in the test's namespace,
/// logged in, advertising the subnet and itself as exit node.
fn start_router(bed: &Bed, dir: &Path, hostname: &str) -> OwnTailscaled {
    let router = OwnTailscaled::start(bed, dir, "router", "tnrt0");
    router.up(
        bed,
        hostname,
        &[
            "--netfilter-mode=off",
            &format!("--advertise-routes={SUBNET}"),
            "--advertise-exit-node",
        ],
    );
    router
}

/// The router's tailnet IPv4, from its own status.
fn router_ipv4(bed: &Bed, socket: &Path) -> Ipv4Addr {
    let out = tailscale(bed, socket, &["ip", "-4"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the router's tailnet IPv4")
}

/// Approves, through rscale's routes API, each of the router's routes:
/// rscale lists what the router advertised as pending; one it does not
/// list yet is created.
fn approve_routes(bed: &Bed, node_id: &Value) {
    let admin = bed.admin();
    let listed = |prefix: &str| -> Option<u64> {
        let routes = admin.get("/api/v1/admin/routes").expect("listing routes");
        let routes = routes.get("routes").unwrap_or(&routes).as_array()?.clone();
        routes
            .iter()
            .find(|r| r["node_id"] == *node_id && r["prefix"] == json!(prefix))
            .and_then(|r| r["id"].as_u64())
    };
    for (prefix, is_exit_node) in [(SUBNET, false), ("0.0.0.0/0", true), ("::/0", true)] {
        let create = || {
            admin.call(
                "POST",
                "/api/v1/admin/routes",
                Some(&json!({"node_id": node_id, "prefix": prefix, "is_exit_node": is_exit_node})),
            )
        };
        // The router's advertisement may land between the listing and the
        // creation: then the route is listed after all.
        let id = listed(prefix)
            .or_else(|| create().ok().and_then(|route| route["id"].as_u64()))
            .or_else(|| listed(prefix))
            .unwrap_or_else(|| panic!("route {prefix} neither listed nor created"));
        admin
            .call("POST", &format!("/api/v1/admin/routes/{id}/approve"), None)
            .unwrap_or_else(|e| panic!("approving route {prefix}: {e}"));
    }
}

/// A host behind the router on the subnet, default route through it. It
/// also holds `forged` (a tailnet address that is not its own) to send from.
fn host_behind_router(forged: Ipv4Addr) -> Netns {
    let host = Netns::new(format!("tnrh-{}", std::process::id()));
    ip(&[
        "link", "add", "tnrh0", "type", "veth", "peer", "name", "tnrh1",
    ]);
    ip(&["link", "set", "tnrh1", "netns", &host.0]);
    ip(&["addr", "add", &format!("{ROUTER_SIDE}/24"), "dev", "tnrh0"]);
    ip(&["link", "set", "tnrh0", "up"]);
    ip(&[
        "-n",
        &host.0,
        "addr",
        "add",
        &format!("{HOST}/24"),
        "dev",
        "tnrh1",
    ]);
    ip(&["-n", &host.0, "link", "set", "tnrh1", "up"]);
    ip(&["-n", &host.0, "route", "add", "default", "via", ROUTER_SIDE]);
    ip(&[
        "-n",
        &host.0,
        "addr",
        "add",
        &format!("{forged}/32"),
        "dev",
        "lo",
    ]);
    ip(&[
        "-n",
        &host.0,
        "addr",
        "add",
        &format!("{BEYOND}/32"),
        "dev",
        "lo",
    ]);
    ip(&[
        "route",
        "add",
        &format!("{BEYOND}/32"),
        "via",
        &HOST.to_string(),
    ]);
    // The router forwards between its TUN and the subnet; the forged source
    // arrives on the subnet side, which strict reverse-path filtering would
    // drop before the router ever saw it.
    for setting in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.tnrh0.rp_filter=0",
    ] {
        run_ok(Command::new("sysctl").args(["-qw", setting]));
    }
    host
}

/// A UDP socket bound to `addr` inside the namespace at `netns`.
fn udp_in(netns: &Path, addr: SocketAddr) -> UdpSocket {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        UdpSocket::bind(addr).expect("bind UDP")
    })
    .join()
    .expect("netns thread")
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{name}"))
}

/// Every payload `socket` receives within `window`.
fn received(socket: &UdpSocket, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    got
}

/// ADD through the shim with the runtime's pod annotations.
fn add_pod(pod: &Pod, socket: &Path, annotations: &[(&str, &str)]) -> Ipv4Addr {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "tnrel",
        "type": "tailnet-cni",
        "daemonSocket": socket.display().to_string(),
        "timeoutSeconds": 90,
        "selection": "all",
        "runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: annotations},
        "prevResult": pod.prev_result(),
    });
    let env = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", pod.container_id.clone()),
        ("CNI_NETNS", pod.netns_path.display().to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", CNI_PATH.to_string()),
        (
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=rel;K8S_POD_NAME={}", pod.name),
        ),
    ];
    let outcome = shim(&conf, &env);
    outcome.expect_ok(&format!("ADD {}", pod.name));
    outcome
        .tailnet_ipv4()
        .and_then(|a| a.parse().ok())
        .expect("tailnet IPv4 in the ADD result")
}

/// The page at `addr`, fetched from inside `pod`.
fn fetch(pod: &Pod, addr: Ipv4Addr) -> Option<String> {
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &pod.netns,
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{addr}:8080/"),
    ]));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pod_routes(pod: &Pod) -> String {
    run_ok(Command::new("ip").args(["-n", &pod.netns, "-4", "route", "show"]))
}

fn tx_bytes(daemon: &Daemon, ipv4: Ipv4Addr) -> u64 {
    daemon.pod(&ipv4.to_string())["tx_bytes"]
        .as_u64()
        .expect("tx_bytes")
}

/// Sends `count` datagrams from `socket` to `to`, `gap` apart.
fn send(socket: &UdpSocket, to: SocketAddr, payload: &str, count: usize, gap: Duration) {
    for _ in 0..count {
        // A refused or unroutable datagram is what some checks expect.
        socket.send_to(payload.as_bytes(), to).ok();
        std::thread::sleep(gap);
    }
}

#[test]
fn peers_routes_are_installed_only_as_pods_opt_in() {
    let bed = require!(prerequisites());
    let dir = tempfile::tempdir().expect("tempdir");
    let router_name = format!("tnrt-{}", std::process::id());
    let router = start_router(&bed, dir.path(), &router_name);
    let router_v4 = router_ipv4(&bed, &router.socket);
    let router_node = bed
        .admin()
        .node_with_ipv4(router_v4)
        .expect("admin API")
        .expect("the router in rscale's node list");
    approve_routes(&bed, &router_node["id"]);
    let _cleanup = NodeCleanup {
        admin: bed.admin(),
        ipv4: router_v4,
    };

    // The test bed peer's address: a tailnet source the host must not use.
    let bed_peer_v4: Ipv4Addr = peer_status(&bed)["Self"]["TailscaleIPs"][0]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the test bed peer's IPv4");
    let host = host_behind_router(bed_peer_v4);
    let listener = host.run(|| TcpListener::bind((HOST, 8080)).expect("bind host page"));
    serve_hello(listener);

    let daemon = Daemon::start(&dir.path().join("daemon"), DaemonOptions::new(&bed, "rt"));
    let opted = Pod::create("rt-opted", 1);
    let plain = Pod::create("rt-plain", 2);
    let opted_v4 = add_pod(
        &opted,
        &daemon.socket,
        &[
            (ENABLED_ANNOTATION, "true"),
            (ACCEPT_ROUTES_ANNOTATION, "true"),
            (EXIT_NODE_ANNOTATION, &router_name),
        ],
    );
    let plain_v4 = add_pod(&plain, &daemon.socket, &[(ENABLED_ANNOTATION, "true")]);

    // Only the pod that accepts routes gets one to the subnet; the exit
    // node gets no pod route.
    wait_until(SETTLE, "the subnet route in the opted pod", || {
        pod_routes(&opted).contains(SUBNET).then_some(())
    });
    let routes = pod_routes(&opted);
    assert!(
        !routes.contains("default"),
        "no default route in the pod: {routes}"
    );
    assert!(
        !pod_routes(&plain).contains(SUBNET),
        "the plain pod accepted no routes: {}",
        pod_routes(&plain)
    );

    // With the opt-in the subnet works both ways: the pod fetches the
    // host's page.
    let page = wait_until(SETTLE, "the opted pod fetching from the host", || {
        fetch(&opted, HOST)
    });
    assert_eq!(page, "hello from the pod\n");

    // Beyond the subnet only the exit node leads on: once the pod's own
    // route sends such an address into `ts0`, the engine of the pod that
    // selected it carries the packets there; the plain pod's, with the same
    // route, carries nothing.
    for pod in [&opted, &plain] {
        ip(&[
            "-n",
            &pod.netns,
            "route",
            "add",
            &format!("{BEYOND}/32"),
            "via",
            &POD_GATEWAY_V4.to_string(),
            "dev",
            "ts0",
            "onlink",
        ]);
    }
    let (opted_before, plain_before) = (tx_bytes(&daemon, opted_v4), tx_bytes(&daemon, plain_v4));
    let beyond = SocketAddr::from((BEYOND, 9));
    let opted_out = udp_in(&opted.netns_path, (opted_v4, 0).into());
    let plain_out = udp_in(&plain.netns_path, (plain_v4, 0).into());
    send(&opted_out, beyond, "via exit", 5, Duration::from_millis(20));
    send(&plain_out, beyond, "via exit", 5, Duration::from_millis(20));
    wait_until(
        Duration::from_secs(10),
        "the opted pod sending through its exit node",
        || (tx_bytes(&daemon, opted_v4) > opted_before).then_some(()),
    );
    assert_eq!(
        tx_bytes(&daemon, plain_v4),
        plain_before,
        "the plain pod sent through an exit node it did not select"
    );

    // From the host's own address the packet arrives; with the forged
    // tailnet source it never does.
    let inbox = udp_in(&opted.netns_path, (opted_v4, POD_PORT).into());
    let to_opted = SocketAddr::from((opted_v4, POD_PORT));
    let honest = udp_in(&netns_path(&host.0), (HOST, 0).into());
    let forger = udp_in(&netns_path(&host.0), (bed_peer_v4, 0).into());
    send(&honest, to_opted, "honest", 3, Duration::from_millis(50));
    send(&forger, to_opted, "forged", 20, Duration::from_millis(50));
    send(&honest, to_opted, "honest", 3, Duration::from_millis(50));
    let got = received(&inbox, Duration::from_secs(3));
    assert!(
        got.iter().any(|p| p == "honest"),
        "the host's own packets reach the pod (else the check below proves nothing): {got:?}"
    );
    assert!(
        !got.iter().any(|p| p == "forged"),
        "a packet with a forged tailnet source reached the pod: {got:?}"
    );

    // The plain pod takes the router's own packets, not the host's.
    let plain_inbox = udp_in(&plain.netns_path, (plain_v4, POD_PORT).into());
    let to_plain = SocketAddr::from((plain_v4, POD_PORT));
    // The router's own address is on its TUN, in the test's namespace.
    let from_router = UdpSocket::bind((router_v4, 0)).expect("bind the router's address");
    let got = wait_until(SETTLE, "the router's packets at the plain pod", || {
        send(
            &from_router,
            to_plain,
            "router",
            2,
            Duration::from_millis(50),
        );
        send(&honest, to_plain, "subnet", 5, Duration::from_millis(20));
        let got = received(&plain_inbox, Duration::from_secs(1));
        got.iter().any(|p| p == "router").then_some(got)
    });
    send(&honest, to_plain, "subnet", 10, Duration::from_millis(20));
    let later = received(&plain_inbox, Duration::from_secs(2));
    assert!(
        !got.iter().chain(&later).any(|p| p == "subnet"),
        "the plain pod took packets from a subnet route it did not accept: {got:?} {later:?}"
    );

    // To an unassigned tailnet address nothing leaves the pod, though its
    // exit node would take anything else; to a peer it does (the test bed
    // peer: the router's own address is local to this namespace, which
    // would answer for it before the pod's table is consulted).
    let outbox = udp_in(&opted.netns_path, (opted_v4, 0).into());
    let before = tx_bytes(&daemon, opted_v4);
    send(
        &outbox,
        (UNASSIGNED, 9).into(),
        "lost",
        20,
        Duration::from_millis(20),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        tx_bytes(&daemon, opted_v4),
        before,
        "the pod's packets to an unassigned tailnet address left through its exit node"
    );
    send(
        &outbox,
        (bed_peer_v4, 9).into(),
        "to a peer",
        5,
        Duration::from_millis(20),
    );
    wait_until(
        Duration::from_secs(10),
        "the pod's tx counter to move",
        || (tx_bytes(&daemon, opted_v4) > before).then_some(()),
    );

    for pod in [&opted, &plain] {
        pod.del(&daemon.socket).expect_ok("DEL");
    }
}
