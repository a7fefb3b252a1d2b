#!/usr/bin/env python3
"""Where the one-stream pod->peer case spends its time: the same set-up as
bed.py's throughput part (an official kernel-TUN tailscaled peer in its own
namespace, our daemon and one pod here), profiled two ways.

- perf: `perf record -a -e cpu-clock` (a timer, not a hardware counter:
  this machine's perf has no `instructions` or `cycles`) while the peer
  runs `iperf3 -R` from the pod. Gives every process's share of the two
  cores and the daemon's samples by function, kernel included (syscalls,
  copies, checksums, the UDP and TUN paths run in the daemon's context).
- callgrind: the daemon under `valgrind --tool=callgrind`, counters zeroed
  when the pod is reachable and dumped after a fixed number of bytes
  (`iperf3 -n`): instructions per GiB by function, repeatable, user space
  only.

Run by bench/bed.sh (`bench/run.sh profile`) inside scripts/isolated.sh
after `scripts/testbed.sh up`; `--bin` must hold a tailnet-cnid with its
symbols (bench/run.sh links one). Writes OUT/profile.json.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bed as b  # noqa: E402  (the bench helpers live next to this file)

# Each function is counted in the first category whose pattern matches its
# name (kernel and user space alike); the patterns are recorded with the
# figures.
CATEGORIES = (
    ("crypto", r"chacha|poly1305|aead|x25519|blake2|curve25519|ring_core"),
    ("checksum", r"csum|checksum"),
    ("hashing", r"sip::|hash_one|hasher"),
    ("copies", r"memcpy|memmove|copy_user|copy_to_iter|copy_from_iter|_copy_|rep_movs|memset|rep_stos|check_object_size"),
    ("segmentation and coalescing", r"segment|gso|gro|tso|offload|coalesce"),
    # A cpu-clock sample is taken by a timer interrupt; in a VM without a
    # PMU many land on the interrupt's return path rather than the code
    # that was interrupted.
    ("interrupt entry and exit (where timer samples land)", r"irqentry|sysvec|apic|irq_exit|__irq"),
    ("clock reads", r"clock_gettime|ktime|vdso|tsc"),
    ("locking and wake-ups", r"(?<!c)lock|mutex|futex|spin|wake|park|notify|condvar|atomic"),
    ("allocation", r"malloc|free|alloc|kmem_cache|kfree|realloc|slab|page_"),
    ("syscall entry and exit", r"entry_syscall|do_syscall|syscall_exit|__x64_sys|x64_sys_call|syscall_return|fdget|sys_|sendmmsg|recvmmsg|^__libc_(read|write)|^(read|write|readv|writev)$"),
    ("TUN", r"tun_"),
    (
        "UDP, IP and veth stack",
        r"udp|ip_|ip6|ipv4|ipv6|__dev|dev_|netif|net_rx|veth|skb|nf_|neigh|sock|inet|tcp|fib|route|eth_|flow|nulls|backlog|napi",
    ),
    ("scheduler and polling", r"tokio|schedule|epoll|poll|__switch|finish_task|pick_next|tick|timer|hrtimer"),
)


def categorize(symbol):
    for name, pattern in CATEGORIES:
        if re.search(pattern, symbol, re.I):
            return name
    return "other"


def iperf_bytes(target, port, nbytes, netns):
    """One iperf3 run of a fixed size, pod->peer (-R: the pod sends)."""
    argv = ["ip", "netns", "exec", netns, "iperf3", "-c", target, "-p", str(port), "-R", "-J"]
    argv += ["-n", str(nbytes), "--connect-timeout", "5000"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    report = json.loads(r.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    end = report["end"]
    return {"bytes": end["sum_received"]["bytes"], "bits_per_second": end["sum_received"]["bits_per_second"]}


def setup(args, bed, work, wrap=()):
    """Peer, daemon, pod and the pod's iperf3 server; returns what the
    profile needs and what must be stopped."""
    work.mkdir(parents=True, exist_ok=True)
    peer_ns = b.start_peer(bed, work)
    daemon = b.Daemon(bed, args.bin, work, wrap=wrap)
    pods = b.Pods(daemon, args.shim, work, "bprof")
    pod = pods.add(pods.new_netns())
    peer = b.Tailscaled(bed, work, "peer", "kernel", tun="tsbpeer", netns="bpeer")
    server = b.Proc(
        "iperf3-pod", ["iperf3", "-s", "-B", pod["ipv4"], "-p", "5201"], work / "iperf3.log", netns=pod["netns"]
    )
    pinger = b.Pinger("bpeer", interval=0.1)
    try:
        b.wait_reachable(peer, pinger, pod["ipv4"], "the pod")
    finally:
        pinger.close()
    return {"peer_ns": peer_ns, "daemon": daemon, "pods": pods, "pod": pod, "peer": peer, "server": server}


def teardown(s):
    s["server"].stop()
    s["pods"].delete(s["pod"])
    s["peer"].stop()
    s["daemon"].stop()
    s["peer_ns"].stop()


def perf_report(data, *extra):
    r = b.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--percent-limit", "0", *extra],
        timeout=600,
    )
    rows = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.*\S)\s*$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2)))
    return rows


def part_perf(args, bed, work):
    s = setup(args, bed, work / "perf")
    try:
        daemon = s["daemon"]
        data = work / "perf.data"
        before = b.cpu_seconds(daemon.pid)
        rec = subprocess.Popen(
            ["perf", "record", "-a", "-e", "cpu-clock", "-F", str(args.freq), "-o", str(data), "--", "sleep", str(args.seconds + 1)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        res = b.iperf(s["pod"]["ipv4"], 5201, args.seconds, 1, True, netns="bpeer")
        rec.wait(timeout=120)
        daemon_cpu = b.cpu_seconds(daemon.pid) - before
        if rec.returncode != 0:
            raise RuntimeError(f"perf record: {rec.stderr.read().decode()[-300:]}")
        by_comm = perf_report(data, "--sort", "comm")
        by_sym = perf_report(data, "--pid", str(daemon.pid), "--sort", "dso,sym")
    finally:
        teardown(s)
    total = sum(p for p, _ in by_sym) or 1.0
    functions = []
    for pct, rest in by_sym:
        # "<dso>  [k] symbol" or "<dso>  [.] symbol"
        m = re.match(r"(\S+)\s+\[(.)\]\s+(.*)", rest)
        dso, space, sym = (m.group(1), m.group(2), m.group(3)) if m else ("?", "?", rest)
        functions.append(
            {"share": pct / total, "dso": dso, "kernel": space == "k", "symbol": sym, "category": categorize(sym)}
        )
    gib = res.get("bytes", 0) / 2**30
    return {
        "iperf3": res,
        "daemon_cpu_s": daemon_cpu,
        "daemon_cpu_s_per_gib": daemon_cpu / gib if gib else None,
        "processes": [{"share": p / 100, "comm": c} for p, c in by_comm],
        "functions": functions,
        "categories": rollup(functions),
        "command": f"perf record -a -e cpu-clock -F {args.freq} during iperf3 -R -t {args.seconds} (1 stream); "
        f"perf report --pid <daemon> --sort dso,sym --no-children",
    }


def rollup(functions):
    cats = {}
    for f in functions:
        key = f["category"] + (" (kernel)" if f["kernel"] else " (user)")
        cats[key] = cats.get(key, 0.0) + f["share"]
    return dict(sorted(cats.items(), key=lambda kv: -kv[1]))


def parse_callgrind(path):
    """Total and self instructions per function of a callgrind dump
    (`events: Ir`). A cost line right after `calls=` is the callee's
    inclusive cost, so it is not the caller's own. Read here rather than
    with callgrind_annotate, whose 3.19 prints inclusive costs whatever
    `--inclusive` says."""
    names = {}
    self_cost = {}
    total = 0
    fn = None
    after_calls = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
                continue
            if line.startswith("fn="):
                m = re.match(r"fn=\((\d+)\)(?: (.*))?", line)
                if m:
                    if m.group(2) is not None:
                        names[m.group(1)] = m.group(2)
                    fn = names.get(m.group(1), m.group(1))
                else:
                    fn = line[3:]
                continue
            if line.startswith(("cfn=", "cfi=", "cfl=", "cob=")):
                m = re.match(r"cfn=\((\d+)\) (.*)", line)
                if m:
                    names[m.group(1)] = m.group(2)
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            if line and (line[0].isdigit() or line[0] in "+-*"):
                if after_calls:
                    after_calls = False
                    continue
                parts = line.split()
                if fn is not None and len(parts) >= 2:
                    self_cost[fn] = self_cost.get(fn, 0) + int(parts[1])
    return total, self_cost


def part_callgrind(args, bed, work):
    out_file = work / "callgrind.out"
    wrap = (
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        "--vgdb=yes",
    )
    s = setup(args, bed, work / "callgrind", wrap=wrap)
    try:
        pid = s["daemon"].pid
        b.run(["callgrind_control", "-z", str(pid)], timeout=120)
        res = iperf_bytes(s["pod"]["ipv4"], 5201, args.callgrind_bytes, "bpeer")
        b.run(["callgrind_control", "-d", str(pid)], timeout=300)
        dumps = sorted(work.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        dump = dumps[-1]
    finally:
        teardown(s)
    total, self_cost = parse_callgrind(dump)
    if not total:
        raise RuntimeError("callgrind's dump has no totals")
    functions = [
        {"ir": ir, "symbol": sym, "category": categorize(sym), "kernel": False}
        for sym, ir in sorted(self_cost.items(), key=lambda kv: -kv[1])
    ]
    gib = res["bytes"] / 2**30
    for f in functions:
        f["share"] = f["ir"] / total
        f["ir_per_gib"] = f["ir"] / gib
    shutil.copy(dump, args.out / "profile-callgrind.out")
    return {
        "iperf3": res,
        "instructions": total,
        "instructions_per_gib": total / gib,
        "functions": functions[: args.top * 4],
        "categories": rollup(functions),
        "command": f"valgrind --tool=callgrind tailnet-cnid; callgrind_control -z, iperf3 -R -n {args.callgrind_bytes} "
        "(1 stream), callgrind_control -d; self cost per function from the dump",
    }


def part_profile(args, bed, work):
    out = {"machine": b.machine(), "categories": [name for name, _ in CATEGORIES], "patterns": dict(CATEGORIES)}
    if "perf" in args.tools:
        out["perf"] = part_perf(args, bed, work)
        b.log("perf: " + json.dumps(out["perf"]["categories"]))
    if "callgrind" in args.tools:
        # A fresh control database is not needed: the pod of the perf run
        # was deleted, and this one is a new node.
        out["callgrind"] = part_callgrind(args, bed, work)
        b.log("callgrind: " + json.dumps(out["callgrind"]["categories"]))
    out["machine"]["loadavg_end"] = os.getloadavg()[0]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    b.add_common_arguments(ap)
    ap.add_argument("--seconds", type=int, default=10, help="perf: iperf3 -t")
    ap.add_argument("--freq", type=int, default=999, help="perf: samples per second per CPU")
    ap.add_argument("--callgrind-bytes", default="64M", help="callgrind: iperf3 -n")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--tools", nargs="+", default=["perf", "callgrind"], choices=["perf", "callgrind"])
    args = ap.parse_args()
    for tool in ["perf"] * ("perf" in args.tools) + ["valgrind", "callgrind_control"] * ("callgrind" in args.tools):
        if not shutil.which(tool):
            sys.exit(f"bench: '{tool}' is required")
    b.run_part("profile", args, part_profile)


if __name__ == "__main__":
    main()
