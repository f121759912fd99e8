"""Bench 6: proxy mode. Proxied against direct, memory against body size, a cold burst's token requests.

- **Throughput and latency.** The same load generator fetches a ~10 KB JSON page (JSON:API, with
  absolute links the broker rewrites) from the stand-in data API directly (with an iLevel token) and
  through ``python -m broker serve`` in proxy mode (with a caller token). Rounds alternate; medians.
- **Memory.** The broker process's peak RSS (``VmHWM``) grows by how much when it passes one 50 MB
  response on, against the body size; and the peak of Python allocations (tracemalloc) when the
  Functions entry point, invoked as the worker does, passes the same body (its bridge joins the body).
- **Cold burst.** 200 concurrent proxied requests reach a fresh broker with an empty cache: token
  requests counted at the stand-in token endpoint (single-flight says 1).
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import tracemalloc
from pathlib import Path
from typing import IO, Any

import httpx

from bench.functions import fresh_function_app, invocation
from bench.server import broker_process, cpu_pinning, load
from bench.stack import StandIns, environment
from bench.stats import Figure, median
from broker.standin.dataapi import DataApi
from broker.standin.oauth import TOKEN_PATH
from broker.standin.serve import run_server

PAGE_SIZE = 130  # assets per page: about 10 KB of JSON
BODY_BYTES = 50 * 1024 * 1024
BURST = 200
SERIES = ("direct", "proxied", "direct_1", "proxied_1")


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


def _functions_peak_bytes(servers: StandIns, settings: dict[str, str], caller: str, size: int) -> int:
    """Peak Python allocations (tracemalloc) while the Functions entry point passes one body of ``size`` bytes."""
    with environment({**servers.broker_env(), **settings}), fresh_function_app() as module:
        handler = {f.get_function_name(): f for f in module.app.get_functions()}["http_app_func"]
        function = handler.get_user_function()

        async def measure() -> int:
            warm = await function(invocation("/api/proxy/ilevel/entities/assets", caller), None)
            if warm.status_code != 200:
                raise RuntimeError(f"the warm-up proxied invocation answered {warm.status_code}")
            tracemalloc.start()
            try:
                answer = await function(invocation(f"/api/proxy/ilevel/large?bytes={size}", caller), None)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            if answer.status_code != 200 or len(answer.get_body()) != size:
                raise RuntimeError(f"the large body came back as {answer.status_code}")
            return peak

        return asyncio.run(measure())


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
        settings = {"BROKER_ILEVEL_MODE": "proxy", "BROKER_ILEVEL_API_BASE_URL": api.base_url}
        page = f"entities/assets?page%5Bsize%5D={PAGE_SIZE}&page%5Bnumber%5D=2"
        direct_url = api.base_url + page
        ilevel = _ilevel_token(servers)
        try:
            started: list[subprocess.Popen[bytes]] = []
            with broker_process(servers, log=log, cpu=server_cpu, extra_env=settings, started=started) as base:
                proxied_url = f"{base}/api/proxy/ilevel/{page}"
                first = httpx.get(proxied_url, headers={"Authorization": f"Bearer {caller}"}, timeout=30)
                if first.status_code != 200:
                    raise RuntimeError(f"the first proxied request failed: {first.status_code} {first.text[:200]}")
                page_bytes = len(first.content)
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SERIES}
                for _ in range(rounds):
                    for name, url, header, width in (
                        ("direct", direct_url, ilevel, connections),
                        ("proxied", proxied_url, caller, connections),
                        # One connection: no queueing, so the p50 difference is what the broker adds.
                        ("direct_1", direct_url, ilevel, 1),
                        ("proxied_1", proxied_url, caller, 1),
                    ):
                        runs[name].append(
                            load(url, duration_s=duration_s / 2 if width == 1 else duration_s, connections=width,
                                 caller=header, cpu=load_cpu, warmup_s=warmup_s)
                        )  # fmt: skip
                # Memory: one 50 MB body through the warm broker.
                process = started[0]
                before = _peak_rss_bytes(process)
                received = 0
                with httpx.stream(
                    "GET",
                    f"{base}/api/proxy/ilevel/large?bytes={body_bytes}",
                    headers={"Authorization": f"Bearer {caller}"},
                    timeout=120,
                ) as response:
                    for chunk in response.iter_bytes():
                        received += len(chunk)
                if response.status_code != 200 or received != body_bytes:
                    raise RuntimeError(f"the large body came back as {response.status_code}, {received} bytes")
                grown = _peak_rss_bytes(process) - before
            functions_peak = _functions_peak_bytes(servers, settings, caller, body_bytes)
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
            f"proxy: peak RSS growth passing a {body_bytes // (1024 * 1024)} MB body",
            grown / (1024 * 1024),
            body_bytes / (1024 * 1024),
            "MB",
            "body size",
        ),
        Figure(
            "proxy",
            f"proxy: Functions entry point, peak allocations passing a {body_bytes // (1024 * 1024)} MB body",
            functions_peak / (1024 * 1024),
            body_bytes / (1024 * 1024),
            "MB",
            "body size",
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
        "added_p50_ms_1_connection": summary["proxied_1"]["p50_ms"] - summary["direct_1"]["p50_ms"],
        "page_bytes": page_bytes,
        "rounds": runs,
        "memory": {
            "peak_rss_growth_bytes": grown,
            "functions_peak_traced_bytes": functions_peak,
            "body_bytes": body_bytes,
        },
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
