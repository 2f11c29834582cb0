#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (libFuzzer -max_total_time), starting from
# the committed seeds (fuzz/seeds/TARGET) plus what earlier runs found (fuzz/corpus/TARGET,
# not committed). Exits non-zero if any target crashes, panics, times out on one input or
# runs out of memory; the input that did it is in fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh SECONDS [TARGET...]      (default: every target; docs/testing.md)
#
# Needs cargo-fuzz (installed here from crates.io when missing) and libFuzzer's unstable rustc
# flags: the nightly toolchain when rustup has one, else stable with RUSTC_BOOTSTRAP=1.
# FUZZ_TARGET_DIR moves the build (default target/fuzz, apart from the main workspace's).
# FUZZ_SANITIZER=address turns AddressSanitizer on (default none: the code under test is safe
# Rust, and without ASan the build is shorter and runs execute about twice as fast).
set -euo pipefail
cd "$(dirname "$0")"
here="$(pwd)"
target_dir="${FUZZ_TARGET_DIR:-$here/../target/fuzz}"

seconds="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
case "$seconds" in '' | *[!0-9]*) echo "SECONDS must be a whole number" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

# FUZZ_TOOLCHAIN=stable forces the fallback a fresh machine (one toolchain) takes.
toolchain=()
if [ "${FUZZ_TOOLCHAIN:-}" != stable ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  # The stable compiler accepts the -Z flags cargo-fuzz passes when told it is bootstrapping.
  export RUSTC_BOOTSTRAP=1
fi

sanitizer="${FUZZ_SANITIZER:-none}"
# 16 codegen units (cargo-fuzz's release default is 1): a cold build, as in CI, takes markedly
# less time on a few cores, for slightly slower executions.
flags=(--sanitizer "$sanitizer" --debug-assertions --codegen-units 16 --target-dir "$target_dir")
build=(cargo "${toolchain[@]}" fuzz build "${flags[@]}")

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
started=$SECONDS
"${build[@]}"
echo "built in $((SECONDS - started)) s"

failed=()
for target in "${targets[@]}"; do
  mkdir -p "$here/corpus/$target" "$here/artifacts/$target"
  echo "== $target: ${seconds} s"
  # -timeout: one input taking 10 s is a failure (a hostile input must not stall a thread);
  # -rss_limit_mb: libFuzzer's default, stated. The last lines of libFuzzer's report (the
  # execution count and the corpus size) go to the log; a failure prints its whole report.
  log="$here/artifacts/$target/run.log"
  if cargo "${toolchain[@]}" fuzz run "${flags[@]}" \
    "$target" "$here/corpus/$target" "$here/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$here/artifacts/$target/" >"$log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ *DONE' "$log" | tr '\n' ' '
    echo
  else
    tail -n 60 "$log"
    echo "!! $target FAILED (input in fuzz/artifacts/$target/)"
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]}"
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${seconds} s each, no crash"
