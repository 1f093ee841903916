#!/usr/bin/env python3
"""Opens N concurrent TCP connections to an HTTP server, checks each end to end, holds them
idle, then closes them.

Usage: idle.py HOST PORT N [--concurrency C] [--timeout S] [--hold-max S]

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
"""
import argparse
import asyncio
import collections
import resource
import signal
import sys
import time


async def open_one(host, port, timeout, request):
    """Connects, sends one request, reads the full response; returns (reader, writer)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
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


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--hold-max", type=float, default=300.0)
    args = ap.parse_args()

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
                conns.append(await open_one(args.host, args.port, args.timeout, request))
            except Exception as e:  # counted and reported, never fatal
                errno = getattr(e, "errno", None)
                errors[type(e).__name__ + (f"({errno})" if errno else "")] += 1

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.n)))
    took = time.monotonic() - start
    print(f"open ok={len(conns)} failed={sum(errors.values())} seconds={took:.2f} errors="
          + (",".join(f"{k}:{v}" for k, v in errors.most_common()) or "-"), flush=True)

    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
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
    sys.exit(asyncio.run(main()))
