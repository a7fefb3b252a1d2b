#!/usr/bin/env bash
# Runs a command in a private network and mount namespace, so that nothing
# it starts (control server, tailscaled peers, the daemon, containers) can
# send a packet anywhere but loopback and interfaces made inside it.
#
#   scripts/isolated.sh make test-in-netns
#
# Inside: `lo` up, a veth pair `tb0`/`tb1` with tb0 holding 10.203.0.1/24 (tailscaled
# treats a namespace with only `lo` as offline), no default route; a fresh
# tmpfs on /run (with /run/netns and /run/lock), a scratch /var/lib/cni for
# libcni's result cache, a tmpfs on /dev/shm. Everything vanishes with the
# namespace when the command ends.
set -euo pipefail

if [[ "${TAILNET_ISOLATED:-}" != 1 ]]; then
  [[ $EUID -eq 0 ]] || { echo "isolated: must run as root" >&2; exit 1; }
  export TAILNET_ISOLATED=1
  exec unshare --net --mount --propagation private -- "$0" "$@"
fi

scratch=$(mktemp -d /tmp/tailnet-isolated.XXXXXX)
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns /run/lock /run/user
mkdir -p "$scratch/var-lib-cni"
mkdir -p /var/lib/cni
mount --bind "$scratch/var-lib-cni" /var/lib/cni
mount -t tmpfs tmpfs /dev/shm
# podman's cgroupfs manager trips over the hybrid v1 "unified" mount.
if mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then umount /sys/fs/cgroup/unified || true; fi

ip link set lo up
ip link add tb0 type veth peer name tb1
ip link set tb1 up
ip addr add 10.203.0.1/24 dev tb0
ip link set tb0 up

status=0
"$@" || status=$?
rm -rf "$scratch"
exit "$status"
