#!/usr/bin/env bash
# Deletes the k3d cluster made by setup.sh. Pods' tailnet devices are removed
# by the daemon on pod deletion; delete workloads first to leave none behind.
set -euo pipefail
CLUSTER=${K3D_CLUSTER:-tailnet-cni}
if command -v kubectl >/dev/null && kubectl config get-contexts "k3d-$CLUSTER" >/dev/null 2>&1; then
  kubectl --context "k3d-$CLUSTER" delete -f "$(dirname "$0")/nginx.yaml" --ignore-not-found --wait=true || true
fi
k3d cluster delete "$CLUSTER"
