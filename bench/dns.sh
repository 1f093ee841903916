#!/usr/bin/env bash
# Queries per second and latency of the gateway's DNS server against Debian's unbound
# serving the same names from a local zone, in one run, on this machine.
#
#   flock /tmp/clusterway-bench.lock bench/dns.sh [DUR] [REPS]
#
# One network namespace of its own (cwdns<pid>, loopback only): `clusterway run
# --from-file` with N Services and `--dns-listen 127.0.0.1:53`, and unbound on 127.0.0.2:53
# with the same A and SRV records as `local-data` (a `static` local zone, so unknown names are
# NXDOMAIN there too). dnsperf (Debian's) sends the same query file to each, interleaved (rep 1
# of both servers, then rep 2, ...):
# - a throughput run: DUR seconds, 4 clients, up to 100 queries outstanding: queries/s;
# - a latency run: DUR seconds at a fixed 2,000 queries/s (below both servers' capacity) with `-v` (one line per query with
#   its latency): p50 and p99.
# Each server has one thread for answering: unbound `num-threads: 1`; the gateway's DNS runs
# on its async runtime, one thread on a 2-core machine (the other is the dataplane's). The
# load generator runs on the same cores, so figures are relative costs, not capacities.
# Env: N (Services, default 100), CLUSTERWAY (target/release/clusterway), OUT (directory for
# the raw output, default a temporary one that is removed).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DUR=${1:-10}
REPS=${2:-3}
N=${N:-100}
CLUSTERWAY=${CLUSTERWAY:-$REPO/target/release/clusterway}

[ "$(id -u)" = 0 ] || { echo "bench/dns.sh: run as root (it creates a network namespace)" >&2; exit 1; }
for tool in dnsperf unbound dig python3; do
  command -v "$tool" >/dev/null || {
    echo "bench/dns.sh: $tool is missing (apt-get install dnsperf unbound bind9-dnsutils python3)" >&2
    exit 1
  }
done
[ -x "$CLUSTERWAY" ] || { echo "bench/dns.sh: $CLUSTERWAY is missing: cargo build --release" >&2; exit 1; }

NS=cwdns$$
TMP=$(mktemp -d /tmp/clusterway-dns-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  if [ -z "${OUT:-}" ]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  rmdir "$TMP"
  TMP=$OUT
fi

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up

# The same names for both servers: svcK.bench.svc.cluster.local (A 10.96.X.Y, SRV _http._tcp
# port 80), and queries for them plus names that do not exist.
python3 - "$N" "$TMP" <<'EOF'
import sys
n, tmp = int(sys.argv[1]), sys.argv[2]
zone = "cluster.local"
snap = ["apiVersion: v1", "kind: List", "items:"]
unb = []
queries = []
for k in range(1, n + 1):
    ip = f"10.96.{k // 250}.{k % 250 + 1}"
    name = f"svc{k}.bench.svc.{zone}"
    snap += [
        "- apiVersion: v1",
        "  kind: Service",
        f"  metadata: {{name: svc{k}, namespace: bench}}",
        f"  spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, protocol: TCP}}]}}",
    ]
    unb.append(f'  local-data: "{name}. 5 IN A {ip}"')
    unb.append(f'  local-data: "_http._tcp.{name}. 5 IN SRV 0 100 80 {name}."')
    queries.append(f"{name} A")
    queries.append(f"_http._tcp.{name} SRV")
    queries.append(f"nosuch{k}.bench.svc.{zone} A")
open(f"{tmp}/snapshot.yaml", "w").write("\n".join(snap) + "\n")
open(f"{tmp}/records.conf", "w").write("\n".join(unb) + "\n")
open(f"{tmp}/queries.txt", "w").write("\n".join(queries) + "\n")
EOF

cat > "$TMP/unbound.conf" <<EOF
server:
  interface: 127.0.0.2
  port: 53
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$TMP"
  pidfile: "$TMP/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  module-config: "iterator"
  access-control: 127.0.0.0/8 allow
  local-zone: "cluster.local." static
  local-data: "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
  include: "$TMP/records.conf"
remote-control:
  control-enable: no
EOF

ip netns exec "$NS" "$CLUSTERWAY" run --from-file "$TMP/snapshot.yaml" --dns-listen 127.0.0.1:53 \
  --tun-name cwd0 --status-addr 127.0.0.1:9310 >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" unbound -d -c "$TMP/unbound.conf" >"$TMP/unbound.log" 2>&1 &
PIDS+=($!)

ready() {
  for _ in $(seq 1 100); do
    if [ "$(ip netns exec "$NS" dig @"$1" +short +time=1 +tries=1 svc1.bench.svc.cluster.local A 2>/dev/null)" = "10.96.0.2" ]; then
      return 0
    fi
    sleep 0.2
  done
  echo "bench/dns.sh: $2 on $1 never answered; its log:" >&2
  cat "$TMP/$2.log" >&2
  exit 1
}
ready 127.0.0.1 gateway
ready 127.0.0.2 unbound

echo "bench/dns.sh: N=$N Services ($((N * 3)) query names: A, SRV, NXDOMAIN), DUR=${DUR}s, REPS=$REPS"
echo "rep server qps lost p50_us p99_us" >"$TMP/results.txt"
for rep in $(seq 1 "$REPS"); do
  for server in clusterway unbound; do
    addr=127.0.0.1
    [ "$server" = unbound ] && addr=127.0.0.2
    ip netns exec "$NS" dnsperf -s "$addr" -d "$TMP/queries.txt" -l "$DUR" -c 4 -q 100 \
      >"$TMP/qps-$server-$rep.txt" 2>&1
    ip netns exec "$NS" dnsperf -s "$addr" -d "$TMP/queries.txt" -l "$DUR" -Q 2000 -v \
      >"$TMP/lat-$server-$rep.txt" 2>&1
    python3 - "$TMP" "$server" "$rep" <<'EOF' | tee -a "$TMP/results.txt"
import re, sys
tmp, server, rep = sys.argv[1:4]
qps_text = open(f"{tmp}/qps-{server}-{rep}.txt").read()
qps = float(re.search(r"Queries per second:\s+([\d.]+)", qps_text).group(1))
lost = int(re.search(r"Queries lost:\s+(\d+)", qps_text).group(1))
lat = []
for line in open(f"{tmp}/lat-{server}-{rep}.txt"):
    # "> NOERROR svc1.bench.svc.cluster.local A 0.000123"
    parts = line.split()
    if len(parts) >= 2 and parts[0] == ">":
        try:
            lat.append(float(parts[-1]))
        except ValueError:
            pass
if not lat:
    sys.exit(f"no latencies in lat-{server}-{rep}.txt")
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6
print(f"{rep} {server} {qps:.0f} {lost} {p(0.50):.0f} {p(0.99):.0f}")
EOF
  done
done

python3 - "$TMP/results.txt" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
by = {}
for rep, server, qps, lost, p50, p99 in rows:
    by.setdefault(server, []).append((float(qps), int(lost), float(p50), float(p99)))
med = {s: [statistics.median(x[i] for x in v) for i in range(4)] for s, v in by.items()}
ref = med["unbound"]
print()
print("| server | queries/s (median) | vs unbound | lost | p50 | p99 |")
print("|---|---|---|---|---|---|")
for s in ("clusterway", "unbound"):
    q, lost, p50, p99 = med[s]
    print(f"| {s} | {q:,.0f} | {q / ref[0]:.2f} | {lost:.0f} | {p50:.0f} µs | {p99:.0f} µs |")
EOF
