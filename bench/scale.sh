#!/usr/bin/env bash
# keyward's scale benchmark: creation, memory per cached key, verify under a Zipf mix and cold,
# listings and usage, for each store and key count. See bench/README.md ("Scale").
#
#   bash bench/scale.sh                  # 10000 and 100000 keys, SQLite and PostgreSQL
#   STORES=sqlite bash bench/scale.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wrk psql python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is missing (apt-get install -y wrk postgresql-client)" >&2; exit 1; }
done
cargo build --release --quiet --bin keyward
exec python3 bench/scale/scale.py "$@"
