"""Settings: every variable of the contract (§3), validated once at start-up.

A bad value refuses to start with one line naming the variable; `live` mode refuses to start
without real credentials. Sandbox mode fills the gaps with named defaults so that the README's
curl tour works with no configuration, and those defaults never apply in `live` mode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from decimal import Decimal
from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Fixed, public sandbox credentials: the built-in simulator accepts exactly these.
SANDBOX_APP_KEY = "sandbox-app-key"
SANDBOX_APP_SECRET = "sandbox-app-secret"  # noqa: S105 - a public sandbox value, not a secret
SANDBOX_API_KEY = "sandbox"  # the key accepted in sandbox mode when API_KEYS is unset
# Signs status callbacks in sandbox mode when CALLBACK_SIGNING_SECRETS is unset (public: the
# README's `callback-receiver` verifies with it).
SANDBOX_CALLBACK_SECRET = "whsec_YnVsazM2MC1yZWxheS1zYW5kYm94LWNhbGxiYWNrcyE="  # noqa: S105
DEFAULT_CALLBACK_RETRY_S = "5,30,120,600,1800,3600,10800,21600,43200,86400"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem, reported as one line at start-up."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", case_sensitive=False
    )

    # None: sandbox mode runs the embedded PostgreSQL (app/embedded.py); live mode refuses.
    database_url: str | None = None
    bulk360_mode: Literal["sandbox", "live"] = "sandbox"
    bulk360_base_url: str = "https://sms.360.my"
    bulk360_app_key: SecretStr | None = None
    bulk360_app_secret: SecretStr | None = None
    bulk360_timeout_s: float = 30.0
    bulk360_max_concurrency: int = 64
    # Kept as raw strings (pydantic-settings would try to JSON-decode a list type).
    api_keys: SecretStr | None = None
    dn_hook_token: SecretStr | None = None
    dn_allowed_cidrs: str | None = None
    max_recipients: int = 1000
    idempotency_ttl_h: float = 24.0
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    default_region: str = "MY"
    # Where this relay is reachable; in sandbox mode the built-in simulator sends its DNs to
    # {public_base_url}/dn/{token}. `bulk360-relay serve --port` fills it when it is unset.
    public_base_url: str = "http://127.0.0.1:8000"
    # DN writer: bounded queue, batch size, and how long a DN request may wait for its COMMIT.
    dn_queue_max: int = Field(default=20_000, gt=0)
    dn_batch_max: int = Field(default=500, gt=0)
    dn_ack_timeout_s: float = Field(default=5.0, gt=0)
    # Built-in sandbox simulator: delay before it sends DNs back.
    sandbox_dn_delay_s: float = Field(default=1.0, ge=0)
    db_pool_size: int = Field(default=20, gt=0)
    # Outcomes (CONTRACT §3): a pending message with no final DN for this long is expired; the
    # periodic sweeps (expiry, retention, expired idempotency keys) run this often.
    dn_deadline_h: float = Field(default=72.0, gt=0)
    retention_days: float | None = Field(default=None, gt=0)
    sweep_interval_s: float = Field(default=60.0, gt=0)
    # Signs the operator console's session cookies and CSRF tokens (see console_signing_key).
    console_secret: SecretStr | None = None
    # The provider balance under which /readyz says low_balance and one WARNING is logged.
    low_balance_threshold: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    # Status callbacks (CONTRACT §4.5).
    callback_urls: str | None = None  # JSON object: API key name -> default callback URL
    callback_signing_secrets: SecretStr | None = None
    callback_allowed_hosts: str | None = None
    callback_timeout_s: float = Field(default=15.0, gt=0)
    callback_retry_s: str = DEFAULT_CALLBACK_RETRY_S
    # Callback attempts in flight per process (one receiver gets at most half).
    callback_concurrency: int = Field(default=256, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        v = v.strip().upper()
        if len(v) != 2 or not v.isalpha():
            raise ValueError(f"DEFAULT_REGION must be a two-letter region code, got {v!r}")
        return v

    @field_validator("bulk360_timeout_s", "idempotency_ttl_h")
    @classmethod
    def _positive_float(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be positive, got {v}")
        return v

    @field_validator("bulk360_max_concurrency", "max_recipients")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"must be positive, got {v}")
        return v

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if v.startswith(("postgresql://", "postgres://")):
            # The relay talks to PostgreSQL through asyncpg; accept the plain libpq spelling.
            v = "postgresql+asyncpg://" + v.split("://", 1)[1]
        if not v.startswith("postgresql+asyncpg://"):
            # Only the scheme is shown: the rest may hold a password.
            raise ValueError(
                f"must be a PostgreSQL URL (postgresql+asyncpg://...), got {v.split(':', 1)[0]}:..."
            )
        return v

    @field_validator("bulk360_base_url", "public_base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @field_validator("console_secret")
    @classmethod
    def _long_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        # Parse eagerly so a malformed value refuses to start rather than failing later.
        _ = self.api_key_hashes
        _ = self.dn_allowed_networks
        _ = self.callback_url_defaults, self.callback_secrets, self.callback_allowed
        _ = self.callback_retry_schedule
        if self.bulk360_mode == "live":
            missing = [
                name
                for name, value in (
                    ("DATABASE_URL", self.database_url),
                    ("BULK360_APP_KEY", self.bulk360_app_key),
                    ("BULK360_APP_SECRET", self.bulk360_app_secret),
                    ("API_KEYS", self.api_keys),
                    ("DN_HOOK_TOKEN", self.dn_hook_token),
                )
                if value is None
                or not (value if isinstance(value, str) else value.get_secret_value()).strip()
            ]
            if missing:
                raise ConfigError(
                    f"BULK360_MODE=live needs {', '.join(missing)} to be set; refusing to start"
                )
            if self.callback_url_defaults and not self.callback_secrets:
                raise ConfigError(
                    "CALLBACK_URLS needs CALLBACK_SIGNING_SECRETS (callbacks are always signed); "
                    "refusing to start"
                )
        return self

    # ---- derived values -------------------------------------------------------------------

    @property
    def sandbox(self) -> bool:
        return self.bulk360_mode == "sandbox"

    @property
    def uses_builtin_simulator(self) -> bool:
        """Sandbox mode with no BULK360_BASE_URL of its own: the relay runs the simulator."""
        return self.sandbox and "bulk360_base_url" not in self.model_fields_set

    @cached_property
    def api_key_hashes(self) -> dict[str, str]:
        """sha256 hex digest -> key name."""
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        entries: dict[str, str] = {}
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            name, sep, digest = item.partition(":")
            name, digest = name.strip(), digest.strip().lower()
            if not sep or not name:
                raise ConfigError(
                    "API_KEYS: each entry must be NAME:SHA256HEX (an entry has no ':')"
                )
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"API_KEYS: the entry for {name!r} is not a 64-digit sha256 hex")
            entries[digest] = name
        if not entries and self.sandbox:
            entries[hash_api_key(SANDBOX_API_KEY)] = SANDBOX_API_KEY
        return entries

    @cached_property
    def dn_allowed_networks(self) -> tuple[IPNetwork, ...]:
        if not self.dn_allowed_cidrs:
            return ()
        nets: list[IPNetwork] = []
        for item in (part.strip() for part in self.dn_allowed_cidrs.split(",")):
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"DN_ALLOWED_CIDRS: {item!r} is not a CIDR") from None
        return tuple(nets)

    @cached_property
    def callback_url_defaults(self) -> dict[str, str]:
        """API key name -> default callback URL (CALLBACK_URLS)."""
        if not self.callback_urls:
            return {}
        try:
            parsed = json.loads(self.callback_urls)
        except ValueError:
            raise ConfigError("CALLBACK_URLS: not a JSON object") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
        ):
            raise ConfigError('CALLBACK_URLS: must be a JSON object {"key name": "https://..."}')
        for name, url in parsed.items():
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"CALLBACK_URLS: the URL for {name!r} is not http(s)")
        return parsed

    @cached_property
    def callback_secrets(self) -> tuple[str, ...]:
        """Every `whsec_` signing secret (sandbox: the fixed sandbox one when unset)."""
        raw = (
            self.callback_signing_secrets.get_secret_value()
            if self.callback_signing_secrets
            else ""
        )
        found = tuple(part.strip() for part in raw.split(",") if part.strip())
        for position, secret in enumerate(found, 1):
            body = secret.removeprefix("whsec_")
            try:
                ok = (
                    secret.startswith("whsec_") and len(base64.b64decode(body, validate=True)) >= 16
                )
            except ValueError:
                ok = False
            if not ok:  # the secret itself is never echoed
                raise ConfigError(
                    f"CALLBACK_SIGNING_SECRETS: entry {position} is not whsec_ + base64 "
                    "of at least 16 bytes"
                )
        if not found and self.sandbox:
            return (SANDBOX_CALLBACK_SECRET,)
        return found

    @cached_property
    def callback_allowed(self) -> tuple[tuple[str, ...], tuple[IPNetwork, ...]] | None:
        """CALLBACK_ALLOWED_HOSTS as (host names and `*.suffix` wildcards, networks); None
        when unset (any host but link-local)."""
        if not self.callback_allowed_hosts:
            return None
        names: list[str] = []
        nets: list[IPNetwork] = []
        for item in (p.strip().lower() for p in self.callback_allowed_hosts.split(",")):
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if not all(part for part in item.removeprefix("*.").split(".")):
                    raise ConfigError(f"CALLBACK_ALLOWED_HOSTS: {item!r} is not a host") from None
                names.append(item)
        return tuple(names), tuple(nets)

    @cached_property
    def callback_retry_schedule(self) -> tuple[float, ...]:
        try:
            delays = tuple(float(p) for p in self.callback_retry_s.split(",") if p.strip())
        except ValueError:
            raise ConfigError("CALLBACK_RETRY_S: comma-separated seconds expected") from None
        if not all(0 <= d < float("inf") for d in delays):  # NaN fails too
            raise ConfigError("CALLBACK_RETRY_S: delays must be finite and >= 0")
        return delays

    @cached_property
    def effective_dn_hook_token(self) -> str:
        if self.dn_hook_token is not None and self.dn_hook_token.get_secret_value().strip():
            return self.dn_hook_token.get_secret_value().strip()
        # Sandbox only (live refuses to start without it): a random token for this start.
        return secrets.token_urlsafe(24)

    @cached_property
    def console_signing_key(self) -> bytes:
        """The key of the console's session cookies and CSRF tokens: CONSOLE_SECRET when set.
        Unset in live mode it is derived from BULK360_APP_SECRET and DN_HOOK_TOKEN (both
        required there), so every replica signs alike and sessions survive a restart; changing
        either secret signs everyone out. Unset in sandbox mode: random for this start."""
        if self.console_secret is not None:
            return self.console_secret.get_secret_value().strip().encode()
        if self.bulk360_mode == "live":
            # One-way: a console cookie reveals nothing about the secrets it was derived from.
            message = b"bulk360-relay console v1\x00" + self.effective_dn_hook_token.encode()
            return hmac.digest(self.effective_app_secret.encode(), message, "sha256")
        return secrets.token_bytes(32)

    @property
    def effective_app_key(self) -> str:
        if self.bulk360_app_key is not None:
            return self.bulk360_app_key.get_secret_value()
        return SANDBOX_APP_KEY

    @property
    def effective_app_secret(self) -> str:
        if self.bulk360_app_secret is not None:
            return self.bulk360_app_secret.get_secret_value()
        return SANDBOX_APP_SECRET

    def sandbox_defaults_in_use(self) -> list[str]:
        """Names of the sandbox defaults that apply, for the start-up WARNING line."""
        used = []
        if self.database_url is None:
            used.append("DATABASE_URL unset: the embedded PostgreSQL in ./.data/postgres")
        if not self.api_keys:
            used.append(f"API_KEYS unset: the key {SANDBOX_API_KEY!r} is accepted")
        if self.dn_hook_token is None:
            used.append("DN_HOOK_TOKEN unset: a random token for this start")
        if self.bulk360_app_key is None or self.bulk360_app_secret is None:
            used.append("BULK360_APP_KEY/SECRET unset: fixed sandbox credentials")
        if self.console_secret is None:
            used.append("CONSOLE_SECRET unset: console sign-ins last until this process stops")
        if not self.callback_signing_secrets:
            used.append(
                f"CALLBACK_SIGNING_SECRETS unset: callbacks signed with {SANDBOX_CALLBACK_SECRET}"
            )
        return used


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning any validation problem into one ConfigError line."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ConfigError:
        raise
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
