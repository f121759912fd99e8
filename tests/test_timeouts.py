"""Timeouts that agree: the Functions host outlasts the broker's own limits, the front end outlasts the host,
and the ADF samples wait longer than the broker, so a slow upstream gets the broker's 504, not a cut connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker.config import FRONT_END_TIMEOUT_S, MAX_PROXY_SLOT_WAIT_S, MAX_PROXY_TIMEOUT_S, MAX_TOKEN_BUDGET_S
from broker.secrets import KEY_VAULT_BUDGET_S

ROOT = Path(__file__).resolve().parent.parent
ADF = ROOT / "infra" / "adf"
# Room for the broker to write its 504 and the host to hand it on before functionTimeout fires.
MARGIN_S = 10.0
# The longest proxied request: a wait for an upstream slot, then the proxy timeout (token and answer included).
LONGEST_PROXIED_S = MAX_PROXY_SLOT_WAIT_S + MAX_PROXY_TIMEOUT_S
TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?$")


def seconds(timespan: str) -> float:
    """An ADF / host.json timespan, `[d.]hh:mm:ss`, in seconds."""
    match = TIMESPAN.fullmatch(timespan)
    assert match, f"not a timespan: {timespan!r}"
    days, hours, minutes, secs = (int(part or 0) for part in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + secs)


def function_timeout_s() -> float:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    return seconds(host["functionTimeout"])


def activities() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((ADF / "pipeline").glob("*.json")):
        for activity in json.loads(path.read_text(encoding="utf-8"))["properties"]["activities"]:
            yield path.stem, activity


def test_a_proxied_request_and_a_whole_token_fetch_end_before_the_host_kills_them() -> None:
    """functionTimeout > the largest BROKER_PROXY_TIMEOUT_SECONDS accepted + the largest token budget + margin."""
    assert function_timeout_s() >= MAX_PROXY_TIMEOUT_S + MAX_TOKEN_BUDGET_S + MARGIN_S
    assert function_timeout_s() >= MAX_TOKEN_BUDGET_S + KEY_VAULT_BUDGET_S + MARGIN_S
    assert function_timeout_s() >= LONGEST_PROXIED_S + MARGIN_S


def test_the_host_times_out_before_azures_front_end_cuts_the_request() -> None:
    """functionTimeout < 230 s: past that the front end drops the connection and nobody sees the host's answer."""
    assert function_timeout_s() < FRONT_END_TIMEOUT_S


def test_the_adf_samples_wait_longer_than_the_broker() -> None:
    """Each sample activity that calls the broker waits longer than the broker's own longest timeout."""
    checked = []
    for pipeline, activity in activities():
        text = json.dumps(activity)
        props = activity["typeProperties"]
        if activity["type"] == "WebActivity" and "/api/token/" in text:
            broker_limit = MAX_TOKEN_BUDGET_S + KEY_VAULT_BUDGET_S  # a whole fetch, rotation fallbacks included
            waits = seconds(props["httpRequestTimeout"])
        elif activity["type"] == "Copy" and pipeline.endswith("_proxy"):
            broker_limit = LONGEST_PROXIED_S
            waits = seconds(props["source"]["httpRequestTimeout"])
        else:
            continue
        assert waits > broker_limit, f"{pipeline}/{activity['name']} gives up after {waits} s, before the broker"
        assert seconds(activity["policy"]["timeout"]) > waits
        checked.append(activity["name"])
    assert len(checked) == 2, checked


def test_the_timespan_parser_reads_days_and_hours() -> None:
    """The check can fail: `0.02:00:00` is two hours, `00:03:40` is 220 s."""
    assert seconds("0.02:00:00") == 7200.0
    assert seconds("00:03:40") == 220.0


def example_timeout_s(name: str) -> float:
    """The ``TIMEOUT_S`` an example in docs/examples sets."""
    match = re.search(r"^TIMEOUT_S = ([\d.]+)$", (ROOT / "docs" / "examples" / name).read_text(encoding="utf-8"), re.M)
    assert match, f"docs/examples/{name} sets no TIMEOUT_S"
    return float(match[1])


def test_the_python_examples_wait_longer_than_the_broker() -> None:
    """docs/examples: the token caller outwaits a whole token fetch, the proxy reader the proxy's limit."""
    assert example_timeout_s("call_broker.py") > MAX_TOKEN_BUDGET_S + KEY_VAULT_BUDGET_S
    assert example_timeout_s("read_through_proxy.py") > LONGEST_PROXIED_S
