# meshplug: the two README commands are `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export MESHPLUG_CACHE ?= $(HOME)/.cache/meshplug
export PATH := $(BIN):$(PATH)

.PHONY: demo test setup system native plugins kube helm istio cosign debian-root lint unit integration integration-fallback bench clean

setup: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	MESHPLUG_NATIVE=0 $(BIN)/pip install -q -e '.[dev]'  # native parts: `make native`
	touch $@

system:
	scripts/install-system-deps.sh

# the agent's compiled data path (meshplug/native.py), built in place; a no-op when it matches the sources
# the C extensions, and the opt-in libwasmtime with compiler inlining (MESHPLUG_WASMTIME=built, meshplug/wasmlib.py;
# without a new enough rustc nothing is built and only wasmtime-py's own library is there)
native: setup system
	$(BIN)/python scripts/build_native.py
	$(BIN)/python scripts/build_wasmtime.py

plugins: setup system
	$(BIN)/python scripts/build_plugins.py

lint: setup
	$(BIN)/ruff check meshplug tests bench scripts setup.py
	$(BIN)/mypy
	$(BIN)/lint-imports

# the tests run the compiled data path they ship: a missing or stale build fails them (MESHPLUG_REQUIRE_NATIVE)
unit: setup system native plugins
	MESHPLUG_REQUIRE_NATIVE=1 $(BIN)/pytest tests/unit -m unit -q

# kube-apiserver + kube-controller-manager for the test bed, built once into $(MESHPLUG_CACHE)/kube/<version>
kube: system
	nice -n 10 scripts/install-kube.sh

# helm v3 for the chart tests, built once from the Go module proxy into $(MESHPLUG_CACHE)/helm/<version>
helm: system
	nice -n 10 scripts/install-helm.sh

# istiod (pilot-discovery) + istio-agent (pilot-agent) for the real Istio test bed, built once from the Go module proxy
istio: system
	nice -n 10 scripts/install-istio.sh

# the real cosign (signature tests), built once from the Go module proxy into $(MESHPLUG_CACHE)/cosign/<version>
cosign: system
	nice -n 10 scripts/install-cosign.sh

# a clean Debian root (debootstrap), cached in $(MESHPLUG_CACHE)/debian/<suite>-<date>: the image is built on it
debian-root: system
	scripts/install-debian-root.sh >/dev/null

integration: setup system native plugins kube helm istio cosign debian-root
	MESHPLUG_REQUIRE_NATIVE=1 $(BIN)/pytest tests/integration -m integration -q --durations=30

# The agent's suites against Envoy 1.40 (differential, corpus, protocol) once more on the interpreted data path
# (MESHPLUG_NATIVE=0: what a build without a compiler runs; HTTP/2 on the h2 library). Tests marked `compiled`
# need the native build (--concurrency) and are left out; `meshplug version` first shows the path is interpreted.
FALLBACK_TESTS := $(addprefix tests/integration/test_,$(addsuffix .py,\
	differential_http1 differential_h2 differential_h2_close differential_h2_upstream_conn differential_flags buffer_limit_differential host_corpus corpus_agent \
	agent_http1_trailers agent_websocket agent_grpc agent_h2_tls_timeouts agent_proxy agent_filtered \
	agent_server_header agent_hardening agent_lua agent_match agent_istio_fields agent_recycle agent_early_response \
	differential_stream_limits differential_grpc_replies differential_h2_fuzz))
integration-fallback: setup system plugins
	env -u MESHPLUG_REQUIRE_NATIVE MESHPLUG_NATIVE=0 $(BIN)/meshplug version | grep -qx 'dataplane interpreted: MESHPLUG_NATIVE=0'
	env -u MESHPLUG_REQUIRE_NATIVE MESHPLUG_NATIVE=0 $(BIN)/pytest $(FALLBACK_TESTS) \
		-m 'integration and not compiled' -q --durations=10

# The whole suite: quality gates, fast unit tests, then integration tests against the real test bed, then the
# agent's Envoy-compared suites on the interpreted fallback.
test: lint unit integration integration-fallback

demo: setup system native plugins kube helm
	$(BIN)/python scripts/demo.py

bench: setup system native plugins
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build meshplug/_native.json
	find meshplug -name '*.so' -delete
