#!/usr/bin/env bash
# clusterway failover: two gateways behind a router (FRR, BGP, ECMP with a layer-4 hash),
# gw1 announcing through BIRD 2 and gw2 through FRR (configs from `clusterway routes`), new
# connections at 100/s from a client. For each event — SIGKILL, link cut, SIGTERM of one
# gateway — it measures the time from the event to the router's table change, the time until
# new connections succeed again, and the failed connections; with BFD (100 ms × 3) and
# without (BGP hold time 9 s). Beside the new connections, 40 long-lived keep-alive
# connections opened before the event tell what happens to the flows the lost gateway and
# the surviving one carried. See bench/README.md, "Failover".
#
# Never touches the host namespace: links, addresses, routes, sysctls and daemons live in
# namespaces this script creates; a trap removes them on exit. Run it under the bench lock:
#   flock /tmp/clusterway-bench.lock bash bench/failover.sh
#
# Environment: RUNS (5) per event and mode, TARGET (1: gw1/BIRD, 2: gw2/FRR), EVENTS
# ("sigkill linkcut sigterm"), MODES ("bfd nobfd"), CLUSTERWAY (target/release/clusterway),
# OUT (bench/results/failover-<date>).
set -euo pipefail

RUNS=${RUNS:-5}
TARGET=${TARGET:-1}
EVENTS=${EVENTS:-"sigkill linkcut sigterm"}
MODES=${MODES:-"bfd nobfd"}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CLUSTERWAY=${CLUSTERWAY:-$REPO/target/release/clusterway}
OUT=${OUT:-$HERE/results/failover-$(date +%Y%m%d-%H%M%S)}
P="cwf$$"
PREFIX=10.96.0.0/16
RT_UP=(10.11.1.1 10.11.2.1)
GW_UP=(10.11.1.2 10.11.2.2)

log() { printf '%s failover: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (it creates network namespaces)"
command -v bird >/dev/null || die "bird is missing: apt-get install bird2"
[ -x /usr/lib/frr/bgpd ] || die "FRR is missing: apt-get install frr"
[ -x "$CLUSTERWAY" ] || die "$CLUSTERWAY is missing: cargo build --release"
mkdir -p "$OUT"
RUN=$(mktemp -d /tmp/clusterway-failover.XXXXXX)
chmod 755 "$RUN"

cleanup() {
    for ns in cl rt g1 g2 pd; do
        for pid in $(ip netns pids "$P-$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$P-$ns" 2>/dev/null || true
    done
    rm -rf "$RUN"
}
trap cleanup EXIT

topology() {
    for ns in cl rt g1 g2 pd; do ip netns add "$P-$ns"; ip -n "$P-$ns" link set lo up; done
    link() { # ns1 if1 addr1 ns2 if2 addr2
        ip -n "$P-$1" link add "$2" type veth peer name "$5" netns "$P-$4"
        ip -n "$P-$1" addr add "$3" dev "$2"; ip -n "$P-$4" addr add "$6" dev "$5"
        ip -n "$P-$1" link set dev "$2" up; ip -n "$P-$4" link set dev "$5" up
    }
    link cl eth0 10.10.0.2/24 rt cl 10.10.0.1/24
    link rt g1 10.11.1.1/24 g1 uplink 10.11.1.2/24
    link rt g2 10.11.2.1/24 g2 uplink 10.11.2.2/24
    link g1 pd 10.12.1.1/24 pd g1 10.12.1.2/24
    link g2 pd 10.12.2.1/24 pd g2 10.12.2.2/24
    ip -n "$P-cl" route add default via 10.10.0.1
    for k in 1 2; do
        ip -n "$P-g$k" route add default via "${RT_UP[$((k-1))]}"
        ip -n "$P-g$k" route add 10.244.0.0/16 via "10.12.$k.2"
        ip netns exec "$P-g$k" sysctl -qw net.ipv4.ip_forward=1
    done
    ip -n "$P-pd" addr add 10.244.0.10/32 dev lo
    ip netns exec "$P-rt" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1
    cat >"$RUN/snapshot.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: web, namespace: fleet}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: fleet, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.244.0.10]
  conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
EOF
    ip netns exec "$P-pd" "$CLUSTERWAY" demo-backend --name pod --http 10.244.0.10:8080 \
        >"$RUN/backend.log" 2>&1 &
}

frr_start() { # ns dir
    local ns=$1 d=$2
    chmod 777 "$d"; chmod 644 "$d/frr.conf"
    ip netns exec "$ns" /usr/lib/frr/zebra -f "$d/frr.conf" -i "$d/zebra.pid" -z "$d/zserv.api" \
        --vty_socket "$d" -P 0 -u frr -g frr --log "file:$d/zebra.log" >/dev/null 2>&1 &
    for _ in $(seq 100); do [ -S "$d/zserv.api" ] && break; sleep 0.05; done
    ip netns exec "$ns" /usr/lib/frr/bfdd -f "$d/frr.conf" -i "$d/bfdd.pid" -z "$d/zserv.api" \
        --vty_socket "$d" -P 0 -u frr -g frr --bfdctl "$d/bfdd.sock" --log "file:$d/bfdd.log" >/dev/null 2>&1 &
    ip netns exec "$ns" /usr/lib/frr/bgpd -f "$d/frr.conf" -i "$d/bgpd.pid" -z "$d/zserv.api" \
        --vty_socket "$d" -P 0 -u frr -g frr --log "file:$d/bgpd.log" >/dev/null 2>&1 &
}

daemons() { # bfd|nobfd
    local bfd=() rbfd="" n=""
    if [ "$1" = bfd ]; then
        bfd=(--bfd --bfd-interval 100ms --bfd-multiplier 3)
        rbfd=$'bfd\n profile fleet\n  detect-multiplier 3\n  receive-interval 100\n  transmit-interval 100\n !\n!\n'
    fi
    for g in "${GW_UP[@]}"; do
        n+=" neighbor $g remote-as 65010"$'\n'" neighbor $g timers 3 9"$'\n'" neighbor $g timers connect 5"$'\n'
        [ "$1" = bfd ] && n+=" neighbor $g bfd profile fleet"$'\n'
    done
    mkdir -p "$RUN/rt" "$RUN/g1" "$RUN/g2"
    printf 'hostname router\n!\n%srouter bgp 65000\n bgp router-id 10.10.0.1\n no bgp ebgp-requires-policy\n%s address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n' \
        "$rbfd" "$n" >"$RUN/rt/frr.conf"
    frr_start "$P-rt" "$RUN/rt"
    "$CLUSTERWAY" routes --format bird-bgp --peer "${RT_UP[0]}" --peer-as 65000 --local-as 65010 \
        --router-id "${GW_UP[0]}" "${bfd[@]}" >"$RUN/g1/bird.conf"
    ip netns exec "$P-g1" bird -f -c "$RUN/g1/bird.conf" -s "$RUN/g1/bird.ctl" -P "$RUN/g1/bird.pid" \
        >"$RUN/g1/bird.log" 2>&1 &
    "$CLUSTERWAY" routes --format frr-bgp --peer "${RT_UP[1]}" --peer-as 65000 --local-as 65010 \
        --router-id "${GW_UP[1]}" "${bfd[@]}" >"$RUN/g2/frr.conf"
    frr_start "$P-g2" "$RUN/g2"
}

stop_daemons() {
    for d in rt g2; do for f in bgpd bfdd zebra; do
        [ -f "$RUN/$d/$f.pid" ] && kill "$(cat "$RUN/$d/$f.pid")" 2>/dev/null || true
    done; done
    [ -f "$RUN/g1/bird.pid" ] && kill "$(cat "$RUN/g1/bird.pid")" 2>/dev/null || true
    sleep 1
    rm -rf "$RUN/rt" "$RUN/g1" "$RUN/g2"
}

declare -a GWPID=(0 0)
gw_start() { # k
    local k=$1
    ip netns exec "$P-g$k" "$CLUSTERWAY" run --from-file "$RUN/snapshot.yaml" --service-cidr "$PREFIX" \
        --drain-timeout 3s >>"$RUN/gw$k.log" 2>&1 &
    GWPID[$k]=$!
}
gw_stop() { # k (immediate)
    # SIGTERM, not SIGINT: a background job of a script starts with SIGINT ignored, and a
    # gateway started a moment ago may not have its handler yet (it would never stop).
    # A second SIGTERM skips the drain; SIGKILL after 10 s.
    local k=$1 pid=${GWPID[$1]}
    if [ "$pid" != 0 ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"; sleep 0.2; kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    GWPID[$k]=0
}
both() { [ "$(ip -n "$P-rt" -4 route show exact "$PREFIX" | grep -c ' via ')" = 2 ]; }
wait_both() {
    for _ in $(seq 600); do both && return 0; sleep 0.1; done
    die "the router did not learn $PREFIX from both gateways; see $RUN"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

topology
RESULTS="$OUT/runs.tsv"
printf 'mode\tevent\trun\tdrop_s\trecover_s\tfailed\tlost_after_connect\tattempts\tflows_on_gw\tflows_lost_on_gw\tflows_on_others\tflows_broken_on_others\tflows_lost_after_s\n' >"$RESULTS"
k=$TARGET
for mode in $MODES; do
    log "mode $mode: starting the daemons"
    daemons "$mode"
    gw_start 1; gw_start 2
    wait_both
    for event in $EVENTS; do
        for run in $(seq "$RUNS"); do
            wait_both; sleep 1
            # Without BFD a cut link is noticed only after the hold time (9 s).
            secs=8; [ "$mode/$event" = nobfd/linkcut ] && secs=16
            ip netns exec "$P-cl" python3 "$HERE/failover.py" load 10.96.0.10 80 "$secs" "$RUN/load.tsv" &
            load=$!
            ip netns exec "$P-cl" python3 "$HERE/failover.py" flows 10.96.0.10 80 40 "$secs" "$RUN/flows.tsv" &
            flows=$!
            sleep 2
            rm -f "$RUN/drop"
            python3 "$HERE/failover.py" watch "$P-rt" "$PREFIX" "${GW_UP[$((k-1))]}" 20 "$RUN/drop" &
            watch=$!
            t_event=$(date +%s.%N)
            case $event in
                sigkill) kill -KILL "${GWPID[$k]}" ;;
                sigterm) kill -TERM "${GWPID[$k]}" ;;
                linkcut) ip -n "$P-g$k" addr del "${GW_UP[$((k-1))]}/24" dev uplink ;;
            esac
            wait "$load" || true
            wait "$flows" || true
            wait "$watch" || true
            t_drop=$(cat "$RUN/drop" 2>/dev/null || echo -)
            read -r drop recover failed lost attempts < <(python3 "$HERE/failover.py" summary "$t_event" "$t_drop" "$RUN/load.tsv")
            cp "$RUN/flows.tsv" "$OUT/flows-$mode-$event-$run.tsv"
            read -r f_on f_lost f_others f_broken f_when < <(python3 "$HERE/failover.py" flowsummary "$t_event" "10.12.$k.1" "$RUN/flows.tsv")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$event" "$run" "$drop" "$recover" "$failed" "$lost" "$attempts" \
                "$f_on" "$f_lost" "$f_others" "$f_broken" "$f_when" | tee -a "$RESULTS" >&2
            # Restore the gateway.
            case $event in
                sigkill|sigterm) wait "${GWPID[$k]}" 2>/dev/null || true; GWPID[$k]=0; gw_start "$k" ;;
                linkcut)
                    ip -n "$P-g$k" addr add "${GW_UP[$((k-1))]}/24" dev uplink
                    ip -n "$P-g$k" route replace default via "${RT_UP[$((k-1))]}" ;;
            esac
        done
    done
    gw_stop 1; gw_stop 2
    stop_daemons
done

{
    printf '| mode | event | router drops the gateway (median) | new connections succeed again (median) | failed connections per event (median) | of which lost after connecting | long-lived flows lost on the gateway (all runs) | lost after (median) | broken on the survivor (all runs) | runs |\n|---|---|---|---|---|---|---|---|---|---|\n'
    for mode in $MODES; do for event in $EVENTS; do
        sel() { awk -F'\t' -v m="$mode" -v e="$event" -v c="$1" 'NR>1 && $1==m && $2==e {print $c}' "$RESULTS"; }
        sum() { sel "$1" | awk '{s+=$1} END {print s+0}'; }
        printf '| %s | %s | %s s | %s s | %s | %s | %s/%s | %s s | %s/%s | %s |\n' "$mode" "$event" \
            "$(sel 4 | median)" "$(sel 5 | median)" "$(sel 6 | median)" "$(sel 7 | median)" \
            "$(sum 10)" "$(sum 9)" "$(sel 13 | grep -vx -- - | median)" "$(sum 12)" "$(sum 11)" "$(sel 3 | wc -l)"
    done; done
} | tee "$OUT/summary.md"
log "results in $OUT"
