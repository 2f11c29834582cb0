#!/usr/bin/env bash
# OpenAPI-driven API test: schemathesis (PyPI, pinned) against a real `keyward serve` on a free
# loopback port with a fresh data dir, authenticated with the bootstrap root key, over every
# operation of the server's own /openapi.json. Checks: no 5xx (not_a_server_error), every
# status documented (status_code_conformance), every body and content type as documented
# (response_schema_conformance, content_type_conformance). Prints the totals; exits non-zero on
# any failure. docs/testing.md has the figures and how to reproduce a failure.
#
#   .ci/schemathesis.sh [MAX_EXAMPLES]     (default 20 per operation: the CI smoke)
#
# The seed is fixed (10), so a run repeats; a failure prints a curl command that reproduces it.
# SCHEMATHESIS_VENV moves the Python environment (default target/schemathesis-VERSION, so a
# fresh machine installs it once and `cargo clean` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
max_examples="${1:-20}"
venv="${SCHEMATHESIS_VENV:-target/schemathesis-$version}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "== installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

echo "== building keyward"
cargo build --quiet -p keyward --bin keyward
binary="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/keyward"

scratch="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

# Port 0: the kernel picks a free port and the server prints the one it bound.
"$binary" serve --listen 127.0.0.1:0 --data-dir "$scratch/data" \
  >"$scratch/stdout" 2>"$scratch/stderr" &
server=$!
address=""
for _ in $(seq 1 300); do
  address="$(sed -n 's#^keyward: listening on http://\([^ ]*\).*#\1#p' "$scratch/stdout")"
  [ -n "$address" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$scratch/stderr"
    echo "keyward serve exited before listening" >&2
    exit 1
  fi
  sleep 0.2
done
if [ -z "$address" ]; then
  cat "$scratch/stderr"
  echo "keyward serve did not start listening" >&2
  exit 1
fi
root_key="$(grep -oE 'kwroot_[A-Za-z0-9]+' "$scratch/stdout" | head -n 1)"
if [ -z "$root_key" ]; then
  echo "no bootstrap root key on keyward's standard output" >&2
  exit 1
fi
echo "== schemathesis against http://$address (max $max_examples examples per operation)"

# The run happens in the scratch directory: schemathesis keeps a .schemathesis/ folder there.
# X-Keyward-Root-Key is /v1/auth's proxy credential; a wrong one is the proxy's
# misconfiguration, answered 400 `auth_misconfigured` by design (docs/edge.md; nginx shows its clients a 500), so the run sends the
# right one, as a configured proxy does.
status=0
schemathesis="$(cd "$venv" && pwd)/bin/schemathesis"
(cd "$scratch" && "$schemathesis" run "http://$address/openapi.json" \
  --header "Authorization: Bearer $root_key" \
  --header "X-Keyward-Root-Key: $root_key" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
  --max-examples "$max_examples" \
  --workers 1 \
  --seed 10 \
  --request-timeout 10 \
  --suppress-health-check too_slow,filter_too_much) || status=$?

if ! kill -0 "$server" 2>/dev/null; then
  echo "keyward serve died during the run:" >&2
  tail -n 40 "$scratch/stderr" >&2
  status=1
fi
if grep -q "internal error (panic)" "$scratch/stderr"; then
  echo "keyward serve panicked during the run:" >&2
  grep -n "panic" "$scratch/stderr" | head >&2
  status=1
fi
exit "$status"
