#!/usr/bin/env python3
"""Handshake flood: a stream of forged WireGuard handshake initiations at
one pod's published UDP port, and the iperf3 throughput of another pod of
the same daemon during it, as a ratio to the same run without the flood.

Run by bench/bed.sh (`bench/run.sh flood`) inside scripts/isolated.sh after
`scripts/testbed.sh up`. The forgeries carry a valid mac1 for the victim's
node key (any peer knows it, so this is the costliest cheap attack: every
one passes the first check) and random content, sent from the official
peer's namespace at a fixed rate. Writes OUT/flood.json.

Standard library only, like bed.py, whose helpers it uses.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bed as b  # noqa: E402  (the bench helpers live next to this file)

# Sends 4096 distinct forged initiations round-robin at `rate` per second
# for `seconds`, to `host:port`, and counts the cookie replies that come
# back; prints how many went out, how many replies came, and its own CPU
# time. Runs in the peer's namespace, as its own process, so its CPU is
# not the daemon's.
SENDER = r"""
import hashlib, os, socket, struct, sys, time
host, port, key_hex, rate, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
mac1_key = hashlib.blake2s(b"mac1----" + bytes.fromhex(key_hex)).digest()
packets = []
for _ in range(4096):
    # type 1, sender index, ephemeral, sealed static, sealed timestamp
    body = struct.pack("<I", 1) + os.urandom(4 + 32 + 48 + 28)
    packets.append(body + hashlib.blake2s(body, digest_size=16, key=mac1_key).digest() + bytes(16))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
batch = max(1, rate // 200)
sent = dropped = replies = 0
def drain():
    global replies
    while True:
        try:
            if s.recv(128)[:1] == b"\x03":
                replies += 1
        except BlockingIOError:
            return
start = time.monotonic()
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    drain()
    due = int((now - start) * rate)
    while sent + dropped < due:
        for _ in range(min(batch, due - sent - dropped)):
            try:
                s.sendto(packets[(sent + dropped) % len(packets)], (host, port))
                sent += 1
            except BlockingIOError:
                dropped += 1
    time.sleep(0.002)
elapsed = time.monotonic() - start
time.sleep(0.2)
drain()
print(f'{{"sent": {sent}, "not_sent": {dropped}, "cookie_replies": {replies}, "seconds": {elapsed:.3f}, "cpu_s": {time.process_time():.3f}}}')
"""


def udp_receive_errors():
    """Datagrams this namespace's UDP sockets (the daemon's) lost because
    the socket's buffer was full: what arrived faster than it was read."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:]))["RcvbufErrors"])


def context_switches(pid):
    """Context switches of every thread of pid so far: how often the
    daemon was woken (and put to sleep), which a flood read a datagram at
    a time multiplies."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def node_key_hex(peer, ip):
    """The raw node key of the tailnet node holding ip, as the peer sees it."""
    for p in (peer.status().get("Peer") or {}).values():
        if ip in (p.get("TailscaleIPs") or []):
            return p["PublicKey"].split(":", 1)[1]
    raise RuntimeError(f"the peer does not know {ip}")


def published_port(peer, ip):
    """The UDP port of the pod holding ip, from the endpoints it published
    (or the peer's direct path to it): one socket per pod, bound on every
    address, so any of them names it."""

    def find():
        for p in (peer.status().get("Peer") or {}).values():
            if ip in (p.get("TailscaleIPs") or []):
                for addr in (p.get("Addrs") or []) + [p.get("CurAddr") or ""]:
                    port = addr.rpartition(":")[2]
                    if port.isdigit() and int(port) > 0:
                        return int(port)
        return None

    return b.wait_until(60, f"{ip}'s published UDP port", find, interval=0.5)


def part_flood(args, bed, work):
    ns = b.start_peer(bed, work)
    daemon = b.Daemon(bed, args.bin, work)
    procs = []
    out = {"machine": b.machine(), "seconds": args.seconds, "rounds": args.rounds, "rate": args.rate}
    try:
        pods = b.Pods(daemon, args.shim, work, "bflood")
        victim = pods.add(pods.new_netns())
        target = pods.add(pods.new_netns())
        peer = b.Tailscaled(bed, work, "peer", "kernel", tun="tsbpeer", netns="bpeer")
        procs.append(
            b.Proc(
                "iperf3-target",
                ["iperf3", "-s", "-B", target["ipv4"], "-p", "5201"],
                work / "iperf3-target.log",
                netns=target["netns"],
            )
        )
        pinger = b.Pinger("bpeer", interval=0.1)
        try:
            for pod in (victim, target):
                b.wait_reachable(peer, pinger, pod["ipv4"], pod["name"])
        finally:
            pinger.close()
        key = node_key_hex(peer, victim["ipv4"])
        port = published_port(peer, victim["ipv4"])
        out["victim_endpoint"] = f"10.205.0.1:{port}"
        b.log(f"flooding 10.205.0.1:{port} at {args.rate}/s; measuring {target['ipv4']}")
        samples = []
        for r in range(args.rounds):
            for flooded in (False, True):
                sender = None
                if flooded:
                    sender = b.subprocess.Popen(
                        ["ip", "netns", "exec", "bpeer", sys.executable, "-c", SENDER,
                         "10.205.0.1", str(port), key, str(args.rate), str(args.seconds + 4)],
                        stdout=b.subprocess.PIPE,
                        stderr=b.subprocess.PIPE,
                        text=True,
                    )
                    time.sleep(2)  # the pod is under load before iperf3 starts
                cpu0, lost0 = b.cpu_seconds(daemon.pid), udp_receive_errors()
                switches0, wall0 = context_switches(daemon.pid), time.monotonic()
                res = b.iperf(target["ipv4"], 5201, args.seconds, 1, False, netns="bpeer")
                res["daemon_cpu_s"] = b.cpu_seconds(daemon.pid) - cpu0
                res["udp_rcvbuf_errors"] = udp_receive_errors() - lost0
                res["daemon_ctx_switches"] = context_switches(daemon.pid) - switches0
                res["wall_s"] = time.monotonic() - wall0
                if sender is not None:
                    stdout, stderr = sender.communicate(timeout=args.seconds + 30)
                    try:
                        res["flood"] = json.loads(stdout)
                    except json.JSONDecodeError:
                        res["flood"] = {"error": (stderr or stdout).strip()[-300:]}
                res.update(round=r, flooded=flooded)
                samples.append(res)
                mbps = res.get("bits_per_second", 0) / 1e6
                b.log(f"round {r + 1} {'flood' if flooded else 'quiet'}: {mbps:8.1f} Mbit/s {res.get('error', '')}")
        out["samples"] = samples
        out["summary"] = summarize(samples)
        out["victim_status"] = [
            {k: p.get(k) for k in ("hostname", "path", "error")} for p in daemon.status()["pods"]
        ]
        for p in procs:
            p.stop()
        pods.delete(victim)
        pods.delete(target)
        peer.stop()
    finally:
        for p in procs:
            p.stop()
        daemon.stop()
        ns.stop()
    return out


def summarize(samples):
    def mbit(flooded):
        return [s["bits_per_second"] / 1e6 for s in samples if s["flooded"] == flooded and "bits_per_second" in s]

    quiet, flood = mbit(False), mbit(True)
    floods = [s["flood"] for s in samples if "sent" in s.get("flood", {})]
    sent = [f["sent"] / f["seconds"] for f in floods]
    ratios = [
        f["bits_per_second"] / q["bits_per_second"]
        for q, f in zip(
            [s for s in samples if not s["flooded"]], [s for s in samples if s["flooded"]]
        )
        if "bits_per_second" in q and "bits_per_second" in f
    ]
    return {
        "quiet_mbit_s": b.spread(quiet),
        "flood_mbit_s": b.spread(flood),
        "ratio": b.spread(ratios),
        "ratio_of_medians": (b.spread(flood)["median"] / b.spread(quiet)["median"]) if quiet and flood else None,
        "forged_per_s": b.spread(sent),
        "cookie_replies_per_s": b.spread([f.get("cookie_replies", 0) / f["seconds"] for f in floods]),
        "sender_cpu_share": b.spread([f.get("cpu_s", 0) / f["seconds"] for f in floods]),
        "udp_rcvbuf_errors_flood": b.spread([s["udp_rcvbuf_errors"] for s in samples if s["flooded"]]),
        "daemon_cpu_s_quiet": b.spread([s["daemon_cpu_s"] for s in samples if not s["flooded"]]),
        "daemon_cpu_s_flood": b.spread([s["daemon_cpu_s"] for s in samples if s["flooded"]]),
        "daemon_ctx_switches_per_s_quiet": b.spread(
            [s["daemon_ctx_switches"] / s["wall_s"] for s in samples if not s["flooded"]]
        ),
        "daemon_ctx_switches_per_s_flood": b.spread(
            [s["daemon_ctx_switches"] / s["wall_s"] for s in samples if s["flooded"]]
        ),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    b.add_common_arguments(ap)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 -t")
    ap.add_argument("--rate", type=int, default=20000, help="forged initiations per second")
    b.run_part("flood", ap.parse_args(), part_flood)


if __name__ == "__main__":
    main()
