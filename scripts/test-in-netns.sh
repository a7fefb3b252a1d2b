#!/usr/bin/env bash
# Runs inside scripts/isolated.sh: brings the test bed up, runs the tests
# with its environment, brings it down, and exits with the tests' status.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed.sh up
trap 'scripts/testbed.sh down' EXIT
# shellcheck disable=SC1090
source <(scripts/testbed.sh env)
export CARGO_NET_OFFLINE=true
# Everything a test can require is here: a test that finds something
# missing fails, naming it, instead of skipping.
export TAILNET_TEST_REQUIRE=1
# The CNI runtime itself must work before any test puts our plugin in it.
tests/e2e/podman-env.sh check

# The daemon's tests drive the shim binary, whatever the selection.
cargo build --quiet -p tailnet-cni

# The whole workspace unless the arguments name packages (`-p tailnet-cnid
# --test it reliability::`): cargo ignores -p next to --workspace.
scope=(--workspace)
for arg in "$@"; do
  case "$arg" in -p | --package | -p* | --package=*) scope=() ;; esac
done

# nextest runs every test in a process of its own; `cargo test` runs the
# tests of one binary as threads of one process.
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run "${scope[@]}" --no-fail-fast --failure-output final "$@"
else
  cargo test "${scope[@]}" --no-fail-fast "$@"
fi
