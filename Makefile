# MetaGuildNet fleet. `make demo` runs the main job, `make test` the tests.
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
# Integration tests need the test world's servers (see hack/testenv.mk).
TEST_TIMEOUT ?= 40m

.PHONY: all build demo test test-unit race fuzz bench vet clean
all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/controller ./cmd/agent

## demo: controller + three local agents, ping and facts across the fleet, the fleet view
demo:
	@hack/demo.sh

## test: everything, against the real test world (built once and cached)
test: testenv
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(GO) test -count=1 -race -timeout $(TEST_TIMEOUT) ./internal/controller/ ./internal/agent/ ./messages/

## test-unit: what runs without the test world
test-unit:
	$(GO) test -count=1 ./...

## fuzz: each fuzz target for FUZZTIME (default 10s)
FUZZTIME ?= 10s
fuzz:
	@hack/fuzz.sh $(FUZZTIME)

## bench: fan-out (loopback and tailnet), idle agent, verification sweep, diagnosis; writes bench.json
bench: build testenv
	$(GO) run ./hack/tailnetbench -agents $(TAILNET_AGENTS) -rounds $(TAILNET_ROUNDS) -out bench-tailnet.json
	$(GO) run ./hack/bench -out bench.json -tailnet-json bench-tailnet.json

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)

include hack/testenv.mk
include hack/tailnet.mk
