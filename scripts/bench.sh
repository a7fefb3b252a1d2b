#!/usr/bin/env bash
# `make bench`: measures, prints, and writes the raw numbers to
# target/bench/*.json; BENCHMARKS.md records them with this command.
#
#   scripts/bench.sh            every benchmark
#   scripts/bench.sh shim       only the shim's size and VERSION latency
#   scripts/bench.sh engine     only the data-plane engine (memory per pod)
#   scripts/bench.sh control    only registration latency (needs root: runs the test bed)
#   scripts/bench.sh add        only ADD/DEL through the shim and the daemon (root)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${CARGO_TARGET_DIR:-target}/bench
mkdir -p "$OUT"
what=${1:-all}

need() { command -v "$1" >/dev/null || { echo "bench: '$1' is required (apt-get install $2)" >&2; exit 1; }; }

bench_shim() {
  need hyperfine hyperfine
  echo "== shim: binary size and VERSION latency"
  cargo build --quiet --profile shim -p tailnet-cni
  local shim=${CARGO_TARGET_DIR:-target}/shim/tailnet-cni
  local size
  size=$(stat -c %s "$shim")
  echo "shim size: $size bytes ($((size / 1024)) KiB), profile 'shim' (opt-level s, fat LTO, panic=abort, stripped)"
  CNI_COMMAND=VERSION hyperfine -N --warmup 20 --runs 500 --export-json "$OUT/shim-version.json" "$shim"
  python3 - "$OUT/shim-version.json" "$size" >"$OUT/shim.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
t = sorted(r["times"])
pick = lambda q: t[min(len(t) - 1, int(q * len(t)))] * 1000
print(json.dumps({"size_bytes": int(sys.argv[2]), "version_ms": {"p50": round(pick(0.5), 3), "p99": round(pick(0.99), 3), "min": round(t[0] * 1000, 3)}}))
PY
  cat "$OUT/shim.json"
}

bench_engine() {
  echo "== engine: resident memory per attached pod (idle pods with sessions)"
  cargo run --quiet --release -p tailnet-cnid --example engine_memory -- "$OUT/engine-memory.json"
}

bench_control() {
  echo "== control: registration latency against the local rscale (isolated namespace)"
  cargo build --quiet --release -p tailnet-cnid --examples
  scripts/isolated.sh bash -c "scripts/testbed.sh up >/dev/null && source <(scripts/testbed.sh env) && \
    ${CARGO_TARGET_DIR:-target}/release/examples/register_latency '$OUT/register.json'; status=\$?; scripts/testbed.sh down; exit \$status"
}

bench_add() {
  echo "== shim ADD/DEL round trip through the daemon (isolated namespace, local rscale)"
  cargo build --quiet --release -p tailnet-cnid -p tailnet-cni
  TARGET_DIR=$(realpath "${CARGO_TARGET_DIR:-target}/release") OUT=$(realpath "$OUT") scripts/isolated.sh scripts/bench-add.sh
}

case "$what" in
  shim) bench_shim ;;
  engine) bench_engine ;;
  control) bench_control ;;
  add) bench_add ;;
  all) bench_shim; bench_engine; bench_control; bench_add ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
