#!/usr/bin/env bash
# Instructions per gateway request, counted by callgrind: independent of machine load, so two
# commits can be compared on a busy machine. Starts the release `keyward gateway` (one thread)
# under valgrind with the bench/run.sh route (key + 2 limits + quota), warms it up, zeroes the
# counters, sends N requests over one keep-alive connection, and prints the instructions the
# whole process executed per request. See bench/README.md.
#
#   bash bench/callgrind-gateway.sh            # N=2000
#   N=5000 bash bench/callgrind-gateway.sh
#   KEEP=/tmp/gw.out bash bench/callgrind-gateway.sh   # then: callgrind_annotate /tmp/gw.out
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-2000}
BASE_PORT=${BASE_PORT:-18200}
HOST=127.0.0.1
command -v valgrind >/dev/null || { echo "bench: valgrind is missing (apt-get install -y valgrind)" >&2; exit 1; }

cargo build --release --quiet --bin keyward --example bench_upstream
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

UP=$HOST:$BASE_PORT
ADMIN=$HOST:$((BASE_PORT + 1))
GATEWAY=$HOST:$((BASE_PORT + 2))
wait_for() { # bounded poll until a port answers
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: nothing listens on $1" >&2
  exit 1
}

target/release/examples/bench_upstream "$UP" >/dev/null &
PIDS+=($!)
wait_for "$UP"
cat >"$WORK/gateway.toml" <<TOML
listen = "$GATEWAY"
data_dir = "$WORK/data"
admin_listen = "$ADMIN"
ratelimit_headers_on_success = true
quota_lease = 1000
threads = 1

[[route]]
prefix = "/orders"
upstream = "http://$UP"
permissions = "orders.read"
TOML
KEYWARD_LOG=warn KEYWARD_WORKER_THREADS=1 valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$WORK/callgrind.out" \
  target/release/keyward gateway --config "$WORK/gateway.toml" >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
GW=$!
PIDS+=($GW)
wait_for "$GATEWAY"
wait_for "$ADMIN"
ROOT=$(grep -o 'kwroot_[A-Za-z0-9]*' "$WORK/gateway.out" | head -1)
KEY=$(curl -sf -H "Authorization: Bearer $ROOT" -H 'Content-Type: application/json' -X POST "http://$ADMIN/v1/keys" -d '{
  "owner": "bench", "permissions": ["orders.read"],
  "limits": [{"name": "per_second", "limit": 1000000000, "period_seconds": 1},
             {"name": "per_day", "limit": 1000000000, "period_seconds": 86400}],
  "quota": {"credits": 1000000000000}
}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

send() { # send COUNT: COUNT requests over one keep-alive connection, each must answer 200
  python3 - "$GATEWAY" "$KEY" "$1" <<'PY'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
key, count = sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection(host, int(port), timeout=60)
for i in range(count):
    conn.request("GET", f"/orders/{i}", headers={"Authorization": f"Bearer {key}"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
PY
}
send 200
callgrind_control -z "$GW" >/dev/null
send "$N"
callgrind_control -d "$GW" >/dev/null
sleep 1 # the dump is written by the instrumented process; this only lets it finish writing
total=$(cat "$WORK"/callgrind.out.* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s + 0}')
# KEEP=FILE keeps the profile for callgrind_annotate.
[ -n "${KEEP:-}" ] && cat "$WORK"/callgrind.out.* >"$KEEP"
echo "callgrind: $N gateway requests, $total instructions, $((total / N)) per request ($(git rev-parse --short HEAD))"
