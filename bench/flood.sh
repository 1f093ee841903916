#!/usr/bin/env bash
# clusterway under floods: runs tests/adversarial.rs in release mode (spoofed SYN floods at
# an affinity and a plain Service, a spoofed UDP flood, fragments that never complete,
# malformed and random packets), one scenario at a time, and prints one line per scenario:
# packets offered and read by the gateway per second, the transfer and the legitimate
# client's new connections and UDP queries during the flood, and the gateway's resident
# memory before, at its peak during, and one second after. Everything happens in network
# namespaces the tests create and remove; the floods go only into them.
#
# Environment: SCALE (1) multiplies every flood's packet count (the rate stays 50,000/s,
# each flood stops after 8 s); BASELINE, the path of another clusterway binary, runs the
# same scenarios against it afterwards (its assertions may fail: only its figures count);
# LOCK (/tmp/clusterway-bench.lock), held for the whole run so that no other benchmark
# shares the machine meanwhile. Needs root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SCALE=${SCALE:-1}
LOCK=${LOCK:-/tmp/clusterway-bench.lock}
BASELINE=${BASELINE:-}

cd "$REPO"
# Build first, outside the lock: compiling is not what is measured.
cargo test --release --test adversarial --no-run 2>&1 | tail -1

run() {
    local label=$1
    shift
    echo "== $label (scale $SCALE)"
    # The scenarios print their FLOOD line before asserting; keep those lines and the
    # verdict (the backends' log lines interleave with the per-test ones).
    env CW_FLOOD_SCALE="$SCALE" "$@" cargo test --release --test adversarial -- \
        --test-threads=1 --nocapture 2>&1 | grep -E '^(FLOOD|test result)|panicked' || true
}

exec 9>"$LOCK"
flock 9
run "this build"
if [ -n "$BASELINE" ]; then
    run "baseline $BASELINE" CW_TEST_GATEWAY_BIN="$BASELINE"
fi
