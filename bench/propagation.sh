#!/usr/bin/env bash
# Revocation propagation across a 3-node cluster on one PostgreSQL and one Redis: revoke a key
# through node A while clients hammer nodes B and C, and time the revoke's 200 to the last
# VALID seen anywhere. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

POSTGRES_URL=${POSTGRES_URL:-${KEYWARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}}
REDIS_URL=${REDIS_URL:-${KEYWARD_TEST_REDIS_URL:-redis://127.0.0.1:6379}}
REVOCATIONS=${REVOCATIONS:-100}
CLIENTS_PER_NODE=${CLIENTS_PER_NODE:-2}
BASE_PORT=${BASE_PORT:-18200}

case "$POSTGRES_URL" in *127.0.0.1*|*localhost*|*\[::1\]*) ;; *) echo "bench: loopback only" >&2; exit 1 ;; esac
case "$REDIS_URL" in *127.0.0.1*|*localhost*|*\[::1\]*) ;; *) echo "bench: loopback only" >&2; exit 1 ;; esac

cargo build --release --quiet --bin keyward --example propagation
KEYWARD=target/release/keyward

SCHEMA="kwbench_$$"
NAMESPACE="kwbench:$$"
sep='?'; case "$POSTGRES_URL" in *\?*) sep='&' ;; esac
STORE="${POSTGRES_URL}${sep}schema=${SCHEMA}"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$POSTGRES_URL" -q -c "DROP SCHEMA IF EXISTS \"$SCHEMA\" CASCADE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # wait_for HOST:PORT, bounded
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: nothing listens on $1" >&2
  exit 1
}

NODES=()
for i in 0 1 2; do
  addr=127.0.0.1:$((BASE_PORT + i))
  KEYWARD_LOG=warn "$KEYWARD" serve --listen "$addr" --store "$STORE" \
    --redis "$REDIS_URL" --redis-namespace "$NAMESPACE" >"$WORK/node$i.out" 2>"$WORK/node$i.err" &
  PIDS+=($!)
  wait_for "$addr"
  NODES+=("http://$addr")
done
ROOT=$(grep -ho 'kwroot_[A-Za-z0-9]*' "$WORK"/node*.out | head -1)
[ -n "$ROOT" ] || { echo "bench: no node printed the bootstrap root key" >&2; exit 1; }

echo "keyward revocation propagation: $(date -u +%Y-%m-%d), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), 3 nodes, PostgreSQL + Redis on loopback"
target/release/examples/propagation "$ROOT" "${NODES[0]}" "${NODES[1]}" "${NODES[2]}" \
  --revocations "$REVOCATIONS" --clients-per-node "$CLIENTS_PER_NODE"
