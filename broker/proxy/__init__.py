"""Proxy mode: forward a caller's request to the provider's API with the cached token, which never leaves.

``paths`` keeps every request inside the API root, ``headers`` holds the allow-lists,
``links`` rewrites URLs so pagination keeps going through the broker, and ``upstream``
makes the call. None of it knows which host serves the HTTP surface.
"""

from __future__ import annotations

from broker.proxy.links import public_root
from broker.proxy.paths import safe_path
from broker.proxy.upstream import (
    MAX_REQUEST_BODY_BYTES,
    Call,
    Forwarded,
    ProviderProxy,
    build_client,
)

__all__ = ["MAX_REQUEST_BODY_BYTES", "Call", "Forwarded", "ProviderProxy", "build_client", "public_root", "safe_path"]
