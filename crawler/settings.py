"""One typed settings object, read from defaults < TOML file < CRAWLER_* environment < flags.

The TOML file is `--config PATH`, else `$CRAWLER_CONFIG`, else `config/crawler.toml` in the
current directory when it exists. Every field is documented in `config/crawler.toml`.
"""

from __future__ import annotations

import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import RedisError

from crawler.errors import ConfigError
from crawler.options import CrawlOptions
from crawler.redis_urls import ALL_SCHEMES, SINGLE_SCHEMES, broker_for, parse_redis_url

DEFAULT_CONFIG_PATH = Path("config/crawler.toml")
# Workers and `submit` need a real Redis; with none configured they use the usual local one.
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
REDIS_SCHEMES = ALL_SCHEMES  # one server, a Redis Cluster, Sentinel: crawler/redis_urls.py
# A cluster cannot be the broker (no Celery transport speaks it); Sentinel can.
BROKER_SCHEMES = SINGLE_SCHEMES | {"redis+sentinel", "rediss+sentinel", "amqp", "amqps",
                                   "pyamqp"}

# The broker is RabbitMQ with these (see crawler/broker.py); other broker schemes are Redis.
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})


def is_amqp(broker_url: str) -> bool:
    """Whether the broker is RabbitMQ (AMQP) rather than Redis."""
    return urlsplit(broker_url).scheme in AMQP_SCHEMES


class Settings(BaseSettings, CrawlOptions):
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
    # RabbitMQ only: "quorum" declares the task queue as a quorum queue (README, "RabbitMQ").
    broker_queue_type: Literal["classic", "quorum"] = "classic"
    key_prefix: str = Field("crawler", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    # Seconds the CLI and the API retry while Redis is unreachable mid-job (workers: forever).
    redis_patience: float = Field(60.0, ge=0, le=86_400)
    # Seconds a worker's claim on a running batch lasts without a heartbeat (see README,
    # "Reliability"): a killed worker's batch is sent again at most about this long after.
    lease_seconds: float = Field(20.0, ge=2, le=3600)
    # Seconds of waiting worth one priority point (crawler/schedule.py): a batch of priority p
    # goes before one of p - 1 that was queued less than this much earlier. Producers and
    # workers of one deployment must agree on it.
    priority_aging: float = Field(60.0, gt=0, le=86_400)
    # Workers: serve Prometheus metrics on this port (None: off) and address (README, "Metrics").
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_address: str = "127.0.0.1"

    # Process (the crawl options come from CrawlOptions)
    worker_name: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"  # see crawler/logs.py

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _known_scheme(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or v == "":
            return None
        try:
            parts = urlsplit(v)
        except ValueError as exc:
            raise ValueError(f"malformed URL: {exc}") from None
        allowed = REDIS_SCHEMES if info.field_name == "redis_url" else BROKER_SCHEMES
        if parts.scheme not in allowed:
            expected = ", ".join(f"{s}://" for s in sorted(allowed))
            raise ValueError(f"unsupported URL scheme {parts.scheme!r} (expected {expected})")
        if parts.scheme in REDIS_SCHEMES - SINGLE_SCHEMES:  # several hosts: ours to parse
            parse_redis_url(v)  # ValueError: one line naming what is wrong
            return v
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
        except ValueError as exc:
            raise ValueError(f"malformed URL: {exc}") from None
        if parts.scheme in SINGLE_SCHEMES:
            _check_redis_url(v, parts)
        return v

    @field_validator("broker_queue_type")
    @classmethod
    def _quorum_needs_amqp(cls, v: str, info: ValidationInfo) -> str:
        if v == "quorum" and not is_amqp(info.data.get("broker_url") or ""):
            raise ValueError("quorum queues need a RabbitMQ broker (broker_url = amqp://...)")
        return v

    @property
    def effective_broker_url(self) -> str | None:
        return self.broker_url or self.redis_url

    @property
    def shared_redis_url(self) -> str:
        """The Redis of the distributed mode: CRAWLER_REDIS_URL, else the local default one."""
        return self.redis_url or LOCAL_REDIS

    @property
    def worker_label(self) -> str:
        """What this process writes in each record's `worker`: worker_name, else hostname:pid."""
        return self.worker_name or f"{socket.gethostname()}:{os.getpid()}"

    @property
    def shared_broker_url(self) -> str:
        """The broker of the distributed mode: CRAWLER_BROKER_URL, else the shared Redis
        (ConfigError when that Redis is a cluster: it cannot carry Celery's queue)."""
        if self.broker_url:
            return self.broker_url
        try:
            return broker_for(self.shared_redis_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

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


def _check_redis_url(url: str, parts: SplitResult) -> None:
    """Refuse a Redis URL that redis-py would only refuse at first use, with a traceback.

    redis-py builds (without connecting) the connection the URL describes, so its own parser
    judges the port, the database number and every query option (`ssl_ca_certs`, ...).
    """
    if parts.scheme != "unix":
        if not parts.hostname:  # redis-py would quietly pick localhost:6379
            raise ValueError("no host in the URL (e.g. redis://127.0.0.1:6379/0)")
        db = parts.path.strip("/")
        if db and not re.fullmatch(r"[0-9]+", db):  # redis-py would quietly use database 0
            raise ValueError(f"the database must be a number, got {db[:20]!r}")
    try:
        ConnectionPool.from_url(url).make_connection()
    except TypeError as exc:  # an option the connection class does not take
        option = re.search(r"argument '(\w+)'", str(exc))
        name = option.group(1) if option else first_line(str(exc))
        tls = " (TLS options need rediss://)" if name.startswith("ssl") else ""
        raise ValueError(f"unsupported option {name!r} in the URL{tls}") from None
    except (ValueError, RedisError) as exc:
        raise ValueError(f"invalid Redis URL: {first_line(str(exc))}") from None


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
    # Rebuilt from the raw netloc (as urlsplit splits it): parsing the port or the host
    # could raise on a malformed URL, and the error naming it must still hide the password.
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:***@{hostport}"
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


def job_options(base: CrawlOptions, overrides: dict[str, Any]) -> CrawlOptions:
    """`base`'s crawl options with some replaced, validated (ConfigError on a bad value)."""
    if not overrides:
        return base
    try:
        return CrawlOptions.model_validate({**base.job_spec(), **overrides})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, None)) from None


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
    if isinstance(value, dict):  # headers: their values may be credentials (Authorization)
        shown = {k: "***" for k in value}
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid setting {name}: {msg} (got {shown!r}){more}"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
