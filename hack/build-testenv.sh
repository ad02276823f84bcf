#!/usr/bin/env bash
# Builds the real servers the test world runs (internal/testenv): kube-apiserver and
# etcd from k8s.io/kubernetes, Headscale, KWOK and tailscaled. They are built
# from the tools modules hack/kube, hack/headscale, hack/kwok and
# hack/tailscale into a per-version cache directory
# outside the repository, so a second run (and every later checkout) finds
# them in seconds. internal/testenv reads the same directory, through
# MGN_TESTENV_CACHE or the same default as below.
#
# Cold: ~25 min on 2 cores (kube-apiserver ~14 min, ~3 GB peak per compile).
# Warm: seconds. Flags never change between runs so the Go build cache hits.
#
# Usage: hack/build-testenv.sh [print-dirs]
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_NOTE="etcd as pinned by k8s.io/kubernetes ${K8S_VERSION}"
HEADSCALE_VERSION=v0.29.1
KWOK_VERSION=v0.8.0
TAILSCALE_VERSION=v1.102.5

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MGN_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metaguildnet/testenv}"
KUBE_DIR="$CACHE/k8s-${K8S_VERSION}"
HEADSCALE_DIR="$CACHE/headscale-${HEADSCALE_VERSION}"
KWOK_DIR="$CACHE/kwok-${KWOK_VERSION}"
TAILSCALE_DIR="$CACHE/tailscale-${TAILSCALE_VERSION}"
GO="${GO:-go}"

if [[ "${1:-}" == "print-dirs" ]]; then
	echo "$KUBE_DIR $HEADSCALE_DIR $KWOK_DIR $TAILSCALE_DIR"
	exit 0
fi

export GOFLAGS="${GOFLAGS:--buildvcs=false}"
START=$SECONDS

log() { printf 'testenv: [%4ds] %s\n' "$((SECONDS - START))" "$*"; }

# build DEST MODULE_DIR LDFLAGS PKG: builds PKG inside MODULE_DIR to DEST,
# through a temporary name in the same directory so DEST is never half written.
build() {
	local dest="$1" moddir="$2" ldflags="$3" pkg="$4"
	local name
	name="$(basename "$dest")"
	if [[ -x "$dest" ]]; then
		log "$name: cached at $dest"
		return 0
	fi
	mkdir -p "$(dirname "$dest")"
	local tmp="$dest.tmp.$$"
	local t0=$SECONDS
	log "$name: building $pkg (cold builds take minutes; see progress below)"
	# A heartbeat so a long cold build visibly progresses.
	# The trap ends the pending sleep too, so nothing holds our output open.
	(
		trap 'kill "$sp" 2>/dev/null; exit 0' TERM
		while :; do
			sleep 60 & sp=$!
			wait "$sp"
			log "$name: still building ($((SECONDS - t0))s)"
		done
	) &
	local beat=$!
	local rc=0
	( cd "$moddir" && "$GO" build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg" ) || rc=$?
	kill "$beat" 2>/dev/null || true
	wait "$beat" 2>/dev/null || true
	if [[ $rc -ne 0 ]]; then
		rm -f "$tmp"
		log "$name: build FAILED (exit $rc)"
		return "$rc"
	fi
	mv -f "$tmp" "$dest"
	log "$name: built in $((SECONDS - t0))s -> $dest ($(du -h "$dest" | cut -f1))"
}

VPKG=k8s.io/component-base/version
KUBE_LDFLAGS="-s -w -X ${VPKG}.gitVersion=${K8S_VERSION} -X ${VPKG}.gitMajor=1 -X ${VPKG}.gitMinor=37 -X ${VPKG}.gitTreeState=clean"

build "$KUBE_DIR/etcd" "$ROOT/hack/kube" "-s -w" go.etcd.io/etcd/server/v3
log "($ETCD_NOTE)"
build "$KUBE_DIR/kube-apiserver" "$ROOT/hack/kube" "$KUBE_LDFLAGS" k8s.io/kubernetes/cmd/kube-apiserver
build "$HEADSCALE_DIR/headscale" "$ROOT/hack/headscale" "-s -w" github.com/juanfont/headscale/cmd/headscale
# The live control plane: the real controllers and scheduler (~95 s each once
# kube-apiserver's packages are cached) and KWOK as every node's kubelet.
build "$KUBE_DIR/kube-controller-manager" "$ROOT/hack/kube" "$KUBE_LDFLAGS" k8s.io/kubernetes/cmd/kube-controller-manager
build "$KUBE_DIR/kube-scheduler" "$ROOT/hack/kube" "$KUBE_LDFLAGS" k8s.io/kubernetes/cmd/kube-scheduler
build "$KWOK_DIR/kwok" "$ROOT/hack/kwok" "-s -w" sigs.k8s.io/kwok/cmd/kwok
# A real tailscaled per simulated node (~3.5 min cold, 43 MB), run in
# userspace-networking mode inside the loopback-only network namespace.
# Built outside tailscale's own module, it cannot read its version from the
# build info: stamp it (or it reports "1.102.5-ERR-BuildInfo").
TS_VPKG=tailscale.com/version
build "$TAILSCALE_DIR/tailscaled" "$ROOT/hack/tailscale" \
	"-s -w -X ${TS_VPKG}.longStamp=${TAILSCALE_VERSION#v} -X ${TS_VPKG}.shortStamp=${TAILSCALE_VERSION#v}" tailscale.com/cmd/tailscaled
log "all test-world binaries ready in $CACHE"
