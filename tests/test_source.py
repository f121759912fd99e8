"""The token source on its own: the whole fetch and the Key Vault read each stay within their budgets."""

from __future__ import annotations

import time

import pytest

from broker.endpoint import TokenEndpoint
from broker.errors import SecretStoreUnavailable, UpstreamTimeout
from broker.runtime import Broker
from broker.source import TokenSource
from tests.conftest import FAST_RETRY, Stack


def source(broker: Broker, *, budget_s: float, key_vault_budget_s: float) -> TokenSource:
    config = broker.settings.providers["ilevel"]
    endpoint = TokenEndpoint(broker.http, config, budget_s=broker.settings.token_budget_s, retry=FAST_RETRY)
    return TokenSource(config, broker.secrets, endpoint, budget_s=budget_s, key_vault_budget_s=key_vault_budget_s)


@pytest.mark.slow
async def test_a_slow_key_vault_read_is_cut_off_at_its_budget(broker: Broker, stack: Stack) -> None:
    """Key Vault answering slower than its budget is a 503 key_vault_unavailable naming the secrets, on time."""
    stack.kv.latency_s = 2.0
    started = time.monotonic()
    with pytest.raises(SecretStoreUnavailable) as raised:
        await source(broker, budget_s=10, key_vault_budget_s=0.5).fetch()
    assert time.monotonic() - started < 1.5
    assert "ilevel-client-id and ilevel-client-secret" in raised.value.description
    assert raised.value.retry_after is not None


@pytest.mark.slow
async def test_the_whole_fetch_is_cut_off_at_the_overall_budget(broker: Broker, stack: Stack) -> None:
    """Key Vault and the token endpoint together never exceed the fetch budget: a 504 upstream_timeout."""
    stack.kv.latency_s = 0.4
    stack.tokens.latency_s = 0.8
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as raised:
        await source(broker, budget_s=1.0, key_vault_budget_s=5).fetch()
    assert time.monotonic() - started < 1.5
    assert raised.value.status == 504
