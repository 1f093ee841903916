#!/usr/bin/env bash
# The fuzz campaign (fuzz/README.md): coverage-guided fuzzing with libFuzzer on the stable
# toolchain. libfuzzer-sys builds libFuzzer from its own sources with the C++ compiler;
# rustc's stable codegen options add the SanitizerCoverage instrumentation libFuzzer reads
# (edge counters, the PC table, comparison tracing) — what cargo-fuzz sets up, without the
# nightly-only sanitizer flags. Each target runs from its committed seeds (fuzz/seeds/T)
# plus the inputs earlier runs found (fuzz/corpus/T, not committed) for FUZZ_SECONDS.
# A crash, a timeout or an out-of-memory input stops with a non-zero status and leaves the
# input in fuzz/artifacts/ (make it a regression test: fuzz/README.md).
#
#   bash scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=3600 FUZZ_TARGETS=engine bash scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-parse engine snapshot dns}
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=target
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (they run on the
# host and must not be instrumented), as cargo-fuzz does.
triple=$(rustc -vV | sed -n 's/^host: //p')

echo "==> building the fuzz targets (libFuzzer + SanitizerCoverage, stable toolchain)"
cargo build --release --locked --bins --quiet --target "$triple"
mkdir -p artifacts
for t in $targets; do
  mkdir -p "corpus/$t"
  echo "==> fuzzing $t for ${seconds}s"
  # -max_len bounds one input (a packet sequence of 16 up to the largest super-packet, a
  # snapshot file); -timeout and -rss_limit_mb make a slow or greedy input a finding.
  log=$(mktemp)
  status=0
  "./target/$triple/release/$t" "corpus/$t" "seeds/$t" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t-" >"$log" 2>&1 || status=$?
  # What shows that it ran and was guided by coverage: the instrumented edges, the
  # coverage (cov/ft) at the start and the end, the inputs run and the new ones kept.
  grep -E '^(INFO: Loaded|INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
  if [ "$status" != 0 ]; then
    tail -n 60 "$log" >&2
    rm -f "$log"
    echo "scripts/fuzz.sh: $t failed (status $status); the input is in fuzz/artifacts/ (fuzz/README.md: A finding)" >&2
    exit 1
  fi
  rm -f "$log"
done
