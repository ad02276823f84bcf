# Test world targets (the real servers internal/testenv runs). Included by the root Makefile.
#
#   make testenv                       build kube-apiserver, etcd, headscale, kwok, tailscaled (cached; cold ~15-25 min, warm seconds)
#   make testenv-test                  build what is missing, then run the test world's own tests
#   make testenv-up   TESTENV_DIR=DIR  start the whole world in the background, write DIR/env
#   make testenv-up   TESTENV_DIR=DIR TESTENV_BARE=1 [TESTENV_CLUSTERS=2]
#                                      a bare world for setup: nothing of GuildNet in it,
#                                      DIR/fleet.yaml and DIR/nodes/NAME/env (hack/testworld/bare.go)
#   make testenv-down TESTENV_DIR=DIR  stop it and remove what it made
#
# The binaries live outside the repository in a per-version cache:
# $(TESTENV_CACHE)/k8s-v1.37.2/{kube-apiserver,etcd} and
# $(TESTENV_CACHE)/headscale-v0.29.1/headscale and
# $(TESTENV_CACHE)/tailscale-v1.102.5/tailscaled. Tests find them through
# MGN_TESTENV_CACHE, exported here; plain `go test` uses the same default.
GO ?= go

TESTENV_CACHE ?= $(or $(MGN_TESTENV_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/metaguildnet/testenv)
export MGN_TESTENV_CACHE := $(TESTENV_CACHE)
TESTENV_BIN_DIRS := $(TESTENV_CACHE)/k8s-v1.37.2 $(TESTENV_CACHE)/headscale-v0.29.1 $(TESTENV_CACHE)/kwok-v0.8.0 $(TESTENV_CACHE)/tailscale-v1.102.5
TESTENV_DIR ?= /tmp/metaguildnet-testenv
TESTWORLD := $(CURDIR)/bin/testworld

.PHONY: testenv testenv-test testenv-up testenv-down testenv-dirs

testenv:
	@hack/build-testenv.sh

testenv-dirs:
	@echo $(TESTENV_BIN_DIRS)

testenv-test: testenv
	$(GO) test -count=1 ./internal/testenv/... ./hack/testworld/

$(TESTWORLD): FORCE_TESTWORLD
	@$(GO) build -o $(TESTWORLD) ./hack/testworld

.PHONY: FORCE_TESTWORLD
FORCE_TESTWORLD:

TESTENV_BARE ?=
TESTENV_CLUSTERS ?= 1
TESTENV_UP_FLAGS := $(if $(filter 1 true yes,$(TESTENV_BARE)),--bare --clusters $(TESTENV_CLUSTERS))

testenv-up: testenv $(TESTWORLD)
	@$(TESTWORLD) up --dir "$(TESTENV_DIR)" $(TESTENV_UP_FLAGS)

testenv-down: $(TESTWORLD)
	@$(TESTWORLD) down --dir "$(TESTENV_DIR)"
