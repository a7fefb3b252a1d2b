#!/usr/bin/env python3
"""Two nodes: a pod on one of our daemons talking to a pod on a second of
our daemons, against two official kernel-TUN tailscaled nodes in the same
topology, against plain TCP over the bare veth that joins the two nodes.

    node A (netns b2a)          veth 10.207.0.1 <-> .2     node B (netns b2b)
      tailnet-cnid + pod A  ------------------------------  tailnet-cnid + pod B
    node K1 (netns b2k1)        veth 10.208.0.1 <-> .2     node K2 (netns b2k2)
      tailscaled --tun      ------------------------------  tailscaled --tun

Every node's namespace reaches the control server (and its DERP relay) only
through `bed.Namespace`'s socat hops over loopback, so the only way a
WireGuard packet can travel between two nodes without passing rscale is
the veth: the veth's byte counters during each run tell whether the run
went direct, independently of what the nodes say about their paths (also
recorded). iperf3 runs pod A -> pod B (and -R), K1 -> K2 (and -R), and
node A -> node B over the bare veth, interleaved in each round.

Run by bench/bed.sh (`bench/run.sh twonode`) inside scripts/isolated.sh
after `scripts/testbed.sh up`. Writes OUT/twonode.json. Standard library
only, like bed.py, whose helpers it uses.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bed as b  # noqa: E402  (the bench helpers live next to this file)

VETHS = {
    # what -> (namespace, ifname) whose tx+rx counts the run's traffic
    "ours": ("b2a", "b2av"),
    "kernel": ("b2k1", "b2k1v"),
    "veth": ("b2a", "b2av"),
}


def link_info(netns, ifname):
    """`ip -s -j link show` of one interface: MTU and byte counters."""
    r = b.run(["ip", "netns", "exec", netns, "ip", "-s", "-j", "link", "show", "dev", ifname])
    info = json.loads(r.stdout)[0]
    stats = info.get("stats64", info.get("stats", {}))
    return {
        "mtu": info.get("mtu"),
        "tx_bytes": stats.get("tx", {}).get("bytes", 0),
        "rx_bytes": stats.get("rx", {}).get("bytes", 0),
    }


def veth_bytes(what):
    info = link_info(*VETHS[what])
    return info["tx_bytes"] + info["rx_bytes"]


def tun_mtu(netns):
    """The MTU of the tailnet interface in a namespace (ours: the pod's
    `ts0`; theirs: the TUN tailscaled made)."""
    r = b.run(["ip", "netns", "exec", netns, "ip", "-j", "link", "show"])
    for link in json.loads(r.stdout):
        if link.get("ifname") == "ts0" or str(link.get("ifname", "")).startswith("tsb2"):
            return {"ifname": link["ifname"], "mtu": link.get("mtu")}
    return None


def pod_path(daemon):
    pods = daemon.status()["pods"]
    return [{k: p[k] for k in ("path", "peers_direct", "peers_derp")} for p in pods]


def ping(netns, ip, count=5):
    """Traffic that keeps the path discovery going; ICMP echo, as the
    reachability checks do."""
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", ip],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode == 0


def wait_direct_ours(daemons, pod_a, ip_b, seconds):
    """Until both daemons report their pod's one active peer as direct."""

    def direct():
        ping(pod_a["netns"], ip_b, count=3)
        return all(
            any(p["path"] == "direct" for p in pod_path(d)) for d in daemons
        )

    return b.waited(seconds, "a direct path between our two pods", direct, interval=0.5)


def wait_direct_theirs(k1, k2, seconds):
    def direct():
        k1.cli("ping", "-c", "3", "--timeout", "2s", k2.ipv4, check=False, timeout=30)
        return k1.path_to(k2.ipv4).startswith("direct") and k2.path_to(k1.ipv4).startswith("direct")

    return b.waited(seconds, "a direct path between the two tailscaleds", direct, interval=0.5)


def part_twonode(args, bed, work):
    namespaces = [b.Namespace(ns, bed, work) for ns in ("b2a", "b2b", "b2k1", "b2k2")]
    # Links before the nodes start: each node sees the veth's address among
    # its own and offers it as an endpoint.
    b.link(("b2a", "b2av", "10.207.0.1"), ("b2b", "b2bv", "10.207.0.2"))
    b.link(("b2k1", "b2k1v", "10.208.0.1"), ("b2k2", "b2k2v", "10.208.0.2"))
    procs = []
    nodes = []
    daemons = []
    out = {"machine": b.machine(), "seconds": args.seconds, "rounds": args.rounds}
    try:
        pods = {}
        for side in ("a", "b"):
            d_work = work / f"node-{side}"
            d_work.mkdir()
            daemon = b.Daemon(bed, args.bin, d_work, netns=f"b2{side}")
            daemons.append(daemon)
            p = b.Pods(daemon, args.shim, d_work, f"b2p{side}")
            # One bridge and address range per node: the bridge plugin runs
            # here, next to the other node's.
            p.bridge_conf["bridge"] = f"b2br{side}"
            p.bridge_conf["ipam"]["subnet"] = "10.211.0.0/16" if side == "a" else "10.212.0.0/16"
            pods[side] = (p, p.add(p.new_netns()))
        pod_a, pod_b = pods["a"][1], pods["b"][1]
        k1 = b.Tailscaled(bed, work, "k1", "kernel", tun="tsb2k1", netns="b2k1")
        nodes.append(k1)
        k2 = b.Tailscaled(bed, work, "k2", "kernel", tun="tsb2k2", netns="b2k2")
        nodes.append(k2)
        rscale = bed.rscale_pid()

        targets = {
            "ours": {
                "client_ns": pod_a["netns"],
                "server_ns": pod_b["netns"],
                "ip": pod_b["ipv4"],
                "port": 5201,
                "pids": {"node_a": daemons[0].pid, "node_b": daemons[1].pid},
            },
            "kernel": {
                "client_ns": "b2k1",
                "server_ns": "b2k2",
                "ip": k2.ipv4,
                "port": 5202,
                "pids": {"node_a": k1.pid, "node_b": k2.pid},
            },
            "veth": {"client_ns": "b2a", "server_ns": "b2b", "ip": "10.207.0.2", "port": 5203, "pids": {}},
        }
        for name, t in targets.items():
            procs.append(
                b.Proc(
                    f"iperf3-{name}",
                    ["iperf3", "-s", "-B", t["ip"], "-p", str(t["port"])],
                    work / f"iperf3-{name}.log",
                    netns=t["server_ns"],
                )
            )

        # Reachable first, then direct: the measured runs must not be relayed.
        pinger = b.Pinger(pod_a["netns"], interval=0.1)
        try:
            pinger.watch(pod_b["ipv4"])
            if pinger.wait(pod_b["ipv4"], 90) is None:
                raise RuntimeError("no ICMP reply from pod B through our two daemons")
        finally:
            pinger.close()
        b.wait_until(90, "K1 to learn K2", lambda: k1.knows(k2.ipv4), interval=0.5)
        pinger = b.Pinger("b2k1", interval=0.1)
        try:
            pinger.watch(k2.ipv4)
            if pinger.wait(k2.ipv4, 90) is None:
                raise RuntimeError("no ICMP reply from K2 through K1")
        finally:
            pinger.close()
        out["direct_before"] = {
            "ours": wait_direct_ours(daemons, pod_a, pod_b["ipv4"], args.direct_timeout),
            "kernel": wait_direct_theirs(k1, k2, args.direct_timeout),
        }
        out["paths_before"] = {
            "ours_node_a": pod_path(daemons[0]),
            "ours_node_b": pod_path(daemons[1]),
            "k1_to_k2": k1.path_to(k2.ipv4),
            "k2_to_k1": k2.path_to(k1.ipv4),
        }
        out["mtu"] = {
            "ours_pod_a": tun_mtu(pod_a["netns"]),
            "ours_pod_b": tun_mtu(pod_b["netns"]),
            "kernel_k1": tun_mtu("b2k1"),
            "kernel_k2": tun_mtu("b2k2"),
            "veth": link_info("b2a", "b2av")["mtu"],
        }
        b.log(f"paths before: {json.dumps(out['paths_before'])}; MTUs: {json.dumps(out['mtu'])}")

        samples = []
        for r in range(args.rounds):
            for streams in args.streams:
                for reverse in (False, True):
                    for name, t in targets.items():
                        watched = dict(t["pids"], rscale=rscale)

                        def iperf_counted(name=name, t=t, streams=streams, reverse=reverse):
                            wire_before = veth_bytes(name)
                            res = b.iperf(t["ip"], t["port"], args.seconds, streams, reverse, netns=t["client_ns"])
                            res["veth_bytes"] = veth_bytes(name) - wire_before
                            return res

                        res = b.with_cpu(watched, iperf_counted)
                        wire = res["veth_bytes"]
                        res.update(
                            client=name,
                            streams=streams,
                            direction="b->a" if reverse else "a->b",
                            round=r,
                        )
                        samples.append(res)
                        mbps = res.get("bits_per_second", 0) / 1e6
                        share = wire / res["bytes"] if res.get("bytes") else 0
                        b.log(
                            f"round {r + 1} {name:6} P{streams} {res['direction']}: {mbps:8.1f} Mbit/s, "
                            f"veth carried {share:.2f}x the payload {res.get('error', '')}"
                        )
        out["paths_after"] = {
            "ours_node_a": pod_path(daemons[0]),
            "ours_node_b": pod_path(daemons[1]),
            "k1_to_k2": k1.path_to(k2.ipv4),
            "k2_to_k1": k2.path_to(k1.ipv4),
        }
        out["samples"] = samples
        out["summary"] = summarize(samples)
        out["machine"]["loadavg_end"] = os.getloadavg()[0]
        b.log(f"paths after: {json.dumps(out['paths_after'])}")
        for p in procs:
            p.stop()
        for side in ("a", "b"):
            p, pod = pods[side]
            p.delete(pod)
    finally:
        for p in procs:
            p.stop()
        for n in nodes:
            n.stop()
        for d in daemons:
            d.stop()
        for ns in namespaces:
            ns.stop()
    return out


def summarize(samples):
    summary = []
    for (client, streams, direction), runs, good, per_gib in b.runs_by_case(samples):
        summary.append(
            {
                "client": client,
                "streams": streams,
                "direction": direction,
                "mbit_s": b.spread([r["bits_per_second"] / 1e6 for r in good]),
                # Both nodes' processes together; the veth has none.
                "nodes_cpu_s_per_gib": b.spread([p.get("node_a", 0) + p.get("node_b", 0) for p in per_gib])
                if client != "veth"
                else None,
                "rscale_cpu_s_per_gib": b.spread([p["rscale"] for p in per_gib]),
                # >= 1: every payload byte crossed the veth (direct); ~0: relayed.
                "veth_per_payload": b.spread([r["veth_bytes"] / r["bytes"] for r in good if r["bytes"]]),
                "errors": [r["error"] for r in runs if "error" in r],
            }
        )
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    b.add_common_arguments(ap)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5, help="iperf3 -t")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--direct-timeout", type=float, default=60.0, help="seconds to wait for direct paths")
    args = ap.parse_args()
    b.run_part("twonode", args, part_twonode)


if __name__ == "__main__":
    main()
