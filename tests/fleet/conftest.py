"""Fixtures for the fleet cache: Azurite, started only for the tests that ask for it (tests/fleet/support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Stack
from tests.fleet.support import Azurite, fleet_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fleet_processes: starts several broker processes (a few seconds each)")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite for the session, started on first request only."""
    server = Azurite().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def restartable_azurite(azurite: Azurite) -> Iterator[Azurite]:
    """The session's Azurite, for a test that kills it: running again (same port, empty) afterwards."""
    try:
        yield azurite
    finally:
        if azurite.process is None:
            azurite.start()


@pytest.fixture
def fleet_stack(stack: Stack, azurite: Azurite) -> Stack:
    """The test stack with the fleet cache on the session's Azurite."""
    fleet_env(stack, azurite)
    return stack
