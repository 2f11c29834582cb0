#!/usr/bin/env bash
# keyward's HTTP benchmark harness: everything on loopback, each case DURATION (default 10s)
# with wrk, all measured in one run so the ratios compare like with like. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
BASE_PORT=${BASE_PORT:-18100}
HOST=127.0.0.1

for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
    echo "bench: $tool is missing (apt-get install -y wrk nginx curl)" >&2
    exit 1
  }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet --bin keyward --example bench_upstream
KEYWARD=target/release/keyward
UPSTREAM_BIN=target/release/examples/bench_upstream

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

UP=$HOST:$((BASE_PORT))
JSON=$HOST:$((BASE_PORT + 1))
ADMIN=$HOST:$((BASE_PORT + 2))
GATEWAY=$HOST:$((BASE_PORT + 3))
NGINX_PROXY=$HOST:$((BASE_PORT + 4))
NGINX_AUTH=$HOST:$((BASE_PORT + 5))

wait_for() { # wait_for HOST:PORT: the harness (not a test) polls until a port answers, bounded.
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: nothing listens on $1" >&2
  exit 1
}

"$UPSTREAM_BIN" "$UP" >/dev/null &
PIDS+=($!)
wait_for "$UP"

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
KEYWARD_LOG=warn KEYWARD_WORKER_THREADS=${KEYWARD_WORKER_THREADS:-} "$KEYWARD" gateway --config "$WORK/gateway.toml" >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
PIDS+=($!)
wait_for "$GATEWAY"
wait_for "$ADMIN"
ROOT=$(grep -o 'kwroot_[A-Za-z0-9]*' "$WORK/gateway.out" | head -1)

admin() { curl -sf -H "Authorization: Bearer $ROOT" -H 'Content-Type: application/json' "$@"; }
KEY=$(admin -X POST "http://$ADMIN/v1/keys" -d '{
  "owner": "bench", "permissions": ["orders.read"],
  "limits": [{"name": "per_second", "limit": 1000000000, "period_seconds": 1},
             {"name": "per_day", "limit": 1000000000, "period_seconds": 86400}],
  "quota": {"credits": 1000000000000}
}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
NGINX_ROOT=$(admin -X POST "http://$ADMIN/v1/root-keys" -d '{"owner": "nginx", "permissions": ["keys.verify"]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
VERIFY_BYTES=$(admin -X POST "http://$ADMIN/v1/keys/verify" -d "{\"key\":\"$KEY\",\"permissions\":\"orders.read\"}" | wc -c)

"$UPSTREAM_BIN" "$JSON" "$VERIFY_BYTES" >/dev/null &
PIDS+=($!)
wait_for "$JSON"

render() { # render TEMPLATE OUT LISTEN
  sed -e "s|{{LISTEN}}|$3|g" -e "s|{{KEYWARD}}|$ADMIN|g" -e "s|{{APP}}|$UP|g" \
      -e "s|{{ROOT_KEY}}|$NGINX_ROOT|g" -e "s|{{PREFIX}}|$WORK|g" "$1" >"$2"
}
render bench/nginx-proxy.conf "$WORK/nginx-proxy.conf" "$NGINX_PROXY"
render examples/nginx/keyward.conf "$WORK/nginx-auth.conf" "$NGINX_AUTH"
sed -i "s|pid $WORK/nginx.pid|pid $WORK/nginx-auth.pid|" "$WORK/nginx-auth.conf"
"$NGINX" -p "$WORK" -c "$WORK/nginx-proxy.conf" 2>"$WORK/nginx-proxy.err" &
PIDS+=($!)
"$NGINX" -p "$WORK" -c "$WORK/nginx-auth.conf" 2>"$WORK/nginx-auth.err" &
PIDS+=($!)
wait_for "$NGINX_PROXY"
wait_for "$NGINX_AUTH"

# Every case must answer 200: check once before measuring.
curl -sf -o /dev/null "http://$NGINX_PROXY/orders/x"
curl -sf -o /dev/null -H "Authorization: Bearer $KEY" "http://$GATEWAY/orders/x"
curl -sf -o /dev/null -H "Authorization: Bearer $KEY" "http://$NGINX_AUTH/orders/x"

export KEYWARD_BENCH_KEY=$KEY KEYWARD_BENCH_ROOT=$ROOT
declare -A RPS P99 NON2XX
run_case() { # run_case NAME wrk-args... (C and T override connections and threads)
  local name=$1
  shift
  local c=${C:-$CONNECTIONS} t=${T:-$THREADS}
  wrk -t"$t" -c"$c" -d1s "$@" >/dev/null 2>&1 || true # warm-up
  local out
  out=$(wrk -t"$t" -c"$c" -d"$DURATION" --latency "$@")
  RPS[$name]=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  P99[$name]=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}' <<<"$out")
  NON2XX[$name]=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
}
run_case direct "http://$UP/orders/x"
run_case nginx_proxy "http://$NGINX_PROXY/orders/x"
run_case gateway -H "Authorization: Bearer $KEY" "http://$GATEWAY/orders/x"
run_case nginx_auth -H "Authorization: Bearer $KEY" "http://$NGINX_AUTH/orders/x"
run_case verify -s bench/verify.lua "http://$ADMIN/v1/keys/verify"
run_case json -s bench/json.lua "http://$JSON/"
# Added latency is measured without queueing: one connection, one request at a time.
C=1 T=1 run_case direct_1 "http://$UP/orders/x"
C=1 T=1 run_case gateway_1 -H "Authorization: Bearer $KEY" "http://$GATEWAY/orders/x"
C=1 T=1 run_case nginx_proxy_1 "http://$NGINX_PROXY/orders/x"

ratio() { python3 -c "print(f'{float($1)/float($2):.2f}x')"; }
diff_ms() { python3 -c "print(f'{float($1)-float($2):+.3f} ms')"; }
echo
echo "keyward HTTP benchmark: $(date -u +%Y-%m-%d), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, loopback"
echo
printf '| %-52s | %12s | %10s | %s\n' "case" "requests/s" "p99 (ms)" "non-2xx"
printf '|%s|%s|%s|%s\n' "------------------------------------------------------" "--------------" "------------" "--------"
for c in direct nginx_proxy gateway nginx_auth verify json direct_1 nginx_proxy_1 gateway_1; do
  case $c in
    direct) label="upstream directly (no proxy)" ;;
    nginx_proxy) label="nginx bare reverse proxy" ;;
    gateway) label="keyward gateway (key + 2 limits + quota)" ;;
    nginx_auth) label="nginx + auth_request to keyward /v1/auth" ;;
    verify) label="keyward POST /v1/keys/verify" ;;
    json) label="trivial hyper server, same-size JSON" ;;
    direct_1) label="upstream directly, 1 connection" ;;
    nginx_proxy_1) label="nginx bare reverse proxy, 1 connection" ;;
    gateway_1) label="keyward gateway, 1 connection" ;;
  esac
  printf '| %-52s | %12s | %10s | %s\n' "$label" "${RPS[$c]}" "${P99[$c]}" "${NON2XX[$c]:-0}"
done
echo
echo "gateway vs nginx bare proxy (target >= 0.9x):      $(ratio "${RPS[gateway]}" "${RPS[nginx_proxy]}")"
echo "gateway p99 added over the upstream, 1 connection (target < 1 ms): $(diff_ms "${P99[gateway_1]}" "${P99[direct_1]}")"
echo "nginx p99 added over the upstream, 1 connection:                    $(diff_ms "${P99[nginx_proxy_1]}" "${P99[direct_1]}")"
echo "gateway p99 minus nginx p99 at $CONNECTIONS connections:          $(diff_ms "${P99[gateway]}" "${P99[nginx_proxy]}")"
echo "gateway vs nginx + auth_request (several x):        $(ratio "${RPS[gateway]}" "${RPS[nginx_auth]}")"
echo "verify vs trivial JSON server (target >= 0.8x):     $(ratio "${RPS[verify]}" "${RPS[json]}")"
