#!/usr/bin/env bash
# `make test`: everything, as CI runs it.
#   1. install the test bed's tools (cached) and build every target;
#   2. offline checks of the manifests and Dockerfile, then a bounded fuzz
#      run of every parser hostile input reaches (scripts/fuzz.sh);
#   3. in a private network namespace: start the real test bed (rscale +
#      DERP + an official tailscaled), run every unit and integration test
#      against it, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $EUID -eq 0 ]] || { echo "test: integration tests need root (network namespaces, TUN)" >&2; exit 1; }

scripts/testbed.sh install
echo "test: building"
cargo build --workspace --all-targets --quiet
scripts/build-shim.sh --quiet
scripts/lint-manifests.sh
echo "test: fuzzing every parser hostile input reaches (bounded: FUZZ_SECONDS each)"
scripts/fuzz.sh

echo "test: running every test inside an isolated network namespace"
exec scripts/isolated.sh scripts/test-in-netns.sh "$@"
