#!/usr/bin/env bash
# Creates the k3d cluster (k3d/cluster.yaml, pinned k3s), builds this tree's
# image under a tag of its own (k3d/image-tag.sh), imports it, creates the
# auth secret, applies deploy/ through the overlay k3d/overlay.sh writes,
# waits for the rollout, and ends with a plain pod and a tailnet pod Running
# (k3d/smoke.yaml). Re-running it deploys whatever changed: the code (a new
# tag), the config or the secret (a checksum on the pod template).
#
# Auth, one of (first match wins):
#   TS_OAUTH_CLIENT_ID + TS_OAUTH_CLIENT_SECRET   a Tailscale OAuth client
#   TAILNET_CNI_AUTH_FILE=path/to/secret.yaml      a Secret manifest (see deploy/secrets/);
#                                                  its tailnet-cni.io/* annotations pick the
#                                                  [auth] kind and the server URLs
#   neither                                        the secret already in the cluster
# Env: K3D_CLUSTER (tailnet-cni), IMAGE_NAME, K3D_TIMEOUT (180s)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=k3d/lib.sh
source k3d/lib.sh

CLUSTER=${K3D_CLUSTER:-tailnet-cni}
IMAGE_NAME=${IMAGE_NAME:-ghcr.io/tailnet-cni/tailnet-cni}
TIMEOUT=${K3D_TIMEOUT:-180s}
SECRET=tailnet-cni-auth

for tool in docker k3d kubectl python3; do need "$tool"; done

if ! k3d cluster list "$CLUSTER" >/dev/null 2>&1; then
  k3d cluster create --config k3d/cluster.yaml "$CLUSTER"
fi
kubectl config use-context "k3d-$CLUSTER" >/dev/null

IMAGE="$IMAGE_NAME:$(k3d/image-tag.sh)"
echo "k3d-setup: building $IMAGE" >&2
# No provenance or SBOM attestations: they turn the image into an index that
# `k3d image import` refuses when docker uses the containerd image store.
docker build --provenance=false --sbom=false -t "$IMAGE" .
k3d image import -c "$CLUSTER" "$IMAGE"

kubectl apply -f deploy/namespace.yaml
if [[ -n "${TS_OAUTH_CLIENT_ID:-}" && -n "${TS_OAUTH_CLIENT_SECRET:-}" ]]; then
  kubectl -n "$K3D_NAMESPACE" create secret generic "$SECRET" \
    --from-literal=client_id="$TS_OAUTH_CLIENT_ID" \
    --from-literal=client_secret="$TS_OAUTH_CLIENT_SECRET" \
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n "$K3D_NAMESPACE" annotate --overwrite secret "$SECRET" \
    tailnet-cni.io/auth-kind=tailscale tailnet-cni.io/api-url- tailnet-cni.io/control-url- >/dev/null
elif [[ -n "${TAILNET_CNI_AUTH_FILE:-}" ]]; then
  kubectl apply -f "$TAILNET_CNI_AUTH_FILE"
elif ! kubectl -n "$K3D_NAMESPACE" get secret "$SECRET" >/dev/null 2>&1; then
  die "set TS_OAUTH_CLIENT_ID and TS_OAUTH_CLIENT_SECRET, or TAILNET_CNI_AUTH_FILE"
fi

secret_field() {
  kubectl -n "$K3D_NAMESPACE" get secret "$SECRET" -o "jsonpath={$1}"
}
AUTH_KIND=$(secret_field '.metadata.annotations.tailnet-cni\.io/auth-kind')
[[ -n $AUTH_KIND ]] ||
  die "secret $SECRET has no tailnet-cni.io/auth-kind annotation (see deploy/secrets/*.example.yaml)"
case "$AUTH_KIND" in
  tailscale) keys=(client_id client_secret) ;;
  headscale | rscale) keys=(token) ;;
  static) keys=(authkey) ;;
  *) die "secret $SECRET: unknown tailnet-cni.io/auth-kind '$AUTH_KIND'" ;;
esac
for key in "${keys[@]}"; do
  [[ -n $(secret_field ".data.$key") ]] || die "secret $SECRET has no '$key', which kind $AUTH_KIND needs"
done
echo "k3d-setup: auth kind $AUTH_KIND" >&2

overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
IMAGE=$IMAGE AUTH_KIND=$AUTH_KIND \
  API_URL=$(secret_field '.metadata.annotations.tailnet-cni\.io/api-url') \
  CONTROL_URL=$(secret_field '.metadata.annotations.tailnet-cni\.io/control-url') \
  SECRET_CHECKSUM=$(secret_field '.data' | sha256sum | cut -c1-64) \
  k3d/overlay.sh "$overlay"
kubectl apply -k "$overlay"
if ! kubectl -n "$K3D_NAMESPACE" rollout status daemonset/tailnet-cnid --timeout="$TIMEOUT"; then
  explain_daemon
  die "the daemon did not become ready within $TIMEOUT"
fi

# Fresh pods each run, so that this build's shim and daemon set them up.
kubectl delete -f k3d/smoke.yaml --ignore-not-found --wait=true >/dev/null
kubectl apply -f k3d/smoke.yaml
if ! kubectl wait --for=condition=Ready pod/smoke-plain pod/smoke-tailnet --timeout="$TIMEOUT"; then
  explain_pods smoke-plain smoke-tailnet
  die "the smoke pods did not become Running within $TIMEOUT"
fi
if ! address=$(tailnet_address smoke-tailnet default); then
  explain_pods smoke-tailnet
  die "smoke-tailnet is Running but not on the tailnet"
fi
echo "k3d-setup: smoke-plain Running; smoke-tailnet Running at $address on the tailnet" >&2
echo "k3d-setup: tailnet-cni is running ($IMAGE). Try: make test-nginx" >&2
