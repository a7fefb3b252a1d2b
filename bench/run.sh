#!/usr/bin/env bash
# `make bench`: measures, prints a table and records the figures, the
# machine and the command in BENCHMARKS.md; raw JSON lands in target/bench/.
#
#   bench/run.sh              every part (about 15 minutes on 2 cores, builds aside)
#   bench/run.sh shim         the shim's size and VERSION latency
#   bench/run.sh engine       engine memory per attached pod (in-process relay), and
#                             bytes per peer per pod and idle cost with 1,000/5,000 peers
#   bench/run.sh control      registration latency, 1 and 50 at once (root)
#   bench/run.sh pods         CNI ADD and ADD-to-reachable, 1 pod and 50 at once (root)
#   bench/run.sh restart      SIGKILL + restart with 50 pods: time until each answers (root)
#   bench/run.sh throughput   iperf3: our engine vs official tailscaled (root)
#   bench/run.sh twonode      iperf3 pod to pod across two of our daemons vs two official
#                             kernel-TUN tailscaleds vs the bare veth between the nodes (root)
#   bench/run.sh profile      perf (cpu-clock) and callgrind of 1 stream pod->peer (root; not in all)
#   bench/run.sh footprint    daemon RSS and idle CPU at 0/50/250 pods (root)
#   bench/run.sh flood        a pod's throughput while another's port takes forged handshakes (root)
#   bench/run.sh crypto       openssl's ChaCha20-Poly1305, one core
#   bench/run.sh report       rewrite BENCHMARKS.md and the table from target/bench
#
# Several parts may be named at once. The parts marked root run inside
# scripts/isolated.sh against the real test bed (scripts/testbed.sh); they
# send traffic only inside that namespace. Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
OUT=$(mkdir -p "$TARGET/bench" && realpath "$TARGET/bench")
export BENCH_COMMAND=${BENCH_COMMAND:-$(echo "bench/run.sh $*" | sed "s/ *$//")}

usage() { sed -n '2,22p' "$0" >&2; exit 2; }

# Installs what the benchmarks run, once (idempotent).
ensure_tools() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $EUID -eq 0 ]] || { echo "bench: missing packages: ${missing[*]} (run as root to install them)" >&2; exit 1; }
  echo "bench: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What was measured where and how, next to each part's JSON.
write_meta() { # part
  python3 - "$OUT/$1.meta.json" "$BENCH_COMMAND" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)" <<'PY'
import json, os, sys, time
path, command, rev, dirty = sys.argv[1:]
json.dump({
    "command": command,
    "date": time.strftime("%Y-%m-%d", time.gmtime()),
    "nproc": os.cpu_count(),
    "kernel": os.uname().release,
    "commit": rev + ("+changes" if int(dirty) else ""),
}, open(path, "w"))
PY
}

build_release() {
  cargo build --quiet --release -p tailnet-cnid --bin tailnet-cnid --examples
  cargo build --quiet --profile shim -p tailnet-cni
}

bench_shim() {
  ensure_tools hyperfine
  echo "== shim: binary size and VERSION latency" >&2
  cargo build --quiet --profile shim -p tailnet-cni
  local shim=$TARGET/shim/tailnet-cni size
  size=$(stat -c %s "$shim")
  CNI_COMMAND=VERSION hyperfine -N --warmup 20 --runs 500 --export-json "$OUT/shim-version.json" "$shim" >&2
  python3 - "$OUT/shim-version.json" "$size" >"$OUT/shim.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
t = sorted(r["times"])
pick = lambda q: t[min(len(t) - 1, int(q * len(t)))] * 1000
print(json.dumps({"size_bytes": int(sys.argv[2]), "version_ms": {"p50": round(pick(0.5), 3), "p99": round(pick(0.99), 3), "min": round(t[0] * 1000, 3), "n": len(t)}}))
PY
  write_meta shim
}

bench_engine() {
  echo "== engine: resident memory per attached pod (in-process relay)" >&2
  cargo build --quiet --release -p tailnet-cnid --example engine_memory --example engine_peers
  "$TARGET/release/examples/engine_memory" "$OUT/engine.json"
  echo "== engine: bytes per peer per pod, idle pods (1,000 and 5,000 shared peers)" >&2
  "$TARGET/release/examples/engine_peers" "$OUT/engine-peers.json"
  write_meta engine
}

bench_crypto() {
  ensure_tools openssl
  echo "== crypto: openssl speed -evp chacha20-poly1305, one core, 3 runs" >&2
  for _ in 1 2 3; do
    openssl speed -evp chacha20-poly1305 -seconds 2 -mr 2>/dev/null | grep '^+F:' || true
  done | python3 -c '
import json, sys
# -mr lines: +F:<n>:<cipher>:<bytes/s at each block size>
sizes = [16, 64, 256, 1024, 8192, 16384]
runs = [[float(v) for v in line.strip().split(":")[3:]] for line in sys.stdin if line.strip()]
if not runs:
    sys.exit("bench: openssl speed printed nothing")
out = {"command": "openssl speed -evp chacha20-poly1305 -seconds 2 -mr (3 runs)",
       "gbit_s": {str(s): sorted(r[i] * 8 / 1e9 for r in runs) for i, s in enumerate(sizes)}}
json.dump(out, sys.stdout)' >"$OUT/crypto.json"
  write_meta crypto
}

# The release daemon with its symbols, for perf and callgrind: the release
# profile linked without stripping. Built without the examples, so the
# examples' dev-dependency features are not unified into it (tonic and
# rustix build with fewer features): the first build compiles the library
# once more.
build_profile_bin() {
  cargo rustc --quiet --release -p tailnet-cnid --bin tailnet-cnid -- -C strip=none
  mkdir -p "$TARGET/profile-bin"
  cp "$TARGET/release/tailnet-cnid" "$TARGET/profile-bin/tailnet-cnid"
}

# The parts that need the test bed, in one isolated namespace.
bench_bed() { # parts...
  [[ $EUID -eq 0 ]] || { echo "bench: $* need root (network namespaces, the test bed)" >&2; exit 1; }
  ensure_tools iperf3 socat
  # The test bed's tools (cached): rscale, tailscaled, and protoc, which the
  # CRI test client needs to build.
  scripts/testbed.sh install
  build_release
  # perf: the profile part, and the pods part's profiled burst.
  if [[ " $* " == *" pods "* ]]; then ensure_tools linux-perf; fi
  if [[ " $* " == *" profile "* ]]; then
    ensure_tools linux-perf valgrind
    build_profile_bin
  fi
  local part
  local part status=0
  touch "$OUT/.bed-start"
  PROFILE_BIN=$(realpath "$TARGET/profile-bin" 2>/dev/null || true) \
    BIN=$(realpath "$TARGET/release") SHIM=$(realpath "$TARGET/shim/tailnet-cni") OUT=$OUT \
    scripts/isolated.sh bench/bed.sh "$@" || status=$?
  # Only parts that produced fresh figures get this run's provenance.
  for part in "$@"; do
    if [[ "$OUT/$part.json" -nt "$OUT/.bed-start" ]]; then write_meta "$part"; fi
  done
  return "$status"
}

report() { python3 bench/report.py "$OUT" BENCHMARKS.md; }

parts=("$@")
((${#parts[@]})) || parts=(all)
bed=()
for part in "${parts[@]}"; do
  case "$part" in
    all) bench_shim; bench_engine; bench_crypto; bed+=(control pods restart throughput twonode footprint flood) ;;
    shim) bench_shim ;;
    engine) bench_engine ;;
    crypto) bench_crypto ;;
    control | pods | restart | throughput | twonode | profile | footprint | flood) bed+=("$part") ;;
    report) ;;
    *) usage ;;
  esac
done
status=0
((${#bed[@]} == 0)) || bench_bed "${bed[@]}" || status=$?
report
exit "$status"
