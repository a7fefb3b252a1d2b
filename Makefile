# tailnet-cni: `make demo` to watch it work, `make test` to check it.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help build test test-unit fuzz lint bench demo demo-down testbed-up testbed-down podman-check \
	k3d-setup k3d-delete logs test-nginx

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

build: ## Build the daemon (release) and the static shim (target/static/tailnet-cni)
	$(CARGO) build --release -p tailnet-cnid
	CARGO=$(CARGO) scripts/build-shim.sh
	@ls -l "$${CARGO_TARGET_DIR:-target}/release/tailnet-cnid" "$${CARGO_TARGET_DIR:-target}/static/tailnet-cni"

test: ## Every test: unit, then integration against the real test bed (root)
	scripts/test.sh

test-unit: ## Unit tests only: no root, no test bed
	$(CARGO) test --workspace --lib --bins

fuzz: ## Fuzz every parser hostile input reaches, FUZZ_SECONDS (default 20) per target
	scripts/fuzz.sh

lint: ## rustfmt, clippy, manifests, Dockerfile and shell scripts
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/lint-manifests.sh
	@if command -v shellcheck >/dev/null; then shellcheck -x scripts/*.sh bench/*.sh tests/e2e/*.sh k3d/*.sh .ci/run; \
	else echo "lint: shellcheck is not installed; shell scripts not checked (apt-get install shellcheck)"; fi

bench: ## Benchmarks (root, ~15 min; not part of `test`); figures go to BENCHMARKS.md. Parts: bench/run.sh PART
	BENCH_COMMAND="make bench" bench/run.sh

demo: ## Test bed + daemon + a podman container on the tailnet, left running
	@[[ -x scripts/demo.sh ]] || { echo "demo: scripts/demo.sh does not exist yet" >&2; exit 1; }
	scripts/demo.sh up

demo-down: ## Stop what `make demo` started
	@[[ -x scripts/demo.sh ]] || { echo "demo-down: scripts/demo.sh does not exist yet" >&2; exit 1; }
	scripts/demo.sh down

testbed-up: ## Start the real test bed on loopback (root); `scripts/testbed.sh env` prints its exports
	scripts/testbed.sh up

testbed-down: ## Stop the test bed (caches stay)
	scripts/testbed.sh down

podman-check: ## Prove the podman CNI runtime works here (bridge + host-local, isolated namespace)
	tests/e2e/podman-env.sh check

k3d-setup: ## k3d cluster with this tree's build installed; re-run to deploy changes (docker, k3d, kubectl)
	k3d/setup.sh

k3d-delete: ## Delete the tailnet pods, then the k3d cluster
	k3d/delete.sh

logs: ## Follow the daemon's logs in the k3d cluster
	kubectl -n tailnet-cni logs -f -l app.kubernetes.io/component=daemon -c daemon --max-log-requests 10

test-nginx: ## An annotated nginx, fetched at its tailnet address (this machine on the tailnet)
	k3d/test-nginx.sh
