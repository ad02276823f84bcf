# MetaGuildNet fleet. `make demo` runs the main job, `make test` the tests.
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin

.PHONY: all build demo test unit fuzz bench clean
all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/controller ./cmd/agent

include hack/testenv.mk
