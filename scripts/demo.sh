#!/usr/bin/env bash
# `make demo`: jitgate on the embedded SQLite store, one held action approved.
# 1. a few decisions of the default catalog (`jitgate evaluate`);
# 2. a server with demo users; ann's `rm -rf` waits in `jitgate run` until bob
#    approves it, then runs exactly as approved.
set -euo pipefail
cd "$(dirname "$0")/.."
JITGATE="$PWD/.venv/bin/jitgate"
PY="$PWD/.venv/bin/python"
PORT="${JITGATE_DEMO_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export JITGATE_DATA_DIR
JITGATE_DATA_DIR="$(mktemp -d -t jitgate-demo.XXXXXX)"
export JITGATE_URL="http://127.0.0.1:$PORT"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$JITGATE_DATA_DIR"
}
trap cleanup EXIT

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
show() {
  printf '\n\033[1m$ jitgate %s\033[0m\n' "$*"
  "$JITGATE" "$@" || true
}

bold "1. Decisions of the default catalog"
show evaluate --env production "SELECT * FROM invoices WHERE id = 9"
show evaluate --env production "SELECT 1; DELETE FROM invoices -- cleanup"
show evaluate --env production "WITH gone AS (DELETE FROM invoices WHERE 'a' = 'a' RETURNING *) SELECT count(*) FROM gone"
show evaluate --env production "GRANT ALL ON ALL TABLES IN SCHEMA public TO intern"
show evaluate --env staging "DELETE FROM invoices"
show evaluate --kind shell --env prod "sudo sh -c 'rm -rf /var/lib/postgresql'"
show evaluate --kind shell --env prod "echo 'rm -rf /' && kubectl get pods -n prod"
show evaluate --kind tool_call --env prod '{"tool": "run_sql", "arguments": {"query": "DROP SCHEMA billing CASCADE"}}'
show policy test examples/policy.yaml examples/policy-cases.yaml

bold "2. The approval service (SQLite in $JITGATE_DATA_DIR)"
"$JITGATE" admin user add ann --group dev >/dev/null
"$JITGATE" admin user add bob --group approvers >/dev/null
ANN=$("$JITGATE" admin token create ann --quiet)
BOB=$("$JITGATE" admin token create bob --quiet)
echo "users: ann (dev), bob (approvers); each has an API token"
"$JITGATE" serve --port "$PORT" >"$JITGATE_DATA_DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  "$PY" -c 'import sys, httpx; sys.exit(httpx.get(sys.argv[1], timeout=1).status_code != 200)' \
    "$JITGATE_URL/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$JITGATE_DATA_DIR/server.log"; exit 1; }
  sleep 0.1
done
echo "server: $JITGATE_URL"

mkdir -p "$JITGATE_DATA_DIR/cache/old"
bold "ann: jitgate run --env production -- rm -rf $JITGATE_DATA_DIR/cache"
JITGATE_TOKEN=$ANN "$JITGATE" run --env production -- rm -rf "$JITGATE_DATA_DIR/cache" &
RUN_PID=$!
ID=""
for _ in $(seq 1 100); do
  ID=$(JITGATE_TOKEN=$BOB "$JITGATE" requests list --awaiting-me --json |
       "$PY" -c 'import json,sys; r=json.load(sys.stdin)["requests"]; print(r[0]["id"] if r else "")')
  [ -n "$ID" ] && break
  sleep 0.1
done
[ -n "$ID" ] || { echo "the request never reached bob"; exit 1; }
sleep 1
echo "(ann's command is waiting; the directory still exists: $(ls "$JITGATE_DATA_DIR/cache"))"
bold "bob: jitgate requests list --awaiting-me"
JITGATE_TOKEN=$BOB "$JITGATE" requests list --awaiting-me
bold "bob: jitgate approve $ID --comment 'cache only, go'"
JITGATE_TOKEN=$BOB "$JITGATE" approve "$ID" --comment "cache only, go"
wait "$RUN_PID" && echo "ann's command ran (exit 0); cache removed: $([ -e "$JITGATE_DATA_DIR/cache" ] && echo no || echo yes)"
bold "jitgate requests show $ID"
JITGATE_TOKEN=$ANN "$JITGATE" requests show "$ID"

if [ -t 0 ]; then
  bold "Try it yourself (the server keeps running until Ctrl-C):"
  cat <<EOF
  export JITGATE_URL=$JITGATE_URL
  export JITGATE_TOKEN=$ANN   # ann
  jitgate request --env prod --wait "DELETE FROM invoices"
  # in another terminal, as bob:
  JITGATE_URL=$JITGATE_URL JITGATE_TOKEN=$BOB jitgate requests list --awaiting-me
  JITGATE_URL=$JITGATE_URL JITGATE_TOKEN=$BOB jitgate approve ID
EOF
  wait "$SERVER_PID" || true
fi
