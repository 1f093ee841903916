#!/usr/bin/env python3
"""Prints the bench table from samples.tsv (path, metric, rep, value), medians per cell,
each also as a ratio to the kernel-DNAT path. Usage: summarize.py SAMPLES.tsv"""
import statistics
import sys

PATHS = [
    ("route", "routing to pod IP"),
    ("dnat", "kernel DNAT (nft)"),
    ("haproxy", "HAProxy TCP, splice"),
    ("clusterway", "clusterway"),
]
METRICS = [
    ("tcp1", "iperf3 1 stream, Gbit/s", "higher"),
    ("tcp4", "iperf3 4 streams, Gbit/s", "higher"),
    ("http_ka", "HTTP keep-alive, req/s", "higher"),
    ("http_close", "HTTP new conn/request, req/s", "higher"),
    ("rtt_p50", "RTT p50 1 conn, us", "lower"),
    ("rtt_p99", "RTT p99 1 conn, us", "lower"),
]
BASE = "dnat"


def fmt(value, metric):
    if metric.startswith("http"):
        return f"{value / 1000:.1f}k"
    if metric.startswith("tcp"):
        return f"{value:.2f}"
    return f"{value:.0f}"


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

    header = ["metric"] + [label for _, label in paths]
    rows = []
    for metric, label, _ in METRICS:
        row = [label]
        base = medians.get((BASE, metric))
        for path, _ in paths:
            m = medians.get((path, metric))
            if m is None:
                row.append("-")
                continue
            ratio = f"{m / base:.2f}" if base else "-"
            values = samples[(path, metric)]
            spread = (max(values) - min(values)) / m * 100 if m else 0
            row.append(f"{fmt(m, metric)} ({ratio}) ±{spread:.0f}%")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    counts = {p: len(samples.get((p, "tcp1"), [])) for p, _ in paths}
    print()
    print("cells: median (ratio to kernel DNAT) ±(max-min)/median; samples per path:",
          ", ".join(f"{p}={n}" for p, n in counts.items()))
    print("throughput and req/s: higher is better; RTT: lower is better.")


if __name__ == "__main__":
    main()
