#!/usr/bin/env python3
"""DNS queries over UDP, each from a socket (a source port, so a flow) of its own.

    udpflows.py ADDR PORT SECONDS [WINDOW] [PER_FLOW]

Keeps WINDOW (default 64) flows outstanding, each a fresh socket that sends PER_FLOW
(default 1) queries back to back (as a resolver sends A and AAAA), for SECONDS; a flow
with a query unanswered after 1 s counts its missing answers lost and is closed. Prints one line:
`answered <n> lost <n> qps <answered per second> p50_us <n> p99_us <n>`. The query is an A
question for svc1.bench.svc.cluster.local (any answer counts: NOERROR or NXDOMAIN).
Python's own cost is the same for every path it is run against.
"""
import os
import selectors
import socket
import struct
import sys
import time


def query(qid):
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    name = b"".join(
        bytes([len(label)]) + label
        for label in b"svc1.bench.svc.cluster.local".split(b".")
    )
    return header + name + b"\x00" + struct.pack("!HH", 1, 1)


def main():
    addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    window = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    per_flow = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    sel = selectors.DefaultSelector()
    outstanding = {}
    answered = lost = 0
    latencies = []
    qid = 0
    start = time.monotonic()
    end = start + seconds

    def send():
        nonlocal qid
        qid = (qid + 1) & 0xFFFF
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((addr, port))
        for _ in range(per_flow):
            s.send(query(qid))
        outstanding[s] = [time.monotonic(), per_flow]
        sel.register(s, selectors.EVENT_READ)

    def close(s):
        sel.unregister(s)
        del outstanding[s]
        s.close()

    while time.monotonic() < end:
        while len(outstanding) < window:
            send()
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                s.recv(2048)
            except OSError:
                lost += outstanding[s][1]
                close(s)
                continue
            answered += 1
            latencies.append(time.monotonic() - outstanding[s][0])
            outstanding[s][1] -= 1
            if outstanding[s][1] == 0:
                close(s)
        now = time.monotonic()
        for s, (at, left) in list(outstanding.items()):
            if now - at > 1.0:
                lost += left
                close(s)
    elapsed = time.monotonic() - start
    latencies.sort()

    def pct(p):
        if not latencies:
            return 0
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6)

    print(
        f"answered {answered} lost {lost} qps {answered / elapsed:.0f} "
        f"p50_us {pct(0.5)} p99_us {pct(0.99)}"
    )
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
