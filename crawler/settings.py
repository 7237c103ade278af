"""One typed settings object, read from defaults < TOML file < CRAWLER_* environment < flags.

The TOML file is `--config PATH`, else `$CRAWLER_CONFIG`, else `config/crawler.toml` in the
current directory when it exists. Every field is documented in `config/crawler.toml`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from crawler.engines.config import DEFAULT_USER_AGENT, FetchConfig
from crawler.errors import ConfigError
from crawler.ratelimit import LimiterConfig
from crawler.retry import RetryPolicy

DEFAULT_CONFIG_PATH = Path("config/crawler.toml")
MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything a crawl, a worker or the CLI can be told. Immutable once loaded."""

    model_config = SettingsConfigDict(
        env_prefix="CRAWLER_",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # Backends
    redis_url: str | None = None
    broker_url: str | None = None
    key_prefix: str = Field("crawler", pattern=r"^[A-Za-z0-9_.-]{1,32}$")

    # Engine choice and concurrency
    mode: Literal["async", "threads"] = "async"
    concurrency: int = Field(100, ge=1, le=10_000)
    limit_per_host: int = Field(0, ge=0, le=10_000)

    # Rate limits (shared through Redis)
    qps: float = Field(0.0, ge=0, le=1_000_000)
    burst: int = Field(0, ge=0, le=1_000_000)
    per_host_qps: float = Field(0.0, ge=0, le=1_000_000)
    per_host_burst: int = Field(0, ge=0, le=1_000_000)
    host_horizon: float = Field(0.05, gt=0, le=60)
    global_horizon: float = Field(2.0, gt=0, le=600)
    limiter_scope: str = Field("global", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    penalty_base: float = Field(1.0, gt=0, le=3600)
    penalty_cap: float = Field(300.0, gt=0, le=86_400)
    slowdown_cap: float = Field(16.0, ge=1, le=1024)
    slowdown_half_life: float = Field(60.0, gt=0, le=86_400)

    # Fetching
    timeout: float = Field(30.0, gt=0, le=3600)
    connect_timeout: float = Field(10.0, gt=0, le=3600)
    read_timeout: float = Field(20.0, gt=0, le=3600)
    retries: int = Field(3, ge=0, le=20)
    retry_backoff: float = Field(0.5, ge=0, le=3600)
    retry_backoff_cap: float = Field(30.0, ge=0, le=3600)
    retry_after_cap: float = Field(120.0, ge=0, le=86_400)
    max_bytes: int = Field(10 * MiB, ge=1, le=1024 * MiB)
    max_redirects: int = Field(10, ge=0, le=100)
    user_agent: str = Field(DEFAULT_USER_AGENT, min_length=1, max_length=512)
    headers: dict[str, str] = Field(default_factory=dict)
    insecure: bool = False
    allow_private_networks: bool = False
    allowed_networks: list[str] = Field(default_factory=list)
    dns_ttl: int = Field(300, ge=0, le=86_400)
    keepalive_timeout: float = Field(30.0, ge=0, le=3600)

    # Results
    store_body: bool = False
    body_store_max_bytes: int = Field(1 * MiB, ge=1, le=64 * MiB)

    # Process
    worker_name: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        scheme = urlsplit(v).scheme
        allowed = {"redis", "rediss", "unix", "amqp", "amqps", "pyamqp"}
        if scheme not in allowed:
            raise ValueError(f"unsupported URL scheme {scheme!r} (expected redis://, rediss://)")
        return v

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for net in v:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad one
        return v

    @field_validator("headers")
    @classmethod
    def _header_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not name or any(c in name for c in " :\r\n") or any(c in value for c in "\r\n"):
                raise ValueError(f"invalid header {name!r}")
        return v

    @property
    def effective_broker_url(self) -> str | None:
        return self.broker_url or self.redis_url

    def fetch_config(self) -> FetchConfig:
        """The engine's view of these settings."""
        return FetchConfig(
            concurrency=self.concurrency,
            limit_per_host=self.limit_per_host,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_bytes=self.max_bytes,
            max_redirects=self.max_redirects,
            user_agent=self.user_agent,
            headers=tuple(sorted(self.headers.items())),
            verify_tls=not self.insecure,
            allow_private_networks=self.allow_private_networks,
            allowed_networks=tuple(self.allowed_networks),
            dns_ttl=self.dns_ttl,
            keepalive_timeout=self.keepalive_timeout,
            keep_body=self.store_body,
        )

    def limiter_config(self) -> LimiterConfig:
        """The shared limiter's view of these settings."""
        return LimiterConfig(
            qps=self.qps,
            burst=self.burst,
            per_host_qps=self.per_host_qps,
            per_host_burst=self.per_host_burst,
            host_horizon=self.host_horizon,
            global_horizon=self.global_horizon,
            prefix=self.key_prefix,
            scope=self.limiter_scope,
            penalty_base=self.penalty_base,
            penalty_cap=self.penalty_cap,
            retry_after_cap=self.retry_after_cap,
            slowdown_cap=self.slowdown_cap,
            slowdown_half_life=self.slowdown_half_life,
        )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            retries=self.retries,
            backoff=self.retry_backoff,
            backoff_cap=self.retry_backoff_cap,
            retry_after_cap=self.retry_after_cap,
        )

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in ("redis_url", "broker_url") and isinstance(value, str):
                value = mask_url(value)
            yield name, value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags (init kwargs) > environment > TOML file > defaults.
        path = _config_path_var.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


# Carries the chosen TOML path into settings_customise_sources, a classmethod pydantic calls.
_config_path_var: ContextVar[Path | None] = ContextVar("crawler_config_path", default=None)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs, status and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config, else $CRAWLER_CONFIG, else config/crawler.toml when present."""
    if explicit:
        path = Path(explicit)
    elif os.environ.get("CRAWLER_CONFIG"):
        path = Path(os.environ["CRAWLER_CONFIG"])
    elif DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH
    else:
        return None
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def load_settings(
    config: str | os.PathLike[str] | None = None, **overrides: Any
) -> Settings:
    """Load settings; `overrides` are flags (None values are ignored). Raises ConfigError."""
    path = resolve_config_path(config)
    flags = {k: v for k, v in overrides.items() if v is not None}
    token = _config_path_var.set(path)
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, path)) from None
    except (ValueError, OSError) as exc:  # unreadable or malformed TOML
        where = f" in {path}" if path else ""
        raise ConfigError(f"cannot read settings{where}: {first_line(str(exc))}") from None
    finally:
        _config_path_var.reset(token)


def describe_validation_error(exc: ValidationError, path: Path | None) -> str:
    """One line naming the first bad setting, its problem and its (masked) value."""
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"]) or "settings"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        where = f" in {path}" if path else ""
        return f"unknown setting {name!r}{where}"
    shown = mask_url(value) if isinstance(value, str) else value
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid setting {name}: {msg} (got {shown!r}){more}"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
