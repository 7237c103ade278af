"""The options of one crawl job: what a job spec carries from `submit` to every worker.

Plain pydantic data (no environment, no files): a worker validates a spec from the queue
with `CrawlOptions.model_validate`, so unknown or wrong-typed fields are refused.
`crawler.settings.Settings` inherits these fields and adds the process-level ones.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from crawler.bloom import BloomParams
from crawler.engines.config import DEFAULT_USER_AGENT, FetchConfig
from crawler.engines.proxy import parse_proxy
from crawler.extract import check_spec
from crawler.ratelimit import LimiterConfig
from crawler.request import HEADER_NAME, HEADER_VALUE
from crawler.retry import RetryPolicy
from crawler.scope import check_patterns

MiB = 1024 * 1024


class CrawlOptions(BaseModel):
    """Per-job crawl behaviour; every field is documented in config/crawler.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

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
    # s: a host the limiter defers longer than this gives its URLs back to Redis as a delayed
    # batch (workers), so a batch never waits on one host
    handoff_after: float = Field(30.0, gt=0, le=86_400)
    # s of a process's own demand one limiter call reserves under a global limit (paced
    # leases, crawler.pacing.PacedLease); 0 = one call whenever a slot is free
    lease_period: float = Field(0.02, ge=0, le=1)

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
    # Every request through this proxy: http/https/socks4/socks5 URL, credentials allowed
    # (masked wherever shown; see crawler.engines.proxy)
    proxy: str | None = Field(None, max_length=2048)
    # A cookie jar per job, shared by the job's requests in one worker process (never across
    # processes or machines); off: no cookie is ever stored or sent but the job's own headers
    cookies: bool = False

    # Following links (issue 6): what a job crawls beyond its seeds
    depth: int = Field(0, ge=-1, le=1_000_000)  # link depth followed; 0 = seeds only, -1 = any
    scope: Literal["host", "domain", "any"] = "host"  # links kept: seed hosts / seed domains / all
    allow: list[str] = Field(default_factory=list, max_length=100)  # URL regexes, any must match
    deny: list[str] = Field(default_factory=list, max_length=100)  # URL regexes, none may match
    max_pages: int = Field(0, ge=0, le=10**12)  # URLs in the job, seeds included; 0 = any
    # `submit` reads at most this many new URLs into a job's queue (138 B each in Redis), and
    # says where it stopped; 0 = any
    max_queued: int = Field(10_000_000, ge=0, le=10**12)
    robots: Literal["auto", "obey", "ignore"] = "auto"  # auto: obey when following links
    robots_ttl: float = Field(86_400.0, gt=0, le=30 * 86_400)  # s a fetched robots.txt is reused
    robots_hold: float = Field(30.0, gt=0, le=86_400)  # s a host waits after robots.txt 5xx/timeout
    robots_tries: int = Field(4, ge=1, le=100)  # robots.txt fetches before its URLs are refused
    sitemaps: bool = False  # also seed from the seed hosts' sitemaps (robots.txt Sitemap: lines)
    dedupe: Literal["set", "bloom"] = "set"  # per-job URL dedupe: exact set, or a Bloom filter
    # URLs the filter is sized for, and its false-positive rate once that full (a URL taken for
    # seen is never fetched; see crawler.bloom). At most 2^32 bits: see _bloom_fits.
    bloom_capacity: int = Field(10_000_000, ge=1_000, le=4_000_000_000)
    bloom_error_rate: float = Field(0.001, ge=1e-9, le=0.1)

    # Higher first across jobs sharing workers, each point worth `priority_aging` s of waiting
    # (crawler/schedule.py); an input line's own priority adds to it
    priority: int = Field(0, ge=-100, le=100)

    # Results
    # `package.module:function` run on every 2xx page: its dict is the record's `data`, its
    # page.follow() requests join the job like links (crawler/extract.py)
    extract: str | None = Field(None, max_length=256)
    # s a job's keys (state, records, dedupe) are kept after it finishes or is cancelled
    ttl: float = Field(7 * 86_400.0, ge=1, le=10 * 365 * 86_400)
    store_body: bool = False
    body_store_max_bytes: int = Field(1 * MiB, ge=1, le=64 * MiB)
    # When the job ends (finished or cancelled): POST its final status JSON to this URL
    # (crawler/hooks.py), and/or send this Celery task by name with the status as argument
    on_finish: str | None = Field(None, max_length=2048)
    on_finish_task: str | None = Field(None, pattern=r"^[A-Za-z_][\w.:-]{0,200}$")

    @field_validator("on_finish")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, v: str | None) -> str | None:
        if not v:  # "" (an empty CRAWLER_PROXY, say) means no proxy
            return None
        parse_proxy(v)  # ValueError: one line, without the password
        return v

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "proxy" and isinstance(value, str):
                value = parse_proxy(value).masked()
            yield name, value

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad one
        return v

    @field_validator("allow", "deny")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        check_patterns(v)  # ValueError names the bad one
        return v

    @field_validator("bloom_error_rate")
    @classmethod
    def _bloom_fits(cls, v: float, info: ValidationInfo) -> float:
        # Checked on the last of the three fields (validated in order) so the error names
        # one setting, not the whole input.
        if info.data.get("dedupe") == "bloom" and "bloom_capacity" in info.data:
            BloomParams.for_capacity(info.data["bloom_capacity"], v)  # ValueError: too big
        return v

    def bloom_params(self) -> BloomParams | None:
        """The job's Bloom filter (`ResultStore(bloom=...)`), None with the exact set."""
        if self.dedupe != "bloom":
            return None
        return BloomParams.for_capacity(self.bloom_capacity, self.bloom_error_rate)

    @property
    def follows_links(self) -> bool:
        return self.depth != 0

    @property
    def obeys_robots(self) -> bool:
        return self.robots == "obey" or (self.robots == "auto" and self.follows_links)

    @property
    def level_barrier(self) -> bool:
        """Depth-limited crawls run level by level, so a URL's depth is its shortest distance
        from the seeds however many workers discover it (see crawler.frontier)."""
        return self.depth > 0

    @field_validator("extract")
    @classmethod
    def _extract_spec(cls, v: str | None) -> str | None:
        return None if v is None else check_spec(v)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not HEADER_NAME.fullmatch(name) or not HEADER_VALUE.fullmatch(value):
                raise ValueError(f"invalid header {name!r} (names: letters, digits and "
                                 "!#$%&'*+-.^_`|~; values: printable ASCII)")
        return v

    @field_validator("user_agent")
    @classmethod
    def _printable(cls, v: str) -> str:
        if not HEADER_VALUE.fullmatch(v):
            raise ValueError("use printable ASCII only (no control characters)")
        return v

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
            keep_body=(self.store_body or self.follows_links or self.obeys_robots
                       or self.sitemaps or self.extract is not None),
            keep_headers=self.extract is not None,
            proxy=self.proxy,
            cookies=self.cookies,
        )

    def limiter_config(self, prefix: str) -> LimiterConfig:
        """The shared limiter's view of these options; `prefix` is the deployment's key prefix."""
        return LimiterConfig(
            qps=self.qps,
            burst=self.burst,
            per_host_qps=self.per_host_qps,
            per_host_burst=self.per_host_burst,
            host_horizon=self.host_horizon,
            global_horizon=self.global_horizon,
            prefix=prefix,
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

    def job_spec(self) -> dict[str, Any]:
        """The JSON-safe spec stored with a job (only the job-level fields)."""
        return self.model_dump(mode="json", include=set(CrawlOptions.model_fields))
