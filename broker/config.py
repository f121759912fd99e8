"""Configuration: read once from app settings / the environment into frozen objects.

Every name here is a public contract documented in docs/reference.md. ``load_settings``
validates with real checks and raises :class:`~broker.errors.ConfigError` naming
the offending setting; it never uses ``assert``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

from broker.errors import ConfigError

log = logging.getLogger(__name__)

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
BasicEncoding = Literal["raw", "form"]
# token: /api/token only (the default); proxy: /api/proxy only, the token never leaves; both.
Mode = Literal["token", "proxy", "both"]

PROVIDER_NAME = re.compile(r"^[a-z0-9-]{1,32}$")
# A tenant is a GUID or a verified domain such as contoso.onmicrosoft.com.
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$")
# Entra's aliases for "any tenant": valid in an authority URL, never as the one tenant we trust.
MULTI_TENANT_ALIASES = frozenset({"common", "organizations", "consumers"})
# The Azure CLI's public client id: the one client whose users' tokens the diagnostics route takes by
# default (the Entra hook pre-authorises it for Diagnostics.Run; shared/DOMAIN.md).
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# The values local.settings.example.json ships with, refused so they fail at start, not as a 503.
PLACEHOLDER_VAULT = "kv-your-vault"
PLACEHOLDER_TENANT = "00000000-0000-0000-0000-000000000000"

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_PROVIDERS = "ilevel"
# Seen in two public iLevel client codebases (shared/DOMAIN.md); iLevel's own docs need a login.
DEFAULT_TOKEN_URLS = {"ilevel": "https://api.ilevelsolutions.com/v1/token"}
# The data API root, seen in the same public client code (shared/DOMAIN.md).
DEFAULT_API_BASE_URLS = {"ilevel": "https://api.ilevelsolutions.com/v1/"}
# Azure's HTTP front end cuts a request at 230 s, whatever functionTimeout says.
FRONT_END_TIMEOUT_S = 230.0
# Proxy mode. host.json's functionTimeout (220 s) must sit above the longest proxied request plus a
# whole token budget, with margin, and below the front end's 230 s: 160 + 50 + 10 = 220. Above that,
# a slow upstream would race the host's timeout instead of getting the broker's own 504.
DEFAULT_PROXY_TIMEOUT_S = 120.0
MAX_PROXY_TIMEOUT_S = 160.0
# iLevel's largest page is a JSON:API page of at most 998 assets, a few MiB: 32 MiB leaves room
# for any page, and keeps the Functions host's worst case (below, 896 MB) at 44% of a 2,048 MB instance.
DEFAULT_PROXY_MAX_RESPONSE_MB = 32
# Upstream requests in flight per provider per instance: an ADF ForEach with batch count 50
# must not become 50 parallel calls against iLevel's rate limits.
DEFAULT_PROXY_CONCURRENCY = 8
# How long a proxied request may wait for a free upstream slot before 503 proxy_busy (ADF retries 503).
DEFAULT_PROXY_SLOT_WAIT_S = 10.0
MAX_PROXY_SLOT_WAIT_S = 30
# ADF's Web activity times out after 60 s by default; a whole token request,
# retries included, must finish well inside it, leaving room for Key Vault reads.
DEFAULT_TOKEN_BUDGET_S = 25.0
MAX_TOKEN_BUDGET_S = 50.0
# The fleet token cache (issue 14): the Key Vault secret holding its key, and the container infra creates.
DEFAULT_FLEET_KEY_SECRET = "broker-fleet-cache-key"
FLEET_CONTAINER = "broker-tokens"


class Setting:
    """The name of every setting the broker reads (docs/reference.md documents each): code and messages
    elsewhere name a setting from here, so renaming one cannot leave a stale name behind."""

    KEY_VAULT_URL: Final = "KEY_VAULT_URL"
    AZURE_CLIENT_ID: Final = "AZURE_CLIENT_ID"
    AZURE_AUTHORITY_HOST: Final = "AZURE_AUTHORITY_HOST"
    TENANT_ID: Final = "BROKER_TENANT_ID"
    AUDIENCE: Final = "BROKER_AUDIENCE"
    PROVIDERS: Final = "BROKER_PROVIDERS"
    TOKEN_BUDGET_SECONDS: Final = "BROKER_TOKEN_BUDGET_SECONDS"
    INSECURE_DISABLE_CALLER_AUTH: Final = "BROKER_INSECURE_DISABLE_CALLER_AUTH"
    KEY_VAULT_VERIFY_CHALLENGE_RESOURCE: Final = "BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"
    PROXY_TIMEOUT_SECONDS: Final = "BROKER_PROXY_TIMEOUT_SECONDS"
    PROXY_MAX_RESPONSE_MB: Final = "BROKER_PROXY_MAX_RESPONSE_MB"
    PROXY_SLOT_WAIT_SECONDS: Final = "BROKER_PROXY_SLOT_WAIT_SECONDS"
    INSTANCE_MEMORY_MB: Final = "BROKER_INSTANCE_MEMORY_MB"
    FLEET_CACHE_URL: Final = "BROKER_FLEET_CACHE_URL"
    FLEET_CACHE_CONNECTION_STRING: Final = "BROKER_FLEET_CACHE_CONNECTION_STRING"
    FLEET_CACHE_KEY_SECRET: Final = "BROKER_FLEET_CACHE_KEY_SECRET"
    DIAGNOSTICS_CLIENT_IDS: Final = "BROKER_DIAGNOSTICS_CLIENT_IDS"


class AzdName:
    """Names in the azd environment (infra/) that the broker's advice tells an operator to set or read."""

    # The broker's App ID URI, the audience of its tokens: check --remote asks Entra for a token for it.
    APP_ID_URI: Final = "BROKER_APP_ID_URI"
    # Addresses admitted through the vault's firewall, for an operator's laptop.
    OPERATOR_IP_ADDRESSES: Final = "BROKER_OPERATOR_IP_ADDRESSES"


# Settings the broker reads that apply to the whole process.
GLOBAL_SETTINGS: tuple[str, ...] = (
    Setting.KEY_VAULT_URL,
    Setting.AZURE_CLIENT_ID,
    Setting.AZURE_AUTHORITY_HOST,
    Setting.TENANT_ID,
    Setting.AUDIENCE,
    Setting.PROVIDERS,
    Setting.TOKEN_BUDGET_SECONDS,
    Setting.INSECURE_DISABLE_CALLER_AUTH,
    Setting.KEY_VAULT_VERIFY_CHALLENGE_RESOURCE,
    Setting.PROXY_TIMEOUT_SECONDS,
    Setting.PROXY_MAX_RESPONSE_MB,
    Setting.PROXY_SLOT_WAIT_SECONDS,
    Setting.INSTANCE_MEMORY_MB,
    Setting.FLEET_CACHE_URL,
    Setting.FLEET_CACHE_CONNECTION_STRING,
    Setting.FLEET_CACHE_KEY_SECRET,
    Setting.DIAGNOSTICS_CLIENT_IDS,
)
# Settings that must be present in a deployment to Azure (the infra cross-check reads this).
REQUIRED_IN_AZURE: tuple[str, ...] = (
    Setting.KEY_VAULT_URL,
    Setting.AZURE_CLIENT_ID,
    Setting.TENANT_ID,
    Setting.AUDIENCE,
    Setting.PROVIDERS,
)
# BROKER_<NAME>_<SUFFIX>, one set per provider.
PROVIDER_SETTING_SUFFIXES: tuple[str, ...] = (
    "TOKEN_URL",
    "AUTH_METHOD",
    "BASIC_ENCODING",
    "CLIENT_ID_SECRET",
    "CLIENT_SECRET_SECRET",
    "SCOPE",
    "AUDIENCE",
    "RESOURCE",
    "ALLOWED_CALLERS",
    "ALLOWED_ROLES",
    "API_BASE_URL",
    "MODE",
    "PROXY_CONCURRENCY",
)
# Without KEY_VAULT_URL, secret "ilevel-client-id" is read from BROKER_SECRET_ILEVEL_CLIENT_ID.
LOCAL_SECRET_PREFIX = "BROKER_SECRET_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def env_name(provider: str) -> str:
    """``my-api`` → ``MY_API``: the ``<NAME>`` part of per-provider settings."""
    return provider.upper().replace("-", "_")


def provider_setting(provider: str, suffix: str) -> str:
    """The full name of one of a provider's settings: ``BROKER_<NAME>_<SUFFIX>``, a suffix from the list."""
    if suffix not in PROVIDER_SETTING_SUFFIXES:
        raise ValueError(f"no provider setting ends in {suffix!r}; see PROVIDER_SETTING_SUFFIXES")
    return f"BROKER_{env_name(provider)}_{suffix}"


def local_secret_variable(secret_name: str) -> str:
    """The environment variable that holds a secret when no Key Vault is configured."""
    return LOCAL_SECRET_PREFIX + secret_name.upper().replace("-", "_")


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback literals (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ProviderConfig:
    """One upstream token endpoint and who may get its tokens."""

    name: str
    token_url: str
    auth_method: AuthMethod = "client_secret_basic"
    basic_encoding: BasicEncoding = "raw"
    client_id_secret: str = ""
    client_secret_secret: str = ""
    extra_params: tuple[tuple[str, str], ...] = ()
    allowed_callers: frozenset[str] = frozenset()
    allowed_roles: frozenset[str] = frozenset()
    # Proxy mode: the upstream API root (ends with "/"), which routes are open, and how
    # many upstream requests may be in flight at once.
    api_base_url: str = ""
    mode: Mode = "token"
    proxy_concurrency: int = DEFAULT_PROXY_CONCURRENCY

    @property
    def token_route_enabled(self) -> bool:
        return self.mode in ("token", "both")

    @property
    def proxy_enabled(self) -> bool:
        return self.mode in ("proxy", "both")

    @property
    def serves_nobody(self) -> bool:
        return not self.allowed_callers and not self.allowed_roles

    def setting(self, suffix: str) -> str:
        """The full app-setting name for one of this provider's settings."""
        return provider_setting(self.name, suffix)


@dataclass(frozen=True)
class FleetSettings:
    """Where the fleet token cache lives: a container URL (managed identity) or, for Azurite only, a
    connection string. ``connection_string`` holds an account key: kept out of ``repr``."""

    container_url: str | None
    connection_string: str | None = field(default=None, repr=False)
    container: str = FLEET_CONTAINER
    key_secret: str = DEFAULT_FLEET_KEY_SECRET


@dataclass(frozen=True)
class Settings:
    """Everything the broker reads from its environment, validated."""

    providers: Mapping[str, ProviderConfig]
    key_vault_url: str | None = None
    managed_identity_client_id: str | None = None
    authority_host: str = DEFAULT_AUTHORITY
    tenant_id: str = ""
    audiences: frozenset[str] = frozenset()
    token_budget_s: float = DEFAULT_TOKEN_BUDGET_S
    caller_auth_disabled: bool = False
    # False only for a local Key Vault emulator whose host is not *.vault.azure.net.
    key_vault_verify_challenge: bool = True
    running_in_azure: bool = False
    proxy_timeout_s: float = DEFAULT_PROXY_TIMEOUT_S
    proxy_max_response_bytes: int = DEFAULT_PROXY_MAX_RESPONSE_MB * 1024 * 1024
    proxy_slot_wait_s: float = DEFAULT_PROXY_SLOT_WAIT_S
    fleet: FleetSettings | None = None
    # Client application ids (appid/azp) whose users' delegated tokens the diagnostics route takes.
    diagnostics_client_ids: frozenset[str] = frozenset({AZURE_CLI_CLIENT_ID})
    warnings: tuple[str, ...] = field(default=(), compare=False)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _client_ids(env: Mapping[str, str], name: str) -> frozenset[str]:
    """The Azure CLI plus the comma-separated client (application) ids in ``name``, lower-cased."""
    listed = _split(env.get(name))
    bad = [item for item in listed if not _GUID.fullmatch(item)]
    if bad:
        raise ConfigError(
            name,
            f"must be comma-separated client (application) ids, GUIDs such as {AZURE_CLI_CLIENT_ID}; "
            f"{bad[0][:40]!r} is not one (the Azure CLI is always included)",
        )
    return frozenset({AZURE_CLI_CLIENT_ID, *(item.lower() for item in listed)})


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, f"must be true or false, got {value!r}")


def _url(name: str, value: str, *, allow_loopback_http: bool) -> str:
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and parts.hostname and allow_loopback_http and is_loopback_host(parts.hostname):
        return value
    rule = "an https URL (http only for a loopback host)" if allow_loopback_http else "an https URL"
    raise ConfigError(name, f"must be {rule}, got {value!r}")


def _provider(env: Mapping[str, str], name: str) -> ProviderConfig:
    prefix = f"BROKER_{env_name(name)}_"

    def get(suffix: str) -> str:
        return env.get(prefix + suffix, "").strip()

    token_url = get("TOKEN_URL") or DEFAULT_TOKEN_URLS.get(name, "")
    if not token_url:
        raise ConfigError(prefix + "TOKEN_URL", f"is required for provider {name!r} (the OAuth2 token endpoint URL)")
    token_url = _url(prefix + "TOKEN_URL", token_url, allow_loopback_http=True)

    method = get("AUTH_METHOD") or "client_secret_basic"
    if method not in ("client_secret_basic", "client_secret_post"):
        raise ConfigError(prefix + "AUTH_METHOD", f"must be client_secret_basic or client_secret_post, got {method!r}")
    encoding = get("BASIC_ENCODING") or "raw"
    if encoding not in ("raw", "form"):
        raise ConfigError(prefix + "BASIC_ENCODING", f"must be raw or form, got {encoding!r}")

    secret_names = {}
    for suffix, default in (
        ("CLIENT_ID_SECRET", f"{name}-client-id"),
        ("CLIENT_SECRET_SECRET", f"{name}-client-secret"),
    ):
        secret = get(suffix) or default
        # Key Vault secret names: 1-127 characters, alphanumerics and dashes.
        if not re.fullmatch(r"[A-Za-z0-9-]{1,127}", secret):
            raise ConfigError(
                prefix + suffix, f"must be a Key Vault secret name (letters, digits, '-'), got {secret!r}"
            )
        secret_names[suffix] = secret

    extras = tuple((key.lower(), get(key)) for key in ("SCOPE", "AUDIENCE", "RESOURCE") if get(key))

    mode = get("MODE").lower() or "token"
    if mode not in ("token", "proxy", "both"):
        raise ConfigError(prefix + "MODE", f"must be token, proxy or both, got {mode!r}")
    api_base_url = get("API_BASE_URL") or DEFAULT_API_BASE_URLS.get(name, "")
    if not api_base_url and mode != "token":
        raise ConfigError(
            prefix + "API_BASE_URL", f"is required for provider {name!r} in {mode} mode (the upstream API root URL)"
        )
    if api_base_url:
        api_base_url = _api_base_url(prefix + "API_BASE_URL", api_base_url)
    concurrency = _integer(env, prefix + "PROXY_CONCURRENCY", DEFAULT_PROXY_CONCURRENCY, low=1, high=1000)
    return ProviderConfig(
        name=name,
        token_url=token_url,
        auth_method=method,  # type: ignore[arg-type]
        basic_encoding=encoding,  # type: ignore[arg-type]
        client_id_secret=secret_names["CLIENT_ID_SECRET"],
        client_secret_secret=secret_names["CLIENT_SECRET_SECRET"],
        extra_params=extras,
        allowed_callers=frozenset(_split(get("ALLOWED_CALLERS"))),
        allowed_roles=frozenset(_split(get("ALLOWED_ROLES"))),
        api_base_url=api_base_url,
        mode=mode,  # type: ignore[arg-type]
        proxy_concurrency=concurrency,
    )


def _api_base_url(name: str, value: str) -> str:
    """An http(s) root with no query, fragment or credentials, normalised to end with "/"."""
    value = _url(name, value, allow_loopback_http=True)
    parts = urlsplit(value)
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ConfigError(name, f"must not carry a query or fragment, got {value!r}")
    if parts.username is not None or "@" in parts.netloc:
        raise ConfigError(name, "must not carry credentials (user@host)")
    return value if value.endswith("/") else value + "/"


def _integer(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high}, got {text!r}")
    return int(text)


def _fleet(env: Mapping[str, str], *, running_in_azure: bool) -> FleetSettings | None:
    """The fleet cache's settings, or None (off) when neither its URL nor its connection string is set."""
    url = env.get(Setting.FLEET_CACHE_URL, "").strip()
    connection = env.get(Setting.FLEET_CACHE_CONNECTION_STRING, "").strip()
    key_secret = env.get(Setting.FLEET_CACHE_KEY_SECRET, "").strip() or DEFAULT_FLEET_KEY_SECRET
    if not re.fullmatch(r"[A-Za-z0-9-]{1,127}", key_secret):
        raise ConfigError(
            Setting.FLEET_CACHE_KEY_SECRET,
            f"must be a Key Vault secret name (letters, digits, '-'), got {key_secret!r}",
        )
    if not url and not connection:
        return None
    if url and connection:
        raise ConfigError(
            Setting.FLEET_CACHE_CONNECTION_STRING,
            "is set together with BROKER_FLEET_CACHE_URL: keep only BROKER_FLEET_CACHE_URL (the managed identity "
            "reaches it); the connection string is for the local storage emulator (Azurite) only",
        )
    if url:
        url = _url(Setting.FLEET_CACHE_URL, url, allow_loopback_http=True).rstrip("/")
        parts = urlsplit(url)
        container = parts.path.strip("/")
        if parts.query or parts.fragment or parts.username is not None or "@" in parts.netloc:
            raise ConfigError(
                Setting.FLEET_CACHE_URL,
                "must be a plain container URL without a query (no SAS token), fragment or user, "
                f"e.g. https://<account>.blob.core.windows.net/{FLEET_CONTAINER}",
            )
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])?", container.rsplit("/", 1)[-1] or "-"):
            raise ConfigError(
                Setting.FLEET_CACHE_URL,
                f"must end with the blob container's name, e.g. https://<account>.blob.core.windows.net/{FLEET_CONTAINER}",
            )
        return FleetSettings(container_url=url, container=container.rsplit("/", 1)[-1], key_secret=key_secret)
    endpoint = _connection_blob_endpoint(connection)
    host = urlsplit(endpoint).hostname or ""
    if running_in_azure or not is_loopback_host(host):
        where = (
            "when running in Azure (WEBSITE_SITE_NAME is set)" if running_in_azure else f"for blob endpoint {host!r}"
        )
        raise ConfigError(
            Setting.FLEET_CACHE_CONNECTION_STRING,
            f"is refused {where}: it is for the local storage emulator (Azurite) on a loopback address only. "
            "In Azure, set BROKER_FLEET_CACHE_URL to the container URL; the managed identity reaches it, "
            "no account key",
        )
    return FleetSettings(container_url=None, connection_string=connection, key_secret=key_secret)


def _connection_blob_endpoint(connection: str) -> str:
    """The BlobEndpoint of a storage connection string (never echoing the string, which holds a key)."""
    parts = {}
    for item in connection.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            parts[key.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1"
    endpoint = parts.get("blobendpoint", "")
    if not endpoint:
        raise ConfigError(
            Setting.FLEET_CACHE_CONNECTION_STRING,
            "has no BlobEndpoint=http://127.0.0.1:<port>/<account>: only Azurite on loopback is accepted",
        )
    return endpoint


def _unknown_settings(env: Mapping[str, str], providers: list[str]) -> list[str]:
    known = set(GLOBAL_SETTINGS)
    for name in providers:
        known.update(provider_setting(name, suffix) for suffix in PROVIDER_SETTING_SUFFIXES)
    return sorted(
        key for key in env if key.startswith("BROKER_") and key not in known and not key.startswith(LOCAL_SECRET_PREFIX)
    )


def load_settings(env: Mapping[str, str], *, functions_host: bool = False, check_only: bool = False) -> Settings:
    """Build and validate :class:`Settings`; raise :class:`ConfigError` naming the bad setting.

    ``check_only``: for ``python -m broker check``, which authenticates no caller and so needs
    neither BROKER_TENANT_ID nor BROKER_AUDIENCE (they are still validated when set).

    ``functions_host``: the app is being built by function_app.py, the Azure Functions entry point.
    """
    warnings: list[str] = []
    names = _split(env.get(Setting.PROVIDERS, DEFAULT_PROVIDERS))
    if not names:
        raise ConfigError(Setting.PROVIDERS, "must name at least one provider, e.g. 'ilevel'")
    for name in names:
        if not PROVIDER_NAME.fullmatch(name):
            raise ConfigError(Setting.PROVIDERS, f"provider names must match [a-z0-9-]{{1,32}}, got {name!r}")
    if len(set(names)) != len(names):
        raise ConfigError(Setting.PROVIDERS, "lists a provider twice")
    providers = {name: _provider(env, name) for name in names}

    running_in_azure = bool(env.get("WEBSITE_SITE_NAME", "").strip())
    auth_disabled = _flag(env, Setting.INSECURE_DISABLE_CALLER_AUTH)
    functions_worker = bool(env.get("FUNCTIONS_WORKER_RUNTIME", "").strip())
    if auth_disabled and (running_in_azure or functions_host or functions_worker):
        where = (
            "when running in Azure (WEBSITE_SITE_NAME is set)"
            if running_in_azure
            else "under the Azure Functions host (FUNCTIONS_WORKER_RUNTIME is set)"
            if functions_worker
            else "under the Azure Functions entry point (function_app.py)"
        )
        raise ConfigError(
            Setting.INSECURE_DISABLE_CALLER_AUTH,
            f"is refused {where}; it is for `python -m broker serve` on loopback only: remove it from the app settings",
        )

    verify_challenge = not env.get(Setting.KEY_VAULT_VERIFY_CHALLENGE_RESOURCE, "").strip() or _flag(
        env, Setting.KEY_VAULT_VERIFY_CHALLENGE_RESOURCE
    )
    if not verify_challenge and running_in_azure:
        raise ConfigError(
            Setting.KEY_VAULT_VERIFY_CHALLENGE_RESOURCE,
            "is refused when running in Azure (WEBSITE_SITE_NAME is set); it is for local Key Vault emulators only",
        )

    vault = env.get(Setting.KEY_VAULT_URL, "").strip() or None
    if vault is not None:
        vault = _url(Setting.KEY_VAULT_URL, vault, allow_loopback_http=False)
        if PLACEHOLDER_VAULT in vault.lower():
            raise ConfigError(
                Setting.KEY_VAULT_URL,
                "still holds the placeholder from local.settings.example.json (kv-YOUR-VAULT): put your vault's "
                "URI there (after azd up: azd env get-value KEY_VAULT_URL), or remove the setting to read "
                f"secrets from {LOCAL_SECRET_PREFIX}* environment variables",
            )
    elif running_in_azure:
        raise ConfigError(Setting.KEY_VAULT_URL, "is required when running in Azure (secrets are read from Key Vault)")

    authority = (env.get(Setting.AZURE_AUTHORITY_HOST, "").strip() or DEFAULT_AUTHORITY).rstrip("/")
    if "://" not in authority:
        authority = "https://" + authority  # azure-identity accepts a bare host name too
    authority = _url(Setting.AZURE_AUTHORITY_HOST, authority, allow_loopback_http=True)

    tenant = env.get(Setting.TENANT_ID, "").strip()
    audiences = frozenset(_split(env.get(Setting.AUDIENCE)))
    if tenant == PLACEHOLDER_TENANT:
        raise ConfigError(
            Setting.TENANT_ID,
            "still holds the all-zero placeholder from local.settings.example.json: put your Entra tenant id "
            "there (az account show --query tenantId -o tsv)",
        )
    if tenant.lower() in MULTI_TENANT_ALIASES:
        raise ConfigError(
            Setting.TENANT_ID,
            f"is {tenant!r}, which names no tenant: a single tenant is required, because callers' tokens are "
            "checked against that tenant's issuer and keys. Put your Entra tenant id there "
            "(az account show --query tenantId -o tsv)",
        )
    if not auth_disabled and not check_only:
        if not tenant:
            raise ConfigError(Setting.TENANT_ID, "is required: the Entra tenant id whose callers are accepted")
        if not audiences:
            raise ConfigError(
                Setting.AUDIENCE,
                "is required: the accepted 'aud' values, e.g. api://<tenantId>/ilevel-token-broker-<env>",
            )
    if tenant and not TENANT.fullmatch(tenant):
        raise ConfigError(Setting.TENANT_ID, f"must be a tenant GUID or domain, got {tenant!r}")

    budget_text = env.get(Setting.TOKEN_BUDGET_SECONDS, "").strip()
    try:
        budget = float(budget_text) if budget_text else DEFAULT_TOKEN_BUDGET_S
    except ValueError:
        raise ConfigError(Setting.TOKEN_BUDGET_SECONDS, f"must be a number of seconds, got {budget_text!r}") from None
    if not 1 <= budget <= MAX_TOKEN_BUDGET_S:
        raise ConfigError(
            Setting.TOKEN_BUDGET_SECONDS,
            f"must be between 1 and {MAX_TOKEN_BUDGET_S:g} (ADF's Web activity waits 60 s)",
        )

    timeout_text = env.get(Setting.PROXY_TIMEOUT_SECONDS, "").strip()
    try:
        proxy_timeout = float(timeout_text) if timeout_text else DEFAULT_PROXY_TIMEOUT_S
    except ValueError:
        raise ConfigError(Setting.PROXY_TIMEOUT_SECONDS, f"must be a number of seconds, got {timeout_text!r}") from None
    if not 1 <= proxy_timeout <= MAX_PROXY_TIMEOUT_S:
        raise ConfigError(
            Setting.PROXY_TIMEOUT_SECONDS,
            f"must be between 1 and {MAX_PROXY_TIMEOUT_S:g} (the Functions host's timeout, 220 s, must cover it plus "
            "a token fetch, below the 230 s at which Azure's front end cuts requests)",
        )
    max_response_mb = _integer(env, Setting.PROXY_MAX_RESPONSE_MB, DEFAULT_PROXY_MAX_RESPONSE_MB, low=1, high=1024)
    # The slot wait comes before the proxy timeout (which includes the token fetch): 50 + 160 stays
    # within host.json's functionTimeout of 220 s.
    slot_wait = _integer(
        env, Setting.PROXY_SLOT_WAIT_SECONDS, int(DEFAULT_PROXY_SLOT_WAIT_S), low=0, high=MAX_PROXY_SLOT_WAIT_S
    )
    memory_mb = (
        _integer(env, Setting.INSTANCE_MEMORY_MB, 0, low=1, high=1_000_000)
        if env.get(Setting.INSTANCE_MEMORY_MB, "").strip()
        else None
    )
    if memory_mb is not None:
        on_functions = functions_host or functions_worker
        check_memory_budget(providers, max_response_mb, memory_mb, functions_host=on_functions)

    fleet = _fleet(env, running_in_azure=running_in_azure)

    for provider in providers.values():
        if provider.serves_nobody and not auth_disabled:
            warnings.append(
                f"provider {provider.name!r} serves nobody: set {provider.setting('ALLOWED_CALLERS')} "
                f"or {provider.setting('ALLOWED_ROLES')} to allow callers (deny by default)"
            )
    for key in _unknown_settings(env, names):
        warnings.append(f"setting {key} is not one the broker knows; check its spelling (ignored)")

    return Settings(
        providers=providers,
        key_vault_url=vault,
        managed_identity_client_id=env.get(Setting.AZURE_CLIENT_ID, "").strip() or None,
        authority_host=authority,
        tenant_id=tenant,
        audiences=audiences,
        token_budget_s=budget,
        caller_auth_disabled=auth_disabled,
        key_vault_verify_challenge=verify_challenge,
        running_in_azure=running_in_azure,
        proxy_timeout_s=proxy_timeout,
        proxy_max_response_bytes=max_response_mb * 1024 * 1024,
        proxy_slot_wait_s=float(slot_wait),
        fleet=fleet,
        diagnostics_client_ids=_client_ids(env, "BROKER_DIAGNOSTICS_CLIENT_IDS"),
        warnings=tuple(warnings),
    )


# The memory model, per host, measured by ``python -m bench proxy`` (bench/README.md):
# - Functions entry point: the bridge joins the whole answer, so a proxied body costs up to
#   this many times its size (the bridge's chunk list, then its join); the broker adds no copy.
FUNCTIONS_BODY_FACTOR = 2.0
# - ...and Microsoft's worker (4.34.0, run from source with its gRPC mock host) copies the joined
#   answer again into its response data, its response message and the serialised gRPC frame: one
#   answer peaked at 6x its size (2 + 4), while 8 concurrent answers peaked at 2.1x their sum, so
#   those four copies are counted once, for the largest answer, not per slot.
WORKER_SEND_FACTOR = 4.0
# - serve: the body streams; a proxied request holds a few chunks whatever the body's size.
SERVE_REQUEST_MB = 8
# The broker's own RSS before any proxied body (interpreter, SDKs, the Functions worker), rounded up.
BASELINE_MB = 256


def proxy_worst_case_mb(
    providers: Mapping[str, ProviderConfig], max_response_mb: int, *, functions_host: bool
) -> float:
    """Σ over proxy providers of concurrency × per-request cost, the worker's send copies, and the baseline."""
    slots = sum(p.proxy_concurrency for p in providers.values() if p.proxy_enabled)
    if not functions_host:
        return slots * SERVE_REQUEST_MB + BASELINE_MB
    sending = max_response_mb * WORKER_SEND_FACTOR if slots else 0.0
    return slots * max_response_mb * FUNCTIONS_BODY_FACTOR + sending + BASELINE_MB


def check_memory_budget(
    providers: Mapping[str, ProviderConfig], max_response_mb: int, memory_mb: int, *, functions_host: bool
) -> None:
    """Refuse to start when the proxy's worst case cannot fit the instance (BROKER_INSTANCE_MEMORY_MB)."""
    worst = proxy_worst_case_mb(providers, max_response_mb, functions_host=functions_host)
    if worst <= memory_mb:
        return
    concurrency = ", ".join(
        f"{p.setting('PROXY_CONCURRENCY')}={p.proxy_concurrency}" for p in providers.values() if p.proxy_enabled
    )
    host = (
        "the Functions bridge holds each body twice and the worker copies the largest four more times"
        if functions_host
        else "each streamed request holds a few chunks"
    )
    raise ConfigError(
        Setting.INSTANCE_MEMORY_MB,
        f"is {memory_mb} MB, which cannot hold the proxy's worst case of {worst:.0f} MB ({concurrency} at once, "
        f"BROKER_PROXY_MAX_RESPONSE_MB={max_response_mb}, {host}, plus {BASELINE_MB} MB baseline). "
        "Lower BROKER_PROXY_MAX_RESPONSE_MB or the PROXY_CONCURRENCY settings, or choose a larger instance.",
    )


def log_warnings(settings: Settings) -> None:
    """Emit start-up warnings once, where an operator reads them."""
    for warning in settings.warnings:
        log.warning("config: %s", warning)
    if settings.caller_auth_disabled:
        log.warning(
            "config: CALLER AUTHENTICATION IS OFF (BROKER_INSECURE_DISABLE_CALLER_AUTH): "
            "anyone who can reach this port gets tokens; local development only"
        )
