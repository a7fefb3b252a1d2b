#!/usr/bin/env bash
# Creates a k3d cluster, builds and imports the image, creates the auth
# secret, installs tailnet-cni and waits for the rollout.
#
# Auth, one of (first match wins):
#   TS_OAUTH_CLIENT_ID + TS_OAUTH_CLIENT_SECRET   Tailscale OAuth client
#   TAILNET_CNI_AUTH_FILE=path/to/secret.yaml      a Secret manifest (see deploy/secrets/)
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${K3D_CLUSTER:-tailnet-cni}
IMAGE=${IMAGE:-ghcr.io/tailnet-cni/tailnet-cni:0.1.0}

need() { command -v "$1" >/dev/null || { echo "k3d-setup: '$1' is required" >&2; exit 1; }; }
need docker
need k3d
need kubectl

if ! k3d cluster list "$CLUSTER" >/dev/null 2>&1; then
  k3d cluster create --config k3d/cluster.yaml "$CLUSTER"
fi
kubectl config use-context "k3d-$CLUSTER" >/dev/null

docker build -t "$IMAGE" .
k3d image import -c "$CLUSTER" "$IMAGE"

kubectl apply -f deploy/namespace.yaml
if [[ -n "${TS_OAUTH_CLIENT_ID:-}" && -n "${TS_OAUTH_CLIENT_SECRET:-}" ]]; then
  kubectl -n tailnet-cni create secret generic tailnet-cni-auth \
    --from-literal=client_id="$TS_OAUTH_CLIENT_ID" \
    --from-literal=client_secret="$TS_OAUTH_CLIENT_SECRET" \
    --dry-run=client -o yaml | kubectl apply -f -
elif [[ -n "${TAILNET_CNI_AUTH_FILE:-}" ]]; then
  kubectl apply -f "$TAILNET_CNI_AUTH_FILE"
elif ! kubectl -n tailnet-cni get secret tailnet-cni-auth >/dev/null 2>&1; then
  echo "k3d-setup: set TS_OAUTH_CLIENT_ID and TS_OAUTH_CLIENT_SECRET, or TAILNET_CNI_AUTH_FILE" >&2
  exit 1
fi

kubectl apply -k deploy/
kubectl -n tailnet-cni set image daemonset/tailnet-cnid daemon="$IMAGE" installer="$IMAGE"
kubectl -n tailnet-cni rollout status daemonset/tailnet-cnid --timeout=180s
echo "tailnet-cni is running. Try: make test-nginx"
