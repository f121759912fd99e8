"""Bench 6: proxy mode. Proxied against direct, memory against body size, a cold burst's token requests.

- **Throughput and latency.** The same load generator fetches a ~10 KB JSON page (JSON:API, with
  absolute links the broker rewrites) from the stand-in data API directly (with an iLevel token) and
  through ``python -m broker serve`` in proxy mode (with a caller token). Rounds alternate; medians.
- **Memory.** Peak RSS (``VmHWM``) growth while one 50 MB body, JSON:API (links rewritten) and
  octet-stream, passes through a fresh ``serve`` process (streamed), and through the Functions entry
  point invoked as the worker does in a fresh child process (its bridge joins the body); baseline:
  the body size.
- **Stalls.** ``/api/health`` p99 while 4 large JSON pages stream through ``serve``; baseline: idle.
- **Cold burst.** 200 concurrent proxied requests reach a fresh broker with an empty cache: token
  requests counted at the stand-in token endpoint (single-flight says 1).
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from bench.server import broker_process, cpu_pinning, listening_process, load
from bench.stack import StandIns
from bench.stats import Figure, median
from broker.standin.dataapi import DataApi
from broker.standin.oauth import TOKEN_PATH
from broker.standin.serve import run_server

PAGE_SIZE = 130  # assets per page: about 10 KB of JSON
BODY_BYTES = 50 * 1024 * 1024
BURST = 200
SERIES = ("direct", "proxied", "floor", "direct_1", "proxied_1", "floor_1")
# Issue 24: the latency the broker adds on one connection, at most this many times the floor's.
FLOOR_TARGET_RATIO = 1.3


@contextlib.contextmanager
def floor_process(upstream: str, token: str, *, cpu: int | None, log: IO[Any] | None) -> Iterator[str]:
    """``bench.proxy_floor`` (uvicorn + httpx streaming, no checks) in its own process; yields its base URL."""
    command = [sys.executable, "-m", "bench.proxy_floor", upstream]
    env = {**os.environ, "BENCH_UPSTREAM_TOKEN": token}
    with listening_process(command, env, name="floor", log=log, cpu=cpu) as base:
        yield base


def _ilevel_token(servers: StandIns) -> str:
    """A token from the stand-in token endpoint, as the broker would get it (for the direct baseline)."""
    basic = base64.b64encode(f"{servers.client_id}:{servers.client_secret}".encode()).decode()
    answer = httpx.post(
        servers.running["tokens"].url + TOKEN_PATH,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
        timeout=10,
    )
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


def _peak_rss_bytes(process: subprocess.Popen[bytes]) -> int:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


def _functions_rss_growth(servers: StandIns, settings: dict[str, str], caller: str, path: str) -> tuple[int, int]:
    """Peak RSS growth (and the body size) while the Functions entry point, in a fresh child process, passes
    the body at ``path``: the bridge's copies included, since it joins every body before the worker sends it."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.proxy_functions_child", path],
        env={**servers.broker_env(), **settings, "BENCH_CALLER": caller},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.proxy_functions_child failed: {done.stderr.decode()[-2000:]}")
    grown, size = done.stdout.split()[-2:]
    return int(grown), int(size)


def _serve_rss_growth(process: subprocess.Popen[bytes], url: str, caller: str, *, expected: int) -> int:
    """Peak RSS growth of the ``serve`` process while one body streams through it to a caller."""
    before = _peak_rss_bytes(process)
    received = 0
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {caller}"}, timeout=300) as response:
        for chunk in response.iter_raw(1024 * 1024):
            received += len(chunk)
    if response.status_code != 200 or received < expected:
        raise RuntimeError(f"the large body came back as {response.status_code}, {received} bytes")
    return _peak_rss_bytes(process) - before


# Prints one /api/health latency (ms) per line, every 10 ms, until its stdin closes or it is killed.
HEALTH_SAMPLER = """
import sys, time, httpx
with httpx.Client(base_url=sys.argv[1], timeout=30) as client:
    for _ in range(int(sys.argv[2])):
        started = time.perf_counter()
        client.get("/api/health").raise_for_status()
        print((time.perf_counter() - started) * 1000, flush=True)
        time.sleep(0.01)
"""


def _health_p99_ms(base: str, *, while_fetching: list[str], caller: str, samples: int = 200) -> float:
    """/api/health p99 (ms) over ``samples`` sequential requests, while ``while_fetching`` URLs stream in threads."""
    stop = threading.Event()

    def fetch(url: str) -> None:
        with httpx.stream("GET", url, headers={"Authorization": f"Bearer {caller}"}, timeout=300) as response:
            for _ in response.iter_raw(1024 * 1024):
                pass

    threads = [threading.Thread(target=fetch, args=(url,)) for url in while_fetching]
    for thread in threads:
        thread.start()
    # Sampled from a child process: the downloads (and the stand-in API) run in this process's threads,
    # whose GIL would otherwise slow the sampler itself and be counted against the broker.
    sampler = subprocess.Popen(
        [sys.executable, "-c", HEALTH_SAMPLER, base, str(samples)],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
    )
    assert sampler.stdout is not None
    assert sampler.stdin is not None
    latencies: list[float] = []
    while len(latencies) < samples and (not threads or any(t.is_alive() for t in threads)):
        line = sampler.stdout.readline()
        if not line:
            break
        latencies.append(float(line))
    sampler.stdin.close()
    sampler.kill()
    sampler.wait()
    stop.set()
    for thread in threads:
        thread.join()
    latencies.sort()
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


def run(
    servers: StandIns,
    *,
    rounds: int = 3,
    duration_s: float = 5.0,
    connections: int = 16,
    warmup_s: float = 0.5,
    body_bytes: int = BODY_BYTES,
    burst: int = BURST,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure; return the bench's JSON record (``figures`` and ``details``)."""
    servers.reset()
    pinning = cpu_pinning()
    server_cpu, load_cpu = pinning if pinning else (None, None)
    caller = servers.caller()
    api = DataApi(servers.tokens, assets=10 * PAGE_SIZE)
    log: IO[Any] | None = open(log_dir / "proxy-server.log", "w") if log_dir else None  # noqa: SIM115
    with run_server(api) as api_server:
        api.public_url = api_server.url
        cap_mb = str(max(32, body_bytes // (1024 * 1024) + 16))
        settings = {
            "BROKER_ILEVEL_MODE": "proxy",
            "BROKER_ILEVEL_API_BASE_URL": api.base_url,
            "BROKER_PROXY_MAX_RESPONSE_MB": cap_mb,
        }
        bodies = {
            "JSON": f"/api/proxy/ilevel/bigjson?bytes={body_bytes}",
            "octet-stream": f"/api/proxy/ilevel/large?bytes={body_bytes}",
        }
        page = f"entities/assets?page%5Bsize%5D={PAGE_SIZE}&page%5Bnumber%5D=2"
        direct_url = api.base_url + page
        ilevel = _ilevel_token(servers)
        try:
            started: list[subprocess.Popen[bytes]] = []
            with (
                broker_process(servers, log=log, cpu=server_cpu, extra_env=settings, started=started) as base,
                floor_process(api.base_url, ilevel, cpu=server_cpu, log=log) as floor,
            ):
                proxied_url = f"{base}/api/proxy/ilevel/{page}"
                floor_url = f"{floor}/api/proxy/ilevel/{page}"
                if httpx.get(floor_url, timeout=30).content != httpx.get(direct_url, headers={
                        "Authorization": f"Bearer {ilevel}"}, timeout=30).content:  # fmt: skip
                    raise RuntimeError("the floor does not pass the page through unchanged")
                first = httpx.get(proxied_url, headers={"Authorization": f"Bearer {caller}"}, timeout=30)
                if first.status_code != 200:
                    raise RuntimeError(f"the first proxied request failed: {first.status_code} {first.text[:200]}")
                page_bytes = len(first.content)
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SERIES}
                for _ in range(rounds):
                    for name, url, header, width in (
                        ("direct", direct_url, ilevel, connections),
                        ("proxied", proxied_url, caller, connections),
                        ("floor", floor_url, None, connections),
                        # One connection: no queueing, so the p50 difference is what the broker adds.
                        ("direct_1", direct_url, ilevel, 1),
                        ("proxied_1", proxied_url, caller, 1),
                        ("floor_1", floor_url, None, 1),
                    ):
                        runs[name].append(
                            load(url, duration_s=duration_s / 2 if width == 1 else duration_s, connections=width,
                                 caller=header, cpu=load_cpu, warmup_s=warmup_s)
                        )  # fmt: skip
                # Event-loop stalls: health p99 idle, then while 4 large JSON pages stream through.
                health_idle = _health_p99_ms(base, while_fetching=[], caller=caller)
                pages = [f"{base}{bodies['JSON']}&n={n}" for n in range(4)]
                health_loaded = _health_p99_ms(base, while_fetching=pages, caller=caller)
            # Memory: one large body through a fresh, warm broker per host and content type.
            grown: dict[str, int] = {}
            functions_grown: dict[str, int] = {}
            functions_sent: dict[str, int] = {}
            for kind, path in bodies.items():
                process_list: list[subprocess.Popen[bytes]] = []
                with broker_process(servers, log=log, cpu=server_cpu, extra_env=settings, started=process_list) as b:
                    warm = httpx.get(f"{b}/api/proxy/ilevel/{page}", headers={"Authorization": f"Bearer {caller}"})
                    warm.raise_for_status()
                    grown[kind] = _serve_rss_growth(process_list[0], f"{b}{path}", caller, expected=body_bytes)
                functions_grown[kind], functions_sent[kind] = _functions_rss_growth(servers, settings, caller, path)
            # Cold burst: a fresh broker, an empty cache.
            with broker_process(servers, log=log, cpu=server_cpu, extra_env=settings) as base:
                servers.reset()
                cold = load(
                    f"{base}/api/proxy/ilevel/{page}", duration_s=0, connections=0, burst=burst, caller=caller,
                    cpu=load_cpu,
                )  # fmt: skip
                token_requests = servers.token_requests
        finally:
            if log is not None:
                log.close()
    for name, results in runs.items():
        failed = sum(r["errors"] for r in results)
        if failed:
            raise RuntimeError(f"{name}: {failed} requests did not answer 200")
    if cold["errors"] or cold["requests"] != burst:
        raise RuntimeError(f"proxy cold burst: {cold['statuses']} for {burst} requests")
    summary = {
        name: {key: median([r[key] for r in results]) for key in ("rps", "p50_ms", "p99_ms")}
        for name, results in runs.items()
    }
    added_1 = summary["proxied_1"]["p50_ms"] - summary["direct_1"]["p50_ms"]
    floor_added_1 = summary["floor_1"]["p50_ms"] - summary["direct_1"]["p50_ms"]
    figures = [
        Figure(
            "proxy",
            f"proxy: throughput, {page_bytes / 1024:.1f} KB JSON page",
            summary["proxied"]["rps"],
            summary["direct"]["rps"],
            "req/s",
            "same page from the API directly",
        ),
        Figure(
            "proxy",
            f"proxy: p50 latency, {connections} connections",
            summary["proxied"]["p50_ms"],
            summary["direct"]["p50_ms"],
            "ms",
            "same page from the API directly",
        ),
        Figure(
            "proxy",
            "proxy: p50 latency, 1 connection",
            summary["proxied_1"]["p50_ms"],
            summary["direct_1"]["p50_ms"],
            "ms",
            "same page from the API directly",
        ),
        Figure(
            "proxy",
            "proxy: added p50 over direct, 1 connection",
            added_1,
            floor_added_1,
            "ms",
            "the floor's (uvicorn + httpx streaming, no checks)",
            target=f"<= {FLOOR_TARGET_RATIO}x",
            met=added_1 <= FLOOR_TARGET_RATIO * floor_added_1,
        ),
        Figure(
            "proxy",
            "proxy: throughput against the floor",
            summary["proxied"]["rps"],
            summary["floor"]["rps"],
            "req/s",
            "the floor, same page",
        ),
        *(
            Figure(
                "proxy",
                f"proxy: peak RSS growth, serve, {body_bytes // (1024 * 1024)} MB {kind}",
                grown[kind] / (1024 * 1024),
                body_bytes / (1024 * 1024),
                "MB",
                "body size",
                target="<= 8 MB",
                met=grown[kind] <= 8 * 1024 * 1024,
            )
            for kind in bodies
        ),
        *(
            Figure(
                "proxy",
                f"proxy: peak RSS growth, Functions entry point, {body_bytes // (1024 * 1024)} MB {kind}",
                functions_grown[kind] / (1024 * 1024),
                body_bytes / (1024 * 1024),
                "MB",
                "body size",
                target="<= 2.0x",
                met=functions_grown[kind] <= 2.0 * body_bytes,
            )
            for kind in bodies
        ),
        Figure(
            "proxy",
            "proxy: health p99 while 4 large JSON pages are proxied (serve)",
            health_loaded,
            health_idle,
            "ms",
            "health p99 idle",
            target="<= 50 ms",
            met=health_loaded <= 50,
        ),
        Figure(
            "proxy",
            f"proxy: cold burst of {burst}, token requests",
            token_requests,
            burst,
            "count",
            "requests in the burst",
            target="= 1",
            met=token_requests == 1,
        ),
    ]
    details = {
        "summary": summary,
        "added_p50_ms": summary["proxied"]["p50_ms"] - summary["direct"]["p50_ms"],
        "added_p50_ms_1_connection": added_1,
        "floor_added_p50_ms_1_connection": floor_added_1,
        "page_bytes": page_bytes,
        "rounds": runs,
        "memory": {
            "serve_peak_rss_growth_bytes": grown,
            "functions_peak_rss_growth_bytes": functions_grown,
            # The answer's size: a JSON page grows where its links get the (longer) proxy root.
            "functions_answer_bytes": functions_sent,
            "body_bytes": body_bytes,
        },
        "health_p99_ms": {"idle": health_idle, "while_4_pages": health_loaded},
        "cold_burst": cold,
        "settings": {
            "rounds": rounds,
            "duration_s": duration_s,
            "connections": connections,
            "server_cpu": server_cpu,
            "load_cpu": load_cpu,
            "data_api": "stand-in DataApi under uvicorn in a thread of the bench process (not pinned)",
        },
    }
    return {"figures": figures, "details": details}
