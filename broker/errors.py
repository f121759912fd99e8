"""The broker's errors, rooted at :class:`BrokerError`.

Each error maps to one HTTP status and one ``error`` code, here and nowhere else;
the HTTP surface turns them into JSON bodies. Messages say what happened and what
to do, and name the setting or secret involved. They never carry a secret or token
value: only names, versions and upstream error codes.

    BrokerError
    ├── InternalError                    500 internal_error: an unexpected failure, naming the request to look up
    ├── ConfigError                      start-up only: a setting is missing or invalid
    ├── BrokerMisconfigured              503 broker_misconfigured: every request while a ConfigError stands
    ├── CallerError                      the request itself is wrong
    │   ├── InvalidRequest               400 invalid_request
    │   ├── HeadersTooLarge              431 invalid_request
    │   ├── InvalidCallerToken           401 invalid_token (+ WWW-Authenticate)
    │   ├── InsufficientScope            403 insufficient_scope
    │   ├── TokenRouteDisabled           403 token_route_disabled: the provider is in proxy mode
    │   ├── NotFound                     404 unknown_provider / not_found / proxy_disabled
    │   │   └── UnknownProvider          404 unknown_provider (+ the providers, for an operator)
    │   ├── MethodNotAllowed             405 method_not_allowed (+ Allow)
    │   └── PayloadTooLarge              413 payload_too_large: a proxied body over 1 MiB
    ├── AuthorityUnavailable             503 authority_unavailable: Entra signing keys unreachable
    ├── ProxyBusy                        503 proxy_busy (+ Retry-After): no upstream slot came free in time
    └── UpstreamError                    a dependency failed
        ├── SecretError                  Key Vault / local secrets (+ why: SecretCause)
        │   ├── SecretForbidden          502 key_vault_forbidden
        │   ├── SecretNotFound           502 secret_not_found
        │   ├── SecretDisabled           502 secret_disabled
        │   ├── SecretEmpty              502 secret_empty
        │   └── SecretStoreUnavailable   503 key_vault_unavailable (+ Retry-After)
        ├── TokenRejected                502 <the upstream's OAuth error code, e.g. invalid_client>
        ├── InvalidTokenResponse         502 invalid_response
        ├── InvalidUpstreamResponse      502 invalid_response: a proxied answer the broker will not pass on
        ├── UpstreamUnavailable          503 upstream_unavailable (+ Retry-After)
        └── UpstreamTimeout              504 upstream_timeout
"""

from __future__ import annotations

import re
from typing import Literal

# A fix needs an operator and a restart: callers need not come back sooner.
MISCONFIGURED_RETRY_AFTER_S = 300.0
_OAUTH_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class BrokerError(Exception):
    """Root of every error the broker raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, description: str, *, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later without anyone changing anything."""
        return self.status in (503, 504)


class InternalError(BrokerError):
    """Anything the broker did not raise on purpose, once caught at the boundary: no stack trace, an id to look up."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"The broker failed unexpectedly; the operator finds request {request_id} in its log.")


class ConfigError(BrokerError):
    """A setting is missing or invalid; raised at start-up only."""

    code = "configuration_error"

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting} {problem}")
        self.setting = setting


class BrokerMisconfigured(BrokerError):
    """The app started with an invalid configuration: every request answers this until it is fixed.

    Names the setting, never its value (the operator's start-up log line has the whole problem).
    """

    status = 503
    code = "broker_misconfigured"

    def __init__(self, error: ConfigError) -> None:
        super().__init__(
            f"The broker cannot serve: its setting {error.setting} is missing or invalid. The operator finds "
            "the problem in the app's start-up log, fixes the app setting and restarts the app.",
            retry_after=MISCONFIGURED_RETRY_AFTER_S,
        )
        self.setting = error.setting


class CallerError(BrokerError):
    """The caller's request is at fault; nothing upstream was contacted."""


class InvalidRequest(CallerError):
    status = 400
    code = "invalid_request"


class HeadersTooLarge(CallerError):
    status = 431
    code = "invalid_request"


class InvalidCallerToken(CallerError):
    status = 401
    code = "invalid_token"

    def __init__(self, description: str, *, reason: str = "invalid") -> None:
        super().__init__(description)
        self.reason = reason  # a short metric label: missing, malformed, alg, key, signature, audience, ...


class InsufficientScope(CallerError):
    status = 403
    code = "insufficient_scope"


class TokenRouteDisabled(CallerError):
    status = 403
    code = "token_route_disabled"


class PayloadTooLarge(CallerError):
    status = 413
    code = "payload_too_large"


class NotFound(CallerError):
    status = 404

    def __init__(self, description: str, *, code: str = "not_found") -> None:
        super().__init__(description)
        self.code = code


class UnknownProvider(NotFound):
    """A provider name the broker does not serve, answered to an operator: the body lists the ones it does."""

    def __init__(self, description: str, *, providers: tuple[str, ...]) -> None:
        super().__init__(description, code="unknown_provider")
        self.providers = providers


class MethodNotAllowed(CallerError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__(f"Use {' or '.join(allowed)}.")
        self.allowed = allowed


class AuthorityUnavailable(BrokerError):
    status = 503
    code = "authority_unavailable"


class ProxyBusy(BrokerError):
    """Proxy mode: every upstream slot this caller may use stayed taken for the whole slot-wait budget."""

    status = 503
    code = "proxy_busy"


class UpstreamError(BrokerError):
    """A dependency (Key Vault or the token endpoint) failed."""

    status = 502
    code = "upstream_error"


# Why a secret could not be read: decided once, where the store's own exception is translated
# (broker.secrets), so that nothing above it classifies the Key Vault SDK's exceptions again.
SecretCause = Literal[
    "not_found",  # no such secret (locally: no such environment variable)
    "disabled",  # every version of the secret is disabled
    "empty",  # the value is empty or only whitespace
    "forbidden",  # the vault refused (401/403): a missing role, or its network rules; detail: its inner code
    "identity",  # the credential got no token for the vault, which was never reached; detail: its message
    "unreachable",  # DNS, TLS, a refused or timed-out connection; detail: which of these
    "timeout",  # the vault did not answer within the read's budget
    "throttled",  # the vault answered 429
    "failing",  # the vault answered 5xx, or failed some other way
]


class SecretError(UpstreamError):
    """Reading a configured secret failed; ``cause`` says why, ``detail`` what the store said (never a value)."""

    cause: SecretCause = "failing"

    def __init__(
        self,
        description: str,
        *,
        secret: str,
        retry_after: float | None = None,
        cause: SecretCause | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(description, retry_after=retry_after)
        self.secret = secret
        if cause is not None:
            self.cause = cause
        self.detail = detail


class SecretForbidden(SecretError):
    code = "key_vault_forbidden"
    cause: SecretCause = "forbidden"


class SecretNotFound(SecretError):
    code = "secret_not_found"
    cause: SecretCause = "not_found"


class SecretDisabled(SecretError):
    code = "secret_disabled"
    cause: SecretCause = "disabled"


class SecretEmpty(SecretError):
    code = "secret_empty"
    cause: SecretCause = "empty"


class SecretStoreUnavailable(SecretError):
    status = 503
    code = "key_vault_unavailable"


class TokenRejected(UpstreamError):
    """The token endpoint refused the credentials or the request (an RFC 6749 §5.2 error)."""

    # Rejections that mean "these credentials are wrong": negative-cached, and a reason to
    # look for another secret version (rotation).
    CREDENTIAL_ERRORS = frozenset({"invalid_client", "unauthorized_client"})

    def __init__(self, description: str, *, upstream_error: str, upstream_status: int) -> None:
        super().__init__(description)
        self.upstream_error = upstream_error
        self.upstream_status = upstream_status
        self.code = upstream_error if _OAUTH_CODE.fullmatch(upstream_error) else "upstream_error"

    @property
    def bad_credentials(self) -> bool:
        return self.upstream_error in self.CREDENTIAL_ERRORS


class InvalidTokenResponse(UpstreamError):
    code = "invalid_response"


class InvalidUpstreamResponse(UpstreamError):
    """Proxy mode: the upstream API's answer is over the size cap or redirects outside the API root."""

    code = "invalid_response"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    # The HTTP status the dependency answered (429, 5xx); None when it could not be reached at all.
    upstream_status: int | None = None


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
