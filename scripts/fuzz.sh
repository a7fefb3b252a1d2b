#!/usr/bin/env bash
# Bounded fuzzing of every parser that hostile input reaches (fuzz/README.md).
#
#   scripts/fuzz.sh                 build, then run every target FUZZ_SECONDS
#   scripts/fuzz.sh disco stun      only these targets
#   scripts/fuzz.sh --build         build only
#   scripts/fuzz.sh --list          list the targets
#
# FUZZ_SECONDS (default 20) bounds each target's run. cargo-fuzz is
# installed once (pinned) into the cache; the instrumented build has its own
# target directory (under the cache when CI=true, under target/ otherwise).
# Inputs that find new coverage are kept in a work corpus next to it; the
# committed seeds in fuzz/corpus/<target>/ are only read. Exits non-zero if
# any target crashes, printing where the crashing input was saved.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
CACHE=${TAILNET_CNI_CACHE:-/var/cache/tailnet-cni}
if ! mkdir -p "$CACHE" 2>/dev/null || [[ ! -w "$CACHE" ]]; then
  CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tailnet-cni
  mkdir -p "$CACHE"
fi
TOOL_ROOT=$CACHE/cargo-fuzz
if [[ "${CI:-}" == true ]]; then
  TARGET_DIR=${FUZZ_TARGET_DIR:-$CACHE/fuzz-target}
  WORK=${FUZZ_WORK_DIR:-$CACHE/fuzz-work}
else
  TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target/fuzz}
  WORK=${FUZZ_WORK_DIR:-$PWD/target/fuzz-work}
fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
# cargo-fuzz passes nightly-only flags; the stable toolchain accepts them so.
export RUSTC_BOOTSTRAP=1
export PATH=$TOOL_ROOT/bin:$PATH

install_cargo_fuzz() {
  if [[ "$(cargo-fuzz --version 2>/dev/null || true)" == "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    return
  fi
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOL_ROOT"
  cargo install --locked --quiet --version "$CARGO_FUZZ_VERSION" --root "$TOOL_ROOT" cargo-fuzz
}

targets() {
  cargo fuzz list --fuzz-dir fuzz
}

build() {
  echo "fuzz: building the targets (instrumented, target dir $TARGET_DIR)"
  local start=$SECONDS
  # No sanitizer: the targets are safe Rust, and the allocator cap in
  # fuzz/src/lib.rs catches length-field allocations without one; this
  # halves the build and doubles the executions per second.
  cargo fuzz build --fuzz-dir fuzz --sanitizer none --codegen-units 16 \
    --target-dir "$TARGET_DIR"
  echo "fuzz: build took $((SECONDS - start)) s"
}

# Runs one target for FUZZ_SECONDS; prints one summary line.
run_target() {
  local target=$1
  local bin=$TARGET_DIR/$TRIPLE/release/$target
  local corpus=$WORK/corpus/$target artifacts=$WORK/artifacts/$target
  local log=$WORK/logs/$target.log
  mkdir -p "$corpus" "$artifacts" "$WORK/logs"
  local seeds=()
  [[ -d fuzz/corpus/$target ]] && seeds=("fuzz/corpus/$target")
  local start=$SECONDS status=0
  "$bin" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$artifacts/" \
    "$corpus" "${seeds[@]}" >"$log" 2>&1 || status=$?
  local took=$((SECONDS - start))
  local execs units
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  units=$(grep -c '' < <(find "$corpus" -type f) || true)
  if [[ -z "$execs" ]]; then
    # No final stats (a crash): the last status line still counts.
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -n1 | tr -d '#')
  fi
  if [[ $status -eq 0 ]]; then
    printf 'fuzz: %-20s %10s executions in %3d s, corpus %5s, no crash\n' \
      "$target" "${execs:-?}" "$took" "$units"
  else
    printf 'fuzz: %-20s %10s executions in %3d s, CRASH (exit %d)\n' \
      "$target" "${execs:-?}" "$took" "$status"
    grep -E 'panicked at|ERROR: libFuzzer|allocation of|SUMMARY' "$log" | head -n 5 | sed 's/^/fuzz:   /'
    grep -E '^(Test unit written to|artifact_prefix)' "$log" | sed 's/^/fuzz:   /'
    echo "fuzz:   full log: $log"
    return 1
  fi
}

main() {
  install_cargo_fuzz
  case "${1:-}" in
    --list) targets; return ;;
    --build) build; return ;;
  esac
  local selected=("$@")
  build
  if [[ ${#selected[@]} -eq 0 ]]; then
    mapfile -t selected < <(targets)
  fi
  echo "fuzz: running ${#selected[@]} targets for ${FUZZ_SECONDS} s each"
  local failed=()
  for target in "${selected[@]}"; do
    run_target "$target" || failed+=("$target")
  done
  if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: crashes in: ${failed[*]}" >&2
    return 1
  fi
  echo "fuzz: ${#selected[@]} targets, no crash"
}

main "$@"
