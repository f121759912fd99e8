"""The process's one managed-identity credential, shared by Key Vault and the fleet cache's storage.

Under Microsoft's worker a cold fetch made one managed-identity token request per secret read
in parallel: each SDK call found the credential's cache empty and asked the endpoint itself.
:class:`SingleFlightCredential` lets the first call for a resource ask and the others wait for
it, then read the credential's own cache: one identity token per resource per cold start, however
many reads (client id, client secret, the fleet cache key) run at once.

azure-identity is imported on first use, keeping it out of cold start's import time.
"""

from __future__ import annotations

import os
import threading
from typing import Any


def build_credential(identity_client_id: str | None) -> Any:
    """The managed identity in App Service / Functions, else the developer's credential chain."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if os.environ.get("IDENTITY_ENDPOINT"):
        # In App Service / Functions: the managed identity and nothing else, so a failure says so
        # instead of falling through to developer credentials.
        return ManagedIdentityCredential(client_id=identity_client_id)
    return DefaultAzureCredential(managed_identity_client_id=identity_client_id)


class SingleFlightCredential:
    """An azure-core ``TokenCredential`` whose concurrent requests for the same scopes make one request.

    Built lazily and thread-safe: the SDK clients call it from worker threads.
    """

    def __init__(self, identity_client_id: str | None, inner: Any = None) -> None:
        self.identity_client_id = identity_client_id
        self._inner = inner
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, ...], threading.Lock] = {}

    @property
    def inner(self) -> Any:
        with self._guard:
            if self._inner is None:
                self._inner = build_credential(self.identity_client_id)
            return self._inner

    def _lock(self, scopes: tuple[str, ...]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(scopes, threading.Lock())

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        inner = self.inner
        with self._lock(scopes):
            return inner.get_token(*scopes, **kwargs)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        inner = self.inner
        with self._lock(scopes):
            if hasattr(inner, "get_token_info"):
                return inner.get_token_info(*scopes, options=options)
            return inner.get_token(*scopes)

    def close(self) -> None:
        if self._inner is not None and hasattr(self._inner, "close"):
            self._inner.close()
