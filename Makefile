# The two commands of the README:
#   make run   installs everything into .venv and serves on the built-in sandbox
#   make test  installs everything and runs the whole test suite
# Both work on a fresh machine that has python3, pip, node/npm and make.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LISTEN ?= 127.0.0.1:50051
SANDBOX_LISTEN ?= 127.0.0.1:50052

# The last released contract: `buf breaking` compares protos/ against it.
PROTO_RELEASE := $(lastword $(sort $(wildcard releases/proto/v*.binpb)))

# Root installs system packages directly; anyone else through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test install lint typecheck buf pytest redis-server go-toolchain generate release-proto bench clean

run: install
	$(BIN)/yunpian-sms serve --sandbox --listen $(LISTEN) --sandbox-listen $(SANDBOX_LISTEN)

test: install lint typecheck buf pytest

# Tools and third-party packages: installed again, into a cleared venv, only when their pins
# change (cleared so that a dropped package, e.g. one stub package replacing another, goes too).
$(BIN)/.deps: requirements-dev.txt bench/requirements.txt pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check \
	  -r requirements-dev.txt -r bench/requirements.txt './client[typing]' .
	touch $@

node_modules/.deps: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# The project itself: always reinstalled (not editable), so tests import what a user installs.
install: $(BIN)/.deps node_modules/.deps
	$(BIN)/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./client .

lint: install
	$(BIN)/ruff check server client/src tests tools bench
	$(BIN)/ruff format --check server client/src tests tools bench

typecheck: install
	$(BIN)/mypy

buf: node_modules/.deps
	cd protos && ../node_modules/.bin/buf lint
	cd protos && ../node_modules/.bin/buf breaking --against ../$(PROTO_RELEASE)

# Snapshot the contract when releasing it: make release-proto VERSION=v0.2.0
release-proto: node_modules/.deps
	test -n "$(VERSION)"
	cd protos && ../node_modules/.bin/buf build -o ../releases/proto/$(VERSION).binpb

pytest: install redis-server go-toolchain
	$(BIN)/pytest

# The tests start their own redis-server on a loopback port: install Debian's when it is missing.
redis-server:
	@command -v redis-server >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

# tests/test_readme.py compiles and runs the README's Go example: Debian's Go, protoc with its
# Go plugins, and grpc-go with what it needs (protobuf 1.5, which reads the plugin's APIv2 code).
GO_PACKAGES := golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc \
  golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev \
  golang-google-genproto-dev

go-toolchain:
	@dpkg -s $(GO_PACKAGES) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    $(GO_PACKAGES) >/dev/null; }

# The benchmark of bench/README.md: a few minutes; prints its figures as JSON.
bench: install
	$(BIN)/python bench/run.py

generate: $(BIN)/.deps
	$(BIN)/python tools/generate_protos.py

clean:
	rm -rf $(VENV) node_modules build client/build *.egg-info client/src/*.egg-info
