"""Link rewriting, so that "next" links and ADF's ``AbsoluteUrl`` pagination keep going through the broker.

Every JSON string value that begins with the provider's ``API_BASE_URL`` gets that prefix
replaced by the broker's public proxy root for the provider; ``Link`` and ``Location``
headers are rewritten the same way. Bodies that are not JSON pass through byte for byte.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urljoin

# JSON may write "/" as "\/"; a body mentioning the base in neither form needs no parsing.
_LINK_TARGET = re.compile(r"<([^>]*)>")
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")


def is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``+json`` type (JSON:API is ``application/vnd.api+json``)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def public_root(scheme: str, host: str, provider: str) -> str | None:
    """``<scheme>://<host the caller used>/api/proxy/<provider>/``, or None for a host not worth echoing."""
    if not _HOST.fullmatch(host) or scheme not in ("http", "https"):
        return None
    return f"{scheme}://{host}/api/proxy/{provider}/"


class Rewriter:
    """Replaces the API root by the broker's proxy root in URLs, headers and JSON bodies."""

    def __init__(self, base_url: str, root: str) -> None:
        self.base = base_url
        self.root = root
        self._markers = (base_url.encode(), base_url.replace("/", "\\/").encode())

    def url(self, value: str) -> str:
        return self.root + value[len(self.base) :] if value.startswith(self.base) else value

    def link_header(self, value: str) -> str:
        return _LINK_TARGET.sub(lambda m: f"<{self.url(m.group(1))}>", value)

    def location(self, value: str, request_url: str) -> tuple[str, bool]:
        """The rewritten Location, and whether it stays inside the API root (relative ones resolved first)."""
        absolute = urljoin(request_url, value)
        if absolute.startswith(self.base):
            return self.url(absolute), True
        return value, False

    def json_body(self, body: bytes) -> bytes:
        """The body with every string value beginning with the base rewritten; unchanged bytes if none does."""
        if not any(marker in body for marker in self._markers):
            return body
        try:
            changed, rewritten = self._walk(json.loads(body))
        except (ValueError, RecursionError):
            return body  # labelled JSON but is not (or absurdly deep): passed on as received
        if not changed:
            return body
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _walk(self, node: object) -> tuple[bool, object]:
        if isinstance(node, str):
            return (True, self.root + node[len(self.base) :]) if node.startswith(self.base) else (False, node)
        if isinstance(node, list):
            results = [self._walk(item) for item in node]
            return any(c for c, _ in results), [value for _, value in results]
        if isinstance(node, dict):
            changed = False
            out: dict[str, object] = {}
            for key, value in node.items():
                c, out[key] = self._walk(value)
                changed = changed or c
            return changed, out
        return False, node
