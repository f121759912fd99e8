"""The load generator: N keep-alive HTTP/1.1 connections, each sending its next request when the last answer is in.

Run as its own process (``python -m bench.loadgen URL --duration 5 --connections 16``) so it
does not share a core with the server; prints one JSON object on stdout. A closed-loop
generator like ``wrk``: every connection has at most one request in flight, and
latency is measured from writing the request to reading the whole response.

Two clients, same loop and same accounting:

* ``raw`` (default): asyncio streams sending one pre-built request and reading the
  status line, headers and a ``Content-Length`` body. About 30 µs of client CPU per
  request, so one core can load a Python server harder than it can answer.
* ``httpx``: one ``httpx.AsyncClient`` with a keep-alive pool of N connections. It costs
  several hundred µs of client CPU per request, about what the server spends, so it
  saturates first and hides the server's differences (``bench/README.md``).

``--burst N`` instead opens N connections, sends one request on each at once and reports
each request's latency (the cold-burst bench).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from bench.stats import percentile

# A closed loop needs a few connections per core of the server to keep it busy
# while the client is between requests; wrk's own examples use more.
DEFAULT_CONNECTIONS = 16


@dataclass
class LoadResult:
    """What one run measured. Latencies are in milliseconds."""

    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)


def _request_bytes(url: str, headers: Sequence[tuple[str, str]]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Accept: */*", "User-Agent: bench.loadgen"]
    lines += [f"{name}: {value}" for name, value in headers]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    else:
        raise ValueError("response without Content-Length")
    if length:
        await reader.readexactly(length)
    return status


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.errors = 0

    def record(self, status: int, started: float, ended: float) -> None:
        self.latencies.append((ended - started) * 1000)
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if status != 200:
            self.errors += 1

    def result(self, seconds: float) -> LoadResult:
        count = len(self.latencies)
        return LoadResult(
            requests=count,
            errors=self.errors,
            seconds=round(seconds, 3),
            rps=round(count / seconds, 1) if seconds > 0 else 0.0,
            p50_ms=round(percentile(self.latencies, 50), 3),
            p99_ms=round(percentile(self.latencies, 99), 3),
            statuses=self.statuses,
        )


async def _httpx_connection(client: object, url: str, headers: dict[str, str], deadline: float, tally: _Tally) -> None:
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    clock = time.perf_counter
    while clock() < deadline:
        started = clock()
        response = await client.get(url, headers=headers)
        tally.record(response.status_code, started, clock())


async def run_load(
    url: str,
    *,
    duration_s: float,
    connections: int = DEFAULT_CONNECTIONS,
    headers: Sequence[tuple[str, str]] = (),
    client: str = "raw",
    warmup_s: float = 0.5,
) -> LoadResult:
    """Closed-loop load for ``duration_s`` after ``warmup_s`` of unmeasured load on the same connections."""
    tally = _Tally()
    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=30.0) as pool:
            wanted = dict(headers)
            if warmup_s > 0:
                warm = time.perf_counter() + warmup_s
                await asyncio.gather(
                    *(_httpx_connection(pool, url, wanted, warm, _Tally()) for _ in range(connections))
                )
            started = time.perf_counter()
            deadline = started + duration_s
            await asyncio.gather(*(_httpx_connection(pool, url, wanted, deadline, tally) for _ in range(connections)))
            return tally.result(time.perf_counter() - started)
    host, port, request = _request_bytes(url, headers)
    streams = [await asyncio.open_connection(host, port) for _ in range(connections)]
    try:
        if warmup_s > 0:
            warm = time.perf_counter() + warmup_s
            await asyncio.gather(*(_loop(r, w, request, warm, _Tally()) for r, w in streams))
        started = time.perf_counter()
        deadline = started + duration_s
        await asyncio.gather(*(_loop(r, w, request, deadline, tally) for r, w in streams))
        return tally.result(time.perf_counter() - started)
    finally:
        for _, writer in streams:
            writer.close()


async def _loop(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, deadline: float, tally: _Tally
) -> None:
    clock = time.perf_counter
    while clock() < deadline:
        started = clock()
        writer.write(request)
        status = await _read_response(reader)
        tally.record(status, started, clock())


async def run_burst(url: str, *, count: int, headers: Sequence[tuple[str, str]] = ()) -> LoadResult:
    """``count`` connections, then one request on each, all written at once."""
    host, port, request = _request_bytes(url, headers)
    streams = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(count)))
    tally = _Tally()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.perf_counter()
        writer.write(request)
        status = await _read_response(reader)
        tally.record(status, started, time.perf_counter())

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(r, w) for r, w in streams))
        return tally.result(time.perf_counter() - started)
    finally:
        for _, writer in streams:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--burst", type=int, default=0, help="send this many requests at once instead")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument(
        "--header-env",
        action="append",
        default=[],
        metavar="NAME=VARIABLE",
        help="send header NAME with the value of environment variable VARIABLE (keeps tokens off argv)",
    )
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    headers = []
    for spec in args.header_env:
        name, _, variable = spec.partition("=")
        headers.append((name, os.environ[variable]))
    if args.burst:
        result = asyncio.run(run_burst(args.url, count=args.burst, headers=headers))
    else:
        result = asyncio.run(
            run_load(
                args.url,
                duration_s=args.duration,
                connections=args.connections,
                headers=headers,
                client=args.client,
                warmup_s=args.warmup,
            )
        )
    json.dump(asdict(result), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
