#!/usr/bin/env bash
# The benchmark parts that need the real test bed, run through
# scripts/isolated.sh by bench/run.sh: each part gets a fresh test bed (a
# new rscale database, so nodes of one part do not swell the next one's
# netmaps), then the bed is stopped.
#
#   BIN=target/release SHIM=target/shim/tailnet-cni OUT=target/bench \
#     scripts/isolated.sh bench/bed.sh control|pods|restart|throughput|twonode|profile|footprint|flood ...
#
# BENCH_COMMAND is recorded with the figures; BENCH_ARGS_<PART> (e.g.
# BENCH_ARGS_THROUGHPUT="--rounds 5 --seconds 10") is passed to the part's
# script. The profile part takes PROFILE_BIN, a directory whose tailnet-cnid
# keeps its symbols (BIN's otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${TAILNET_ISOLATED:-}" == 1 ]] || { echo "bench/bed.sh: run through scripts/isolated.sh" >&2; exit 1; }
: "${BIN:?BIN: the release target dir}" "${SHIM:?SHIM: the shim binary}" "${OUT:?OUT: where JSON goes}"

# A kernel-TUN tailscaled may manage DNS: give this mount namespace its own
# resolv.conf so the machine's is never touched, whatever its prefs.
cp /etc/resolv.conf /run/bench-resolv.conf
mount --bind /run/bench-resolv.conf /etc/resolv.conf

cleanup() { scripts/testbed.sh down >/dev/null 2>&1 || true; }
trap cleanup EXIT

run_part() { # part
  scripts/testbed.sh down >/dev/null 2>&1 || true
  scripts/testbed.sh up >/dev/null
  # shellcheck disable=SC1090
  source <(scripts/testbed.sh env)
  case "$1" in
    control)
      "$BIN/examples/register_latency" "$OUT/control.json"
      ;;
    pods | throughput | footprint)
      local extra_var="BENCH_ARGS_${1^^}"
      # shellcheck disable=SC2206 # word splitting of the extra arguments is wanted
      local extra=(${!extra_var:-})
      python3 bench/bed.py "$1" --bin "$BIN" --shim "$SHIM" --out "$OUT" \
        --command "${BENCH_COMMAND:-bench/run.sh $1}" "${extra[@]}"
      ;;
    restart)
      # shellcheck disable=SC2206 # word splitting of the extra arguments is wanted
      local extra=(${BENCH_ARGS_RESTART:-})
      python3 bench/restart.py --bin "$BIN" --shim "$SHIM" --out "$OUT" \
        --command "${BENCH_COMMAND:-bench/run.sh restart}" "${extra[@]}"
      ;;
    twonode)
      # shellcheck disable=SC2206 # word splitting of the extra arguments is wanted
      local extra=(${BENCH_ARGS_TWONODE:-})
      python3 bench/twonode.py --bin "$BIN" --shim "$SHIM" --out "$OUT" \
        --command "${BENCH_COMMAND:-bench/run.sh twonode}" "${extra[@]}"
      ;;
    profile)
      # shellcheck disable=SC2206 # word splitting of the extra arguments is wanted
      local extra=(${BENCH_ARGS_PROFILE:-})
      python3 bench/profile.py --bin "${PROFILE_BIN:-$BIN}" --shim "$SHIM" --out "$OUT" \
        --command "${BENCH_COMMAND:-bench/run.sh profile}" "${extra[@]}"
      ;;
    flood)
      # shellcheck disable=SC2206 # word splitting of the extra arguments is wanted
      local extra=(${BENCH_ARGS_FLOOD:-})
      python3 bench/flood.py --bin "$BIN" --shim "$SHIM" --out "$OUT" \
        --command "${BENCH_COMMAND:-bench/run.sh flood}" "${extra[@]}"
      ;;
    *)
      echo "bench/bed.sh: unknown part '$1'" >&2
      return 2
      ;;
  esac
}

# A part that fails does not stop the others; the exit status tells.
failed=()
for part in "$@"; do
  echo "== $part (fresh test bed)" >&2
  run_part "$part" || failed+=("$part")
done
if ((${#failed[@]})); then
  echo "bench/bed.sh: failed: ${failed[*]}" >&2
  exit 1
fi
