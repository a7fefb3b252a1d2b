#!/usr/bin/env python3
"""Restart blackout: how long after a SIGKILL + restart of the daemon each
running pod answers the official tailscaled peer again. Run by bench/bed.sh
inside scripts/isolated.sh, after `scripts/testbed.sh up` and its env.

    restart.py --bin DIR --shim SHIM --out DIR [--pods 50] [--rounds 3]

The peer (kernel TUN, own namespace, as in `bed.py pods`) pings every pod
every 50 ms from before the kill until each has answered after the restart.
Per pod, the figure is the time from the restart (the new process started)
to the first echo reply. Each round is run twice: as the daemon does it
(its pods re-handshake with the peers they remember) and with the
remembered sessions deleted before the restart (the peer finds out at its
own rekey timeout), the behaviour before sessions were remembered.

Where the time goes: the restarted daemon logs each pod's recovery
milestones (tailnet_cnid::recovery); per milestone, the p50 and p99 time
from the restart are kept with the resumed rounds.

Writes OUT/restart.json. Standard library only.
"""

import argparse
import json
import os
import re
import shutil
import time
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bed as tb

# The daemon compares live sessions with the remembered ones every 5 s.
REMEMBERED_WITHIN = 30.0

# The daemon's log: warnings, pod events (their spans name the pod) and
# every pod's recovery milestones.
DAEMON_LOG = "warn,tailnet_cnid::podmgr=info,tailnet_cnid::recovery=debug"
# A milestone line of the text log: time, then the pod, then the message.
MILESTONE = re.compile(
    r"^(?P<time>\S+Z)\s.*?container_id=(?P<pod>[^\s}:]+).*tailnet_cnid::recovery: (?P<what>[a-z ]+?)(?:\s+\w+=|\s*$)"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def milestones(log_path, offset, restarted_at):
    """Per milestone, the seconds from the restart (wall clock
    `restarted_at`) at which each pod reached it, from the log after
    `offset`."""
    seen = {}
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        m = MILESTONE.match(ANSI.sub("", line))
        if not m:
            continue
        at = datetime.fromisoformat(m["time"].replace("Z", "+00:00")).timestamp()
        # A pod's first time at each milestone.
        seen.setdefault(m["what"].strip(), {}).setdefault(m["pod"], at - restarted_at)
    return {
        what: {
            "pods": len(times),
            "p50_s": round(tb.percentile(list(times.values()), 0.5), 3),
            "p99_s": round(tb.percentile(list(times.values()), 0.99), 3),
        }
        for what, times in seen.items()
    }


def remembered(state_dir, pod):
    try:
        data = json.loads((state_dir / "sessions" / f"{pod['id']}.json").read_text())
        return bool(data.get("peers"))
    except (OSError, ValueError):
        return False


def reach_all(pinger, pods, timeout):
    """Pings every pod until each answers; the first reply time per pod."""
    for pod in pods:
        pinger.watch(pod["ipv4"])
    return {pod["ipv4"]: pinger.wait(pod["ipv4"], timeout) for pod in pods}


def one_restart(args, bed, work, daemon, pinger, pods, forget):
    state_dir = work / "state"
    # Traffic before the kill, until every pod's session is on disk.
    deadline = time.monotonic() + REMEMBERED_WITHIN
    while not all(remembered(state_dir, p) for p in pods):
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon did not remember every pod's session")
        reach_all(pinger, pods, 1)
    missing = [p["ipv4"] for p, t in zip(pods, reach_all(pinger, pods, 10).values()) if t is None]
    if missing:
        raise RuntimeError(f"pods unreachable before the kill: {missing}")

    daemon.proc.popen.kill()
    daemon.proc.popen.wait()
    if forget:
        shutil.rmtree(state_dir / "sessions", ignore_errors=True)
    for pod in pods:
        pinger.watch(pod["ipv4"])
    log_path = work / "daemon.log"
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    restarted_wall = time.time()
    restarted_at = time.monotonic()
    daemon = tb.Daemon(bed, args.bin, work)
    replies = {pod["ipv4"]: pinger.wait(pod["ipv4"], args.reach_timeout) for pod in pods}
    reach = [(t - restarted_at) if t else None for t in replies.values()]
    ok = sorted(v for v in reach if v is not None)
    return daemon, {
        "p50_s": tb.percentile(ok, 0.5) if ok else None,
        "p99_s": tb.percentile(ok, 0.99) if ok else None,
        "max_s": max(ok) if ok else None,
        "unreachable": len(reach) - len(ok),
        "reach_s": [round(v, 3) if v is not None else None for v in reach],
        "milestones": milestones(log_path, log_offset, restarted_wall),
    }


def part_restart(args, bed, work):
    os.environ.setdefault("TAILNET_CNID_LOG", DAEMON_LOG)
    out = {
        "machine": tb.machine(),
        "peer": "official tailscaled, kernel TUN, own namespace",
        "pods": args.pods,
    }
    ns = tb.start_peer(bed, work)
    daemon = tb.Daemon(bed, args.bin, work)
    peer = tb.Tailscaled(bed, work, "peer", "kernel", tun="tsbpeer", netns="bpeer")
    pods_api = tb.Pods(daemon, args.shim, work, "brst")
    pinger = tb.Pinger("bpeer", interval=0.05)
    try:
        pods = [pods_api.new_netns() for _ in range(args.pods)]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(pods_api.add, pods))
        missing = [ip for ip, t in reach_all(pinger, pods, args.reach_timeout).items() if t is None]
        if missing:
            raise RuntimeError(f"pods never reachable: {missing}")
        results = {"resumed": [], "forgotten": []}
        for r in range(args.rounds):
            for kind, forget in (("resumed", False), ("forgotten", True)):
                daemon, got = one_restart(args, bed, work, daemon, pinger, pods, forget)
                pods_api.daemon = daemon
                results[kind].append(got)
                summary = {k: v for k, v in got.items() if k not in ("reach_s", "milestones")}
                tb.log(f"restart round {r + 1}, {kind}: {json.dumps(summary)}")
                for what, figures in got["milestones"].items():
                    tb.log(f"  {what}: {json.dumps(figures)}")
        for kind, rounds in results.items():
            out[kind] = {
                "rounds": rounds,
                "p50_s": tb.spread([rd["p50_s"] for rd in rounds]),
                "p99_s": tb.spread([rd["p99_s"] for rd in rounds]),
                "max_s": tb.spread([rd["max_s"] for rd in rounds]),
                "unreachable": sum(rd["unreachable"] for rd in rounds),
            }
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(pods_api.delete, pods))
    finally:
        pinger.close()
        # The processes in the peer's namespace go before it.
        for proc in reversed(tb.STARTED):
            proc.stop()
        ns.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tb.add_common_arguments(ap)
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=10, help="ADDs at once")
    ap.add_argument("--reach-timeout", type=float, default=60.0)
    tb.run_part("restart", ap.parse_args(), part_restart, tools=("ip",))


if __name__ == "__main__":
    main()
