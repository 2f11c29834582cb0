#!/usr/bin/env bash
# Starts a three-node keyward cluster on this machine (loopback) from node-{a,b,c}.env, using
# the PostgreSQL and Redis the env files name. Stop it with Ctrl-C. See README "Run a cluster".
set -euo pipefail
cd "$(dirname "$0")"
KEYWARD=${KEYWARD:-../../target/release/keyward}
[ -x "$KEYWARD" ] || { echo "build first: cargo build --release" >&2; exit 1; }
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait' EXIT INT TERM
for node in a b c; do
  # Each node gets only its own file's settings (set -a exports them to the child).
  (set -a; . "./node-$node.env"; set +a; exec "$KEYWARD" serve) 2>"node-$node.log" &
  PIDS+=($!)
done
echo "nodes on http://127.0.0.1:8081, :8082, :8083 (logs in node-*.log); Ctrl-C stops them"
wait
