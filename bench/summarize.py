#!/usr/bin/env python3
"""Prints the bench table from samples.tsv (path, metric, rep, value), medians per cell.
Throughput, req/s, RTT and machine CPU per Gbit/s are also given as a ratio to the
kernel-DNAT path; metrics only a gateway process has (its CPU, its memory) are not.
With the route, tunnat and haproxy paths in the run, a second table brackets what a TUN
leg in front of a terminating proxy can reach (see REACH).
Usage: summarize.py SAMPLES.tsv"""
import statistics
import sys

PATHS = [
    ("route", "routing to pod IP"),
    ("dnat", "kernel DNAT (nft)"),
    ("haproxy", "HAProxy TCP, splice"),
    ("tunnat", "TUN 1:1 NAT alone"),
    ("clusterway", "clusterway"),
    ("workers", "clusterway --proxy-on-workers"),
    ("offload", "clusterway --dataplane offload"),
]
# (metric, label, better, ratio to DNAT?, format)
METRICS = [
    ("tcp1", "iperf3 1 stream, Gbit/s", "higher", True, "{:.2f}"),
    ("tcp4", "iperf3 4 streams, Gbit/s", "higher", True, "{:.2f}"),
    ("http_ka", "HTTP keep-alive, req/s", "higher", True, "k"),
    ("http_close", "HTTP new conn/request, req/s", "higher", True, "k"),
    ("rtt_p50", "RTT p50 1 conn, us", "lower", True, "{:.0f}"),
    ("rtt_p99", "RTT p99 1 conn, us", "lower", True, "{:.0f}"),
    ("cpu_machine", "machine CPU per Gbit/s, cores (1 stream)", "lower", True, "{:.3f}"),
    ("cpu_gw", "gateway process CPU per Gbit/s, cores", "lower", False, "{:.3f}"),
    ("cpu_bg", "machine busy before the run, cores", "lower", False, "{:.2f}"),
    ("idle_ok", "{n} idle flows: verified end to end", "higher", False, "{:.0f}"),
    ("rss_before", "gateway RSS before, MiB", "lower", False, "{:.1f}"),
    ("rss_during", "gateway RSS, {n} flows open, MiB", "lower", False, "{:.1f}"),
    ("rss_after", "gateway RSS after closing, MiB", "lower", False, "{:.1f}"),
    ("rss_per_flow", "RSS per idle flow, KiB", "lower", False, "{:.1f}"),
]
BASE = "dnat"
# What clusterway's packet path can reach: it is a terminating proxy (the kernel terminates
# the client's TCP, a second connection to the pod, splice -- what HAProxy does) behind a TUN
# leg (every packet routed into the device, read, rewritten, written back -- what tunnat
# does), on the cores the load runs on. Two brackets from the references of the same run:
# - costs add (nothing overlaps): the cost of a unit is 1/rate and each reference pays plain
#   routing's once, so 1/rate = 1/tunnat + 1/haproxy - 1/route;
# - the slower leg (the two legs overlap perfectly): min(tunnat, haproxy). The whole path
#   does all the work of either leg and more, on the same cores.
# (metric, label, target as a ratio to DNAT)
REACH = [
    ("tcp1", "iperf3 1 stream", 0.65),
    ("tcp4", "iperf3 4 streams", 0.50),
    ("http_ka", "HTTP keep-alive", 0.65),
    ("http_close", "HTTP new conn/request", 0.80),
]


def fmt(value, spec):
    if spec == "k":
        return f"{value / 1000:.1f}k"
    return spec.format(value)


def main():
    samples = {}
    with open(sys.argv[1]) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            path, metric, _rep, value = parts
            samples.setdefault((path, metric), []).append(float(value))
    paths = [p for p in PATHS if any(k[0] == p[0] for k in samples)]
    medians = {k: statistics.median(v) for k, v in samples.items()}
    idle_n = {int(v) for (p, m), vs in samples.items() if m == "idle_n" for v in vs}
    n_label = "/".join(str(n) for n in sorted(idle_n)) or "N"

    header = ["metric"] + [label for _, label in paths]
    rows = []
    for metric, label, _, with_ratio, spec in METRICS:
        if not any((p, metric) in samples for p, _ in paths):
            continue
        row = [label.format(n=n_label)]
        base = medians.get((BASE, metric))
        for path, _ in paths:
            m = medians.get((path, metric))
            if m is None:
                row.append("-")
                continue
            values = samples[(path, metric)]
            spread = (max(values) - min(values)) / m * 100 if m else 0
            ratio = ""
            if with_ratio:
                ratio = f" ({m / base:.2f})" if base else " (-)"
            row.append(f"{fmt(m, spec)}{ratio} ±{spread:.0f}%")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))

    # Repetitions measured: every repetition records cpu_bg, whatever FIGURES chose.
    counts = {p: len(samples.get((p, "cpu_bg"), [])) for p, _ in paths}
    idle_counts = {p: len(samples.get((p, "idle_ok"), [])) for p, _ in paths}
    print()
    print("cells: median (ratio to kernel DNAT, where given) ±(max-min)/median; samples per path:",
          ", ".join(f"{p}={n}" for p, n in counts.items()))
    if any(idle_counts.values()):
        print("idle-flow samples per path:",
              ", ".join(f"{p}={n}" for p, n in idle_counts.items() if n))
    print("throughput and req/s: higher is better; RTT and CPU per Gbit/s: lower is better.")
    if any(m == "cpu_machine" for _, m in samples):
        print("CPU per Gbit/s = busy cores during the 1-stream iperf3 run / its Gbit/s. Machine:"
              " all cores, everything on it (iperf3 both ends, softirq, and any other load --"
              " see 'machine busy before the run'); gateway process: utime+stime of HAProxy or"
              " clusterway only.")
    bg = [v for (p, m), vs in samples.items() if m == "cpu_bg" for v in vs]
    if bg and statistics.median(bg) > 0.25:
        print(f"WARNING: the machine was already busy before the runs (median"
              f" {statistics.median(bg):.2f} cores of other load): the machine-wide CPU per"
              " Gbit/s counts that load too; with the cores saturated it is close to"
              " cores / Gbit/s, i.e. it mostly restates throughput.")
    hp = medians.get(("haproxy", "cpu_gw"))
    for path, label in paths:
        cw = medians.get((path, "cpu_gw"))
        if hp and cw and path != "haproxy":
            print(f"gateway process CPU per Gbit/s, {label} / HAProxy: {cw / hp:.2f}")
    for path, label in paths:
        ok, n = medians.get((path, "idle_ok")), medians.get((path, "idle_n"))
        pod, still = medians.get((path, "idle_pod")), medians.get((path, "idle_still"))
        if ok is None:
            continue
        if min(samples[(path, "idle_ok")]) < n or min(samples[(path, "idle_pod")]) < n \
                or min(samples[(path, "idle_still")]) < min(samples[(path, "idle_ok")]):
            print(f"WARNING {label}: not every idle flow was established and held in every"
                  f" repetition (verified {samples[(path, 'idle_ok')]}, counted at the pod"
                  f" {samples[(path, 'idle_pod')]}, still open at close"
                  f" {samples[(path, 'idle_still')]}, of {n:.0f})")
    d, b = medians.get(("clusterway", "rss_during")), medians.get(("clusterway", "rss_before"))
    if d is not None:
        print(f"clusterway with {n_label} idle flows: RSS {d:.1f} MiB, of which the flows added"
              f" {d - b:.1f} MiB (target: <= 80 MB for 8,000 flows).")
    reach(medians, [p for p, _ in paths])


def reach(medians, paths):
    """The second table: ratios to DNAT of the TUN leg alone, HAProxy, the two brackets
    (REACH), clusterway's paths, and the target."""
    gateways = [(p, l) for p, l in PATHS if p in ("clusterway", "workers") and p in paths]
    header = ["figure (ratio to DNAT)", "TUN leg alone", "HAProxy alone", "costs add",
              "slower leg"]
    header += [label for _, label in gateways] + ["target"]
    rows = []
    for metric, label, target in REACH:
        m = {p: medians.get((p, metric)) for p in ("route", "dnat", "tunnat", "haproxy")}
        if any(v is None or v <= 0 for v in m.values()):
            continue
        inverse = 1 / m["tunnat"] + 1 / m["haproxy"] - 1 / m["route"]
        if inverse <= 0:
            continue
        row = [label] + [f"{v / m['dnat']:.2f}" for v in
                         (m["tunnat"], m["haproxy"], 1 / inverse, min(m["tunnat"], m["haproxy"]))]
        for p, _ in gateways:
            v = medians.get((p, metric))
            row.append("-" if v is None else f"{v / m['dnat']:.2f}")
        rows.append(row + [f">= {target:.2f}"])
    if not rows:
        return
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print()
    print("What a TUN leg in front of a terminating proxy (clusterway's packet path) can reach"
          " here, bracketed by the references of this run: 'costs add' if nothing overlaps"
          " (1/rate = 1/tunnat + 1/haproxy - 1/route), 'slower leg' if the legs overlap"
          " perfectly (min(tunnat, haproxy)):")
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
