"""The options an engine needs for one job: plain data, shared by both engines."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_USER_AGENT = "crawler/0.1 (+https://github.com/crawler/crawler)"


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchConfig:
    """Per-job fetch behaviour. Every number here is a named setting (see config/crawler.toml)."""

    concurrency: int = 100  # in-flight requests per process (semaphore / thread pool size)
    limit_per_host: int = 0  # open connections per host; 0 = only `concurrency` bounds it
    timeout: float = 30.0  # total seconds for one attempt, redirects and body included
    connect_timeout: float = 10.0  # seconds to open a connection (DNS + TCP + TLS)
    read_timeout: float = 20.0  # seconds of silence allowed between body chunks
    max_bytes: int = 10 * 1024 * 1024  # cap on the *decoded* body: a gzip bomb stops here
    max_redirects: int = 10
    user_agent: str = DEFAULT_USER_AGENT
    headers: tuple[tuple[str, str], ...] = ()
    verify_tls: bool = True  # only an explicit --insecure turns this off
    # SSRF guard: loopback/private/link-local targets are refused unless set.
    allow_private_networks: bool = False
    # CIDRs let through the guard even if private (e.g. one intranet host).
    allowed_networks: tuple[str, ...] = ()
    dns_ttl: int = 300  # seconds a resolved (and checked) address is reused
    keepalive_timeout: float = 30.0  # seconds an idle connection stays open for reuse
    keep_body: bool = False  # return the decoded body in FetchResult.body
    keep_headers: bool = False  # return the response headers in FetchResult.headers (--extract)
    # Every request through this proxy (crawler.engines.proxy); never in a repr: a password.
    proxy: str | None = field(default=None, repr=False)
    cookies: bool = False  # one cookie jar per engine (per job on workers), else none at all
    # Workers set the job id when `cookies` is on, so each job gets its own engine (and jar);
    # "" lets jobs with equal configs share one engine.
    cookie_scope: str = ""
