#!/usr/bin/env bash
# ADD and DEL through the shim binary and the real daemon, as a runtime
# calls them (registration with rscale included), one pod at a time.
# Runs inside scripts/isolated.sh (see scripts/bench.sh add).
#   TARGET_DIR  where tailnet-cnid and tailnet-cni (release) are
#   OUT         where add.json goes
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${TAILNET_ISOLATED:-}" == 1 ]] || { echo "bench-add: run through scripts/isolated.sh" >&2; exit 1; }
RUNS=${RUNS:-20}

scripts/testbed.sh up >/dev/null
# shellcheck disable=SC1090
source <(scripts/testbed.sh env)
work=$(mktemp -d)
cat >"$work/d.toml" <<EOF
socket = "$work/d.sock"
state_dir = "$work/state"
cluster_name = "bench"
control_url = "$TAILNET_TEST_CONTROL_URL"
selection = "all"

[auth]
kind = "rscale"
api_url = "$TAILNET_TEST_CONTROL_URL"
token_file = "$TAILNET_TEST_ADMIN_TOKEN_FILE"
EOF
"$TARGET_DIR/tailnet-cnid" --config "$work/d.toml" run 2>"$work/d.log" &
daemon=$!
for _ in $(seq 50); do [[ -S "$work/d.sock" ]] && break; sleep 0.1; done

conf=$(printf '{"cniVersion":"1.0.0","name":"bench","type":"tailnet-cni","daemonSocket":"%s","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]}}' "$work/d.sock")
shim() { # command container-id netns
  echo "$conf" | CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=$3 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=$2" "$TARGET_DIR/tailnet-cni" >/dev/null
}
: >"$work/add.us"
: >"$work/del.us"
for i in $(seq "$RUNS"); do
  ip netns add "bench$i"
  id=$(printf "bench%059d" "$i")
  t0=$(date +%s%N)
  shim ADD "$id" "/run/netns/bench$i"
  t1=$(date +%s%N)
  shim DEL "$id" "/run/netns/bench$i"
  t2=$(date +%s%N)
  echo $(((t1 - t0) / 1000)) >>"$work/add.us"
  echo $(((t2 - t1) / 1000)) >>"$work/del.us"
  ip netns del "bench$i"
done
kill "$daemon"
wait "$daemon" || true

python3 - "$work/add.us" "$work/del.us" "$OUT/add.json" <<'PY'
import json, sys
def stats(path):
    t = sorted(int(x) / 1000 for x in open(path))
    return {"p50_ms": t[len(t) // 2], "max_ms": t[-1], "n": len(t)}
r = {"add": stats(sys.argv[1]), "del": stats(sys.argv[2])}
print(json.dumps(r))
open(sys.argv[3], "w").write(json.dumps(r))
PY
rm -rf "$work"
scripts/testbed.sh down >/dev/null
