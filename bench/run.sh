#!/usr/bin/env bash
# clusterway benchmark: client -- gateway -- pod in network namespaces, six paths compared
# in one interleaved run. See bench/README.md. Never touches the host namespace: everything
# (links, addresses, routes, sysctls, nftables, servers) lives in namespaces this script
# creates, and a trap removes them on exit, also after a failure or Ctrl-C.
#
# Environment: REPS (5) repetitions, DUR (5) seconds per measurement, PATHS ("route dnat
# haproxy tunnat clusterway workers offload"; tunnat is the TUN leg alone, examples/tun_nat.rs;
# clusterway is the proxy dataplane, workers is it with --proxy-on-workers, offload is
# clusterway run --dataplane offload), CLUSTERWAY (target/release/clusterway),
# TUN_NAT (target/release/examples/tun_nat), OUT (bench/results/<date>), IDLE_FLOWS (8000; 0 skips the
# idle-flow memory runs), IDLE_PATHS ("haproxy clusterway"; workers may be added), FIGURES
# ("tcp1 tcp4 rtt http_ka http_close"; a subset for quick A/B runs).
set -euo pipefail

REPS=${REPS:-5}
DUR=${DUR:-5}
PATHS=${PATHS:-"route dnat haproxy tunnat clusterway workers offload"}
IDLE_FLOWS=${IDLE_FLOWS:-8000}
EXTRA_POD_IPS=""                # more endpoint addresses of the pod (large idle-flow runs)
IDLE_PATHS=${IDLE_PATHS:-"haproxy clusterway offload"}
FIGURES=${FIGURES:-"tcp1 tcp4 rtt http_ka http_close"}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CLUSTERWAY=${CLUSTERWAY:-$REPO/target/release/clusterway}
TUN_NAT=${TUN_NAT:-$REPO/target/release/examples/tun_nat}
OUT=${OUT:-$HERE/results/$(date +%Y%m%d-%H%M%S)}
P="cwb$$"                       # namespace prefix, unique per run
CL="$P-cl" GW="$P-gw" POD="$P-p1"
VIP=10.96.0.10
POD_IP=10.244.1.10
CL_IP=192.168.77.2
SAMPLES="$OUT/samples.tsv"

log() { printf '%s bench: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (it creates network namespaces)"

# --- tools ---------------------------------------------------------------------------------
need=()
for t in iperf3:iperf3 wrk:wrk haproxy:haproxy nginx:nginx nft:nftables python3:python3 \
         curl:curl; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed"
fi

# File limit: at most what the hard limit allows (20,000 on the reference machines).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Idle flows one client process (or one nginx worker) holds within that limit; beyond it
# the idle-flow client is split into several processes, each from an address of its own.
FLOWS_PER_PROC=$(($(ulimit -n) - 1000))

mkdir -p "$OUT"
: >"$SAMPLES"
log "results in $OUT; REPS=$REPS DUR=${DUR}s paths: $PATHS; idle flows:" \
    "$([ "$IDLE_FLOWS" = 0 ] && echo off || echo "$IDLE_FLOWS through $IDLE_PATHS");" \
    "RLIMIT_NOFILE $(ulimit -n)"
[[ $IDLE_FLOWS =~ ^[0-9]+$ ]] || die "IDLE_FLOWS must be a number (0 disables)"
for f in $FIGURES; do
    case $f in
    tcp1 | tcp4 | rtt | http_ka | http_close) ;;
    *) die "FIGURES: '$f' is not one of tcp1 tcp4 rtt http_ka http_close" ;;
    esac
done
want() { [[ " $FIGURES " == *" $1 "* ]]; }
CLK_TCK=$(getconf CLK_TCK)

# --- namespaces ----------------------------------------------------------------------------
ns_down() {
    local ns
    for ns in "$CL" "$GW" "$POD"; do
        [ -e "/run/netns/$ns" ] || continue
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    sleep 0.2
    for ns in "$CL" "$GW" "$POD"; do
        [ -e "/run/netns/$ns" ] || continue
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}
cleanup() {
    local rc=$?
    ns_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fresh namespaces for every (path, repetition): no TIME_WAIT or conntrack state carries
# over between measurements (see BENCH-NOTES.md, early demux trap).
ns_up() {
    ns_down
    local ns
    for ns in "$CL" "$GW" "$POD"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    done
    # veths are created from inside the namespaces: nothing appears in the host namespace.
    ip -n "$CL" link add eth0 type veth peer name veth-cl netns "$GW"
    ip -n "$POD" link add eth0 type veth peer name veth-p1 netns "$GW"
    ip -n "$CL" addr add "$CL_IP/24" dev eth0
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
    # Many short connections from one client address: widen the port range, reuse TIME_WAIT.
    ip netns exec "$CL" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" \
        net.ipv4.tcp_tw_reuse=1
}

# --- servers in the pod ----------------------------------------------------------------------
start_pod_servers() { # dir [idle]
    local dir=$1 workers=auto conns=$((IDLE_FLOWS > 8192 ? IDLE_FLOWS + 1000 : 9192)) opts=""
    # More idle flows than two workers hold within the descriptor limit: enough workers for
    # them with a quarter to spare, each accepting its share (reuseport spreads them by hash).
    if [ "${2:-}" = idle ] && [ "$IDLE_FLOWS" -gt $((FLOWS_PER_PROC * 2)) ]; then
        workers=$((IDLE_FLOWS * 5 / 4 / FLOWS_PER_PROC + 1))
        conns=$FLOWS_PER_PROC
        opts=" reuseport"
    fi
    cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
worker_rlimit_nofile $(ulimit -n);
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections $conns; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 80 backlog=4096$opts;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
    ip netns exec "$POD" sysctl -qw net.core.somaxconn=4096
    ip netns exec "$POD" nginx -c "$dir/nginx.conf" -e "$dir/nginx-error.log" \
        || die "nginx did not start (see $dir)"
    ip netns exec "$POD" iperf3 -s -D -p 5201 --logfile "$dir/iperf3-server.log" \
        || die "iperf3 server did not start"
}

# --- the paths -------------------------------------------------------------------------------
setup_route() { TARGET=$POD_IP; GW_PID=; }

setup_dnat() {
    ip netns exec "$GW" nft -f - <<EOF
table ip cwbench {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $VIP tcp dport { 80, 5201 } dnat to $POD_IP
    }
}
EOF
    TARGET=$VIP
    GW_PID=
}

setup_haproxy() {
    local dir=$1
    # The VIP as a local address of the gateway namespace, HAProxy listening on it.
    ip -n "$GW" addr add "$VIP/32" dev lo
    # Kernel splice in both directions, always (splice-request + splice-response): with
    # "option splice-auto" HAProxy 2.6 in TCP mode never spliced the iperf3 stream here
    # (strace: recvfrom/sendto only). In TCP mode this splices small HTTP messages as well.
    # HAProxy sizes its descriptor need as 2 x maxconn + 2 x maxpipes, which must stay
    # under the hard limit (20,000 here), hence an explicit maxpipes (default maxconn/4) --
    # a pipe is only held while data is in flight, so a few hundred is plenty for these loads.
    # maxconn (frontends default to it) leaves room for the idle-flow run.
    local maxconn=$((IDLE_FLOWS + 500 > 8000 ? IDLE_FLOWS + 500 : 8000))
    cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn $maxconn
    maxpipes 256
    nbthread 2
    pidfile $dir/haproxy.pid
    stats socket $dir/haproxy.sock mode 600 level user
defaults
    mode tcp
    option splice-request
    option splice-response
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend http
    bind $VIP:80
    default_backend pod_http
backend pod_http
    server pod $POD_IP:80
frontend iperf
    bind $VIP:5201
    default_backend pod_iperf
backend pod_iperf
    server pod $POD_IP:5201
EOF
    ip netns exec "$GW" haproxy -D -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 \
        || die "haproxy did not start: $(cat "$dir/haproxy.log")"
    [ -s "$dir/haproxy.log" ] && log "haproxy says: $(tr '\n' ' ' <"$dir/haproxy.log")"
    GW_PID=$(cat "$dir/haproxy.pid")
    log "haproxy pid $GW_PID, open files limit $(gw_nofile)"
    TARGET=$VIP
}

# The TUN leg alone (examples/tun_nat.rs): a stateless 1:1 NAT through clusterway's own TUN
# layer and rewrite code, offloads on, one queue; the kernel forwards both ways and nothing
# terminates TCP. The pod answers the virtual address 198.18.0.2, which routes back into the
# device. What it costs plus what HAProxy costs is what a TUN path in front of a terminating
# proxy -- clusterway's packet path -- can reach here (summarize.py estimates it).
setup_tunnat() {
    local dir=$1 i
    ip netns exec "$GW" "$TUN_NAT" tn0 "$CL_IP" "$VIP" "$POD_IP" 198.18.0.2 \
        >"$dir/tun_nat.log" 2>&1 &
    GW_PID=$!
    for i in $(seq 100); do
        ip -n "$GW" link show tn0 >/dev/null 2>&1 && break
        kill -0 "$GW_PID" 2>/dev/null || die "tun_nat exited: $(cat "$dir/tun_nat.log")"
        sleep 0.1
    done
    ip -n "$GW" link show tn0 >/dev/null 2>&1 \
        || die "tun_nat did not create tn0 in 10 s: $(cat "$dir/tun_nat.log")"
    ip -n "$GW" addr add 198.18.0.1/16 dev tn0
    ip -n "$GW" link set tn0 up
    ip -n "$GW" route add "$VIP/32" dev tn0
    TARGET=$VIP
    log "tun_nat pid $GW_PID"
}

# HAProxy's counters of splice pipes: in use, and released to its shared pool. Either above
# 0 means it spliced; both 0 does not prove the contrary (released pipes may also sit in a
# per-thread cache that these counters do not show), hence the check during a transfer.
haproxy_pipes() { # dir
    python3 - "$1/haproxy.sock" <<'PY' 2>/dev/null || echo "unknown"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show info\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
info = dict(l.split(": ", 1) for l in out.decode().splitlines() if ": " in l)
print(f"PipesUsed={info.get('PipesUsed')} PipesFree={info.get('PipesFree')}")
PY
}

gw_nofile() { awk '/^Max open files/ {print $4 "/" $5}' "/proc/$GW_PID/limits"; }

clusterway_available() {
    [ -x "$CLUSTERWAY" ] && "$CLUSTERWAY" run --help >/dev/null 2>&1
}

# clusterway; further arguments are passed to `clusterway run`.
start_clusterway() {
    local dir=$1
    shift
    cat >"$dir/snapshot.yaml" <<EOF
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: vip, namespace: bench}
  spec:
    type: ClusterIP
    clusterIP: $VIP
    clusterIPs: [$VIP]
    ipFamilies: [IPv4]
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: 80}
    - {name: iperf, port: 5201, protocol: TCP, targetPort: 5201}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: vip-1
    namespace: bench
    labels: {kubernetes.io/service-name: vip}
  addressType: IPv4
  endpoints:
  - addresses: [$POD_IP]
    conditions: {ready: true, serving: true, terminating: false}
$(for a in $EXTRA_POD_IPS; do echo "  - addresses: [$a]"; echo "    conditions: {ready: true, serving: true, terminating: false}"; done)
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: iperf, port: 5201, protocol: TCP}
EOF
    # Started with the hard descriptor limit (set at the top): it sizes its TCP flow table
    # from RLIMIT_NOFILE. `ip netns exec` execs the command, so $! is clusterway itself.
    ip netns exec "$GW" "$CLUSTERWAY" run --from-file "$dir/snapshot.yaml" \
        --service-cidr 10.96.0.0/16 "$@" >"$dir/clusterway.log" 2>&1 &
    GW_PID=$!
    local i
    for i in $(seq 100); do
        if ip -n "$GW" route get "$VIP" 2>/dev/null | grep -q ' dev cw0'; then
            TARGET=$VIP
            log "clusterway pid $GW_PID ($(cat "/proc/$GW_PID/comm")), open files limit" \
                "$(gw_nofile), $(grep -o 'max_tcp_flows=[0-9]*' "$dir/clusterway.log" \
                    || echo 'max_tcp_flows not logged')"
            return 0
        fi
        sleep 0.1
    done
    die "clusterway did not route $VIP via cw0 in 10 s; log: $(tail -20 "$dir/clusterway.log")"
}

# clusterway's proxy dataplane (offload is its default where the kernel allows).
setup_clusterway() { start_clusterway "$1" --dataplane proxy; }

# clusterway with each flow's proxy on the dataplane thread that reads its packets.
setup_workers() { start_clusterway "$1" --dataplane proxy --proxy-on-workers; }

# clusterway with flow offload: the first packet of each flow crosses the TUN device, the
# kernel's connection tracking carries the rest (it logs the dataplane it ended up with).
setup_offload() {
    start_clusterway "$1" --dataplane offload
    grep -q 'dataplane: offload' "$1/clusterway.log" \
        || die "offload: the gateway did not take the offload dataplane: $(grep dataplane "$1/clusterway.log")"
}

# --- measurements ----------------------------------------------------------------------------
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES"; }

# CPU counters now: "<wall ns> <machine busy ticks> <gateway process ticks>". Busy is every
# CPU state but idle and iowait from /proc/stat (user nice system irq softirq steal; guest
# time is already inside user), summed over all cores: the kernel paths do their work in
# softirq, so this is the figure that compares all paths. The process figure is
# utime + stime of the gateway process (all its threads) from /proc/<pid>/stat, 0 if none.
cpu_snap() {
    local cpu u n sy idle io irq sirq st rest stat f proc=0
    read -r cpu u n sy idle io irq sirq st rest </proc/stat
    if [ -n "${GW_PID:-}" ] && stat=$(<"/proc/$GW_PID/stat"); then
        # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
        read -r -a f <<<"${stat##*) }"
        proc=$((f[11] + f[12]))
    fi
    echo "$(date +%s%N) $((u + n + sy + irq + sirq + st)) $proc"
}

# Cores busy between two cpu_snap outputs: "<machine cores> <process cores>".
cpu_cores() { # before after
    awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" 'BEGIN {
        split(a, x, " "); split(b, y, " "); wall = (y[1] - x[1]) / 1e9
        printf "%.4f %.4f\n", (y[2] - x[2]) / hz / wall, (y[3] - x[3]) / hz / wall }'
}

iperf_gbps() { # streams
    local json
    json=$(ip netns exec "$CL" iperf3 -c "$TARGET" -p 5201 -t "$DUR" -P "$1" -J) \
        || { log "iperf3 -P $1 failed"; return 1; }
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)' \
        <<<"$json"
}

wrk_rps() { # extra wrk args...
    local out
    out=$(ip netns exec "$CL" wrk -c 50 -t 2 -d "${DUR}s" "$@" "http://$TARGET/") \
        || { log "wrk failed"; return 1; }
    if grep -qE 'Socket errors|Non-2xx' <<<"$out"; then
        log "wrk reported errors ($*): $(grep -E 'Socket errors|Non-2xx' <<<"$out" | tr -s ' ')"
    fi
    awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}

measure() { # path rep
    local path=$1 rep=$2 v
    if ! ip netns exec "$CL" curl -fsS -m 3 "http://$TARGET/" >/dev/null; then
        log "$path: http://$TARGET/ does not answer; skipping this repetition"
        return 0
    fi
    # Load from outside this benchmark (another build on the machine) shows up in the
    # machine-wide figure below; one idle second before the run records how much there was.
    local s0 s1 cores
    s0=$(cpu_snap); sleep 1; s1=$(cpu_snap)
    cores=$(cpu_cores "$s0" "$s1")
    record "$path" cpu_bg "$rep" "${cores%% *}"
    # CPU per Gbit/s over the whole 1-stream iperf3 client run (busy cores / Gbit/s).
    if want tcp1; then
        s0=$(cpu_snap)
        if v=$(iperf_gbps 1); then
            s1=$(cpu_snap)
            cores=$(cpu_cores "$s0" "$s1")
            record "$path" tcp1 "$rep" "$v"
            record "$path" cpu_machine "$rep" "$(awk -v c="${cores%% *}" -v g="$v" \
                'BEGIN {printf "%.4f", c / g}')"
            if [ -n "$GW_PID" ]; then
                record "$path" cpu_gw "$rep" "$(awk -v c="${cores#* }" -v g="$v" \
                    'BEGIN {printf "%.4f", c / g}')"
            fi
            log "$path: 1 stream $(printf %.2f "$v") Gbit/s, busy cores machine/gateway: $cores"
        fi
        sleep 0.5
    fi
    # HAProxy: check halfway through the 4-stream run that it really splices.
    if want tcp4; then
        local probe=
        if [ "$path" = haproxy ]; then
            (sleep "$(awk -v d="$DUR" 'BEGIN {print d / 2}')"
             log "haproxy during 4 streams: $(haproxy_pipes "$OUT/$path-$rep")") &
            probe=$!
        fi
        v=$(iperf_gbps 4) && record "$path" tcp4 "$rep" "$v"
        [ -z "$probe" ] || wait "$probe" || true
        sleep 0.5
    fi
    if want rtt; then
        v=$(ip netns exec "$CL" python3 "$HERE/rtt.py" "$TARGET" 80 "$DUR") && {
            record "$path" rtt_p50 "$rep" "${v%% *}"
            v=${v#* }
            record "$path" rtt_p99 "$rep" "${v%% *}"
        }
    fi
    if want http_ka; then
        v=$(wrk_rps) && record "$path" http_ka "$rep" "$v"
    fi
    # Last: it leaves TIME_WAIT sockets behind (the namespaces are rebuilt next).
    want http_close || return 0
    v=$(wrk_rps -H 'Connection: close') && record "$path" http_close "$rep" "$v"
}

# Resident memory of the gateway process, KiB.
gw_rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status"; }

established() { # ns [ss filter] -> number of established TCP sockets
    ip netns exec "$1" ss -Htn state established ${2:+"$2"} | wc -l
}

# IDLE_FLOWS concurrent idle connections through the gateway (bench/idle.py in the client
# namespace): the gateway's RSS before opening them, with all open and idle, and after they
# are closed. Each flow is checked end to end by one HTTP request/response on it, and the
# pod must count them all as established.
measure_idle() { # path rep dir
    local path=$1 rep=$2 dir=$3 n=$IDLE_FLOWS line="" cpid i rc=0 ports
    local before during after ok failed took pod still lo hi
    if ! ip netns exec "$CL" curl -fsS -m 3 "http://$TARGET/" >/dev/null; then
        log "$path idle: http://$TARGET/ does not answer; skipping this repetition"
        return 0
    fi
    # More flows than one process holds: one client process per extra address of the client.
    local procs=$(((n + FLOWS_PER_PROC - 1) / FLOWS_PER_PROC)) split=() sources="" ctmax
    if [ "$procs" -gt 1 ]; then
        for i in $(seq "$procs"); do
            ip -n "$CL" addr add "192.168.77.$((100 + i))/24" dev eth0
            sources+="${sources:+,}192.168.77.$((100 + i))"
        done
        split=(--sources "$sources")
    fi
    ports=$(ip netns exec "$CL" sysctl -n net.ipv4.ip_local_port_range)
    read -r lo hi <<<"$ports"
    ((hi - lo + 1 >= (n + procs - 1) / procs)) \
        || die "client port range $ports is too small for $n flows from $procs addresses"
    # The kernel's conntrack table must hold them (offload; read-only in a namespace).
    ctmax=$(ip netns exec "$GW" sysctl -n net.netfilter.nf_conntrack_max 2>/dev/null || echo 0)
    log "$path idle: $n flows from $procs client process(es); gateway nf_conntrack_max $ctmax"
    sleep 1
    before=$(gw_rss_kib)
    ip netns exec "$CL" python3 "$HERE/idle.py" "$TARGET" 80 "$n" "${split[@]}" \
        >"$dir/idle.log" 2>&1 &
    cpid=$!
    for i in $(seq $((600 + n / 10))); do # 0.1 s steps: 60 s + 10 ms per flow at most
        line=$(grep -m1 '^open ' "$dir/idle.log" || true)
        [ -n "$line" ] && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$line" ]; then
        log "$path idle: the client did not report its connections: $(tail -5 "$dir/idle.log")"
        kill "$cpid" 2>/dev/null || true
        wait "$cpid" 2>/dev/null || true
        return 0
    fi
    sleep 2 # let the gateway settle (lazily allocated state, housekeeping)
    during=$(gw_rss_kib)
    pod=$(established "$POD" '( sport = :80 )')
    ok=$(sed -E 's/.* ok=([0-9]+).*/\1/' <<<"$line")
    failed=$(sed -E 's/.* failed=([0-9]+).*/\1/' <<<"$line")
    took=$(sed -E 's/.* seconds=([0-9.]+).*/\1/' <<<"$line")
    kill -USR1 "$cpid"
    wait "$cpid" || rc=$?
    still=$(sed -nE 's/^closed still_open=([0-9]+)/\1/p' "$dir/idle.log")
    [ "$rc" -eq 0 ] || log "$path idle: client exited with $rc: $(tail -3 "$dir/idle.log")"
    # After: wait until both legs are gone from the gateway and the pod, then a little more
    # for the gateway's own housekeeping (clusterway expires closed flows every second).
    for i in $(seq 200); do
        [ "$(established "$GW")" -eq 0 ] && [ "$(established "$POD")" -eq 0 ] && break
        sleep 0.1
    done
    sleep 3
    after=$(gw_rss_kib)
    record "$path" idle_n "$rep" "$n"
    record "$path" idle_ok "$rep" "$ok"
    record "$path" idle_pod "$rep" "$pod"
    record "$path" idle_still "$rep" "${still:-0}"
    record "$path" rss_before "$rep" "$(awk -v k="$before" 'BEGIN {printf "%.1f", k / 1024}')"
    record "$path" rss_during "$rep" "$(awk -v k="$during" 'BEGIN {printf "%.1f", k / 1024}')"
    record "$path" rss_after "$rep" "$(awk -v k="$after" 'BEGIN {printf "%.1f", k / 1024}')"
    # Per flow verified (normally all of them; fewer is reported as a warning).
    record "$path" rss_per_flow "$rep" \
        "$(awk -v a="$before" -v b="$during" -v n="$ok" \
            'BEGIN {printf "%.2f", n ? (b - a) / n : 0}')"
    log "$path idle: $ok/$n verified ($failed failed, opened in ${took}s), pod counts $pod," \
        "${still:-?} still open at close; RSS KiB before/during/after: $before/$during/$after"
    if [ "$ok" -ne "$n" ] || [ "$pod" -lt "$n" ] || [ "${still:-0}" -ne "$ok" ]; then
        log "$path idle: WARNING: not all $n flows were established and held: $line"
    fi
}

# --- main ------------------------------------------------------------------------------------
run_paths=()
for path in $PATHS; do
    case $path in
    route | dnat | haproxy) run_paths+=("$path") ;;
    tunnat)
        if [ -x "$TUN_NAT" ]; then
            run_paths+=("$path")
        else
            log "SKIPPING tunnat: $TUN_NAT missing (build it with:" \
                "cargo build --release --example tun_nat)"
        fi
        ;;
    clusterway | workers | offload)
        if clusterway_available; then
            run_paths+=("$path")
        else
            log "SKIPPING clusterway: $CLUSTERWAY missing or has no 'run' subcommand" \
                "(build it with: cargo build --release)"
        fi
        ;;
    *) die "unknown path '$path' (route dnat haproxy tunnat clusterway workers offload)" ;;
    esac
done
# Idle-flow runs: only gateways that are a process (RSS), and only paths selected above.
idle_paths=()
if [ "$IDLE_FLOWS" -gt 0 ]; then
    for path in $IDLE_PATHS; do
        case $path in
        haproxy | clusterway | workers | offload)
            if [[ " ${run_paths[*]} " == *" $path "* ]]; then idle_paths+=("$path"); fi ;;
        *) die "IDLE_PATHS: '$path' is not a gateway process (haproxy clusterway workers offload)" ;;
        esac
    done
fi

for rep in $(seq "$REPS"); do
    for path in "${run_paths[@]}"; do
        dir="$OUT/$path-$rep"
        mkdir -p "$dir"
        log "rep $rep/$REPS: $path"
        ns_up
        start_pod_servers "$dir"
        "setup_$path" "$dir"
        measure "$path" "$rep"
        ns_down
    done
    # Interleaved like the rest: fresh namespaces per (path, repetition).
    for path in "${idle_paths[@]}"; do
        # A terminating proxy holds 2 descriptors per flow: past half the limit it cannot.
        if [ "$path" != offload ] && [ "$IDLE_FLOWS" -gt $((FLOWS_PER_PROC / 2)) ]; then
            log "SKIPPING $path idle: $IDLE_FLOWS flows need 2 descriptors each in the" \
                "gateway, more than RLIMIT_NOFILE $(ulimit -n) allows"
            continue
        fi
        dir="$OUT/$path-idle-$rep"
        mkdir -p "$dir"
        log "rep $rep/$REPS: $path, $IDLE_FLOWS idle flows"
        ns_up
        # The gateway's source NAT gives each endpoint address one port range (1024-65535)
        # of flows from its one address: past ~60,000 flows, more addresses on the pod
        # (extra endpoints of the Service, the same nginx).
        EXTRA_POD_IPS=""
        for i in $(seq 2 $(((IDLE_FLOWS + 59999) / 60000))); do
            EXTRA_POD_IPS+=" 10.244.1.$((9 + i))"
            ip -n "$POD" addr add "10.244.1.$((9 + i))/24" dev eth0
        done
        start_pod_servers "$dir" idle
        "setup_$path" "$dir"
        measure_idle "$path" "$rep" "$dir"
        EXTRA_POD_IPS=""
        ns_down
    done
done

log "done; samples in $SAMPLES"
echo
python3 "$HERE/summarize.py" "$SAMPLES" | tee "$OUT/table.md"
