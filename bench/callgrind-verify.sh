#!/usr/bin/env bash
# Instructions per in-process verification, counted by callgrind for each case of
# crates/keyward-engine/benches/verify.rs (cached VALID, MALFORMED, NOT_FOUND from the negative
# cache; Prometheus recorder installed, as in a server). Unlike timings, the counts do not move
# with machine load, so two commits compare on a busy machine. Only the bench's `measured`
# loop is counted (--toggle-collect), after 100 warm-up verifications outside it. See
# bench/README.md.
#
#   bash bench/callgrind-verify.sh             # N=10000 verifications per case
#   KEEP=/tmp/verify bash bench/callgrind-verify.sh   # keeps /tmp/verify.CASE.out for callgrind_annotate
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
command -v valgrind >/dev/null || { echo "bench: valgrind is missing (apt-get install -y valgrind)" >&2; exit 1; }

# The bench binary's path, from cargo's build messages.
BIN=$(cargo bench -p keyward-engine --bench verify --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "verify" and m.get("executable"):
        print(m["executable"])')
[ -x "$BIN" ] || { echo "bench: cannot find the verify bench binary" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "callgrind, $N verifications per case, at $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
for case in cached_valid malformed not_found_cached; do
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
    --callgrind-out-file="$WORK/$case.out" "$BIN" --instructions "$case" "$N" >/dev/null 2>"$WORK/$case.err" || {
    cat "$WORK/$case.err" >&2
    exit 1
  }
  total=$(awk '/^summary:/ {print $2}' "$WORK/$case.out")
  printf '%-18s %12s instructions, %6s per verification\n' "$case" "$total" "$((total / N))"
  [ -n "${KEEP:-}" ] && cp "$WORK/$case.out" "$KEEP.$case.out"
done
