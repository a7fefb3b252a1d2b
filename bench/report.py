#!/usr/bin/env python3
"""Turns target/bench/*.json into the tables of BENCHMARKS.md and prints
them. Each part's figures sit between `<!-- bench:PART -->` and
`<!-- /bench:PART -->` markers; a part without fresh JSON keeps what the file
already says, so parts can be re-measured one at a time.

    python3 bench/report.py target/bench BENCHMARKS.md
"""

import json
import re
import sys
from pathlib import Path

MIB = 2**20


def failed_runs(data):
    """The line naming every distinct error of the summary's runs, if any."""
    errors = sorted({e for s in data["summary"] for e in s.get("errors", [])})
    if not errors:
        return ""
    return "\nFailed runs: " + "; ".join(f"`{e}`" for e in errors) + "\n"


def load(out, name):
    path = out / f"{name}.json"
    if not path.exists():
        return None, None
    meta_path = out / f"{name}.meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return json.loads(path.read_text()), meta


def provenance(meta, data=None):
    m = dict(meta or {})
    if isinstance(data, dict) and "machine" in data:
        m.setdefault("nproc", data["machine"].get("nproc"))
        m.setdefault("kernel", data["machine"].get("kernel"))
    command = m.get("command") or (data or {}).get("command") or "?"
    return (
        f"Measured {m.get('date', '?')} on {m.get('nproc', '?')} cores, Linux {m.get('kernel', '?')}, "
        f"commit {m.get('commit', '?')}, by `{command}`. Other builds may have been running on the "
        "same machine: compare figures within one run, not across runs.\n"
    )


def spread(s, scale=1.0, digits=0, unit=""):
    """median (min-max) of a {median,min,max} record."""
    if not s:
        return "n/a"
    f = lambda v: f"{v * scale:,.{digits}f}"
    if s.get("n", 2) == 1 or s["min"] == s["max"]:
        return f"{f(s['median'])}{unit}"
    return f"{f(s['median'])}{unit} ({f(s['min'])}-{f(s['max'])})"


def spread_of(values):
    """The {median,min,max} record of a non-empty list."""
    s = sorted(values)
    return {"median": s[round(0.5 * (len(s) - 1))], "min": s[0], "max": s[-1], "n": len(s)}


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def met(ok):
    return "met" if ok else "not met"


# ------------------------------------------------------------------ parts --


def throughput_rows(data):
    by = {(s["client"], s["streams"], s["direction"]): s for s in data["summary"]}
    keys = sorted({(s["streams"], s["direction"]) for s in data["summary"]}, key=lambda k: (k[0], k[1] != "pod->peer"))
    return by, keys


def ratio(by, a, b, key):
    x, y = by.get((a, *key)), by.get((b, *key))
    if not x or not y or not x["mbit_s"] or not y["mbit_s"] or not y["mbit_s"]["median"]:
        return None
    return x["mbit_s"]["median"] / y["mbit_s"]["median"]


def cpu_ratio(by, a, b, key):
    x, y = by.get((a, *key)), by.get((b, *key))
    if not x or not y or not x["client_cpu_s_per_gib"] or not y["client_cpu_s_per_gib"]:
        return None
    theirs = y["client_cpu_s_per_gib"]["median"]
    return x["client_cpu_s_per_gib"]["median"] / theirs if theirs else None


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}x"


def render_throughput(data, meta):
    by, keys = throughput_rows(data)
    rows = []
    for key in keys:
        cell = lambda c: spread(by[(c, *key)]["mbit_s"]) if (c, *key) in by else "n/a"
        rows.append(
            [
                f"{key[0]}",
                key[1],
                cell("ours"),
                cell("userspace"),
                cell("kernel"),
                fmt_ratio(ratio(by, "ours", "userspace", key)),
                fmt_ratio(ratio(by, "ours", "kernel", key)),
            ]
        )
    out = provenance(meta, data)
    out += (
        f"\niperf3 TCP, {data['seconds']} s per run, {data['rounds']} rounds interleaved; "
        "Mbit/s median (min-max):\n\n"
    )
    out += table(
        ["streams", "direction", "ours (pod, tailnet-cnid)", "tailscaled userspace", "tailscaled kernel TUN", "ours / userspace", "ours / kernel"],
        rows,
    )
    rows = []
    for key in keys:
        def cpu(c):
            s = by.get((c, *key))
            if not s or not s["client_cpu_s_per_gib"]:
                return "n/a"
            return f"{spread(s['client_cpu_s_per_gib'], digits=1)} / {spread(s['peer_cpu_s_per_gib'], digits=1)}"

        relay = by.get(("ours", *key), {}).get("rscale_cpu_s_per_gib")
        rows.append([f"{key[0]}", key[1], cpu("ours"), cpu("userspace"), cpu("kernel"), spread(relay, digits=1)])
    out += (
        "\nCPU seconds per GiB moved, median (min-max), from /proc/PID/stat: the far side's "
        "process (tailnet-cnid for ours, tailscaled for theirs) / the peer tailscaled; rscale "
        "counts if ours was relayed through DERP:\n\n"
    )
    out += table(
        ["streams", "direction", "ours: tailnet-cnid / peer", "userspace: tailscaled / peer", "kernel TUN: tailscaled / peer", "rscale during ours"],
        rows,
    )
    busy = {}
    for sample in data.get("samples", []):
        if "cpu_s" not in sample or "error" in sample:
            continue
        key = (sample["client"], sample["streams"], sample["direction"])
        cores = busy.setdefault(key, ([], []))
        cores[0].append(sample["cpu_s"]["client"] / data["seconds"])
        cores[1].append(sample["cpu_s"]["peer"] / data["seconds"])
    if busy:
        rows = []
        for key in keys:
            def cores(c):
                b = busy.get((c, *key))
                return f"{spread(spread_of(b[0]), digits=2)} / {spread(spread_of(b[1]), digits=2)}" if b else "n/a"

            rows.append([f"{key[0]}", key[1], cores("ours"), cores("userspace"), cores("kernel")])
        out += (
            "\nCores busy during each run, median (min-max): the far side's process / the peer "
            "tailscaled. A process near 1.0 is held by one core; the two cores are shared by "
            "both, iperf3 at both ends and the kernel's TCP:\n\n"
        )
        out += table(
            ["streams", "direction", "ours: tailnet-cnid / peer", "userspace: tailscaled / peer", "kernel TUN: tailscaled / peer"],
            rows,
        )
    p = data.get("paths", {})
    ours = p.get("ours_daemon") or [{}]
    out += (
        f"\nPaths at the end of the run: ours `{ours[0].get('path', '?')}` "
        f"({ours[0].get('peers_direct', '?')} direct / {ours[0].get('peers_derp', '?')} relayed peers, "
        f"`tailnet-cnid status --json`), seen from the peer: ours `{p.get('peer_to_ours', '?')}`, "
        f"userspace `{p.get('peer_to_userspace', '?')}`, kernel `{p.get('peer_to_kernel', '?')}`.\n"
    )
    return out + failed_runs(data)


def render_crypto(data, meta, throughput):
    g = data["gbit_s"]
    med = lambda v: v[len(v) // 2]
    rows = [[f"{int(size):,} B", f"{med(v):.2f} ({v[0]:.2f}-{v[-1]:.2f})"] for size, v in g.items() if int(size) >= 256]
    out = provenance(meta)
    out += f"\n`{data['command']}`, Gbit/s median (min-max):\n\n"
    out += table(["block", "ChaCha20-Poly1305, one core"], rows)
    if throughput and "1024" in g:
        by, _ = throughput_rows(throughput)
        ceiling = med(g["1024"]) * 1000
        parts = []
        for direction in ("pod->peer", "peer->pod"):
            s = by.get(("ours", 1, direction))
            if s and s["mbit_s"]:
                parts.append(f"{direction} {s['mbit_s']['median']:.0f} Mbit/s = {s['mbit_s']['median'] / ceiling * 100:.1f}%")
        if parts:
            out += (
                "\nOur single-stream throughput as a fraction of that ceiling (1,024-byte blocks, "
                "close to our 1,280-byte MTU): " + ", ".join(parts) + ".\n"
            )
    return out


def crypto_ceiling_mbit(crypto):
    """One core's ChaCha20-Poly1305 rate at 1,024-byte blocks (close to the
    1,280-byte MTU), Mbit/s; None without a crypto run."""
    g = (crypto or {}).get("gbit_s", {})
    v = g.get("1024")
    return v[len(v) // 2] * 1000 if v else None


def twonode_ratio(by, a, b, key):
    x, y = by.get((a, *key)), by.get((b, *key))
    if not x or not y or not x["mbit_s"] or not y["mbit_s"] or not y["mbit_s"]["median"]:
        return None
    return x["mbit_s"]["median"] / y["mbit_s"]["median"]


def render_twonode(data, meta, crypto):
    by = {(s["client"], s["streams"], s["direction"]): s for s in data["summary"]}
    keys = sorted({(s["streams"], s["direction"]) for s in data["summary"]})
    ceiling = crypto_ceiling_mbit(crypto)
    pct = lambda v, of: "n/a" if v is None or not of else f"{v / of * 100:.0f}%"
    med = lambda c, key: (by.get((c, *key)) or {}).get("mbit_s") and by[(c, *key)]["mbit_s"]["median"]
    rows = []
    for key in keys:
        cell = lambda c: spread(by[(c, *key)]["mbit_s"]) if (c, *key) in by else "n/a"
        veth = med("veth", key)
        rows.append(
            [
                key[0],
                key[1],
                cell("ours"),
                cell("kernel"),
                cell("veth"),
                fmt_ratio(twonode_ratio(by, "ours", "kernel", key)),
                f"{pct(med('ours', key), veth)} / {pct(med('kernel', key), veth)}",
                f"{pct(med('ours', key), ceiling)} / {pct(med('kernel', key), ceiling)}",
            ]
        )
    out = provenance(meta, data)
    m = data.get("machine", {})
    out += (
        f"\nLoad average (1 min) {m.get('loadavg_start', 0):.1f} at the start, "
        f"{m.get('loadavg_end', 0):.1f} at the end: the machine was shared.\n"
        f"\niperf3 TCP, {data['seconds']} s per run, {data['rounds']} rounds interleaved; "
        "Mbit/s median (min-max). a->b: the client on node A sends; b->a: `-R`.\n\n"
    )
    out += table(
        [
            "streams",
            "direction",
            "ours: pod A -> pod B, two tailnet-cnid",
            "two tailscaled kernel TUN",
            "bare veth (plain TCP)",
            "ours / kernel TUN",
            "of the veth: ours / kernel TUN",
            "of one core's ChaCha20-Poly1305"
            + (f" ({ceiling / 1000:.1f} Gbit/s): ours / kernel TUN" if ceiling else " (no crypto run)"),
        ],
        rows,
    )
    def cores(client, key):
        """Cores both nodes' processes kept busy during the runs."""
        vals = [
            (x["cpu_s"].get("node_a", 0) + x["cpu_s"].get("node_b", 0)) / data["seconds"]
            for x in data.get("samples", [])
            if (x["client"], x["streams"], x["direction"]) == (client, *key) and "bits_per_second" in x
        ]
        return spread(spread_of(vals), digits=2) if vals else "n/a"

    rows = []
    for key in keys:
        c = lambda n: spread((by.get((n, *key)) or {}).get("nodes_cpu_s_per_gib"), digits=1)
        w = lambda n: spread((by.get((n, *key)) or {}).get("veth_per_payload"), digits=2)
        rows.append([key[0], key[1], c("ours"), c("kernel"), cores("ours", key), cores("kernel", key), w("ours"), w("kernel"), w("veth")])
    out += (
        "\nCPU seconds per GiB of both nodes' processes together (the two daemons; the two "
        "tailscaleds; the kernel's work in other contexts, such as the iperf3 processes' own "
        "TCP and softirqs, is not counted for either), the cores those processes kept busy, and "
        "the bytes that crossed the veth between the nodes per payload byte (>= 1: the run went "
        "direct; relayed traffic goes through rscale on loopback and does not cross it):\n\n"
    )
    out += table(
        [
            "streams",
            "direction",
            "ours: CPU s/GiB",
            "kernel TUN: CPU s/GiB",
            "ours: cores busy",
            "kernel TUN: cores busy",
            "ours: veth/payload",
            "kernel TUN: veth/payload",
            "veth: veth/payload",
        ],
        rows,
    )
    mtu = data.get("mtu", {})
    ours_mtu = (mtu.get("ours_pod_a") or {}).get("mtu", "?")
    kern_mtu = (mtu.get("kernel_k1") or {}).get("mtu", "?")
    pa = data.get("paths_after", {})
    path = lambda v: ", ".join(p.get("path", "?") for p in v) if isinstance(v, list) else v
    out += (
        f"\nMTU: our pods' `ts0` {ours_mtu}, the tailscaleds' TUN {kern_mtu}, the veth "
        f"{mtu.get('veth', '?')}. Paths after the run: our pods `{path(pa.get('ours_node_a', []))}` / "
        f"`{path(pa.get('ours_node_b', []))}` (`tailnet-cnid status --json` on each node), "
        f"K1 to K2 `{pa.get('k1_to_k2', '?')}`, K2 to K1 `{pa.get('k2_to_k1', '?')}`.\n"
    )
    return out + failed_runs(data)


def render_profile(data, meta):
    out = provenance(meta, data)
    m = data.get("machine", {})
    out += (
        f"\nLoad average (1 min) {m.get('loadavg_start', 0):.1f} at the start, "
        f"{m.get('loadavg_end', 0):.1f} at the end.\n"
    )
    perf = data.get("perf")
    if perf:
        res = perf["iperf3"]
        per_gib = perf.get("daemon_cpu_s_per_gib")
        out += (
            f"\n**perf** (`{perf['command']}`): {res.get('bits_per_second', 0) / 1e6:,.0f} Mbit/s, "
            f"the daemon used {perf['daemon_cpu_s']:.1f} CPU s "
            f"({'n/a' if per_gib is None else f'{per_gib:.2f}'} s/GiB). Share of all samples on both "
            "cores, by thread name (`tokio-rt-worker`: the daemon; `tailscaled`: the peer; anything "
            "else ran beside the benchmark or is iperf3):\n\n"
        )
        out += table(["thread name", "share"], [[f"`{p['comm']}`", f"{p['share'] * 100:.1f}%"] for p in perf["processes"][:8]])
        out += "\nThe daemon's samples by category (first matching pattern, see `bench/profile.py`):\n\n"
        out += table(
            ["category", "share of the daemon", "CPU s per GiB"],
            [
                [k, f"{v * 100:.1f}%", "n/a" if per_gib is None else f"{v * per_gib:.2f}"]
                for k, v in perf["categories"].items()
                if v >= 0.005
            ],
        )
        out += "\nTop functions of the daemon:\n\n"
        out += table(
            ["share", "where", "function", "category"],
            [
                [f"{f['share'] * 100:.1f}%", "kernel" if f["kernel"] else f"`{f['dso']}`", f"`{f['symbol'][:90]}`", f["category"]]
                for f in perf["functions"][:15]
            ],
        )
    cg = data.get("callgrind")
    if cg:
        res = cg["iperf3"]
        out += (
            f"\n**callgrind** (`{cg['command']}`): {res['bytes'] / 2**20:,.0f} MiB moved, "
            f"{cg['instructions_per_gib'] / 1e9:.2f} G instructions per GiB in the daemon's user space "
            "(the kernel's share is not counted). By category:\n\n"
        )
        out += table(
            ["category", "share", "G instructions per GiB"],
            [[k, f"{v * 100:.1f}%", f"{v * cg['instructions_per_gib'] / 1e9:.2f}"] for k, v in cg["categories"].items() if v >= 0.005],
        )
        out += "\nTop functions:\n\n"
        out += table(
            ["share", "G instr. per GiB", "function", "category"],
            [
                [f"{f['share'] * 100:.1f}%", f"{f['ir_per_gib'] / 1e9:.2f}", f"`{f['symbol'][:90]}`", f["category"]]
                for f in cg["functions"][:15]
            ],
        )
    return out


def render_pods(data, meta):
    s = data["single"]
    b = data["burst"]
    cols = ("bridge_ms", "add_ms", "reach_ms", "del_ms")
    one = lambda q: [f"{s[c][q]:,.0f} ms" if c in s else "n/a" for c in cols]
    burst = lambda q: [spread(b.get(f"{c}_{q}"), unit=" ms") for c in cols]
    rows = [
        [f"1 pod, p50 (n={s['add_ms']['n']})", *one("p50")],
        [f"1 pod, p99 (n={s['add_ms']['n']})", *one("p99")],
        [f"{b['pods']} at once, p50", *burst("p50")],
        [f"{b['pods']} at once, p99", *burst("p99")],
    ]
    out = provenance(meta, data)
    out += (
        f"\nOne pod at a time, then {b['pods']} started at once ({len(b['rounds'])} rounds; "
        "median (min-max) of the rounds' percentiles). ADD is the shim's exec to its result; "
        "ADD-to-reachable runs from the shim's exec until the official tailscaled peer "
        "gets an ICMP echo reply from the pod over the tailnet; the bridge plugin's ADD, run "
        "first for every pod as a runtime would, is the floor."
    )
    if data.get("pool"):
        out += (
            f" The daemon kept a warm pool of {data['pool']} identities (`pool_size`), full before "
            "each single ADD and each burst, so every ADD bound a registered identity."
        )
    else:
        out += " No warm pool: every ADD registered a new identity."
    out += "\n\n"
    out += table(["", "bridge ADD (floor)", "our ADD", "ADD-to-reachable", "DEL"], rows)
    allr = b.get("all_reachable_s")
    out += (
        f"\nAll {b['pods']} reachable after {spread(allr, digits=2, unit=' s')}; pods never reachable: "
        f"{s.get('unreachable', 0)} single, {b.get('unreachable', 0)} in bursts.\n"
    )
    prof = data.get("burst_profile")
    if prof:
        r = prof["round"]
        pct = lambda k, q: f"{r[k][q]:,.0f} ms" if k in r else "n/a"
        out += (
            f"\nWhere the machine's {prof['cores']} cores went during one more burst of {b['pods']}, "
            "not counted above, from the ADDs' start until the last pod answered "
            f"({prof['seconds']:.2f} s; bridge ADD p99 {pct('bridge_ms', 'p99')}, our ADD p99 "
            f"{pct('add_ms', 'p99')}, ADD-to-reachable p99 {pct('reach_ms', 'p99')}), "
            f"from `{prof['command']}`. Kernel time is counted to the process it ran for.\n\n"
        )
        out += table(
            ["process", "cores busy", "share of the machine"],
            [[role, f"{c:.2f}", f"{c / prof['cores'] * 100:.0f}%"] for role, c in prof["by_role"].items()],
        )
    return out


def render_restart(data, meta):
    rows = []
    for kind, label in (
        ("resumed", "sessions resumed (the daemon)"),
        ("forgotten", "sessions forgotten (before: the peer waits for its rekey)"),
    ):
        d = data.get(kind)
        if not d:
            continue
        rows.append(
            [
                label,
                spread(d["p50_s"], digits=2, unit=" s"),
                spread(d["p99_s"], digits=2, unit=" s"),
                spread(d["max_s"], digits=2, unit=" s"),
                d["unreachable"],
            ]
        )
    out = provenance(meta, data)
    resumed = (data.get("resumed") or {}).get("p99_s")
    out += (
        f"\n{data['pods']} running pods; the official tailscaled peer (kernel TUN, own namespace) "
        "pings each every 50 ms; the daemon is killed with SIGKILL and started again. Per pod: "
        "time from the new process's start to the first echo reply. Median (min-max) over "
        f"{len((data.get('resumed') or {}).get('rounds', []))} rounds of each kind; "
        "\"forgotten\" deletes the remembered sessions before the restart. "
        f"Goal: p99 < 1 s with sessions resumed: {met(bool(resumed) and resumed['median'] < 1.0)}.\n\n"
    )
    out += table(["restart", "p50", "p99", "max", "pods never back"], rows)
    out += restart_milestones((data.get("resumed") or {}).get("rounds", []))
    return out


# Recovery milestones in the order a pod passes them.
RESTART_MILESTONES = (
    "record loaded",
    "plumbing checked",
    "control session started",
    "engine attached",
    "resume handshakes sent before the netmap",
    "sessions back",
    "first netmap",
)


def restart_milestones(rounds):
    """Where a resumed restart's time goes, from the daemon's log."""
    rows = []
    for what in RESTART_MILESTONES:
        got = [rd["milestones"][what] for rd in rounds if what in rd.get("milestones", {})]
        if not got:
            continue
        rows.append(
            [
                what,
                spread(spread_of([g["p50_s"] for g in got]), digits=2, unit=" s"),
                spread(spread_of([g["p99_s"] for g in got]), digits=2, unit=" s"),
                min(g["pods"] for g in got),
            ]
        )
    if not rows:
        return ""
    return (
        "\nWhere the time goes with sessions resumed: each pod's recovery milestones "
        "in the daemon's log (`tailnet_cnid::recovery`), time from the restart.\n\n"
        + table(["milestone", "p50", "p99", "pods"], rows)
    )


def render_footprint(data, meta):
    rows = []
    for st in data["stages"]:
        d = st["daemon"]
        per_rss = st.get("daemon_rss_per_pod")
        per_cpu = st.get("daemon_cpu_per_pod")
        rows.append(
            [
                st["pods"],
                spread(d["rss"], 1 / MIB, 1, " MiB"),
                "-" if per_rss is None else f"{per_rss / 1024:,.0f} KiB",
                spread(d["cpu_per_s"], 100, 2, " %"),
                "-" if per_cpu is None else f"{per_cpu * 100:.3f} %",
                spread(st["tailscaled_userspace"]["rss"], 1 / MIB, 1, " MiB"),
                spread(st["tailscaled_kernel"]["rss"], 1 / MIB, 1, " MiB"),
                quiet_after(st),
                spread(st["control"]["cpu_per_s"], 100, 1, " %") if "control" in st else "-",
            ]
        )
    out = provenance(meta, data)
    out += (
        "\nIdle pods (bridge + our ADD, no traffic), sampled over consecutive windows after a "
        "settling pause; CPU in % of one core. Next to it, one official tailscaled node of each "
        "mode holding the same netmap: what one client per pod would cost per pod. Each join is "
        "news to every other pod, so sampling starts once the control server has sent it all "
        "(no map message reached the daemon for 30 s; the time from the ADDs to the last one is "
        "the column after the RSS) and a settling pause has passed; the control server's own "
        "CPU in the windows is the last column.\n\n"
    )
    live = data.get("live")
    if live:
        rows.append(
            [
                f"{live['pods']}, live sessions ({live['reached']} reached)",
                spread(live["daemon"]["rss"], 1 / MIB, 1, " MiB"),
                f"{live['daemon_rss_per_pod'] / 1024:,.0f} KiB",
                spread(live["daemon"]["cpu_per_s"], 100, 2, " %"),
                "-",
                spread(live["tailscaled_userspace"]["rss"], 1 / MIB, 1, " MiB"),
                spread(live["tailscaled_kernel"]["rss"], 1 / MIB, 1, " MiB"),
                "-",
                spread(live["control"]["cpu_per_s"], 100, 1, " %") if "control" in live else "-",
            ]
        )
        sampled = (
            "then stops, and the same windows are sampled (sessions stay established for minutes "
            "after the last packet)"
            if live.get("pings_stopped")
            else "and goes on pinging each every 0.5 s while the same windows are sampled"
        )
        out += (
            "The last row: once the idle figures are taken, an official kernel-TUN peer in a "
            "namespace of its own pings every pod until it answers, so that each holds a WireGuard "
            f"session with it, {sampled}.\n\n"
        )
    out += table(
        [
            "pods",
            "daemon RSS",
            "growth per pod",
            "daemon CPU",
            "per pod",
            "tailscaled userspace RSS",
            "tailscaled kernel RSS",
            "control quiet after",
            "control CPU",
        ],
        rows,
    )
    return out


def quiet_after(stage):
    """How long the control server kept sending map messages after a stage's ADDs."""
    if "control_quiet_after_s" not in stage:
        return "-"
    waited = stage["control_quiet_after_s"]
    return "still sending" if waited is None else f"{waited:.0f} s"


def render_control(data, meta):
    rows = [
        [n, f"{data[f'register_{n}']['p50_ms']:.0f} ms", f"{data[f'register_{n}']['p99_ms']:.0f} ms"]
        for n in (1, 50)
        if f"register_{n}" in data
    ]
    out = provenance(meta)
    out += "\n" + table(["identities started at once", "p50", "p99"], rows)
    if "identities_250" in data:
        out += (
            f"\nDaemon memory with 250 identities connected (control sessions and netmaps only): "
            f"{data['identities_250']['bytes_per_identity'] / 1024:.0f} KiB resident growth per identity.\n"
        )
    return out


def render_engine(data, meta):
    rows = [
        [r["pods"], f"{r['resident_growth_bytes'] / MIB:.1f} MiB", f"{r['bytes_per_pod'] / 1024:.0f} KiB", r.get("relay_connections", "?")]
        for r in data
    ]
    return provenance(meta) + "\n" + table(["pods attached", "resident growth", "per pod", "relay connections"], rows)


def render_shim(data, meta):
    v = data["version_ms"]
    rows = [
        ["`tailnet-cni` binary, profile `shim`", f"{data['size_bytes']:,} bytes ({data['size_bytes'] // 1024} KiB)"],
        [f"VERSION, whole process (exec to exit), {v.get('n', 500)} runs", f"p50 {v['p50']:.2f} ms, p99 {v['p99']:.2f} ms, min {v['min']:.2f} ms"],
    ]
    return provenance(meta) + "\n" + table(["what", "value"], rows)


def render_flood(data, meta):
    s = data["summary"]
    rows = [
        ["quiet (no flood)", spread(s["quiet_mbit_s"], 1, 0, " Mbit/s"), spread(s["daemon_cpu_s_quiet"], 1, 1, " s"), "-", "-", "-"],
        [
            "during the flood",
            spread(s["flood_mbit_s"], 1, 0, " Mbit/s"),
            spread(s["daemon_cpu_s_flood"], 1, 1, " s"),
            spread(s["forged_per_s"], 1, 0, "/s"),
            spread(s.get("cookie_replies_per_s"), 1, 0, "/s"),
            spread(s.get("udp_rcvbuf_errors_flood"), 1, 0),
        ],
    ]
    out = provenance(meta, data)
    out += (
        f"\niperf3 (1 stream, {data['seconds']} s, {data['rounds']} rounds) from the official peer to one "
        f"pod while forged handshake initiations (valid mac1 for the other pod's node key, random "
        f"content, {data['rate']}/s asked) hit the other pod's published UDP port "
        f"({data.get('victim_endpoint', '?')}). Both pods are on the same daemon. Ratio per round "
        f"(flood / the quiet run before it): {spread(s['ratio'], 1, 2, 'x')}.\n\n"
    )
    out += table(
        [
            "run",
            "throughput of the other pod",
            "daemon CPU during iperf3",
            "forged initiations sent",
            "cookie replies received",
            "datagrams lost at full socket buffers",
        ],
        rows,
    )
    if s.get("sender_cpu_share"):
        out += f"\nThe sender (one Python process) used {spread(s['sender_cpu_share'], 100, 0, ' %')} of a core.\n"
    if s.get("ratio"):
        r = s["ratio"]["median"]
        out += f"\nGoal: the other pod keeps >= 0.8x of its throughput. Median ratio {fmt_ratio(r)}: {met(r >= 0.8)}.\n"
    return out


def render_summary(parts):
    rows = []
    tp = parts.get("throughput")
    if tp:
        by, _ = throughput_rows(tp[0])
        # The goals of issue 14: ahead of the official client's best mode
        # (kernel TUN), well ahead of its userspace mode, and cheaper per byte.
        for direction in ("pod->peer", "peer->pod"):
            for streams in (1, 4):
                for other, label, goal in (("kernel", "kernel TUN", 1.0), ("userspace", "userspace", 1.5)):
                    r = ratio(by, "ours", other, (streams, direction))
                    if r is not None:
                        rows.append([f"throughput {direction}, {streams} stream(s), ours / tailscaled {label}", f">= {goal}x", fmt_ratio(r), met(r >= goal)])
            r = cpu_ratio(by, "ours", "kernel", (1, direction))
            if r is not None:
                rows.append([f"CPU s per GiB {direction}, 1 stream, tailnet-cnid / tailscaled kernel TUN", "<= 0.75x", fmt_ratio(r), met(r <= 0.75)])
    tn = parts.get("twonode")
    if tn:
        # Issue 14: our engine at both ends against the official client at both ends.
        by = {(s["client"], s["streams"], s["direction"]): s for s in tn[0]["summary"]}
        for direction in ("a->b", "b->a"):
            r = twonode_ratio(by, "ours", "kernel", (1, direction))
            if r is not None:
                rows.append([f"two nodes {direction}, 1 stream, ours at both ends / tailscaled kernel TUN at both ends", ">= 2x", fmt_ratio(r), met(r >= 2)])
    pods = parts.get("pods")
    if pods:
        # The goals of issue 15: ADD close to the primary CNI's own.
        s = pods[0]["single"]
        if "add_ms" in s and "bridge_ms" in s:
            r = s["add_ms"]["p50"] / max(s["bridge_ms"]["p50"], 1e-9)
            rows.append(["CNI ADD p50, 1 pod, ours / bridge plugin", "<= 3x", fmt_ratio(r), met(r <= 3)])
        if "reach_ms" in s:
            rows.append(["ADD-to-reachable p99, 1 pod", "", f"{s['reach_ms']['p99'] / 1000:.2f} s", ""])
        b = pods[0]["burst"]
        if b.get("add_ms_p50") and b.get("bridge_ms_p50"):
            r = b["add_ms_p50"]["median"] / max(b["bridge_ms_p50"]["median"], 1e-9)
            rows.append([f"CNI ADD p50, {b['pods']} at once, ours / bridge plugin", "<= 2x", fmt_ratio(r), met(r <= 2)])
        if b.get("reach_ms_p99"):
            v = b["reach_ms_p99"]["median"]
            ok = v <= 500 and not b.get("unreachable")
            rows.append([f"ADD-to-reachable p99, {b['pods']} at once", "<= 500 ms", f"{v:,.0f} ms", met(ok)])
    restart = parts.get("restart")
    if restart and (restart[0].get("resumed") or {}).get("p99_s"):
        v = restart[0]["resumed"]["p99_s"]["median"]
        ok = v < 1.0 and not restart[0]["resumed"].get("unreachable")
        rows.append([f"reachable again after SIGKILL + restart, p99, {restart[0]['pods']} pods", "< 1 s", f"{v:.2f} s", met(ok)])
    fp = parts.get("footprint")
    if fp:
        last = fp[0]["stages"][-1]
        if "daemon_rss_per_pod" in last:
            v = last["daemon_rss_per_pod"]
            rows.append([f"daemon memory per idle pod at {last['pods']} pods", "<= 256 KiB", f"{v / 1024:,.0f} KiB", met(v <= 256 * 1024)])
            cpu = last["daemon"]["cpu_per_s"]["median"]
            busy = "control_quiet_after_s" in last and last["control_quiet_after_s"] is None
            figure = f"{cpu * 100:.1f} % of a core" + (" (control server still sending)" if busy else "")
            rows.append([f"daemon CPU with {last['pods']} idle pods", "< 1 % of a core", figure, met(cpu < 0.01 and not busy)])
            live = fp[0].get("live")
            if live:
                v = live["daemon_rss_per_pod"]
                all_live = live["reached"] == live["pods"]
                figure = f"{v / 1024:,.0f} KiB" + ("" if all_live else f" ({live['reached']} of {live['pods']} reached)")
                rows.append([f"daemon memory per pod with a live session, {live['pods']} pods", "(a figure)", figure, met(all_live)])
            ts = last["tailscaled_userspace"]["rss"]["median"]
            rows.append([f"one official tailscaled (userspace) at {last['pods']} pods", "(what a client per pod costs)", f"{ts / 1e6:.1f} MB", ""])
    if not rows:
        return None
    return rows


# Which part of `make bench` each summary row's figure comes from, by the
# start of its text: a run of some parts keeps the other parts' rows.
SUMMARY_PART_OF = (
    ("throughput", "throughput"),
    ("CPU s per GiB", "throughput"),
    ("two nodes", "twonode"),
    ("CNI ADD", "pods"),
    ("ADD-to-reachable", "pods"),
    ("reachable again", "restart"),
    ("daemon memory per idle pod", "footprint"),
    ("daemon memory per pod with a live session", "footprint"),
    ("daemon CPU with", "footprint"),
    ("one official tailscaled", "footprint"),
    ("peer table per peer", "engine"),
    ("heap per peer", "engine"),
    ("one netmap delta", "engine"),
)


def summary_part(figure):
    return next((part for prefix, part in SUMMARY_PART_OF if figure.startswith(prefix)), None)


def kept_summary_rows(text, measured):
    """The summary rows in `text` of parts not in `measured`."""
    block = re.search(r"<!-- bench:summary -->\n(.*?)<!-- /bench:summary -->", text, re.S)
    if not block:
        return []
    rows = []
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 4 or cells[0] == "figure":
            continue
        if summary_part(cells[0]) not in measured:
            rows.append(cells)
    return rows


def summary_block(rows):
    order = [part for _, part in SUMMARY_PART_OF]
    rows = sorted(rows, key=lambda r: order.index(summary_part(r[0])) if summary_part(r[0]) in order else len(order))
    return (
        "Absolute figures move with the machine's load; the ratios are the result.\n\n"
        + table(["figure", "target", "measured", ""], rows)
    )


def replace_block(text, name, body):
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        sys.exit(f"report: BENCHMARKS.md has no <!-- bench:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main():
    out, doc = Path(sys.argv[1]), Path(sys.argv[2])
    parts = {}
    for name in ("throughput", "twonode", "profile", "crypto", "pods", "restart", "footprint", "control", "engine", "shim", "flood"):
        data, meta = load(out, name)
        if data is not None:
            parts[name] = (data, meta)
    rendered = {}
    if "throughput" in parts:
        rendered["throughput"] = render_throughput(*parts["throughput"])
    if "twonode" in parts:
        rendered["twonode"] = render_twonode(*parts["twonode"], parts.get("crypto", (None,))[0])
    if "profile" in parts:
        rendered["profile"] = render_profile(*parts["profile"])
    if "crypto" in parts:
        rendered["crypto"] = render_crypto(*parts["crypto"], parts.get("throughput", (None,))[0])
    for name, fn in (
        ("pods", render_pods),
        ("restart", render_restart),
        ("footprint", render_footprint),
        ("control", render_control),
        ("engine", render_engine),
        ("shim", render_shim),
        ("flood", render_flood),
    ):
        if name in parts:
            rendered[name] = fn(*parts[name])
    text = doc.read_text()
    summary = render_summary(parts)
    if summary:
        rendered["summary"] = summary_block(kept_summary_rows(text, set(parts)) + summary)
    for name, body in rendered.items():
        text = replace_block(text, name, body)
        print(f"\n## {name}\n\n{body}")
    doc.write_text(text)
    if not rendered:
        print(f"report: no figures in {out} yet")


if __name__ == "__main__":
    main()
