#!/usr/bin/env bash
# UDP (DNS) through a ClusterIP: kernel DNAT against clusterway's offload and proxy
# dataplanes, in one interleaved run (rep 1 of every path, then rep 2, ...). See bench/README.md
# ("UDP through a ClusterIP").
#
#   flock /tmp/clusterway-bench.lock bench/udp.sh [DUR] [REPS]
#
# Client -- gateway -- pod in network namespaces of its own (cwu<pid>-cl, -gw, -p1; veths
# created inside them), fresh ones for every (path, repetition) so no conntrack entry carries
# over. The pod runs unbound (one thread, a static local zone) on 10.244.1.10:53; the client
# targets the ClusterIP 10.96.0.53:53:
# - dnat: an nftables DNAT rule in the gateway namespace (what kube-proxy does);
# - offload: `clusterway run --dataplane offload` (the first datagram of each flow crosses the
#   TUN device, the kernel carries the rest);
# - proxy: `clusterway run --dataplane proxy` (every datagram through the TUN device and a
#   socket per flow).
# Figures per path and repetition, DUR seconds each:
# - steady flows: dnsperf, 4 clients (4 sockets: 4 flows) with up to 100 queries outstanding:
#   queries/s, average latency, and the gateway process's CPU time per 1,000 queries;
# - a flow per query: bench/udpflows.py, 64 queries outstanding, each from a fresh socket (a
#   new source port, so a new flow and a new conntrack entry): queries/s, p50 and p99;
# - two queries per flow: the same with two queries sent back to back on each fresh socket
#   (a resolver's A and AAAA): queries/s and queries lost (the second datagram of a flow
#   arrives before the gateway handed the flow over).
# - nullentry (an experiment): offload without the netfilter table's UDP rules, the other
#   way to tell first datagrams (the gateway replaces the kernel's own entry of each new flow).
# Env: PATHS ("dnat offload proxy"; nullentry may be added), CLUSTERWAY (target/release/clusterway), OUT (raw output,
# default a temporary directory that is removed). Nothing outside the namespaces changes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DUR=${1:-5}
REPS=${2:-3}
PATHS=${PATHS:-"dnat offload proxy"}
CLUSTERWAY=${CLUSTERWAY:-$REPO/target/release/clusterway}
P="cwu$$"
CL="$P-cl" GW="$P-gw" POD="$P-p1"
VIP=10.96.0.53
POD_IP=10.244.1.10

log() { printf '%s udp-bench: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it creates network namespaces)"
for tool in dnsperf unbound nft python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dnsperf unbound nftables python3)"
done
[ -x "$CLUSTERWAY" ] || die "$CLUSTERWAY is missing: cargo build --release"

TMP=$(mktemp -d /tmp/clusterway-udp-bench.XXXXXX)
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; rmdir "$TMP"; TMP=$OUT; fi
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
ns_down() { for ns in "$CL" "$GW" "$POD"; do ip netns del "$ns" 2>/dev/null || true; done; }
cleanup() {
    stop_all
    ns_down
    if [ -z "${OUT:-}" ]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ns_up() {
    ns_down
    for ns in "$CL" "$GW" "$POD"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    done
    ip -n "$CL" link add eth0 type veth peer name veth-cl netns "$GW"
    ip -n "$POD" link add eth0 type veth peer name veth-p1 netns "$GW"
    ip -n "$CL" addr add 192.168.77.2/24 dev eth0
    ip -n "$CL" link set eth0 up
    ip -n "$CL" route add default via 192.168.77.1
    ip -n "$GW" addr add 192.168.77.1/24 dev veth-cl
    ip -n "$GW" addr add 10.244.1.1/24 dev veth-p1
    ip -n "$GW" link set veth-cl up
    ip -n "$GW" link set veth-p1 up
    ip netns exec "$GW" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$POD" addr add "$POD_IP/24" dev eth0
    ip -n "$POD" link set eth0 up
    ip -n "$POD" route add default via 10.244.1.1
    ip netns exec "$CL" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
}

# The queries (names in the pod's zone, and names that do not exist) and unbound's config.
python3 - "$TMP" <<'EOF'
import sys
tmp = sys.argv[1]
zone = "bench.svc.cluster.local"
rec, q = [], []
for k in range(1, 101):
    rec.append(f'  local-data: "svc{k}.{zone}. 5 IN A 10.96.{k // 250}.{k % 250 + 1}"')
    q.append(f"svc{k}.{zone} A")
    q.append(f"nosuch{k}.{zone} A")
open(f"{tmp}/records.conf", "w").write("\n".join(rec) + "\n")
open(f"{tmp}/queries.txt", "w").write("\n".join(q) + "\n")
EOF
cat >"$TMP/unbound.conf" <<EOF
server:
  interface: $POD_IP
  port: 53
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$TMP"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  module-config: "iterator"
  access-control: 0.0.0.0/0 allow
  local-zone: "cluster.local." static
  local-data: "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
  include: "$TMP/records.conf"
remote-control:
  control-enable: no
EOF
cat >"$TMP/snapshot.yaml" <<EOF
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: bench}
  spec:
    type: ClusterIP
    clusterIP: $VIP
    clusterIPs: [$VIP]
    ipFamilies: [IPv4]
    ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: dns-1
    namespace: bench
    labels: {kubernetes.io/service-name: dns}
  addressType: IPv4
  endpoints:
  - addresses: [$POD_IP]
    conditions: {ready: true, serving: true, terminating: false}
  ports:
  - {name: dns, port: 53, protocol: UDP}
EOF

GW_PID=
setup() {
    local path=$1 dir=$2
    GW_PID=
    case $path in
    dnat)
        ip netns exec "$GW" nft -f - <<EOF
table ip cwbench {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $VIP udp dport 53 dnat to $POD_IP
    }
}
EOF
        ;;
    offload | proxy)
        ip netns exec "$GW" "$CLUSTERWAY" run --from-file "$TMP/snapshot.yaml" \
            --service-cidr 10.96.0.0/16 --dataplane "$path" >"$dir/clusterway.log" 2>&1 &
        GW_PID=$!
        PIDS+=("$GW_PID")
        for _ in $(seq 100); do
            ip -n "$GW" route get "$VIP" 2>/dev/null | grep -q ' dev cw0' && break
            sleep 0.1
        done
        ip -n "$GW" route get "$VIP" | grep -q ' dev cw0' \
            || die "clusterway did not route $VIP: $(tail -5 "$dir/clusterway.log")"
        grep -q "dataplane: $path" "$dir/clusterway.log" \
            || die "$path: the gateway took another dataplane: $(grep dataplane "$dir/clusterway.log")"
        ;;
    nullentry)
        # The alternative way, for comparison: offload without the UDP rules of the
        # first_packet chain, so the kernel tracks every datagram and confirms an entry of its
        # own (a null binding) for a new flow's first one on its way into the TUN device;
        # the gateway's create then fails with "exists", and it deletes that entry and
        # creates its own (offload::existing, Replace).
        setup offload "$dir"
        local h
        for h in $(ip netns exec "$GW" nft -a list chain inet clusterway first_packet \
                | awk '/udp/ {print $NF}'); do
            ip netns exec "$GW" nft delete rule inet clusterway first_packet handle "$h"
        done
        ip netns exec "$GW" nft list chain inet clusterway first_packet >"$dir/first_packet.nft"
        ;;
    *) die "unknown path $path (dnat offload proxy nullentry)" ;;
    esac
}

gw_ticks() {
    if [ -n "$GW_PID" ]; then
        awk '{print $14 + $15}' "/proc/$GW_PID/stat"
    else
        echo 0
    fi
}

SAMPLES=$TMP/samples.tsv
: >"$SAMPLES"
HZ=$(getconf CLK_TCK)
for rep in $(seq "$REPS"); do
    for path in $PATHS; do
        dir=$TMP/$path-$rep
        mkdir -p "$dir"
        ns_up
        ip netns exec "$POD" unbound -d -c "$TMP/unbound.conf" >"$dir/unbound.log" 2>&1 &
        PIDS+=($!)
        setup "$path" "$dir"
        for _ in $(seq 50); do
            ip netns exec "$CL" python3 "$REPO/bench/udpflows.py" "$VIP" 53 0.2 1 2>/dev/null \
                | grep -qv 'answered 0 ' && break
            sleep 0.2
        done
        t0=$(gw_ticks)
        ip netns exec "$CL" dnsperf -s "$VIP" -p 53 -d "$TMP/queries.txt" -c 4 -T 1 -q 100 \
            -l "$DUR" >"$dir/dnsperf.txt" 2>&1 || die "dnsperf failed: $(tail -5 "$dir/dnsperf.txt")"
        t1=$(gw_ticks)
        qps=$(awk '/Queries per second:/ {print $4}' "$dir/dnsperf.txt")
        lat=$(awk '/Average Latency/ {print $4 * 1e6}' "$dir/dnsperf.txt")
        lost=$(awk '/Queries lost:/ {print $3}' "$dir/dnsperf.txt")
        done_q=$(awk '/Queries completed:/ {print $3}' "$dir/dnsperf.txt")
        cpu=$(python3 -c "print(f'{($t1 - $t0) / $HZ * 1e3 / max($done_q, 1) * 1000:.1f}')")
        printf '%s\t%s\tsteady_qps\t%s\n' "$path" "$rep" "$qps" >>"$SAMPLES"
        printf '%s\t%s\tsteady_avg_us\t%s\n' "$path" "$rep" "$lat" >>"$SAMPLES"
        printf '%s\t%s\tsteady_lost\t%s\n' "$path" "$rep" "$lost" >>"$SAMPLES"
        printf '%s\t%s\tgw_cpu_ms_per_1k\t%s\n' "$path" "$rep" "$cpu" >>"$SAMPLES"
        ip netns exec "$CL" python3 "$REPO/bench/udpflows.py" "$VIP" 53 "$DUR" 64 >"$dir/flows.txt"
        read -r _ answered _ flost _ fqps _ p50 _ p99 <"$dir/flows.txt"
        ip netns exec "$CL" python3 "$REPO/bench/udpflows.py" "$VIP" 53 "$DUR" 64 2 >"$dir/pairs.txt"
        read -r _ panswered _ plost _ pqps _ _ _ _ <"$dir/pairs.txt"
        printf '%s\t%s\tpair_qps\t%s\n' "$path" "$rep" "$pqps" >>"$SAMPLES"
        printf '%s\t%s\tpair_lost\t%s\n' "$path" "$rep" "$plost" >>"$SAMPLES"
        printf '%s\t%s\tflow_qps\t%s\n' "$path" "$rep" "$fqps" >>"$SAMPLES"
        printf '%s\t%s\tflow_p50_us\t%s\n' "$path" "$rep" "$p50" >>"$SAMPLES"
        printf '%s\t%s\tflow_p99_us\t%s\n' "$path" "$rep" "$p99" >>"$SAMPLES"
        printf '%s\t%s\tflow_lost\t%s\n' "$path" "$rep" "$flost" >>"$SAMPLES"
        if [ "$path" != dnat ]; then
            ip netns exec "$GW" conntrack -S >"$dir/conntrack-stats.txt" 2>/dev/null || true
            ip netns exec "$GW" sh -c 'curl -s http://127.0.0.1:9310/metrics 2>/dev/null' \
                | grep -E '^clusterway_(tun_packets_total\{direction="in"\}|offload_flows_total|offload_retransmits_total|offload_failures_total|offload_udp_proxied_total|connections_total)' \
                >"$dir/metrics.txt" || true
        fi
        log "$path rep $rep: steady $qps q/s (avg ${lat} us, lost $lost, gateway ${cpu} ms CPU per 1k);" \
            "flow per query $fqps q/s (p50 $p50 us, p99 $p99 us, answered $answered, lost $flost);" \
            "two queries per flow $pqps q/s (answered $panswered, lost $plost)"
        stop_all
        ns_down
    done
done

# Medians per path and figure, with the ratio to dnat.
python3 - "$SAMPLES" "$PATHS" <<'EOF'
import sys, statistics, collections
samples, paths = sys.argv[1], sys.argv[2].split()
v = collections.defaultdict(list)
for line in open(samples):
    path, rep, fig, val = line.rstrip("\n").split("\t")
    try:
        v[(path, fig)].append(float(val))
    except ValueError:
        pass
figs = ["steady_qps", "steady_avg_us", "steady_lost", "gw_cpu_ms_per_1k", "flow_qps",
        "flow_p50_us", "flow_p99_us", "flow_lost", "pair_qps", "pair_lost"]
print("| figure | " + " | ".join(paths) + " |")
print("|---|" + "---|" * len(paths))
for f in figs:
    ref = v.get(("dnat", f))
    row = []
    for p in paths:
        xs = v.get((p, f))
        if not xs:
            row.append("-")
            continue
        m = statistics.median(xs)
        spread = (max(xs) - min(xs)) / m * 50 if m else 0
        cell = f"{m:.0f}" if m >= 100 else f"{m:.1f}"
        if ref and statistics.median(ref) and f not in ("steady_lost", "flow_lost", "pair_lost", "gw_cpu_ms_per_1k"):
            cell += f" ({m / statistics.median(ref):.2f})"
        cell += f" ±{spread:.0f}%"
        row.append(cell)
    print(f"| {f} | " + " | ".join(row) + " |")
EOF
