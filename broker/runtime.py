"""Wiring: one HTTP client, one secret store, and per provider a source and a cache.

Built once per process from :class:`~broker.config.Settings`. Tests pass their own
secret store, clock, sleep and retry policy; nothing is patched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from broker.cache import Fetch, Served, TokenCache
from broker.caller_auth import LOCAL_DEVELOPER, Caller, CallerAuthenticator, SigningKeys, authorize
from broker.config import ProviderConfig, Settings
from broker.endpoint import RetryPolicy, TokenEndpoint
from broker.errors import NotFound, TokenRouteDisabled
from broker.fleet import Fleet
from broker.httpclient import SharedClient
from broker.identity import SingleFlightCredential
from broker.proxy import ProviderProxy, build_client
from broker.secrets import KEY_VAULT_BUDGET_S, SecretStore, build_secret_store
from broker.source import TokenSource
from broker.telemetry import Telemetry


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """Parts a test or benchmark replaces with its own (real) components."""

    secret_store: SecretStore | None = None
    # Extra SecretClient keyword arguments, e.g. a test CA (connection_verify) and
    # verify_challenge_resource=False for a vault that is not *.vault.azure.net.
    secret_client_options: Mapping[str, Any] | None = None
    http: httpx.AsyncClient | None = None
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    telemetry: Telemetry | None = None
    # Proxy mode's upstream client (no cookies, no redirects), e.g. one whose transport fails on cue.
    proxy_http: httpx.AsyncClient | None = None


@dataclass(frozen=True)
class Provider:
    config: ProviderConfig
    source: TokenSource
    cache: TokenCache


class Broker:
    """Everything a request needs, shared by all requests of the process."""

    def __init__(self, settings: Settings, overrides: Overrides | None = None) -> None:
        o = overrides or Overrides()
        self.settings = settings
        self.clock = o.clock
        self.telemetry = o.telemetry or Telemetry()
        # One client for the token endpoints and Entra metadata, for the life of the process.
        self.http = SharedClient(o.http)
        client_options = {} if settings.key_vault_verify_challenge else {"verify_challenge_resource": False}
        client_options.update(o.secret_client_options or {})
        # One managed-identity credential for Key Vault and the fleet cache's storage.
        self.credential = SingleFlightCredential(settings.managed_identity_client_id)
        self.secrets = o.secret_store or build_secret_store(
            vault_url=settings.key_vault_url,
            identity_client_id=settings.managed_identity_client_id,
            client_options=client_options,
            credential=self.credential,
        )
        self.fleet: Fleet | None = None
        if settings.fleet is not None:
            self.fleet = Fleet(
                settings.fleet,
                credential=self.credential,
                event=self.telemetry.fleet_event,
                clock=o.clock,
                monotonic=o.monotonic,
                sleep=o.sleep,
            )
        self.providers: dict[str, Provider] = {}
        for name, config in settings.providers.items():
            endpoint = TokenEndpoint(
                self.http,
                config,
                budget_s=settings.token_budget_s,
                retry=o.retry,
                clock=o.clock,
                sleep=o.sleep,
            )
            secrets = self.telemetry.instrument_secrets(self.secrets, name)
            if self.fleet is not None:
                # The fleet layer's client-id read is handed to the source: one read per fetch.
                secrets = self.fleet.reads(secrets)
            source = TokenSource(
                config,
                secrets,
                self.telemetry.instrument_endpoint(endpoint, name),
                budget_s=settings.token_budget_s + KEY_VAULT_BUDGET_S,
                clock=o.clock,
            )
            fetch: Fetch = source.fetch
            if self.fleet is not None:
                # The fleet layer between the in-process cache and the source (broker.fleet).
                fetch = self.fleet.wrap(config, fetch, secrets)
            self.providers[name] = Provider(config, source, TokenCache(fetch, clock=o.clock))
        # Proxy mode: its own client (cookies never kept, the proxy timeout), only if a provider needs it.
        self.proxy_http: SharedClient | None = None
        self.proxies: dict[str, ProviderProxy] = {}
        if any(config.proxy_enabled for config in settings.providers.values()):
            self.proxy_http = SharedClient(
                o.proxy_http, factory=lambda: build_client(timeout_s=settings.proxy_timeout_s)
            )
            for name, provider in self.providers.items():
                if provider.config.proxy_enabled:
                    self.proxies[name] = ProviderProxy(
                        provider.config,
                        provider.cache,
                        self.proxy_http,
                        timeout_s=settings.proxy_timeout_s,
                        max_response_bytes=settings.proxy_max_response_bytes,
                        slot_wait_s=settings.proxy_slot_wait_s,
                        on_slot_wait=self.telemetry.slot_waiter(name),
                    )
        self.authenticator: CallerAuthenticator | None = None
        if not settings.caller_auth_disabled:
            keys = SigningKeys(
                self.http, authority=settings.authority_host, tenant=settings.tenant_id, clock=o.monotonic
            )
            self.authenticator = CallerAuthenticator(settings, keys, clock=o.clock)

    async def authenticate(self, authorization: str | None) -> Caller:
        if self.authenticator is None:
            return LOCAL_DEVELOPER
        return await self.authenticator.authenticate(authorization)

    def provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            raise NotFound(
                # The caller cannot see or change the broker's settings: the operator can.
                f"This broker has no provider {name!r}. Check the provider name in the URL, or ask the "
                "broker's operator which providers it serves.",
                code="unknown_provider",
            )
        return provider

    async def token(self, caller: Caller, name: str, *, min_validity: float, force: bool) -> Served:
        provider = self.provider(name)
        authorize(caller, provider.config, auth_disabled=self.settings.caller_auth_disabled)
        if not provider.config.token_route_enabled:
            raise TokenRouteDisabled(
                f"Provider {name!r} is in proxy mode ({provider.config.setting('MODE')}=proxy): its token never "
                f"leaves the broker. Send the request itself to /api/proxy/{name}/<path>, or ask the operator for "
                "mode 'both'."
            )
        return await provider.cache.get(min_validity=min_validity, force=force)

    def proxy(self, caller: Caller, name: str) -> ProviderProxy:
        """The provider's proxy, after the checks the token route makes: 404 unknown, 403, then the mode."""
        provider = self.provider(name)
        authorize(caller, provider.config, auth_disabled=self.settings.caller_auth_disabled)
        proxy = self.proxies.get(name)
        if proxy is None:
            raise NotFound(
                f"Provider {name!r} is not in proxy mode: its proxy route is off. Get a token from "
                f"/api/token/{name} instead, or ask the operator to set {provider.config.setting('MODE')} "
                "to proxy or both.",
                code="proxy_disabled",
            )
        return proxy

    async def aclose(self) -> None:
        """Close the shared clients. Only the process's owner calls this, once, at a real shutdown
        (``serve`` after uvicorn stops); no request or ASGI lifespan message does."""
        await self.http.aclose()
        if self.fleet is not None:
            self.fleet.close()
        if self.proxy_http is not None:
            await self.proxy_http.aclose()
