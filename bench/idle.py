#!/usr/bin/env python3
"""Opens N concurrent TCP connections to an HTTP server, checks each end to end, holds them
idle, then closes them.

Usage: idle.py HOST PORT N [--concurrency C] [--timeout S] [--hold-max S] [--bind ADDR]
               [--sources ADDR,ADDR,...]

Each connection sends one `GET /` (keep-alive) and must get a complete `200` response: that
proves the flow reaches the server through whatever is in between. At most C connections
are being opened at a time (default 128), so no listen queue on the way overflows. Then it
prints one line

    open ok=<verified> failed=<n> seconds=<time to open all> errors=<reason:count,...>

and holds every connection idle until SIGUSR1 or SIGTERM (or --hold-max seconds, default
300). Before closing it counts the connections the other side has not closed meanwhile and
prints

    closed still_open=<n>

then exits 0. Everything else (including a descriptor limit too low for N) exits 1.

`--bind ADDR` opens every connection from that local address. `--sources A,B,...` splits the
N connections evenly over one child process per address (each `--bind` to its own), so that
more connections can be held than one process's descriptor limit and one address's ports
allow; the parent prints the same two lines, summed over the children (seconds: the
slowest), and passes SIGUSR1/SIGTERM on to them.
"""
import argparse
import asyncio
import collections
import resource
import signal
import subprocess
import sys
import time


async def open_one(host, port, timeout, request, bind):
    """Connects, sends one request, reads the full response; returns (reader, writer)."""
    local = (bind, 0) if bind else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=local), timeout)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise ValueError(f"status {lines[0]!r}")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ValueError("no Content-Length")
        await asyncio.wait_for(reader.readexactly(length), timeout)
        return reader, writer
    except BaseException:
        writer.close()
        raise


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--hold-max", type=float, default=300.0)
    ap.add_argument("--bind", help="local address of every connection")
    ap.add_argument("--sources", help="comma-separated local addresses, one child each")
    return ap.parse_args()


def fields(line, prefix):
    """The key=value fields of a line that starts with `prefix`, else None."""
    if not line.startswith(prefix):
        return None
    return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)


def split(args):
    """One child per source address, each holding its share of the N connections."""
    sources = [s for s in args.sources.split(",") if s]
    if not sources:
        print("idle.py: --sources names no address", file=sys.stderr)
        return 1
    children = []
    for i, src in enumerate(sources):
        n = args.n // len(sources) + (1 if i < args.n % len(sources) else 0)
        cmd = [sys.executable, __file__, args.host, str(args.port), str(n),
               "--concurrency", str(args.concurrency), "--timeout", str(args.timeout),
               "--hold-max", str(args.hold_max), "--bind", src]
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))

    def stop(*_):
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGUSR1)

    def line_of(child, prefix):
        for line in child.stdout:
            got = fields(line.strip(), prefix)
            if got is not None:
                return got
        return None  # the child ended without it

    stopped = {"done": False}

    def on_signal(*_):
        stopped["done"] = True

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, on_signal)
    ok = failed = 0
    took = 0.0
    errors = collections.Counter()
    opened = [line_of(c, "open ") for c in children]
    for got in opened:
        if got is None:
            stop()
            for c in children:
                c.wait()
            print("idle.py: a child exited before it reported its connections",
                  file=sys.stderr)
            return 1
        ok += int(got["ok"])
        failed += int(got["failed"])
        took = max(took, float(got["seconds"]))
        for e in got["errors"].split(","):
            if ":" in e:
                k, v = e.rsplit(":", 1)
                errors[k] += int(v)
    print(f"open ok={ok} failed={failed} seconds={took:.2f} errors="
          + (",".join(f"{k}:{v}" for k, v in errors.most_common()) or "-"), flush=True)
    deadline = time.monotonic() + args.hold_max
    while not stopped["done"] and time.monotonic() < deadline:
        time.sleep(0.1)
    stop()
    still = 0
    rc = 0
    for c in children:
        got = line_of(c, "closed ")
        still += int(got["still_open"]) if got else 0
        rc |= c.wait() != 0 or got is None
    print(f"closed still_open={still}", flush=True)
    return 1 if rc else 0


async def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if args.n + 64 > soft:
        print(f"idle.py: RLIMIT_NOFILE {soft} is too low for {args.n} connections",
              file=sys.stderr)
        return 1

    request = f"GET / HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode()
    gate = asyncio.Semaphore(args.concurrency)
    conns = []
    errors = collections.Counter()

    async def one():
        async with gate:
            try:
                conns.append(
                    await open_one(args.host, args.port, args.timeout, request, args.bind))
            except Exception as e:  # counted and reported, never fatal
                errno = getattr(e, "errno", None)
                errors[type(e).__name__ + (f"({errno})" if errno else "")] += 1

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.n)))
    took = time.monotonic() - start
    # The handlers first: whoever reads the line below may signal at once.
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    print(f"open ok={len(conns)} failed={sum(errors.values())} seconds={took:.2f} errors="
          + (",".join(f"{k}:{v}" for k, v in errors.most_common()) or "-"), flush=True)
    try:
        await asyncio.wait_for(done.wait(), args.hold_max)
    except asyncio.TimeoutError:
        pass

    # A connection the far side closed while idle has seen EOF (or an error) by now.
    still_open = sum(1 for r, _ in conns if not r.at_eof() and r.exception() is None)
    for _, w in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    print(f"closed still_open={still_open}", flush=True)
    return 0


if __name__ == "__main__":
    ARGS = parse_args()
    sys.exit(split(ARGS) if ARGS.sources else asyncio.run(main(ARGS)))
