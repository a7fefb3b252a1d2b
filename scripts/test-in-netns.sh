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
# Tests that drive podman run only when asked: they need root and this namespace.
export TAILNET_CNI_TEST_PODMAN=1
# The CNI runtime itself must work before any test puts our plugin in it.
tests/e2e/podman-env.sh check

if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
