#!/usr/bin/env bash
# `make demo`: on a plain Linux box with no Kubernetes, watch a container
# join the tailnet.
#
#   scripts/demo.sh up     test bed (rscale + DERP + an official tailscaled
#                          peer), tailnet-cnid, and one podman container
#                          through the CNI shim; prints the container's
#                          tailnet address and the peer fetching a page from
#                          it; leaves everything running
#   scripts/demo.sh down   stops and removes all of it
#
# Everything runs inside a private network and mount namespace held open by
# a keeper process (loopback and one veth pair of its own), so nothing
# reaches any other network; `down` ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DIR=${TAILNET_DEMO_DIR:-/var/tmp/tailnet-demo}
export TAILNET_TESTBED_DIR="$DIR/testbed"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}/release
DAEMON="$TARGET/tailnet-cnid"
SHIM="$TARGET/tailnet-cni"
SOCKET="$DIR/daemon.sock"

log() { echo "demo: $*"; }
die() { echo "demo: error: $*" >&2; exit 1; }
keeper_alive() { [[ -f "$DIR/keeper.pid" ]] && kill -0 "$(cat "$DIR/keeper.pid")" 2>/dev/null; }
# podman and the daemon must share one mount namespace: the daemon opens the
# network namespaces podman mounts under /run/netns.
in_ns() { nsenter --target "$(cat "$DIR/keeper.pid")" --net --mount --wd="$REPO" "$@"; }

make_namespace() {
  keeper_alive && return 0
  unshare --net --mount --propagation private sleep infinity &
  echo $! >"$DIR/keeper.pid"
  sleep 0.2
  mkdir -p "$DIR/var-lib-cni"
  # The same private layout as scripts/isolated.sh.
  in_ns sh -c "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/netns /run/lock &&
    mkdir -p /var/lib/cni && mount --bind '$DIR/var-lib-cni' /var/lib/cni &&
    mount -t tmpfs tmpfs /dev/shm &&
    { ! mountpoint -q /sys/fs/cgroup/unified || umount /sys/fs/cgroup/unified; } &&
    ip link set lo up && ip link add tb0 type veth peer name tb1 &&
    ip addr add 10.203.0.1/24 dev tb0 && ip link set tb0 up && ip link set tb1 up"
}

start_daemon() {
  if [[ -f "$DIR/daemon.pid" ]] && kill -0 "$(cat "$DIR/daemon.pid")" 2>/dev/null; then return 0; fi
  # shellcheck disable=SC1090
  source <(in_ns scripts/testbed.sh env)
  cat >"$DIR/tailnet-cnid.toml" <<EOF
socket = "$SOCKET"
state_dir = "$DIR/state"
cluster_name = "demo"
control_url = "$TAILNET_TEST_CONTROL_URL"
allow_insecure_http = true
selection = "all"
health_addr = "127.0.0.1:9464"

[auth]
kind = "rscale"
api_url = "$TAILNET_TEST_CONTROL_URL"
token_file = "$TAILNET_TEST_ADMIN_TOKEN_FILE"
EOF
  # Not through in_ns: $! must be the daemon itself, for `down` to stop it.
  TAILNET_CNID_LOG=info nsenter --target "$(cat "$DIR/keeper.pid")" --net --mount --wd="$REPO" \
    "$DAEMON" --config "$DIR/tailnet-cnid.toml" run >>"$DIR/daemon.log" 2>&1 &
  echo $! >"$DIR/daemon.pid"
  for _ in $(seq 100); do [[ -S "$SOCKET" ]] && return 0; sleep 0.2; done
  tail -n 20 "$DIR/daemon.log" >&2
  die "the daemon did not open $SOCKET"
}

up() {
  [[ $EUID -eq 0 ]] || die "run as root (TUN devices, network namespaces)"
  scripts/testbed.sh install
  log "building tailnet-cnid and the shim (release)"
  cargo build --release --quiet -p tailnet-cnid -p tailnet-cni
  mkdir -p "$DIR"
  make_namespace
  log "starting the test bed inside the demo's private namespace"
  in_ns scripts/testbed.sh up
  start_daemon
  export TAILNET_E2E_DIR="$DIR/podman" TAILNET_CNI_DAEMON_SOCKET="$SOCKET" TAILNET_CNI_SHIM="$SHIM" TAILNET_ISOLATED=1
  # shellcheck disable=SC1091
  source tests/e2e/podman-env.sh
  if ! in_ns e2e-podman container exists demo-web 2>/dev/null; then
    log "starting a podman container on the tailnet-e2e network (bridge + host-local + tailnet-cni)"
    in_ns e2e-podman run -d --cgroups=disabled --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
      --network "$TAILNET_E2E_NETWORK" --name demo-web --rootfs "$TAILNET_E2E_ROOTFS" \
      /bin/sh -c 'echo "hello from demo-web, a podman container on the tailnet" >/www/index.html; exec httpd -f -p 80 -h /www' >/dev/null
  fi
  in_ns "$DAEMON" status --socket "$SOCKET"
  local ip
  ip=$(in_ns "$DAEMON" status --socket "$SOCKET" --json |
    python3 -c 'import json,sys; print(next(p["ipv4"] for p in json.load(sys.stdin)["pods"]))')
  log "container demo-web has tailnet address $ip"
  # shellcheck disable=SC1090
  source <(in_ns scripts/testbed.sh env)
  log "the official tailscaled peer ($TAILNET_TEST_PEER_IPV4) fetches http://$ip/ :"
  for _ in $(seq 30); do
    if in_ns curl -fsS --max-time 10 --socks5-hostname "$TAILNET_TEST_PEER_SOCKS5" "http://$ip/"; then
      log "running; 'make demo-down' stops it. Logs: $DIR/daemon.log"
      return 0
    fi
    sleep 2
  done
  die "the peer could not fetch the page; see $DIR/daemon.log"
}

down() {
  if keeper_alive; then
    if [[ -d "$DIR/podman" ]]; then
      export TAILNET_E2E_DIR="$DIR/podman" TAILNET_CNI_DAEMON_SOCKET="$SOCKET" TAILNET_CNI_SHIM="$SHIM" TAILNET_ISOLATED=1
      # shellcheck disable=SC1091
      source tests/e2e/podman-env.sh
      in_ns e2e-podman rm -f -t 0 demo-web >/dev/null 2>&1 || true
    fi
    if [[ -f "$DIR/daemon.pid" ]]; then
      kill "$(cat "$DIR/daemon.pid")" 2>/dev/null || true
      sleep 1
    fi
    in_ns scripts/testbed.sh down || true
    kill "$(cat "$DIR/keeper.pid")" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
