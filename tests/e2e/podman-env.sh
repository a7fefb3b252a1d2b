#!/usr/bin/env bash
# A real CNI runtime for end-to-end tests: podman 4 with its CNI backend,
# private storage, no image registry (a busybox rootfs), inside a private
# network and mount namespace (scripts/isolated.sh) with no default route.
#
#   tests/e2e/podman-env.sh check
#       Proves the runtime works without our plugin: runs a busybox container
#       on the `e2e-bridge` network (bridge + host-local, 10.88.77.0/24) and
#       prints its eth0 address.
#   tests/e2e/podman-env.sh run CMD [ARG...]
#       Prepares everything below, then runs CMD with it exported.
#   tests/e2e/podman-env.sh shell
#       The same, with an interactive shell.
#   source tests/e2e/podman-env.sh
#       From a shell that already runs under scripts/isolated.sh
#       (TAILNET_ISOLATED=1): prepares and exports the same in that shell.
#
# Exported for CMD:
#   TAILNET_E2E_DIR            scratch dir (removed on exit unless it was given)
#   CONTAINERS_CONF            the private containers.conf
#   TAILNET_E2E_ROOTFS         busybox rootfs (sh, wget, httpd, ip, nc, ping, ...)
#   TAILNET_E2E_NETWORK        `tailnet-e2e`: bridge + host-local (10.88.78.0/24)
#                              then `tailnet-cni` with daemonSocket below
#   TAILNET_E2E_BRIDGE_NETWORK `e2e-bridge`: bridge + host-local only
#   PATH                       gains two helpers:
#     e2e-podman ARGS...       podman with the private root, runroot and config
#     e2e-run NETWORK NAME CMD...
#                              `e2e-podman run --rm` of the rootfs on NETWORK
#                              with the flags this kernel and podman need
#
# Inputs (environment):
#   TAILNET_CNI_DAEMON_SOCKET  the daemon's socket for the conflist
#                              (default /run/tailnet-cni/daemon.sock)
#   TAILNET_CNI_SHIM           the shim binary linked into the plugin dir
#                              (default: ${CARGO_TARGET_DIR:-target}/debug/tailnet-cni)
#   TAILNET_E2E_DIR            use this scratch dir instead of a fresh one
# Needs root, podman, containernetworking-plugins and busybox-static
# (scripts/testbed.sh install provides them).

podman_env_prepare() {
  local repo dir shim busybox_bin plugin applet
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  dir=${TAILNET_E2E_DIR:-$(mktemp -d /tmp/tailnet-e2e.XXXXXX)}
  busybox_bin=$(command -v busybox) || { echo "podman-env: busybox not found (apt-get install busybox-static)" >&2; return 1; }
  command -v podman >/dev/null || { echo "podman-env: podman not found" >&2; return 1; }
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] ||
    { echo "podman-env: /usr/lib/cni lacks bridge/host-local (apt-get install containernetworking-plugins)" >&2; return 1; }

  mkdir -p "$dir"/{cni-bin,net.d,rootfs/bin,rootfs/www,rootfs/tmp,root,runroot,tmp,static,volumes,tools}

  # Our plugin dir holds Debian's reference plugins and, when built, the shim.
  for plugin in bridge host-local loopback portmap; do
    ln -sfn "/usr/lib/cni/$plugin" "$dir/cni-bin/$plugin"
  done
  shim=${TAILNET_CNI_SHIM:-${CARGO_TARGET_DIR:-$repo/target}/debug/tailnet-cni}
  if [[ -x "$shim" ]]; then
    ln -sfn "$(readlink -f "$shim")" "$dir/cni-bin/tailnet-cni"
  else
    echo "podman-env: note: no shim at $shim; the tailnet-e2e network cannot be used yet" >&2
  fi

  # busybox-static is one self-contained binary: a rootfs needs nothing else.
  install -m 0755 "$busybox_bin" "$dir/rootfs/bin/busybox"
  for applet in sh ash cat echo sleep ls ip ifconfig route hostname wget httpd nc ping ping6 \
    grep sed head tail tr id env mkdir rm true false timeout; do
    ln -sfn busybox "$dir/rootfs/bin/$applet"
  done
  echo "hello from a pod on the tailnet" >"$dir/rootfs/www/index.html"

  cat >"$dir/net.d/e2e-bridge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "e2e-bridge",
  "plugins": [
    {"type": "bridge", "bridge": "cni-e2e0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.77.0/24"}]]}}
  ]
}
EOF
  cat >"$dir/net.d/tailnet-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tailnet-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "cni-e2e1", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.78.0/24"}]]}},
    {"type": "tailnet-cni", "daemonSocket": "${TAILNET_CNI_DAEMON_SOCKET:-/run/tailnet-cni/daemon.sock}"}
  ]
}
EOF
  cat >"$dir/containers.conf" <<EOF
[network]
network_backend = "cni"
cni_plugin_dirs = ["$dir/cni-bin"]
network_config_dir = "$dir/net.d"

[engine]
cgroup_manager = "cgroupfs"
runtime = "crun"
events_logger = "file"
events_logfile_path = "$dir/events.log"
tmp_dir = "$dir/tmp"
static_dir = "$dir/static"
volume_path = "$dir/volumes"
EOF

  cat >"$dir/tools/e2e-podman" <<EOF
#!/bin/sh
exec env CONTAINERS_CONF="$dir/containers.conf" podman --root "$dir/root" --runroot "$dir/runroot" "\$@"
EOF
  # --cgroups=disabled and explicit ulimits: no systemd, hybrid cgroups and
  # a nofile limit podman would otherwise try to raise past the hard limit.
  cat >"$dir/tools/e2e-run" <<EOF
#!/bin/sh
[ \$# -ge 3 ] || { echo "usage: e2e-run NETWORK NAME CMD [ARG...]" >&2; exit 2; }
network=\$1 name=\$2
shift 2
exec "$dir/tools/e2e-podman" run --rm --cgroups=disabled \\
  --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \\
  --network "\$network" --name "\$name" --rootfs "$dir/rootfs" "\$@"
EOF
  chmod 0755 "$dir/tools/e2e-podman" "$dir/tools/e2e-run"

  export TAILNET_E2E_DIR=$dir
  export CONTAINERS_CONF=$dir/containers.conf
  export TAILNET_E2E_ROOTFS=$dir/rootfs
  export TAILNET_E2E_NETWORK=tailnet-e2e
  export TAILNET_E2E_BRIDGE_NETWORK=e2e-bridge
  export PATH=$dir/tools:$PATH
}

# Sourced: prepare in the caller's shell, which must already be isolated.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  if [[ "${TAILNET_ISOLATED:-}" != 1 ]]; then
    echo "podman-env: source me only under scripts/isolated.sh (TAILNET_ISOLATED=1)" >&2
    return 1
  fi
  podman_env_prepare
  return $?
fi

set -euo pipefail
self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/../.." && pwd)

usage() { sed -n '2,37p' "$self" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
case "$1" in check | run | shell) ;; *) usage ;; esac

# Everything below happens in a namespace that vanishes with it.
if [[ "${TAILNET_ISOLATED:-}" != 1 ]]; then
  exec "$repo/scripts/isolated.sh" "$self" "$@"
fi

cleanup_dir=
[[ -n "${TAILNET_E2E_DIR:-}" ]] || cleanup_dir=yes
podman_env_prepare
cleanup() {
  # Containers first: their mounts live under the scratch dir.
  e2e-podman rm -a -f -t 0 >/dev/null 2>&1 || true
  if [[ -n "$cleanup_dir" ]]; then
    umount -R "$TAILNET_E2E_DIR/root" 2>/dev/null || true
    rm -rf "$TAILNET_E2E_DIR"
  fi
}
trap cleanup EXIT

case "$1" in
  check)
    echo "podman-env: running busybox on $TAILNET_E2E_BRIDGE_NETWORK (bridge + host-local only)" >&2
    addr=$(e2e-run "$TAILNET_E2E_BRIDGE_NETWORK" e2e-check /bin/sh -c \
      "ip -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.\/]*\).*/\1/p'")
    [[ "$addr" == 10.88.77.* ]] || { echo "podman-env: unexpected eth0 address: '$addr'" >&2; exit 1; }
    echo "eth0 $addr"
    ;;
  run)
    shift
    [[ $# -ge 1 ]] || usage
    "$@"
    ;;
  shell)
    "${SHELL:-/bin/bash}" -i
    ;;
esac
