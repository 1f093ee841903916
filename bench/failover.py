#!/usr/bin/env python3
"""Helpers of bench/failover.sh.

  failover.py load HOST PORT SECONDS OUT      (in the client namespace) new connections at
      100/s, open loop, each `GET /ip` with 1 s timeouts; one line per attempt to OUT:
      start_unix_s  ok(1/0)  stage(connect|request|-)  answer
  failover.py flows HOST PORT COUNT SECONDS OUT   (in the client namespace) COUNT long-lived
      keep-alive connections opened at once, each asking `GET /ip` every 100 ms for SECONDS;
      one line per connection to OUT: gateway (the first answer)  broken_at_unix_s (or -)
      how (what the failed request saw, or -)
  failover.py watch NS PREFIX NEXTHOP SECONDS OUT   (in the host namespace, read-only) polls
      `ip -n NS route show exact PREFIX` every 5 ms; writes the first time NEXTHOP is gone
      (unix seconds), or nothing.
  failover.py summary T_EVENT T_DROP LOADFILE   prints: drop_s recover_s failed
      lost_after_connect attempts (attempts from 1 s before the event on)
  failover.py flowsummary T_EVENT GATEWAY FLOWFILE   prints: on_gateway broken_on_gateway
      on_others broken_on_others lost_after_s (long-lived connections through GATEWAY, the
      one of the event, and through the others; broken: after the event; lost_after_s: the
      median time from the event to a GATEWAY flow breaking, `-` when none did)
"""
import socket
import subprocess
import sys
import threading
import time


def attempt(host, port):
    """One new connection and `GET /ip`: (ok, stage, answer)."""
    try:
        s = socket.create_connection((host, port), timeout=1.0)
    except OSError:
        return 0, "connect", ""
    try:
        s.settimeout(1.0)
        s.sendall(b"GET /ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            return 0, "request", ""
        return 1, "-", data.split(b"\r\n\r\n", 1)[-1].strip().decode()
    except OSError:
        return 0, "request", ""
    finally:
        s.close()


def load(host, port, seconds, out):
    """Open loop: a new connection every 10 ms whether or not earlier ones finished (each
    in a thread of its own, at most 2 s), so an outage costs every connection it meets."""
    results = []
    lock = threading.Lock()

    def one(t):
        r = attempt(host, port)
        with lock:
            results.append((t,) + r)

    threads = []
    end = time.time() + seconds
    nxt = time.time()
    while time.time() < end:
        t = time.time()
        th = threading.Thread(target=one, args=(t,), daemon=True)
        th.start()
        threads.append(th)
        nxt += 0.01
        delay = nxt - time.time()
        if delay > 0:
            time.sleep(delay)
    for th in threads:
        th.join()
    with open(out, "w") as f:
        for t, ok, stage, answer in sorted(results):
            f.write(f"{t:.6f}\t{ok}\t{stage}\t{answer}\n")


def keepalive(host, port, end):
    """One long-lived connection: `GET /ip` every 100 ms until `end`. Returns (gateway,
    broken_at, how): the first answer, when a request first failed (None if none did), and
    what it saw."""
    gateway = ""
    try:
        s = socket.create_connection((host, port), timeout=1.0)
    except OSError as e:
        return gateway, time.time(), f"connect: {e}"
    s.settimeout(1.0)
    buf = b""
    try:
        while time.time() < end:
            s.sendall(b"GET /ip HTTP/1.1\r\nHost: x\r\n\r\n")
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return gateway, time.time(), "closed"
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(buf) < length:
                chunk = s.recv(4096)
                if not chunk:
                    return gateway, time.time(), "closed mid-body"
                buf += chunk
            body, buf = buf[:length], buf[length:]
            if not head.startswith(b"HTTP/1.1 200"):
                return gateway, time.time(), head.split(b"\r\n")[0].decode(errors="replace")
            gateway = gateway or body.strip().decode()
            time.sleep(0.1)
        return gateway, None, "-"
    except OSError as e:
        return gateway, time.time(), str(e) or type(e).__name__
    finally:
        s.close()


def flows(host, port, count, seconds, out):
    end = time.time() + seconds
    results = []
    lock = threading.Lock()

    def one():
        r = keepalive(host, port, end)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with open(out, "w") as f:
        for gateway, broken, how in results:
            f.write(f"{gateway or '-'}\t{'-' if broken is None else f'{broken:.6f}'}\t{how}\n")


def flowsummary(t_event, gateway, flowfile):
    on = broken_on = others = broken_others = 0
    when = []
    with open(flowfile) as f:
        for line in f:
            gw, broken = line.rstrip("\n").split("\t")[:2]
            if gw == "-":
                continue
            lost = broken != "-" and float(broken) >= t_event
            if gw == gateway:
                on += 1
                broken_on += lost
                if lost:
                    when.append(float(broken) - t_event)
            else:
                others += 1
                broken_others += lost
    when.sort()
    median = f"{when[len(when) // 2]:.3f}" if when else "-"
    print(f"{on} {broken_on} {others} {broken_others} {median}")


def watch(ns, prefix, nexthop, seconds, out):
    end = time.time() + seconds
    while time.time() < end:
        r = subprocess.run(["ip", "-n", ns, "-4", "route", "show", "exact", prefix],
                           capture_output=True, text=True)
        if f"via {nexthop} " not in r.stdout:
            with open(out, "w") as f:
                f.write(f"{time.time():.6f}\n")
            return
        time.sleep(0.005)


def summary(t_event, t_drop, loadfile):
    attempts = []
    with open(loadfile) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            attempts.append((float(parts[0]), parts[1] == "1", parts[2]))
    after = [a for a in attempts if a[0] >= t_event - 1.0]
    failed = [t for t, ok, _ in after if not ok]
    lost = sum(1 for _, ok, stage in after if not ok and stage == "request")
    # New connections succeed again: after the start of the last failed attempt (0 when
    # none failed), counted from the event.
    recover = max(0.0, max(failed) - t_event) if failed else 0.0
    drop = (t_drop - t_event) if t_drop else float("nan")
    print(f"{drop:.3f} {recover:.3f} {len(failed)} {lost} {len(after)}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "load":
        load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif cmd == "watch":
        watch(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
    elif cmd == "flows":
        flows(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
    elif cmd == "flowsummary":
        flowsummary(float(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif cmd == "summary":
        t_drop = float(sys.argv[3]) if sys.argv[3] != "-" else None
        summary(float(sys.argv[2]), t_drop, sys.argv[4])
    else:
        sys.exit(__doc__)
