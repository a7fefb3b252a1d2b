#!/usr/bin/env python3
"""Benchmarks that need the real test bed; run by bench/bed.sh inside
scripts/isolated.sh, after `scripts/testbed.sh up` and its env.

    bed.py pods        CNI ADD latency and ADD-to-reachable, 1 pod and a burst
    bed.py throughput  iperf3 through our engine and through official tailscaled
    bed.py footprint   daemon RSS and idle CPU with 0, 50 and 250 pods

Every part writes OUT/<part>.json. The pod side is the real daemon (release
build) and the real shim, called the way a runtime calls them: the bridge
plugin first, then the shim with the bridge's result as prevResult, in a
namespace made with `ip netns add`. The official side is extra tailscaled
nodes of our own, in kernel TUN mode (one in this namespace, one in a
namespace of its own) and in userspace mode.

Standard library only: this runs on a bare test machine.
"""

import argparse
import ipaddress
import json
import os
import select
import shutil
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CNI_PATH = "/usr/lib/cni"
TAILNET_V4 = ipaddress.ip_network("100.64.0.0/10")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"bench: {name} is not set (source <(scripts/testbed.sh env))")
    return value


# ------------------------------------------------------------ statistics --


def percentile(values, q):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def spread(values):
    """Median, min and max: how every figure is reported."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": percentile(vals, 0.5), "min": min(vals), "max": max(vals), "n": len(vals)}


# ------------------------------------------------------------- processes --


STARTED = []  # every Proc, so that main() can stop whatever a failed part left


class Proc:
    """A process we started; stopped by its own pid."""

    def __init__(self, name, argv, log_path, netns=None, extra_env=None):
        STARTED.append(self)
        self.name = name
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        e = dict(os.environ)
        e.update(extra_env or {})
        self.log_path = log_path
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(log_path, "ab"),
            env=e,
        )

    @property
    def pid(self):
        # `ip netns exec` execs the command: same pid.
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def cpu_seconds(pid):
    """User + system CPU of a whole process (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def run(argv, timeout=60, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return r


def wait_until(seconds, what, probe, interval=0.2):
    deadline = time.monotonic() + seconds
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(interval)


def waited(seconds, what, probe, interval=0.2):
    """Like `wait_until`, but a timeout is logged and returns False."""
    try:
        return wait_until(seconds, what, probe, interval)
    except RuntimeError as e:
        log(str(e))
        return False


def with_cpu(watched, action):
    """Runs `action()` and adds to its result dict `cpu_s`: the CPU seconds
    each of the `watched` processes (name -> pid) used meanwhile."""
    before = {k: cpu_seconds(p) for k, p in watched.items()}
    res = action()
    after = {k: cpu_seconds(p) for k, p in watched.items()}
    res["cpu_s"] = {k: after[k] - before[k] for k in watched}
    return res


def machine():
    return {
        "nproc": os.cpu_count(),
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_start": os.getloadavg()[0],
    }


# ---------------------------------------------------------------- control --


class Bed:
    """The test bed's control server, as exported by `scripts/testbed.sh env`."""

    def __init__(self):
        self.control_url = env("TAILNET_TEST_CONTROL_URL")
        self.token_file = env("TAILNET_TEST_ADMIN_TOKEN_FILE")
        self.tailscaled = env("TAILNET_TEST_TAILSCALED_BIN")
        self.tailscale = env("TAILNET_TEST_TAILSCALE_BIN")
        self.dir = Path(env("TAILNET_TESTBED_DIR"))
        self.port = int(self.control_url.rsplit(":", 1)[1])

    def rscale_pid(self):
        return int((self.dir / "rscale.pid").read_text())

    def admin_get(self, path):
        token = Path(self.token_file).read_text().strip()
        req = urllib.request.Request(
            f"{self.control_url}/api/v1/admin/{path}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def enabled_pool_nodes(self):
        listed = self.admin_get("nodes")
        nodes = listed.get("nodes", listed) if isinstance(listed, dict) else listed
        return sum(
            1
            for n in nodes
            if str(n.get("hostname", "")).startswith("bench-pool-") and n.get("status") != "disabled"
        )

    def mint_key(self):
        body = json.dumps(
            {
                "description": "bench",
                "tags": [],
                "reusable": False,
                "ephemeral": False,
                "expires_at_unix_secs": int(time.time()) + 3600,
            }
        ).encode()
        token = Path(self.token_file).read_text().strip()
        req = urllib.request.Request(
            f"{self.control_url}/api/v1/admin/auth-keys",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)["key"]


# ----------------------------------------------------------------- daemon --


class Daemon:
    """The real tailnet-cnid (release build) with a private socket and state."""

    def __init__(self, bed, bin_dir, work, pool=None, netns=None, wrap=(), log_also=None):
        """`pool`: the warm identity pool's size per tag set, filled from
        the start for pods' default tags; None keeps the daemon's default.
        `netns`: a namespace of its own (a second node; see `Namespace`),
        else this one. `wrap`: a command the daemon runs under (a profiler).
        `log_also`: a log directive added to TAILNET_CNID_LOG."""
        self.work = work
        self.socket = work / "d.sock"
        self.bin = bin_dir / "tailnet-cnid"
        config = work / "d.toml"
        config.write_text(
            f'socket = "{self.socket}"\n'
            f'state_dir = "{work / "state"}"\n'
            'cluster_name = "bench"\n'
            f'control_url = "{bed.control_url}"\n'
            "allow_insecure_http = true\n"
            'selection = "all"\n'
            + (f"pool_size = {pool}\npool_tags = [[]]\n" if pool is not None else "")
            + "\n[auth]\n"
            'kind = "rscale"\n'
            f'api_url = "{bed.control_url}"\n'
            f'token_file = "{bed.token_file}"\n'
        )
        self.proc = Proc(
            "tailnet-cnid",
            [*wrap, str(self.bin), "--config", str(config), "run"],
            work / "daemon.log",
            netns=netns,
            extra_env={
                "TAILNET_CNID_LOG": ",".join(
                    filter(None, [os.environ.get("TAILNET_CNID_LOG", "warn"), log_also])
                )
            },
        )
        self.log = work / "daemon.log"
        wait_until(120 if wrap else 30, "the daemon socket", lambda: self.socket.exists() or not self.proc.alive())
        if not self.proc.alive():
            raise RuntimeError(f"the daemon exited; see {work / 'daemon.log'}")

    @property
    def pid(self):
        return self.proc.pid

    def status(self):
        r = run([str(self.bin), "status", "--json", "--socket", str(self.socket)], timeout=30)
        return json.loads(r.stdout)

    def wait_pool_full(self, bed, size, live=0):
        """Waits until the pool holds `size` identities: as many enabled
        `bench-pool-*` nodes as that plus the `live` pods bound from it (a
        bound node keeps its name on rscale, and is disabled on DEL)."""
        wait_until(120, f"a pool of {size}", lambda: bed.enabled_pool_nodes() >= size + live, interval=0.5)

    def stop(self):
        self.proc.stop()


# -------------------------------------------------------------------- pods --


class Pods:
    """Pod sandboxes set up as a runtime does: bridge ADD, then our shim."""

    def __init__(self, daemon, shim, work, prefix):
        self.prefix = prefix  # namespace names, unique across parts of one run
        self.daemon = daemon
        self.shim = str(shim)
        self.work = work
        self.bridge_conf = {
            "cniVersion": "1.0.0",
            "name": "benchnet",
            "type": "bridge",
            "bridge": "bnbr0",
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "subnet": "10.210.0.0/16",
                "dataDir": str(work / "ipam"),
            },
        }
        self.counter = 0
        self.lock = threading.Lock()

    def new_netns(self):
        with self.lock:
            self.counter += 1
            n = self.counter
        name = f"{self.prefix}{n}"
        run(["ip", "netns", "add", name])
        run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        return {"netns": name, "id": f"{n:064x}", "name": f"pod-{n}"}

    def _exec(self, binary, command, pod, conf):
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod["id"],
            "CNI_NETNS": f"/run/netns/{pod['netns']}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_PATH,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod['name']}",
        }
        t0 = time.monotonic()
        r = subprocess.run(
            [binary], input=json.dumps(conf), capture_output=True, text=True, env=e, timeout=120
        )
        t1 = time.monotonic()
        if r.returncode != 0:
            raise RuntimeError(f"{command} {binary} for {pod['name']}: {r.stdout} {r.stderr}")
        return t0, t1, (json.loads(r.stdout) if r.stdout.strip() else None)

    def shim_conf(self, prev):
        return {
            "cniVersion": "1.0.0",
            "name": "benchnet",
            "type": "tailnet-cni",
            "daemonSocket": str(self.daemon.socket),
            "prevResult": prev,
        }

    def add(self, pod, on_added=None):
        """Bridge ADD then shim ADD; fills the pod's timings and address."""
        b0, b1, bridge_result = self._exec(f"{CNI_PATH}/bridge", "ADD", pod, self.bridge_conf)
        s0, s1, result = self._exec(self.shim, "ADD", pod, self.shim_conf(bridge_result))
        pod["bridge_ms"] = (b1 - b0) * 1000
        pod["add_ms"] = (s1 - s0) * 1000
        pod["add_start"] = s0
        pod["result"] = result
        pod["ipv4"] = next(
            (
                ip["address"].split("/")[0]
                for ip in result.get("ips", [])
                if ipaddress.ip_address(ip["address"].split("/")[0]) in TAILNET_V4
            ),
            None,
        )
        if pod["ipv4"] is None:
            raise RuntimeError(f"no tailnet address in the ADD result for {pod['name']}: {result}")
        if on_added:
            on_added(pod)
        return pod

    def try_add(self, pod, on_added=None):
        """add() that records a failure on the pod instead of raising."""
        try:
            return self.add(pod, on_added)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            pod["error"] = str(e)[-300:]
            log(f"ADD failed: {pod['error']}")
            return pod

    def delete(self, pod):
        t0, t1, _ = self._exec(self.shim, "DEL", pod, self.shim_conf(pod.get("result")))
        self._exec(f"{CNI_PATH}/bridge", "DEL", pod, self.bridge_conf)
        run(["ip", "netns", "del", pod["netns"]], check=False)
        pod["del_ms"] = (t1 - t0) * 1000
        return pod


# ---------------------------------------------------------- reachability --


def icmp_checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Pinger:
    """ICMP echo from the kernel-TUN tailscaled peer's namespace to pods,
    in-process: records the first reply per target.
    A process per probe would cost more than what is measured."""

    def __init__(self, netns, interval=0.025):
        self.interval = interval
        self.sock = socket_in(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self.ident = os.getpid() & 0xFFFF
        self.lock = threading.Lock()
        self.pending = {}  # ip -> next send time
        self.replied = {}  # ip -> monotonic time of the first reply
        self.seq = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def watch(self, ip):
        with self.lock:
            self.replied.pop(ip, None)
            self.pending[ip] = 0.0

    def forget(self, ip):
        """Stops probing `ip`."""
        with self.lock:
            self.pending.pop(ip, None)

    def wait(self, ip, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if ip in self.replied:
                    return self.replied[ip]
            time.sleep(0.005)
        self.forget(ip)
        return None

    def _send(self, ip):
        self.seq = (self.seq + 1) & 0xFFFF
        header = struct.pack("!BBHHH", 8, 0, 0, self.ident, self.seq)
        payload = b"tailnet-cni-bench"
        packet = struct.pack("!BBHHH", 8, 0, icmp_checksum(header + payload), self.ident, self.seq)
        try:
            self.sock.sendto(packet + payload, (ip, 0))
        except OSError:
            pass  # no route yet: the peer has not heard of the pod

    def _loop(self):
        while not self.stopping:
            now = time.monotonic()
            with self.lock:
                due = [ip for ip, t in self.pending.items() if t <= now]
                for ip in due:
                    self.pending[ip] = now + self.interval
            for ip in due:
                self._send(ip)
            ready, _, _ = select.select([self.sock], [], [], self.interval / 2)
            if not ready:
                continue
            while True:
                try:
                    data, (src, _) = self.sock.recvfrom(2048)
                except BlockingIOError:
                    break
                at = time.monotonic()
                ihl = (data[0] & 0x0F) * 4
                if len(data) < ihl + 8:
                    continue
                kind, _, _, ident, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if kind != 0 or ident != self.ident:
                    continue
                with self.lock:
                    if src in self.pending:
                        del self.pending[src]
                        self.replied[src] = at

    def close(self):
        self.stopping = True
        self.thread.join()
        self.sock.close()


# ------------------------------------------------------------- tailscaled --


class Tailscaled:
    """An official tailscaled node of our own.

    mode "kernel": `--tun=NAME`, `up --netfilter-mode=off --accept-dns=false`;
    in `netns` if given (its own table 52 and rules 5210-5270), else here.
    mode "userspace": `--tun=userspace-networking`; inbound TCP to its 100.x
    is forwarded to this namespace's loopback.
    """

    def __init__(self, bed, work, name, mode, tun=None, netns=None):
        self.bed = bed
        self.name = name
        self.mode = mode
        self.netns = netns
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "sock"
        tun_arg = f"--tun={tun}" if mode == "kernel" else "--tun=userspace-networking"
        self.proc = Proc(
            f"tailscaled-{name}",
            [
                bed.tailscaled,
                tun_arg,
                "--no-logs-no-support",
                f"--state={self.dir / 'state'}",
                f"--statedir={self.dir}",
                f"--socket={self.sock}",
                "--port=0",
            ],
            self.dir / "tailscaled.log",
            netns=netns,
            extra_env={"TS_NO_LOGS_NO_SUPPORT": "true"},
        )
        wait_until(30, f"{name}'s socket", lambda: self.sock.exists())
        up = [
            "up",
            f"--login-server={bed.control_url}",
            f"--auth-key={bed.mint_key()}",
            f"--hostname=bench-{name}",
            "--accept-dns=false",
            "--timeout=60s",
        ]
        if mode == "kernel":
            up.append("--netfilter-mode=off")
        self.cli(*up, timeout=90)
        self.ipv4 = wait_until(60, f"{name}'s address", lambda: self.cli("ip", "-4").stdout.strip())

    def cli(self, *args, timeout=30, check=True):
        argv = [self.bed.tailscale, f"--socket={self.sock}", *args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        return run(argv, timeout=timeout, check=check)

    @property
    def pid(self):
        return self.proc.pid

    def status(self):
        return json.loads(self.cli("status", "--json").stdout)

    def path_to(self, ip):
        """How this node reaches the peer holding ip: direct (with its
        endpoint) or through a DERP region."""
        for peer in (self.status().get("Peer") or {}).values():
            if ip in (peer.get("TailscaleIPs") or []):
                if peer.get("CurAddr"):
                    return f"direct {peer['CurAddr']}"
                return f"derp({peer.get('Relay') or '?'})"
        return "unknown peer"

    def knows(self, ip):
        try:
            return any(
                ip in (p.get("TailscaleIPs") or [])
                for p in (self.status().get("Peer") or {}).values()
            )
        except (RuntimeError, json.JSONDecodeError):
            return False

    def stop(self):
        # SIGTERM: a kernel-TUN tailscaled removes its routes and rules itself.
        self.proc.stop()


class Namespace:
    """A network namespace of our own for an official kernel-TUN node.

    Its only links are veths made with `link()` (no default route). The
    control server listens on this namespace's 127.0.0.1 only, so its port
    is carried in by two socat hops over a Unix socket; STUN is not.
    A kernel-TUN node must not share the daemon's namespace: its 100.x would
    be a local address there, and pod traffic to it would skip the tailnet.
    """

    def __init__(self, name, bed, work):
        self.name = name
        self.procs = []
        run(["ip", "netns", "add", name])
        run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        unix = work / f"{name}-control.sock"
        self.procs.append(
            Proc(
                f"socat-{name}-host",
                ["socat", f"UNIX-LISTEN:{unix},fork,unlink-early", f"TCP:127.0.0.1:{bed.port}"],
                work / f"socat-{name}.log",
            )
        )
        wait_until(10, "the control socket relay", unix.exists)
        self.procs.append(
            Proc(
                f"socat-{name}-ns",
                [
                    "socat",
                    f"TCP-LISTEN:{bed.port},bind=127.0.0.1,fork,reuseaddr",
                    f"UNIX-CONNECT:{unix}",
                ],
                work / f"socat-{name}.log",
                netns=name,
            )
        )

    def stop(self):
        for p in self.procs:
            p.stop()
        run(["ip", "netns", "del", self.name], check=False)


def link(a, b):
    """A veth between two namespaces (None: this one); a and b are
    (netns, ifname, address/24)."""
    (a_ns, a_if, a_addr), (b_ns, b_if, b_addr) = a, b
    argv = ["ip", "link", "add", a_if]
    if a_ns:
        argv += ["netns", a_ns]
    argv += ["type", "veth", "peer", "name", b_if]
    if b_ns:
        argv += ["netns", b_ns]
    run(argv)
    for ns, ifname, addr in (a, b):
        pre = ["ip", "netns", "exec", ns] if ns else []
        run(pre + ["ip", "addr", "add", f"{addr}/24", "dev", ifname])
        run(pre + ["ip", "link", "set", ifname, "up"])


CLONE_NEWNET = 0x40000000


def socket_in(netns, *args):
    """A socket that lives in another network namespace (sockets keep the
    namespace they were made in)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            return socket.socket(*args)
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")


def wait_reachable(peer, pinger, ip, what):
    """Until the official peer knows ip and gets ICMP replies from it. Disco
    pings first let the nodes settle on a direct path if there is one (stops
    early once direct); our engine answers them once it speaks disco."""
    wait_until(90, f"the peer to learn {what}", lambda: peer.knows(ip), interval=0.5)
    peer.cli("ping", "-c", "5", "--timeout", "2s", ip, check=False, timeout=60)
    pinger.watch(ip)
    if pinger.wait(ip, 60) is None:
        raise RuntimeError(f"no ICMP reply from {what} ({ip}) through the peer")


def start_peer(bed, work):
    """The official peer every measurement talks to: kernel TUN, in its own
    namespace `bpeer`, linked to this one (where the daemon and the
    userspace node run) by a veth. Call before starting the daemon, so the
    daemon sees the link's address among its own."""
    ns = Namespace("bpeer", bed, work)
    link((None, "bph", "10.205.0.1"), ("bpeer", "bpr", "10.205.0.2"))
    return ns


# ------------------------------------------------------------------ parts --


def part_pods(args, bed, work):
    """CNI ADD (shim exec to result) and ADD-to-reachable (shim exec until
    the official peer gets an echo reply from the pod), 1 pod at a time and
    a burst at once, next to the bridge plugin's ADD. With `--pool N` the
    daemon keeps N identities warm and each measurement starts with a full
    pool (N >= the burst: every ADD binds one)."""
    ns = start_peer(bed, work)
    daemon = Daemon(bed, args.bin, work, pool=args.pool)
    pool = args.pool or 0
    peer = Tailscaled(bed, work, "peer", "kernel", tun="tsbpeer", netns="bpeer")
    pods = Pods(daemon, args.shim, work, "bpods")
    pinger = Pinger("bpeer", interval=0.025)
    out = {"machine": machine(), "peer": "official tailscaled, kernel TUN, own namespace", "pool": pool}
    try:
        singles = []
        for i in range(args.single):
            if pool:
                daemon.wait_pool_full(bed, pool)
            pod = pods.new_netns()
            pods.add(pod, on_added=lambda p: pinger.watch(p["ipv4"]))
            got = pinger.wait(pod["ipv4"], args.reach_timeout)
            pod["reach_ms"] = (got - pod["add_start"]) * 1000 if got else None
            pods.delete(pod)
            singles.append({k: pod.get(k) for k in ("bridge_ms", "add_ms", "reach_ms", "del_ms")})
            log(f"1 pod, run {i + 1}: {singles[-1]}")
        out["single"] = {
            "runs": singles,
            **{
                k: {
                    "p50": percentile(vals, 0.5),
                    "p99": percentile(vals, 0.99),
                    "min": min(vals),
                    "max": max(vals),
                    "n": len(vals),
                }
                for k in ("bridge_ms", "add_ms", "reach_ms", "del_ms")
                if (vals := [s[k] for s in singles if s[k] is not None])
            },
            "unreachable": sum(1 for s in singles if s["reach_ms"] is None),
        }

        rounds = []
        for r in range(args.rounds):
            if pool:
                daemon.wait_pool_full(bed, pool)
            summary, _ = burst_round(args, pods, pinger)
            rounds.append(summary)
            log(f"{args.burst} at once, round {r + 1}: " + json.dumps(summary))
        if args.profile_burst:
            if pool:
                daemon.wait_pool_full(bed, pool)
            out["burst_profile"] = profiled_burst(args, bed, pods, pinger, daemon, peer, work)
            log("profiled burst: " + json.dumps(out["burst_profile"]["by_role"]))
        out["burst"] = {
            "pods": args.burst,
            "rounds": rounds,
            **{
                f"{k}_{q}": spread([rd[k][q] for rd in rounds if k in rd])
                for k in ("bridge_ms", "add_ms", "reach_ms", "del_ms")
                for q in ("p50", "p99")
            },
            "all_reachable_s": spread([rd["all_reachable_s"] for rd in rounds]),
            "unreachable": sum(rd["unreachable"] for rd in rounds),
            "add_failed": sum(rd["add_failed"] for rd in rounds),
        }
    finally:
        pinger.close()
        peer.stop()
        daemon.stop()
        ns.stop()
    return out


def burst_round(args, pods, pinger, answered=None):
    """`args.burst` pods added at once, each pinged from the moment its ADD
    returns; every pod deleted again, after `answered()` if given. Returns
    the round's percentiles and its window in time.monotonic(): from the
    ADDs' start until the last pod answered (or gave up)."""
    batch = [pods.new_netns() for _ in range(args.burst)]
    start = threading.Event()

    def one(pod):
        start.wait()
        return pods.try_add(pod, on_added=lambda p: pinger.watch(p["ipv4"]))

    with ThreadPoolExecutor(max_workers=args.burst) as executor:
        futures = [executor.submit(one, p) for p in batch]
        t0 = time.monotonic()
        start.set()
        for f in futures:
            f.result()
    failed = [p for p in batch if "error" in p]
    batch = [p for p in batch if "error" not in p]
    reach = []
    last = t0
    for pod in batch:
        got = pinger.wait(pod["ipv4"], max(0.1, args.reach_timeout - (time.monotonic() - t0)))
        pod["reach_ms"] = (got - pod["add_start"]) * 1000 if got else None
        reach.append(pod["reach_ms"])
        if got:
            last = max(last, got)
    ended = time.monotonic()
    if answered:
        answered()
    with ThreadPoolExecutor(max_workers=args.burst) as executor:
        list(executor.map(pods.delete, batch))
    ok = [v for v in reach if v is not None]
    stats = {
        "bridge_ms": [p["bridge_ms"] for p in batch],
        "add_ms": [p["add_ms"] for p in batch],
        "reach_ms": ok,
        "del_ms": [p["del_ms"] for p in batch],
    }
    summary = {k: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "max": max(v)} for k, v in stats.items() if v}
    summary["unreachable"] = len(reach) - len(ok)
    summary["add_failed"] = len(failed)
    summary["errors"] = [p["error"] for p in failed][:3]
    summary["all_reachable_s"] = (last - t0) if len(ok) == len(reach) and not failed else None
    summary["window_s"] = ended - t0
    # The slowest pods, to find them in the daemon's and the peer's logs.
    summary["slowest"] = [
        {"pod": p["name"], "ipv4": p["ipv4"], "add_ms": p["add_ms"], "reach_ms": p["reach_ms"]}
        for p in sorted(batch, key=lambda p: -(p["reach_ms"] or float("inf")))[:3]
    ]
    for p in failed:
        run(["ip", "netns", "del", p["netns"]], check=False)
    return summary, (t0, ended)


def perf_samples(data):
    """(pid, comm, time, symbol) of every sample in a `perf record` file."""
    r = run(["perf", "script", "-i", str(data), "-F", "comm,pid,time,ip,sym"], timeout=600)
    samples = []
    for line in r.stdout.splitlines():
        # "<comm> <pid> <secs>: <address> <symbol>"; a comm may hold spaces.
        parts = line.split()
        at = next((i for i, word in enumerate(parts) if i and word.endswith(":")), None)
        if at is None or at < 2 or not parts[at - 1].isdigit():
            continue
        try:
            secs = float(parts[at][:-1])
        except ValueError:
            continue
        symbol = " ".join(parts[at + 2 :]) or "[unknown]"
        samples.append((int(parts[at - 1]), " ".join(parts[: at - 1]), secs, symbol))
    return samples


def burst_role(pid, comm, pids):
    """Which part of the burst a sample belongs to."""
    if pid == 0:
        return "idle"
    for role, owner in pids.items():
        if pid == owner:
            return role
    if comm in ("bridge", "host-local", "loopback"):
        return "bridge plugin (primary CNI)"
    if comm == "tailnet-cni":
        return "our shim"
    if comm.startswith("postgres"):
        return "rscale's database"
    if comm.startswith(("kworker", "ksoftirqd", "rcu", "migration", "kthreadd", "cpuhp")):
        return "kernel threads"
    return "other"


def profiled_burst(args, bed, pods, pinger, daemon, peer, work):
    """One more burst, not counted with the rounds, under a system-wide
    `perf record` (cpu-clock): every process's share of the two cores from
    the ADDs' start until every pod answered, and the kernel functions the
    busiest time went to."""
    if not shutil.which("perf"):
        raise RuntimeError("the profiled burst needs perf (linux-perf; --no-profile-burst to skip it)")
    data = work / "burst.perf.data"
    rec = subprocess.Popen(
        ["perf", "record", "-a", "-e", "cpu-clock", "-F", "999", "-k", "CLOCK_MONOTONIC", "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # perf is recording once its buffers are mapped
    if rec.poll() is not None:
        raise RuntimeError(f"perf record: {rec.stderr.read().decode()[-300:]}")

    def stop_recording():
        if rec.poll() is None:
            rec.send_signal(signal.SIGINT)
            rec.wait(timeout=60)

    try:
        summary, (start, end) = burst_round(args, pods, pinger, answered=stop_recording)
    finally:
        stop_recording()
    # Only the burst: from the ADDs' start until the last pod answered (the
    # clocks agree: perf stamps samples with CLOCK_MONOTONIC).
    samples = [sample for sample in perf_samples(data) if start <= sample[2] <= end]
    pids = {
        "our daemon": daemon.pid,
        "official tailscaled peer": peer.pid,
        "rscale (control server)": bed.rscale_pid(),
        "benchmark harness (python)": os.getpid(),
    }
    by_role, busy_syms, daemon_syms = {}, {}, {}
    for pid, comm, _, symbol in samples:
        role = burst_role(pid, comm, pids)
        by_role[role] = by_role.get(role, 0) + 1
        if role == "our daemon":
            daemon_syms[symbol] = daemon_syms.get(symbol, 0) + 1
        if role != "idle":
            busy_syms[symbol] = busy_syms.get(symbol, 0) + 1
    # cpu-clock samples each core 999 times a second while it runs; an idle
    # core in a tickless kernel is sampled less, so idle is what is left.
    span = end - start
    per_core_second = 999 * span or 1.0
    cores = {role: c / per_core_second for role, c in by_role.items() if role != "idle"}
    cores["idle"] = max(0.0, (os.cpu_count() or 1) - sum(cores.values()))
    busy = sum(c for role, c in by_role.items() if role != "idle") or 1
    top = lambda counts, n: [
        {"symbol": sym, "share_of_busy": c / busy} for sym, c in sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    ]
    return {
        "round": summary,
        "seconds": span,
        "cores": os.cpu_count(),
        "by_role": {role: round(c, 3) for role, c in sorted(cores.items(), key=lambda kv: -kv[1])},
        "busiest_symbols": top(busy_syms, 15),
        "daemon_symbols": top(daemon_syms, 10),
        "command": "perf record -a -e cpu-clock -F 999 -k CLOCK_MONOTONIC; perf script, samples from the "
        "burst's start until every pod answered",
    }


def iperf(target, port, seconds, streams, reverse, netns=None):
    argv = ["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J"]
    argv += ["--connect-timeout", "5000"]
    if reverse:
        argv.append("-R")
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    for _ in range(10):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        try:
            report = json.loads(r.stdout)
        except json.JSONDecodeError:
            return {"error": (r.stderr or r.stdout).strip()[-300:]}
        # The server may still be closing the previous test.
        if "busy" not in report.get("error", ""):
            break
        time.sleep(0.5)
    if "error" in report:
        return {"error": report["error"]}
    end = report["end"]
    return {
        "bits_per_second": end["sum_received"]["bits_per_second"],
        "bytes": end["sum_received"]["bytes"],
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
    }


def part_throughput(args, bed, work):
    """iperf3 between the same official kernel-TUN tailscaled peer and three
    clients: a pod through our engine, an official tailscaled in kernel TUN
    mode (own namespace) and one in userspace mode. The peer runs every
    iperf3 client; -R makes the far side send, so both directions go over
    connections the peer opens (a userspace tailscaled takes inbound TCP
    without a proxy)."""
    procs = []
    namespaces = [start_peer(bed, work), Namespace("bkern", bed, work)]
    # The kernel-TUN client reaches the peer over a veth of their own.
    link(("bkern", "bkp", "10.206.0.2"), ("bpeer", "bpk", "10.206.0.1"))
    daemon = Daemon(bed, args.bin, work)
    nodes = []
    out = {"machine": machine(), "seconds": args.seconds, "rounds": args.rounds}
    try:
        pods = Pods(daemon, args.shim, work, "bthru")
        pod = pods.add(pods.new_netns())
        peer = Tailscaled(bed, work, "peer", "kernel", tun="tsbpeer", netns="bpeer")
        nodes.append(peer)
        kern = Tailscaled(bed, work, "kernel", "kernel", tun="tsbkern", netns="bkern")
        nodes.append(kern)
        user = Tailscaled(bed, work, "userspace", "userspace")
        nodes.append(user)

        rscale = bed.rscale_pid()
        targets = {
            "ours": {"ip": pod["ipv4"], "port": 5201, "netns": pod["netns"], "pid": daemon.pid},
            "kernel": {"ip": kern.ipv4, "port": 5202, "netns": "bkern", "pid": kern.pid},
            "userspace": {"ip": user.ipv4, "port": 5203, "netns": None, "pid": user.pid},
        }
        for name, t in targets.items():
            bind = "127.0.0.1" if name == "userspace" else t["ip"]
            procs.append(
                Proc(
                    f"iperf3-{name}",
                    ["iperf3", "-s", "-B", bind, "-p", str(t["port"])],
                    work / f"iperf3-{name}.log",
                    netns=t["netns"],
                )
            )
        pinger = Pinger("bpeer", interval=0.1)
        try:
            for name, t in targets.items():
                wait_reachable(peer, pinger, t["ip"], name)
        finally:
            pinger.close()
        samples = []
        for r in range(args.rounds):
            for streams in (1, 4):
                for reverse in (False, True):
                    for name, t in targets.items():
                        watched = {"client": t["pid"], "peer": peer.pid, "rscale": rscale}
                        res = with_cpu(
                            watched,
                            lambda: iperf(t["ip"], t["port"], args.seconds, streams, reverse, netns="bpeer"),
                        )
                        res.update(
                            client=name,
                            streams=streams,
                            direction="pod->peer" if reverse else "peer->pod",
                            round=r,
                        )
                        samples.append(res)
                        mbps = res.get("bits_per_second", 0) / 1e6
                        log(
                            f"round {r + 1} {name:9} P{streams} {res['direction']}: "
                            f"{mbps:8.1f} Mbit/s {res.get('error', '')}"
                        )
        paths = {
            "ours_daemon": [
                {k: p[k] for k in ("path", "peers_direct", "peers_derp")}
                for p in daemon.status()["pods"]
            ],
            **{f"peer_to_{n}": peer.path_to(t["ip"]) for n, t in targets.items()},
        }
        out["paths"] = paths
        out["samples"] = samples
        out["summary"] = summarize_throughput(samples)
        out["footprint_during"] = {
            "daemon_rss": rss_bytes(daemon.pid),
            "tailscaled_kernel_rss": rss_bytes(kern.pid),
            "tailscaled_userspace_rss": rss_bytes(user.pid),
        }
        log(f"paths: {json.dumps(paths)}")
        for p in procs:
            p.stop()
        pods.delete(pod)
    finally:
        for p in procs:
            p.stop()
        for n in nodes:
            n.stop()
        daemon.stop()
        for ns in namespaces:
            ns.stop()
    return out


def runs_by_case(samples):
    """Yields ((client, streams, direction), its runs, those that measured,
    and each of those's CPU seconds per GiB by process), in order."""
    groups = {}
    for s in samples:
        groups.setdefault((s["client"], s["streams"], s["direction"]), []).append(s)
    for case, runs in sorted(groups.items()):
        good = [r for r in runs if "bits_per_second" in r]
        per_gib = [
            {k: v / (r["bytes"] / 2**30) for k, v in r["cpu_s"].items()} for r in good if r["bytes"]
        ]
        yield case, runs, good, per_gib


def summarize_throughput(samples):
    summary = []
    for (client, streams, direction), runs, good, per_gib in runs_by_case(samples):
        summary.append(
            {
                "client": client,
                "streams": streams,
                "direction": direction,
                "mbit_s": spread([r["bits_per_second"] / 1e6 for r in good]),
                "client_cpu_s_per_gib": spread([p["client"] for p in per_gib]),
                "peer_cpu_s_per_gib": spread([p["peer"] for p in per_gib]),
                "rscale_cpu_s_per_gib": spread([p["rscale"] for p in per_gib]),
                "errors": [r["error"] for r in runs if "error" in r],
            }
        )
    return summary


def idle_samples(pids, windows, seconds):
    """RSS and CPU use over consecutive idle windows, per process."""
    samples = {name: [] for name in pids}
    for _ in range(windows):
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        dt = time.monotonic() - t0
        for n, p in pids.items():
            samples[n].append(
                {"rss": rss_bytes(p), "cpu_per_s": (cpu_seconds(p) - before[n]) / dt}
            )
    return {
        n: {
            "rss": spread([s["rss"] for s in v]),
            "cpu_per_s": spread([s["cpu_per_s"] for s in v]),
        }
        for n, v in samples.items()
    }


# The daemon's debug line for each map message a pod session receives.
MAP_MESSAGE_TARGET = "tailnet_cnid::control::session::map_poll=debug"


def wait_for_map_silence(log, quiet_s, limit_s):
    """Waits until the daemon has logged no map message for `quiet_s`.
    Returns the seconds until its last one, or None if messages still came
    after `limit_s`."""
    t0 = time.monotonic()
    seen, last_news = -1, t0
    while time.monotonic() - t0 < limit_s:
        count = log.read_bytes().count(b"map message")
        now = time.monotonic()
        if count != seen:
            seen, last_news = count, now
        elif now - last_news >= quiet_s:
            return last_news - t0
        time.sleep(2)
    return None


def part_footprint(args, bed, work):
    """Daemon RSS and idle CPU with 0, 50 and 250 pods, next to official
    tailscaled nodes that hold the same netmap; then the daemon's RSS once
    every pod has a live WireGuard session with an official peer."""
    ns = start_peer(bed, work)
    daemon = Daemon(bed, args.bin, work, wrap=shlex.split(args.wrap), log_also=MAP_MESSAGE_TARGET)
    nodes = []
    pinger = None
    out = {"machine": machine(), "stages": []}
    try:
        nodes.append(Tailscaled(bed, work, "peer", "kernel", tun="tsbpeer", netns="bpeer"))
        pinger = Pinger("bpeer", interval=0.5)
        nodes.append(Tailscaled(bed, work, "kernel", "kernel", tun="tsbkern"))
        nodes.append(Tailscaled(bed, work, "userspace", "userspace"))
        pids = {"daemon": daemon.pid, "tailscaled_kernel": nodes[1].pid, "tailscaled_userspace": nodes[2].pid}
        control_pid = bed.rscale_pid()
        pods = Pods(daemon, args.shim, work, "bfoot")
        have = []
        for target in [0] + args.stages:
            todo = [pods.new_netns() for _ in range(target - len(have))]
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=args.parallel) as pool:
                have += list(pool.map(pods.try_add, todo))
            added_s = time.monotonic() - t0
            failed = sum(1 for p in have if "error" in p)
            status = daemon.status()
            ready = sum(1 for p in status["pods"] if not p.get("error"))
            # Every join is news to every other pod: the control server sends
            # it to each of them, and a slow server sends it for minutes.
            # Pods are idle once it has sent it all.
            quiet_s = wait_for_map_silence(daemon.log, 30, args.quiet_limit) if target else 0.0
            time.sleep(args.settle)
            stage = {
                "pods": target,
                "pods_listed": len(status["pods"]),
                "pods_without_error": ready,
                "add_failed": failed,
                "add_wall_s": added_s,
                "control_quiet_after_s": quiet_s,
                **idle_samples({**pids, "control": control_pid}, args.windows, args.window_seconds),
            }
            out["stages"].append(stage)
            log(
                f"{target} pods: daemon RSS {stage['daemon']['rss']['median'] / 2**20:.1f} MiB, "
                f"CPU {stage['daemon']['cpu_per_s']['median'] * 100:.2f}%"
            )
        base = out["stages"][0]["daemon"]
        for stage in out["stages"][1:]:
            n = stage["pods"]
            d = stage["daemon"]
            stage["daemon_rss_per_pod"] = (d["rss"]["median"] - base["rss"]["median"]) / n
            stage["daemon_cpu_per_pod"] = (d["cpu_per_s"]["median"] - base["cpu_per_s"]["median"]) / n
        out["live"] = live_sessions(args, have, pinger, pids, base)
    finally:
        if pinger:
            pinger.close()
        for n in nodes:
            n.stop()
        daemon.stop()
        ns.stop()
    return out


def live_sessions(args, have, pinger, pids, base):
    """Pings every pod from the official peer until it answers, so that
    each holds a WireGuard session, then stops pinging and samples as for
    idle pods. Sessions stay established for minutes after the last packet:
    the windows see them, and not the pings."""
    targets = [p["ipv4"] for p in have if "error" not in p]
    t0 = time.monotonic()
    for ip in targets:
        pinger.watch(ip)
    reached = 0
    for ip in targets:
        if pinger.wait(ip, max(0.1, args.live_timeout - (time.monotonic() - t0))) is not None:
            reached += 1
    for ip in targets:
        pinger.forget(ip)
    live = {
        "pods": len(targets),
        "reached": reached,
        "reach_wall_s": time.monotonic() - t0,
        "pings_stopped": True,
        **idle_samples(pids, args.windows, args.window_seconds),
    }
    live["daemon_rss_per_pod"] = (live["daemon"]["rss"]["median"] - base["rss"]["median"]) / max(1, len(targets))
    log(
        f"{reached} of {len(targets)} pods with a live session: daemon RSS "
        f"{live['daemon']['rss']['median'] / 2**20:.1f} MiB"
    )
    return live


def add_common_arguments(ap):
    """The arguments every part takes: what it runs and where it writes."""
    ap.add_argument("--bin", type=Path, required=True, help="dir holding release tailnet-cnid")
    ap.add_argument("--shim", type=Path, required=True, help="the tailnet-cni shim binary")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--command", default="", help="the command line recorded with the figures")


def run_part(name, args, part, tools=("ip", "iperf3", "socat")):
    """Runs `part(args, bed, work)` in a fresh work directory, stops every
    process it started (also on failure) and writes its figures, with the
    command that made them, to `<out>/<name>.json`."""
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"bench: '{tool}' is required")
    bed = Bed()
    work = Path(os.environ.get("BENCH_WORK", "/run/tailnet-cni-bench")) / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        result = part(args, bed, work)
    finally:
        for proc in reversed(STARTED):
            proc.stop()
    result["command"] = args.command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out / (name + '.json')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["pods", "throughput", "footprint"])
    add_common_arguments(ap)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--single", type=int, default=10, help="pods: sequential single-pod runs")
    ap.add_argument("--burst", type=int, default=50, help="pods: pods started at once")
    ap.add_argument("--reach-timeout", type=float, default=60.0)
    ap.add_argument(
        "--pool", type=int, default=50, help="pods: the daemon's pool_size (0: off; >= --burst to serve it)"
    )
    ap.add_argument("--seconds", type=int, default=5, help="throughput: iperf3 -t")
    ap.add_argument("--stages", type=int, nargs="+", default=[50, 250], help="footprint: pod counts")
    ap.add_argument("--parallel", type=int, default=10, help="footprint: ADDs at once")
    ap.add_argument("--settle", type=float, default=15.0, help="footprint: seconds before sampling")
    ap.add_argument(
        "--quiet-limit",
        type=float,
        default=900.0,
        help="footprint: seconds to wait for the control server to stop sending map messages after the ADDs",
    )
    ap.add_argument(
        "--live-timeout",
        type=float,
        default=180.0,
        help="footprint: seconds for every pod to answer the peer's ping",
    )
    ap.add_argument(
        "--wrap", default="", help="footprint: a command the daemon runs under, e.g. 'heaptrack -o /tmp/heap'"
    )
    ap.add_argument(
        "--profile-burst",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pods: one more burst, not counted, under a system-wide perf record",
    )
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--window-seconds", type=float, default=4.0)
    args = ap.parse_args()
    part = {"pods": part_pods, "throughput": part_throughput, "footprint": part_footprint}[args.part]
    run_part(args.part, args, part)


if __name__ == "__main__":
    main()
