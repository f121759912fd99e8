"""OpenTelemetry metrics and traces, modelled on Envoy's OAuth2 filter counters.

Instruments come from the OpenTelemetry *API*: with no SDK configured they are
no-ops costing a function call. :func:`configure_exporter` switches on export to
Application Insights when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set, once per
process: under Azure Functions with PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY the Python worker
(azure_functions_runtime) has already done it (see :func:`configure_exporter`), and a second
configuration would send every broker log record twice.
Every instrument carries ``provider`` and ``outcome`` attributes (caller-auth
failures carry ``reason``). ``broker.token.requests`` also carries the caller's ``caller_oid`` and
``caller_appid``: a cached token (``hit``) writes no access line, so this counter and
``broker.token.duration`` are what the workbook reads for hits. No attribute ever holds a secret or token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import metrics, trace

from broker.config import Setting
from broker.errors import BrokerError

if TYPE_CHECKING:
    from broker.cache import Served
    from broker.endpoint import TokenEndpoint
    from broker.secrets import Credentials, SecretStore, SecretValue, VersionInfo
    from broker.tokens import Token

log = logging.getLogger(__name__)


class Telemetry:
    """The broker's instruments. Pass SDK providers (e.g. in-memory readers in tests) or use the globals."""

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        meter = metrics.get_meter("ilevel_token_broker", meter_provider=meter_provider)
        self.tracer = trace.get_tracer("ilevel_token_broker", tracer_provider=tracer_provider)
        self.served = meter.create_counter("broker.token.requests", description="Token requests answered")
        self.duration = meter.create_histogram(
            "broker.token.duration", unit="s", description="Token request latency, the answer sent, by outcome"
        )
        self.fetches = meter.create_counter("broker.upstream.fetches", description="Upstream token requests")
        self.fetch_latency = meter.create_histogram(
            "broker.upstream.fetch.duration", unit="s", description="Upstream token request latency"
        )
        self.secret_reads = meter.create_counter("broker.keyvault.reads", description="Secret reads")
        self.auth_failures = meter.create_counter(
            "broker.caller_auth.failures", description="Rejected caller tokens by reason"
        )
        self.proxy_requests = meter.create_counter(
            "broker.proxy.requests", description="Proxied requests answered, by provider and status class"
        )
        self.proxy_duration = meter.create_histogram(
            "broker.proxy.duration", unit="s", description="Proxied request latency, broker included"
        )
        self.slot_waits = meter.create_counter(
            "broker.proxy.slot_waits", description="Proxied requests that waited for an upstream slot, by outcome"
        )
        self.proxy_busy = meter.create_counter(
            "broker.proxy.busy", description="Proxied requests refused with 503 proxy_busy (no slot in time)"
        )
        self.fleet_events = meter.create_counter(
            "broker.fleet.events", description="Fleet token cache events by provider and event"
        )
        self.remaining = meter.create_histogram(
            "broker.token.remaining_lifetime", unit="s", description="Remaining token lifetime when served"
        )

    def token_served(self, provider: str, served: Served, now: float, caller: tuple[str, str] = ("-", "-")) -> None:
        """One token answered to ``caller`` (its oid and appid, as the access line writes them)."""
        outcome = served.outcome
        attributes = {"provider": provider, "outcome": outcome, "caller_oid": caller[0], "caller_appid": caller[1]}
        self.served.add(1, attributes)
        self.remaining.record(max(0.0, served.token.remaining(now)), {"provider": provider, "outcome": outcome})

    def token_answered(self, provider: str, outcome: str, duration_s: float) -> None:
        """The token route's latency, the answer sent (the access line's ``latency_ms``), by outcome."""
        self.duration.record(duration_s, {"provider": provider, "outcome": outcome})

    def fleet_event(self, provider: str, event: str) -> None:
        """hit, miss, lease_won, lease_lost, wait, fallback, decrypt_failure or rejected (docs/operations.md)."""
        self.fleet_events.add(1, {"provider": provider, "event": event})

    def token_failed(self, provider: str, error: BrokerError, caller: tuple[str, str] = ("-", "-")) -> None:
        attributes = {"provider": provider, "outcome": error.code, "caller_oid": caller[0], "caller_appid": caller[1]}
        self.served.add(1, attributes)

    def proxied(self, provider: str, status: int, duration_s: float) -> None:
        attributes = {"provider": provider, "status_class": f"{status // 100}xx"}
        self.proxy_requests.add(1, attributes)
        self.proxy_duration.record(duration_s, attributes)

    def slot_waiter(self, provider: str) -> Callable[[bool], None]:
        """Counts one slot wait (``busy``: it ended in 503 proxy_busy) for ``provider``."""

        def waited(busy: bool) -> None:
            self.slot_waits.add(1, {"provider": provider, "outcome": "busy" if busy else "acquired"})
            if busy:
                self.proxy_busy.add(1, {"provider": provider})

        return waited

    def caller_rejected(self, reason: str) -> None:
        # The provider is not known yet: authentication comes before routing.
        self.auth_failures.add(1, {"provider": "-", "outcome": "rejected", "reason": reason})

    def instrument_endpoint(self, endpoint: TokenEndpoint, provider: str) -> TokenEndpoint:
        return _TracedEndpoint(endpoint, provider, self)  # type: ignore[return-value]

    def instrument_secrets(self, store: SecretStore, provider: str) -> SecretStore:
        return _TracedSecrets(store, provider, self)


class _TracedEndpoint:
    """Counts and times upstream token requests; same interface as TokenEndpoint."""

    def __init__(self, inner: TokenEndpoint, provider: str, telemetry: Telemetry) -> None:
        self._inner = inner
        self._provider = provider
        self._t = telemetry

    async def request(self, credentials: Credentials, **kwargs: str | None) -> Token:
        started = time.perf_counter()
        outcome = "success"
        with self._t.tracer.start_as_current_span("broker.upstream.fetch", attributes={"provider": self._provider}):
            try:
                return await self._inner.request(credentials, **kwargs)
            except BrokerError as error:
                outcome = error.code
                raise
            finally:
                attributes: Mapping[str, str] = {"provider": self._provider, "outcome": outcome}
                self._t.fetches.add(1, attributes)
                self._t.fetch_latency.record(time.perf_counter() - started, attributes)


class _TracedSecrets:
    """Counts secret reads by outcome; same interface as SecretStore."""

    def __init__(self, inner: SecretStore, provider: str, telemetry: Telemetry) -> None:
        self._inner = inner
        self._provider = provider
        self._t = telemetry
        self.location = inner.location

    async def read(self, name: str, version: str | None = None) -> SecretValue:
        outcome = "success"
        with self._t.tracer.start_as_current_span("broker.secret.read", attributes={"secret": name}):
            try:
                return await self._inner.read(name, version)
            except BrokerError as error:
                outcome = error.code
                raise
            finally:
                self._t.secret_reads.add(1, {"provider": self._provider, "secret": name, "outcome": outcome})

    async def versions(self, name: str) -> list[VersionInfo]:
        return await self._inner.versions(name)


# Who exports the broker's telemetry to Application Insights (docs/operations.md, "What is sent by whom").
Exporter = Literal["none", "worker", "broker"]
# The log records exported are those of this logger and its children: the broker's, not the worker's or the SDKs'.
LOGGER_NAME = "broker"


def _configured_in_process() -> bool:
    """True when an OpenTelemetry SDK already owns this process's tracing (the worker configured Azure Monitor)."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return False
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def _worker_settings() -> tuple[str, str, str, Callable[[str], bool]]:
    """The app settings Microsoft's worker reads, from the worker itself (requirements.txt pins it).

    azure_functions_runtime (utils/constants.py, handle_event.worker_init_request, otel.initialize_azure_monitor):
    with PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true, worker init calls ``configure_azure_monitor(
    connection_string=..., logger_name=<PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME, default "" = the root logger>)``
    before it imports function_app.py, creates the trace-context propagator and tells the host
    WorkerOpenTelemetryEnabled (the host then stops forwarding the worker's log records). PYTHON_ENABLE_OPENTELEMETRY
    only makes it attach each invocation's trace context and leaves the distro to the app.
    Imported here, not at module level: only a process that exports pays for the worker's import. The
    switch is read with the worker's own parser (``is_true_like``: 1, true, t, yes, y).
    """
    from azure_functions_runtime.utils import constants
    from azure_functions_runtime.utils.app_setting_manager import is_true_like

    return (
        constants.PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY,
        constants.PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME,
        constants.PYTHON_ENABLE_OPENTELEMETRY,
        is_true_like,
    )


def configure_exporter(env: Mapping[str, str]) -> Exporter:
    """Export to Application Insights when its connection string is set, unless the worker already does.

    Returns who exports: ``"none"`` (no connection string, or the distro missing), ``"worker"`` (the
    Functions worker configured Azure Monitor; configuring again would attach a second log handler), or
    ``"broker"`` (this call configured it: ``serve``, or a worker that leaves the distro to the app).
    """
    if not env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip():
        return "none"
    enable_setting, logger_setting, context_setting, is_true = _worker_settings()
    if _configured_in_process():
        logger_name = env.get(logger_setting, "")
        if logger_name != LOGGER_NAME:
            log.warning(
                "telemetry: the Functions worker exports logs of logger %r (%s); set %s=%s so that only the "
                "broker's records are exported",
                logger_name or "<root>",
                logger_setting,
                logger_setting,
                LOGGER_NAME,
            )
        return "worker"
    if is_true(env.get(enable_setting, "")):
        # The worker configures Azure Monitor before it imports function_app.py under this setting, so here it
        # failed to (its own log line says why, e.g. the distro missing); the app configures it instead.
        log.warning(
            "telemetry: %s=true but the Functions worker has not configured Azure Monitor; the app does", enable_setting
        )
    elif env.get(context_setting, "").strip():
        log.info("telemetry: %s is set: the worker attaches the trace context and the app exports", context_setting)
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor
    except ImportError:
        log.warning(
            "telemetry: APPLICATIONINSIGHTS_CONNECTION_STRING is set but azure-monitor-opentelemetry "
            "is not installed; telemetry is not exported"
        )
        return "none"
    options: dict[str, Any] = {"logger_name": LOGGER_NAME}
    client_id = env.get(Setting.AZURE_CLIENT_ID, "").strip()
    if client_id:
        # Application Insights has local auth off: export with the user-assigned identity.
        from azure.identity import ManagedIdentityCredential

        options["credential"] = ManagedIdentityCredential(client_id=client_id)
    configure_azure_monitor(**options)
    return "broker"
