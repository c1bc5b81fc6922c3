# kanal — the two commands the README starts with are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test test-unit lint crds proto tools redis-server clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

## install: a virtualenv in .venv with kanal and what its tests need
install: $(VENV)/.installed

## up: install, then run kanal locally on the quickstart (no cluster); with OPENAI_API_KEY set, OpenAI too
up: install
	$(BIN)/kanal up -f examples/quickstart \
	  $${OPENAI_API_KEY:+-f examples/quickstart-openai --secret openai-key:apiKey=OPENAI_API_KEY}

## tools: redis-server (Debian), kube-apiserver/etcd/kube-controller-manager and helm (Go modules, cached)
tools: redis-server
	hack/build-k8s.sh >/dev/null
	hack/build-helm.sh >/dev/null

redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

## lint: ruff and mypy (strict)
lint: install
	$(BIN)/ruff check operator functions tests
	$(BIN)/ruff format --check operator functions tests
	$(BIN)/mypy
	$(BIN)/mypy --strict tests/harness

## crds: regenerate crds/ from the API models, and the chart's copies (a test checks both)
crds: install
	$(BIN)/kanal crds -o crds
	cp crds/*.yaml charts/kanal/crds/
	cp operator/kanal/controller/peering-crd.yaml charts/kanal/crds/kopfpeerings.kopf.dev.yaml

## proto: regenerate the gRPC stubs in operator/kanal/v1 (a test fails if they drift)
proto: install
	$(BIN)/python hack/gen_proto.py

## test-unit: the fast tests only
test-unit: install
	$(BIN)/pytest -m unit -q

## test: everything; the test bench (Redis, kube-apiserver + etcd + controller-manager) starts inside pytest
test: install tools lint
	KANAL_REQUIRE_TOOLS=1 KANAL_K8S_BIN="$$(hack/build-k8s.sh)" KANAL_HELM_BIN="$$(hack/build-helm.sh)" \
	  $(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
