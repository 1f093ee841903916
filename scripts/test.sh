#!/usr/bin/env bash
# The whole test suite: format, lints, unit and property tests, and the integration tests
# that build their own network namespaces, TUN devices and veth pairs (as root).
# On a fresh Debian 12 machine it installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root: the integration tests create network namespaces and TUN devices" >&2
  exit 1
fi

# Debian packages the tests use, installed only when missing.
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
# The topologies set forwarding, rp_filter and IPv6 sysctls inside their namespaces.
command -v sysctl >/dev/null 2>&1 || need+=(procps)
command -v cc >/dev/null 2>&1 || need+=(gcc)
# The fuzz targets (scripts/fuzz.sh): libfuzzer-sys builds libFuzzer with the C++ compiler.
command -v c++ >/dev/null 2>&1 || need+=(g++)
# The container test (tests/container.rs) builds and runs the image with podman on a
# debootstrapped base; podman needs runc on these machines.
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# tests/container.rs verifies docker/clusterway.service with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The browser test (tests/browser.rs) drives Debian's Chromium with playwright-core.
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Names (tests/dns.rs): dig, a recursive resolver in front of the gateway, curl by name.
command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
command -v unbound >/dev/null 2>&1 || need+=(unbound)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
# The fleet test (tests/fleet.rs) runs BIRD 2 and FRR inside its own namespaces (their
# packaged services are not used).
command -v bird >/dev/null 2>&1 || need+=(bird2)
[ -x /usr/lib/frr/bgpd ] || need+=(frr)
# Flow offload: the gateway programs its table with nft; tests/offload.rs reads the
# gateway's conntrack entries with conntrack(8).
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # bird2 and frr start their own services on install; the tests run their own daemons in
  # namespaces, so stop the packaged ones we just started (on a host with systemd).
  if [[ " ${need[*]} " == *" bird2 "* || " ${need[*]} " == *" frr "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now bird.service frr.service >/dev/null 2>&1 || true
  fi
fi
[ -e /dev/net/tun ] || { echo "scripts/test.sh: /dev/net/tun is missing" >&2; exit 1; }
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "==> npm ci (tests/browser: playwright-core)"
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi

echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --all-targets 2>&1
# The dataplane suite again: without TUN offloads, with several queues (workers), and with
# the proxy on the workers (a listener port each).
echo "==> cargo test --test dataplane, offloads off, 3 queues"
CLUSTERWAY_NO_OFFLOAD=1 CLUSTERWAY_QUEUES=3 cargo test --test dataplane 2>&1
echo "==> cargo test --test dataplane, offloads on, 4 queues"
CLUSTERWAY_QUEUES=4 cargo test --test dataplane 2>&1
echo "==> cargo test --test dataplane, proxy on the workers, 2 queues"
CLUSTERWAY_PROXY_ON_WORKERS=1 CLUSTERWAY_QUEUES=2 cargo test --test dataplane 2>&1
echo "==> cargo test --test dataplane, flow offload (the dataplane suite's default is proxy)"
CLUSTERWAY_DATAPLANE=offload cargo test --test dataplane 2>&1
# The floods with flow offload (the kernel holds the flows and the fragments).
echo "==> cargo test --test adversarial, flow offload"
CLUSTERWAY_DATAPLANE=offload cargo test --test adversarial 2>&1
# The floods again with two workers sharing the NAT (each evicts from its own shards).
echo "==> cargo test --test adversarial, proxy on the workers, 2 queues"
CLUSTERWAY_PROXY_ON_WORKERS=1 CLUSTERWAY_QUEUES=2 cargo test --test adversarial 2>&1
# The fuzz campaign's time-boxed run: a minute per target (fuzz/README.md).
echo "==> fuzzing (scripts/fuzz.sh, ${FUZZ_SECONDS:-60}s per target)"
bash scripts/fuzz.sh
left=$(ip netns list | grep -c '^cw' || true)
if [ "$left" != 0 ]; then
  echo "scripts/test.sh: $left test network namespace(s) left behind:" >&2
  ip netns list >&2
  exit 1
fi
