# tailnet-cni: `make demo` to watch it work, `make test` to check it.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help build test test-unit lint bench demo demo-down k3d-setup k3d-delete logs test-nginx

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

build: ## Build the daemon (release) and the shim (small `shim` profile)
	$(CARGO) build --release -p tailnet-cnid
	$(CARGO) build --profile shim -p tailnet-cni
	@ls -l target/release/tailnet-cnid target/shim/tailnet-cni

test: ## Every test: unit, then integration against the real test bed (root)
	scripts/test.sh

test-unit: ## Unit tests only: no root, no test bed
	$(CARGO) test --workspace --lib --bins

lint: ## rustfmt, clippy, manifests and Dockerfile
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/lint-manifests.sh

bench: ## Benchmarks; numbers go to BENCHMARKS.md
	scripts/bench.sh

demo: ## Test bed + daemon + a podman container on the tailnet, left running
	scripts/demo.sh up

demo-down: ## Stop what `make demo` started
	scripts/demo.sh down

k3d-setup: ## k3d cluster with tailnet-cni installed (needs docker, k3d, kubectl)
	k3d/setup.sh

k3d-delete: ## Delete the k3d cluster
	k3d/delete.sh

logs: ## Follow the daemon's logs in the k3d cluster
	kubectl -n tailnet-cni logs -f -l app.kubernetes.io/component=daemon -c daemon --max-log-requests 10

test-nginx: ## An annotated nginx, fetched at its tailnet address
	k3d/test-nginx.sh
