# Issue 4: agents reach the controller over the tailnet only. Included by
# the root Makefile.
#
#   make e2e-tailnet     the tailnet suite (real Headscale + tsnet inside a
#                        loopback-only network namespace), verbose
#   make bench-tailnet   fan-out over the tailnet beside loopback
#                        (TAILNET_AGENTS tsnet agents); writes bench-tailnet.json
#
# Both need the Headscale binary (`make testenv`) and root for the network
# namespace; with CI=true a missing Headscale fails the suite.
GO ?= go
TAILNET_AGENTS ?= 50
TAILNET_ROUNDS ?= 30

.PHONY: e2e-tailnet bench-tailnet

e2e-tailnet: testenv
	$(GO) test -v -count=1 -timeout 20m ./e2e/tailnet/ ./internal/tlspin/

bench-tailnet: testenv
	$(GO) run ./hack/tailnetbench -agents $(TAILNET_AGENTS) -rounds $(TAILNET_ROUNDS) -out bench-tailnet.json
