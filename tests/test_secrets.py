"""The secret store's start: the Key Vault SDK's models are built once before any concurrent read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: in this one, other tests have long since built every model.
PROBE = """
from azure.keyvault.secrets._generated import models
from azure.keyvault.secrets._generated._utils.model_base import Model
import broker.secrets
classes = [v for v in vars(models).values() if isinstance(v, type) and issubclass(v, Model) and v is not Model]
missing = [c.__qualname__ for c in classes if f"{c.__module__}.{c.__qualname__}" not in Model._calculated]
print(len(classes), missing)
"""


@pytest.mark.slow
def test_importing_the_secret_store_primes_every_key_vault_model_before_threads_read() -> None:
    """A cold start's parallel reads never race the SDK's lazy model set-up (Azure/azure-sdk-for-python#47426)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    count, missing = result.stdout.strip().split(" ", 1)
    assert int(count) >= 2  # SecretBundle and SecretAttributes at least
    assert missing == "[]"
