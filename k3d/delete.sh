#!/usr/bin/env bash
# Deletes the k3d cluster made by setup.sh. Pods on the tailnet are deleted
# first, so that the daemon removes their tailnet devices while it still
# runs. What can still be left behind (README.md, "What k3d cluster delete
# leaves behind"): devices of pods a controller recreated in the meantime,
# which the control server drops once they are offline when their keys are
# ephemeral (the k3d config mints ephemeral keys; a static key must be made
# so), and the images this tree's builds left in docker.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=k3d/lib.sh
source k3d/lib.sh

CLUSTER=${K3D_CLUSTER:-tailnet-cni}
IMAGE_NAME=${IMAGE_NAME:-ghcr.io/tailnet-cni/tailnet-cni}
need k3d

if command -v kubectl >/dev/null && kubectl config get-contexts "k3d-$CLUSTER" >/dev/null 2>&1; then
  kc() { kubectl --context "k3d-$CLUSTER" "$@"; }
  # Every pod annotated to join, in every namespace.
  joined=$(kc get pods -A -o jsonpath='{range .items[?(@.metadata.annotations.tailnet-cni\.io/enabled=="true")]}{.metadata.namespace}{"/"}{.metadata.name}{"\n"}{end}' || true)
  for pod in $joined; do
    echo "k3d-delete: deleting $pod (the daemon removes its tailnet device)" >&2
    kc -n "${pod%%/*}" delete pod "${pod#*/}" --ignore-not-found --wait=true --timeout=60s ||
      echo "k3d-delete: $pod was not deleted in time; its device may stay until the control server drops it" >&2
  done
  kc delete -f k3d/smoke.yaml -f k3d/nginx.yaml --ignore-not-found --wait=true --timeout=60s >/dev/null || true
fi
k3d cluster delete "$CLUSTER"
if command -v docker >/dev/null; then
  images=$(docker image ls --format '{{.Repository}}:{{.Tag}}' "$IMAGE_NAME" 2>/dev/null || true)
  if [[ -n $images ]]; then
    echo "k3d-delete: images built by k3d-setup are still in docker; remove them with:" >&2
    echo "  docker image rm $(tr '\n' ' ' <<<"$images")" >&2
  fi
fi
