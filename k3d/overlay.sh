#!/usr/bin/env bash
# Writes the kustomize overlay that `make k3d-setup` applies on top of
# deploy/: this build's image, a config whose [auth] table matches the auth
# secret's kind (minting ephemeral keys, so a deleted cluster leaves no
# devices behind), and a checksum of that config and the secret on the pod
# template, so that a change to either rolls the DaemonSet. Runs offline;
# scripts/lint-manifests.sh renders it for every kind.
#
# Usage: k3d/overlay.sh OUT_DIR
# Env:   IMAGE            this build's image, name:tag (required)
#        AUTH_KIND        tailscale (default) | headscale | rscale | static
#        API_URL          headscale, rscale: the server's API base URL (required)
#        CONTROL_URL      control server (default: API_URL for headscale and
#                         rscale, Tailscale's otherwise)
#        SECRET_CHECKSUM  digest of the auth secret's data
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

fail() { echo "k3d/overlay: $*" >&2; exit 1; }

out=${1:-}
[[ -n $out ]] || fail "usage: k3d/overlay.sh OUT_DIR"
image=${IMAGE:-}
[[ $image =~ ^(.+):([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$ ]] || fail "IMAGE must be name:tag, not '$image'"
image_name=${BASH_REMATCH[1]}
image_tag=${BASH_REMATCH[2]}
kind=${AUTH_KIND:-tailscale}
secrets=/etc/tailnet-cni/secrets
tailscale_control=https://controlplane.tailscale.com

# URLs end up inside TOML strings: allow nothing that could end one.
require_url() {
  [[ $2 =~ ^https?://[^[:space:]\"\\]+$ ]] || fail "$1 must be an http(s) URL, not '$2'"
}

# The [auth] table for $kind, and the control server it goes with.
case "$kind" in
  tailscale)
    control_url=${CONTROL_URL:-$tailscale_control}
    auth_table="kind = \"tailscale\"
client_id_file = \"$secrets/client_id\"
client_secret_file = \"$secrets/client_secret\"
tags = [\"tag:k8s-pod\"]
ephemeral = true"
    ;;
  headscale | rscale)
    require_url API_URL "${API_URL:-}"
    control_url=${CONTROL_URL:-$API_URL}
    auth_table="kind = \"$kind\"
api_url = \"$API_URL\"
token_file = \"$secrets/token\"
tags = [\"tag:k8s-pod\"]
ephemeral = true"
    ;;
  static)
    # The pre-made key decides whether its nodes are ephemeral.
    control_url=${CONTROL_URL:-$tailscale_control}
    auth_table="kind = \"static\"
key_file = \"$secrets/authkey\"
tags = [\"tag:k8s-pod\"]"
    ;;
  *) fail "AUTH_KIND must be tailscale, headscale, rscale or static, not '$kind'" ;;
esac
require_url CONTROL_URL "$control_url"

# deploy/configmap.yaml's config.toml, unindented, without its [auth] table
# (which the ConfigMap keeps last for this reason).
base=$(sed -n '/^  config\.toml: |$/,$ { /^  config\.toml: |$/d; s/^    //; p; }' "$repo/deploy/configmap.yaml")
grep -qx '\[auth\]' <<<"$base" || fail "deploy/configmap.yaml has no [auth] table in config.toml"
[[ $(sed -n '/^\[auth\]$/,$p' <<<"$base" | grep -c '^\[') == 1 ]] ||
  fail "deploy/configmap.yaml: [auth] must be the last table of config.toml"
[[ $(grep -c '^control_url = ' <<<"$base") == 1 ]] || fail "deploy/configmap.yaml: expected one control_url line"

mkdir -p "$out"
# kustomize takes its bases as relative paths only.
base_dir=$(realpath --relative-to="$out" "$repo/deploy")
{
  sed -e '/^\[auth\]$/,$d' -e "s|^control_url = .*|control_url = \"$control_url\"|" <<<"$base"
  # A plain-http server (a lab rscale or headscale) must be allowed explicitly.
  [[ $control_url != http://* ]] || echo "allow_insecure_http = true"
  printf '[auth]\n%s\n' "$auth_table"
} >"$out/config.toml"

checksum=$({ cat "$out/config.toml"; echo "${SECRET_CHECKSUM:-}"; } | sha256sum | cut -c1-64)

cat >"$out/kustomization.yaml" <<EOF
# Written by k3d/overlay.sh; do not edit.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base_dir
images:
  - name: ghcr.io/tailnet-cni/tailnet-cni
    newName: $image_name
    newTag: "$image_tag"
configMapGenerator:
  - name: tailnet-cnid
    namespace: tailnet-cni
    behavior: merge
    options:
      disableNameSuffixHash: true
    files:
      - config.toml
patches:
  - target:
      kind: DaemonSet
      name: tailnet-cnid
    patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: tailnet-cnid
      spec:
        template:
          metadata:
            annotations:
              tailnet-cni.io/config-checksum: "$checksum"
EOF
