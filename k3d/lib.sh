# shellcheck shell=bash
# Helpers shared by the k3d scripts (sourced, not run). Everything they print
# goes to stderr; only answers go to stdout.

K3D_NAMESPACE=tailnet-cni
DAEMON_SELECTOR=app.kubernetes.io/component=daemon

die() { echo "${0##*/}: $*" >&2; exit 1; }

need() { command -v "$1" >/dev/null || die "'$1' is required"; }

# The daemon pod running on node $1.
daemon_on() {
  kubectl -n "$K3D_NAMESPACE" get pod -l "$DAEMON_SELECTOR" \
    --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'
}

# The tailnet IPv4 address of pod $1 in namespace $2, as the daemon on its
# node reports it; fails when that daemon does not list the pod.
tailnet_address() {
  local pod=$1 namespace=$2 node daemon
  node=$(kubectl -n "$namespace" get pod "$pod" -o jsonpath='{.spec.nodeName}')
  daemon=$(daemon_on "$node")
  [[ -n $daemon ]] || { echo "no tailnet-cni daemon on node $node" >&2; return 1; }
  kubectl -n "$K3D_NAMESPACE" exec "$daemon" -c daemon -- tailnet-cnid status --json |
    python3 -c '
import json, sys
pod, namespace = sys.argv[1], sys.argv[2]
for entry in json.load(sys.stdin)["pods"]:
    if entry["name"] == pod and entry["namespace"] == namespace and entry["ipv4"]:
        print(entry["ipv4"])
        sys.exit(0)
sys.exit(f"the daemon on {sys.argv[3]} does not list {namespace}/{pod}")
' "$pod" "$namespace" "$node"
}

# How to see the daemon's readiness: it answers /readyz on the node's
# loopback only, and neither the node (k3s' busybox root) nor the daemon's
# image has curl, so forward the port from this machine.
readyz_hint() {
  cat >&2 <<EOF
  readiness (why /readyz fails):
    kubectl -n $K3D_NAMESPACE port-forward pod/${1:-<daemon pod>} 9464:9464 &
    curl -sS 127.0.0.1:9464/readyz; kill %1
EOF
}

# Why the daemon pods are not ready: status, recent events and logs.
explain_daemon() {
  local pod
  echo "--- tailnet-cni pods" >&2
  kubectl -n "$K3D_NAMESPACE" get pods -o wide >&2 || true
  for pod in $(kubectl -n "$K3D_NAMESPACE" get pod -l "$DAEMON_SELECTOR" -o jsonpath='{.items[*].metadata.name}'); do
    echo "--- events of $pod" >&2
    kubectl -n "$K3D_NAMESPACE" get events --field-selector "involvedObject.name=$pod" \
      --sort-by=.lastTimestamp 2>&1 | tail -n 8 >&2 || true
    for container in daemon installer; do
      echo "--- last log lines of $pod/$container" >&2
      kubectl -n "$K3D_NAMESPACE" logs "$pod" -c "$container" --tail=20 >&2 || true
    done
    readyz_hint "$pod"
  done
}

# Why pods ($@, in namespace default) are not Running: their status and
# events, and the daemon's log on their node.
explain_pods() {
  local pod node daemon
  for pod in "$@"; do
    echo "--- $pod" >&2
    kubectl get pod "$pod" -o wide >&2 || continue
    kubectl get events --field-selector "involvedObject.name=$pod" \
      --sort-by=.lastTimestamp 2>&1 | tail -n 8 >&2 || true
    node=$(kubectl get pod "$pod" -o jsonpath='{.spec.nodeName}')
    [[ -n $node ]] || continue
    daemon=$(daemon_on "$node")
    [[ -n $daemon ]] || { echo "no tailnet-cni daemon on node $node" >&2; continue; }
    echo "--- last log lines of $daemon (node $node)" >&2
    kubectl -n "$K3D_NAMESPACE" logs "$daemon" -c daemon --tail=20 >&2 || true
  done
  cat >&2 <<EOF
  A pod stuck in ContainerCreating: its events carry the CNI error (code 11:
  the daemon is not running or not ready). "no such file or directory" from
  the tailnet-cni plugin means the node cannot run the shim: the image was
  built without the static shim (scripts/build-shim.sh). See README.md,
  Troubleshooting.
EOF
}
