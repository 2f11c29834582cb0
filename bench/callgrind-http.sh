#!/usr/bin/env bash
# Instructions per HTTP request, counted by callgrind in the serving process: the trivial hyper
# server (the baseline of `bench/run.sh`), keyward's `POST /v1/keys/verify` and the gateway
# (key + 2 limits + quota, proxied to the trivial upstream), as bench/run.sh sets them up. One
# keep-alive client sends WARM requests, the counters are zeroed (`callgrind_control -z`), it
# sends N more and they are dumped: the count covers every thread of the server for exactly N
# requests. Unlike wrk's timings these do not move with machine load. Under valgrind SHA-256
# runs without the CPU's SHA extensions (~3,500 instructions per key checked). The one home of
# HTTP instruction counts (it replaced callgrind-gateway.sh). See bench/README.md.
#
#   bash bench/callgrind-http.sh            # N=2000 requests per case after WARM=200
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
WARM=${WARM:-200}
BASE_PORT=${BASE_PORT:-18400}
command -v valgrind >/dev/null || { echo "bench: valgrind is missing (apt-get install -y valgrind)" >&2; exit 1; }
cargo build --release --quiet --bin keyward --example bench_upstream

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
UP=127.0.0.1:$BASE_PORT JSON=127.0.0.1:$((BASE_PORT + 1)) ADMIN=127.0.0.1:$((BASE_PORT + 2)) GATEWAY=127.0.0.1:$((BASE_PORT + 3))

wait_for() { # the harness (not a test) polls until a port answers, bounded (valgrind starts slowly)
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: nothing listens on $1" >&2
  exit 1
}

target/release/examples/bench_upstream "$UP" >/dev/null &
PIDS+=($!)
cat >"$WORK/gateway.toml" <<TOML
listen = "$GATEWAY"
data_dir = "$WORK/data"
admin_listen = "$ADMIN"
ratelimit_headers_on_success = true
quota_lease = 1000

[[route]]
prefix = "/orders"
upstream = "http://$UP"
permissions = "orders.read"
TOML
KEYWARD_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/keyward.%p.out" \
  target/release/keyward gateway --config "$WORK/gateway.toml" >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
KEYWARD_PID=$!
PIDS+=($KEYWARD_PID)
wait_for "$UP"
wait_for "$GATEWAY"
wait_for "$ADMIN"
ROOT=$(grep -o 'kwroot_[A-Za-z0-9]*' "$WORK/gateway.out" | head -1)
KEY=$(curl -sf -H "Authorization: Bearer $ROOT" -H 'Content-Type: application/json' -X POST "http://$ADMIN/v1/keys" -d '{
  "owner": "bench", "permissions": ["orders.read"],
  "limits": [{"name": "per_second", "limit": 1000000000, "period_seconds": 1},
             {"name": "per_day", "limit": 1000000000, "period_seconds": 86400}],
  "quota": {"credits": 1000000000000}
}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
VERIFY_BYTES=$(curl -sf -H "Authorization: Bearer $ROOT" -H 'Content-Type: application/json' -X POST "http://$ADMIN/v1/keys/verify" -d "{\"key\":\"$KEY\",\"permissions\":\"orders.read\"}" | wc -c)
valgrind --tool=callgrind --callgrind-out-file="$WORK/json.%p.out" \
  target/release/examples/bench_upstream "$JSON" "$VERIFY_BYTES" >/dev/null 2>&1 &
JSON_PID=$!
PIDS+=($JSON_PID)
wait_for "$JSON"

send() { # send COUNT CASE: one keep-alive connection, every answer checked
  python3 - "$1" "$2" <<PY
import http.client, sys
count, case = int(sys.argv[1]), sys.argv[2]
host, port = {"json": "$JSON", "verify": "$ADMIN", "gateway": "$GATEWAY"}[case].split(":")
c = http.client.HTTPConnection(host, int(port), timeout=60)
body = '{"key":"$KEY","permissions":"orders.read"}'
for _ in range(count):
    if case == "gateway":
        c.request("GET", "/orders/x", headers={"Authorization": "Bearer $KEY"})
    else:
        c.request("POST", "/" if case == "json" else "/v1/keys/verify", body,
                  {"Content-Type": "application/json", "Authorization": "Bearer $ROOT"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, (case, r.status)
PY
}

count() { # count PID CASE: instructions per request of CASE in process PID
  send "$WARM" "$2"
  callgrind_control -z "$1" >/dev/null 2>&1
  send "$N" "$2"
  callgrind_control -d "$1" >/dev/null 2>&1
  local out
  out=$(ls -t "$WORK"/*."$1".out.* | head -1)
  local total
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  printf '%-58s %12s instructions, %7d per request\n' "$3" "$total" $((total / N))
}

echo "callgrind, $N requests per case after $WARM, at $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
count "$JSON_PID" json "trivial hyper server, same-size JSON"
count "$KEYWARD_PID" verify "keyward POST /v1/keys/verify"
count "$KEYWARD_PID" gateway "keyward gateway (key + 2 limits + quota, proxied)"
