#!/usr/bin/env bash
# Starts an annotated nginx pod and fetches its page at its tailnet address
# from this machine (which must itself be on the tailnet).
set -euo pipefail
cd "$(dirname "$0")/.."
kubectl apply -f k3d/nginx.yaml
kubectl wait --for=condition=Ready pod/tailnet-nginx --timeout=120s
node=$(kubectl get pod tailnet-nginx -o jsonpath='{.spec.nodeName}')
daemon=$(kubectl -n tailnet-cni get pod -l app.kubernetes.io/component=daemon \
  --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
ip=$(kubectl -n tailnet-cni exec "$daemon" -c daemon -- tailnet-cnid status --json |
  python3 -c 'import json,sys; print(next(p["ipv4"] for p in json.load(sys.stdin)["pods"] if p["name"]=="tailnet-nginx"))')
echo "tailnet-nginx is at $ip"
curl -fsS --max-time 20 "http://$ip/" | head -n 5
