#!/usr/bin/env bash
# Starts an annotated nginx pod and fetches its page at its tailnet address
# from this machine.
#
# Prerequisites, outside the cluster: this machine must itself be on the same
# tailnet (tailscale up), and the tailnet's ACL must let it reach the pod's
# tag, e.g. {"action": "accept", "src": ["autogroup:member"],
# "dst": ["tag:k8s-pod:*"]} (README.md, k3d quick start). Without either the
# pod is Running and listed, but the fetch times out.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=k3d/lib.sh
source k3d/lib.sh

for tool in kubectl python3 curl; do need "$tool"; done

kubectl apply -f k3d/nginx.yaml
if ! kubectl wait --for=condition=Ready pod/tailnet-nginx --timeout=120s; then
  explain_pods tailnet-nginx
  die "tailnet-nginx did not become Running"
fi
ip=$(tailnet_address tailnet-nginx default) || { explain_pods tailnet-nginx; die "tailnet-nginx is not on the tailnet"; }
echo "tailnet-nginx is at $ip"
if ! curl -fsS --max-time 20 "http://$ip/" | head -n 5; then
  die "no answer from http://$ip/: is this machine on the tailnet, and does the ACL let it reach tag:k8s-pod?"
fi
