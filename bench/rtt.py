#!/usr/bin/env python3
"""Unloaded HTTP round trip over ONE keep-alive TCP connection.

Usage: rtt.py HOST PORT [SECONDS]

Sends `GET /` and waits for the complete response, back to back, for SECONDS (default 5)
after 200 warm-up requests; prints `p50_us p99_us count` on one line. The figure includes
this script's own overhead (the same for every path), so compare paths, not absolutes.
"""
import socket
import sys
import time


def read_response(sock, buf):
    """Reads one response with a Content-Length; returns the leftover bytes."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed while reading the head")
        buf += chunk
    head = buf[:end].decode("latin-1")
    length = None
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("response without Content-Length: " + head.splitlines()[0])
    total = end + 4 + length
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed while reading the body")
        buf += chunk
    return buf[total:]


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    buf = b""
    for _ in range(200):
        sock.sendall(request)
        buf = read_response(sock, buf)
    samples = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    while True:
        start = clock()
        if start >= deadline:
            break
        sock.sendall(request)
        buf = read_response(sock, buf)
        samples.append(clock() - start)
    sock.close()
    samples.sort()
    n = len(samples)
    p50 = samples[n // 2] / 1000
    p99 = samples[min(n - 1, (n * 99) // 100)] / 1000
    print(f"{p50:.1f} {p99:.1f} {n}")


if __name__ == "__main__":
    main()
