#!/usr/bin/env bash
# make demo: the main job on the embedded default. Builds the binaries,
# starts a controller on loopback with a temporary data dir, enrolls three
# local agents in two clusters, runs ping and facts across the fleet and
# prints the fleet view, then a verification sweep and a diagnosis. When the
# test world's servers are built (make testenv), the agents are pointed at a
# GuildNet-shaped world (kube-apiserver, Headscale, RethinkDB/Talos/host-app
# stand-ins) so the sweep has something real to verify. KEEP=1 leaves
# everything running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
go build -o "$BIN/" ./cmd/controller ./cmd/agent

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mgn-demo.XXXXXX")
DATA=$WORK/controller
pids=()
cleanup() {
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo
    echo "KEEP=1: still running (pids ${pids[*]}). Try:"
    echo "  $BIN/controller status --data-dir $DATA"
    echo "  $BIN/controller run --data-dir $DATA --target cluster=alpha facts"
    echo "  the dashboard: ${HTTP:-} (sign in to act: $BIN/controller dashboard login --data-dir $DATA)"
    echo "Stop with: kill ${pids[*]}; rm -rf $WORK"
    return
  fi
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  [[ -n "${WORLD:-}" ]] && "$BIN/testworld" down --dir "$WORLD" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "controller: embedded NATS + JetStream on 127.0.0.1, data in $DATA"
"$BIN/controller" serve --data-dir "$DATA" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --heartbeat-interval 1s --log-format json >"$WORK/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -f $DATA/controller.json ]] && break; sleep 0.1; done
[[ -f $DATA/controller.json ]] || { echo "controller did not start:"; cat "$WORK/controller.log"; exit 1; }
URL=$(sed -n 's/.*"nats_url": "\(.*\)".*/\1/p' "$DATA/controller.json")
HTTP=$(sed -n 's/.*"http_url": "\(.*\)".*/\1/p' "$DATA/controller.json")
echo "NATS $URL, dashboard $HTTP/, metrics $HTTP/metrics"

step "join token (reusable, 1h)"
TOKEN=$("$BIN/controller" token create --data-dir "$DATA" --reusable --ttl 1h 2>/dev/null | tail -1)
echo "${TOKEN:0:9}… (redacted)"

WORLD=
read -r KUBE_DIR HS_DIR _ < <(hack/build-testenv.sh print-dirs)
if [[ -x $KUBE_DIR/kube-apiserver && -x $HS_DIR/headscale && "${DEMO_WORLD:-1}" == 1 ]]; then
  step "test world: kube-apiserver seeded like GuildNet, Headscale, RethinkDB/Talos/host-app stand-ins"
  go build -o "$BIN/" ./hack/testworld
  WORLD=$WORK/world
  "$BIN/testworld" up --dir "$WORLD" >"$WORK/world.out" 2>&1 || { cat "$WORK/world.out"; exit 1; }
  set -a; . "$WORLD/env"; set +a
  echo "agents read KUBECONFIG, RETHINKDB_ADDR, HOSTAPP_URL, TALOSCONFIG, ... from $WORLD/env"
else
  echo
  echo "(no test world: run 'make testenv' once to verify against a GuildNet-shaped world)"
fi

step "three agents: n1, n2 in cluster alpha; n3 in cluster beta"
for spec in n1:alpha:controlplane n2:alpha:worker n3:beta:controlplane; do
  IFS=: read -r name cluster role <<<"$spec"
  # The token goes in the environment, not on the command line (ps shows that).
  # METAGN_DNS_NAME=localhost: these agents run on the host, whose resolver is
  # not on loopback; dns_resolution's default (kubernetes.default.svc.cluster.local)
  # would send a query off the machine.
  METAGN_DNS_NAME=localhost METAGN_TOKEN="$TOKEN" "$BIN/agent" run --controller "$URL" --name "$name" --cluster "$cluster" \
    --role "$role" --label demo=true --state-dir "$WORK/$name" --log-format json \
    --tailnet=off >"$WORK/$name.log" 2>&1 &  # on the host: never a tailnet node here (the world's env carries TS_AUTHKEY)
  pids+=($!)
done
for _ in $(seq 100); do
  online=$("$BIN/controller" status --data-dir "$DATA" --json 2>/dev/null | sed -n 's/.*"online": \([0-9]*\).*/\1/p')
  [[ "$online" == 3 ]] && break
  sleep 0.2
done
[[ "${online:-0}" == 3 ]] || { echo "agents did not come online"; tail -n 5 "$WORK"/n*.log; exit 1; }

step "controller run --target all ping"
"$BIN/controller" run --data-dir "$DATA" --target all ping

step "controller run --target all facts"
"$BIN/controller" run --data-dir "$DATA" --target all facts

step "controller status (the fleet view)"
"$BIN/controller" status --data-dir "$DATA"

# Setup, the main job: a bare world (nothing of GuildNet in it) brought up by
# `controller setup apply` with its live progress (hack/demo-setup.sh).
read -r KUBE_DIR HS_DIR KWOK_DIR TS_DIR _ < <(hack/build-testenv.sh print-dirs)
if [[ "${DEMO_SETUP:-1}" != 1 ]]; then
  echo; echo "(setup demo skipped: DEMO_SETUP=${DEMO_SETUP})"
elif [[ ! -x $KUBE_DIR/kube-apiserver || ! -x $KUBE_DIR/kube-controller-manager || ! -x $HS_DIR/headscale || ! -x $KWOK_DIR/kwok || ! -x $TS_DIR/tailscaled ]]; then
  echo; echo "(setup demo skipped: the bare world needs the test world's servers, kube-apiserver + controller-manager + scheduler, KWOK, Headscale and tailscaled; run 'make testenv' once)"
elif [[ $(id -u) != 0 ]]; then
  echo; echo "(setup demo skipped: the bare world runs each node's tailscaled in its own loopback-only network namespace, which needs root)"
else
  step "setup: a bare world brought up from nothing by controller setup apply (hack/demo-setup.sh)"
  go build -o "$BIN/" ./hack/testworld
  BIN=$BIN WORK=$WORK/setup hack/demo-setup.sh || echo "(setup demo failed: exit $?; logs were in $WORK/setup)"
fi

step "controller verify (one sweep: node checks everywhere, cluster checks once per cluster)"
"$BIN/controller" verify --data-dir "$DATA" || true

step "controller diagnose --all (root causes and fixes)"
"$BIN/controller" diagnose --data-dir "$DATA" --all || true

step "controller status (the fleet view, with each node's last result per layer)"
"$BIN/controller" status --data-dir "$DATA" || true
