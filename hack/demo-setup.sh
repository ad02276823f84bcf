#!/usr/bin/env bash
# The setup part of make demo (also usable alone): a bare test world
# (TESTENV_CLUSTERS clusters, default 1), a controller on loopback, one
# agent per node started from DIR/nodes/NAME/env, then
# `controller setup apply -f DIR/fleet.yaml --yes` with its live progress,
# and `controller verify` of every cluster. Needs the test world's servers
# (make testenv) and root for the tailscaleds' network namespaces.
# BIN must hold controller, agent and testworld. KEEP=1 leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
CLUSTERS=${TESTENV_CLUSTERS:-1}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/mgn-setup.XXXXXX")}
mkdir -p "$WORK"
WORLD=$WORK/world
DATA=$WORK/controller
pids=()
cleanup() {
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo "KEEP=1: still running (pids ${pids[*]}); world $WORLD, data $DATA."
    echo "Stop with: kill ${pids[*]}; $BIN/testworld down --dir $WORLD; rm -rf $WORK"
    return
  fi
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  "$BIN/testworld" down --dir "$WORLD" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "bare test world: $CLUSTERS cluster(s), nothing of GuildNet in them (Talos in maintenance, tailscaled logged out)"
start=$(date +%s)
"$BIN/testworld" up --dir "$WORLD" --bare --clusters "$CLUSTERS" >"$WORK/world.out" 2>&1 || { cat "$WORK/world.out"; exit 1; }
echo "up in $(( $(date +%s) - start )) s; spec $WORLD/fleet.yaml, node env files in $WORLD/nodes/"

step "controller on 127.0.0.1, data in $DATA"
"$BIN/controller" serve --data-dir "$DATA" --listen 127.0.0.1:0 --http "" \
  --heartbeat-interval 1s --log-format json >"$WORK/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -f $DATA/controller.json ]] && break; sleep 0.1; done
[[ -f $DATA/controller.json ]] || { echo "controller did not start:"; cat "$WORK/controller.log"; exit 1; }
URL=$(sed -n 's/.*"nats_url": "\(.*\)".*/\1/p' "$DATA/controller.json")
TOKEN_FILE=$WORK/token
( umask 077; "$BIN/controller" token create --data-dir "$DATA" --reusable --ttl 1h 2>/dev/null | tail -1 >"$TOKEN_FILE" )

step "one agent per node, each from its env file: set -a; . NODE/env; set +a; agent run"
n=0
for envf in "$WORLD"/nodes/*/env; do
  name=$(basename "$(dirname "$envf")")
  ( set -a; . "$envf"; set +a
    exec "$BIN/agent" run --controller "$URL" --token-file "$TOKEN_FILE" --state-dir "$WORK/agents/$name" \
      --log-format json ) >"$WORK/agent-$name.log" 2>&1 &
  pids+=($!); n=$((n+1))
done
for _ in $(seq 200); do
  online=$("$BIN/controller" status --data-dir "$DATA" --json 2>/dev/null | sed -n 's/.*"online": \([0-9]*\).*/\1/p')
  [[ "${online:-0}" == "$n" ]] && break
  sleep 0.2
done
[[ "${online:-0}" == "$n" ]] || { echo "only ${online:-0} of $n agents online"; tail -n 5 "$WORK"/agent-*.log; exit 1; }
echo "$n agents online"

step "controller setup plan -f fleet.yaml (on bare: create everywhere)"
"$BIN/controller" setup plan --data-dir "$DATA" -f "$WORLD/fleet.yaml" || true

step "controller setup apply -f fleet.yaml --yes (live progress)"
rc=0
"$BIN/controller" setup apply --data-dir "$DATA" -f "$WORLD/fleet.yaml" --yes || rc=$?

step "controller setup status"
"$BIN/controller" setup status --data-dir "$DATA" || true

step "controller verify of the layers setup brought up, every cluster"
"$BIN/controller" verify --data-dir "$DATA" --layer network,cluster,database,application || true
exit $rc
