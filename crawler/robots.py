"""robots.txt: fetched once per host per job, shared by every worker through Redis.

The rules follow RFC 9309 and what major search engines do:

* 2xx: the file is parsed with protego (user-agent groups matched against our User-Agent,
  Allow/Disallow with wildcards, `Crawl-delay`); at most `MAX_ROBOTS_BYTES` are read.
* 4xx (404, 401, 403, 410, ...): there are no rules, everything is allowed.
* 429, 5xx, a timeout or any network error: the host is *held*: its URLs wait `hold` seconds
  and robots.txt is asked again; after `tries` failed attempts its URLs are refused with
  `error: robots_disallowed` ("robots.txt unavailable"), never fetched without knowing.

One worker fetches (a lock in Redis); the others wait for its answer in the job's `robots`
hash, so a host sees one robots.txt request per job whatever the number of workers. Answers
are reused for `ttl` seconds. The robots.txt request itself goes through the same engine (SSRF
guard, timeouts, body cap) and the same rate limiter as pages. Pure rules in `RobotsRules`; the
fetch is a callable, so this module knows nothing of engines or HTTP libraries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from protego import Protego

from crawler.keys import job_key
from crawler.logs import Throttle
from crawler.records import ErrorClass, FetchResult

log = logging.getLogger(__name__)
# One line a minute: with one seed per host, a failing robots.txt is one per URL.
_failures = Throttle()

MAX_ROBOTS_BYTES = 500 * 1024  # Google reads the first 500 KiB; RFC 9309 asks for >= 500 KiB
POLL = 0.05  # s between looks at the shared answer while another worker fetches it
MAX_CRAWL_DELAY = 60.0  # s: a larger Crawl-delay is clamped (a day-long one would stall a job)


class Kind(StrEnum):
    RULES = "rules"  # a parsed robots.txt
    ALLOW_ALL = "allow_all"  # 4xx: no rules
    HOLD = "hold"  # unreachable for now: wait, then ask again
    REFUSE = "refuse"  # unreachable `tries` times: refuse the host's URLs


@dataclass(frozen=True, slots=True)
class RobotsEntry:
    """The shared answer for one origin (JSON in the job's `robots` hash)."""

    kind: Kind
    fetched: float  # epoch s of the answer
    text: str = ""
    tries: int = 0  # failed attempts so far (HOLD, REFUSE)
    detail: str = ""  # why a HOLD / REFUSE

    def dumps(self) -> bytes:
        return orjson.dumps({"k": self.kind, "f": self.fetched, "t": self.text,
                             "n": self.tries, "d": self.detail})

    @classmethod
    def loads(cls, raw: bytes) -> RobotsEntry:
        d = orjson.loads(raw)
        return cls(Kind(d["k"]), float(d["f"]), d.get("t", ""), int(d.get("n", 0)),
                   d.get("d", ""))


# Answers that mean "no usable robots.txt", not "unreachable": an address the SSRF guard refuses
# or an invalid URL (its pages are refused by the same guard, with their own error), too many
# redirects (RFC 9309 2.3.1.2: unavailable, like a 4xx), a file larger than --max-bytes (the
# engine keeps no part of it; far beyond the 500 KiB a robots.txt is read to).
NO_RULES_ERRORS = frozenset({ErrorClass.BLOCKED_ADDRESS, ErrorClass.INVALID_URL,
                             ErrorClass.TOO_MANY_REDIRECTS, ErrorClass.TOO_LARGE})


def classify(res: FetchResult, previous_tries: int, max_tries: int, now: float) -> RobotsEntry:
    """What one robots.txt response means for its host (see the module docstring)."""
    if res.error in NO_RULES_ERRORS:
        return RobotsEntry(Kind.ALLOW_ALL, now)
    status = res.status
    if res.error is None and status is not None:
        if 200 <= status < 300:
            body = (res.body or b"")[:MAX_ROBOTS_BYTES]
            return RobotsEntry(Kind.RULES, now, body.decode("utf-8", "replace"))
        if 400 <= status < 500 and status != 429:
            return RobotsEntry(Kind.ALLOW_ALL, now)
        detail = f"robots.txt answered {status}"
    else:
        detail = f"robots.txt failed: {res.error}"
    tries = previous_tries + 1
    return RobotsEntry(Kind.REFUSE if tries >= max_tries else Kind.HOLD, now, tries=tries,
                       detail=detail)


def product_token(user_agent: str) -> str:
    """The name robots.txt groups are matched against (RFC 9309 2.2.1): `crawler` of
    `crawler/0.1 (+https://...)`, never a word of the contact URL."""
    return (user_agent.split() or [""])[0].split("/")[0] or user_agent


class RobotsRules:
    """The rules of one origin, for one User-Agent (matched by its product token)."""

    def __init__(self, entry: RobotsEntry, user_agent: str) -> None:
        self.entry = entry
        self.user_agent = product_token(user_agent)
        self._parsed = Protego.parse(entry.text) if entry.kind is Kind.RULES else None

    def allowed(self, url: str) -> bool:
        if self._parsed is None:
            return self.entry.kind is Kind.ALLOW_ALL
        return bool(self._parsed.can_fetch(url, self.user_agent))

    @property
    def crawl_delay(self) -> float | None:
        if self._parsed is None:
            return None
        delay = self._parsed.crawl_delay(self.user_agent)
        return None if delay is None else min(max(float(delay), 0.0), MAX_CRAWL_DELAY)

    @property
    def sitemaps(self) -> list[str]:
        return list(self._parsed.sitemaps) if self._parsed is not None else []


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a canonical URL (no userinfo): robots.txt is per origin."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0].rpartition('@')[2]}"


Fetch = Callable[[str], Awaitable[FetchResult]]
OnRules = Callable[[str, RobotsRules], Awaitable[None]]


class RobotsCache:
    """One job's robots.txt answers: in this process, and shared in Redis for the others."""

    def __init__(
        self, client: Any, prefix: str, job_id: str, *, user_agent: str, fetch: Fetch,
        on_fetched: OnRules | None = None, ttl: float = 86_400.0, hold: float = 30.0,
        tries: int = 4, lock_for: float = 60.0,
    ) -> None:
        self.client = client
        self.key = job_key(prefix, job_id, "robots")
        self.lock_prefix = job_key(prefix, job_id, "robots-lock:")
        self.user_agent = user_agent
        self.fetch = fetch
        self.on_fetched = on_fetched
        self.ttl = ttl
        self.hold = hold
        self.tries = tries
        self.lock_for = lock_for
        self.local: dict[str, RobotsRules] = {}
        self.fetches = 0  # robots.txt requests this process made (tests, stats)

    def lookup(self, origin: str) -> RobotsRules | None:
        """The usable answer for `origin`, or None: `load` it first (or again: it expired)."""
        rules = self.local.get(origin)
        if rules is not None and self._fresh(rules.entry, time.time()):
            return rules
        return None

    def hold_until(self, rules: RobotsRules) -> float:
        """Epoch s when a HOLD answer may be asked again."""
        return rules.entry.fetched + self.hold

    def _fresh(self, entry: RobotsEntry, now: float) -> bool:
        if entry.kind is Kind.HOLD:
            return now < entry.fetched + self.hold
        return now < entry.fetched + self.ttl

    async def load(self, origin: str) -> RobotsRules:
        """The answer for `origin`: from this process, from Redis, or fetched (by one worker)."""
        deadline = time.monotonic() + self.lock_for + 5
        while True:
            raw = await self.client.hget(self.key, origin)
            entry = RobotsEntry.loads(raw) if raw is not None else None
            now = time.time()
            if entry is not None and self._fresh(entry, now):
                return self._keep(origin, entry)
            token = os.urandom(8).hex()
            lock = self.lock_prefix + origin
            if await self.client.set(lock, token, nx=True, px=int(self.lock_for * 1000)):
                try:
                    return await self._fetch_and_share(origin, entry)
                finally:
                    if await self.client.get(lock) == token.encode():
                        await self.client.delete(lock)
            if time.monotonic() > deadline:  # the lock holder is stuck: its lock expires soon
                deadline = time.monotonic() + self.lock_for + 5
            await asyncio.sleep(POLL)

    async def _fetch_and_share(self, origin: str, previous: RobotsEntry | None) -> RobotsRules:
        self.fetches += 1
        res = await self.fetch(origin + "/robots.txt")
        tries = previous.tries if previous is not None and previous.kind is Kind.HOLD else 0
        entry = classify(res, tries, self.tries, time.time())
        if entry.kind is not Kind.RULES and entry.kind is not Kind.ALLOW_ALL:
            _failures.log(log, logging.WARNING, "robots.txt of %s: %s (attempt %d of %d)",
                          origin, entry.detail, entry.tries, self.tries)
        rules = self._keep(origin, entry)
        if self.on_fetched is not None:
            await self.on_fetched(origin, rules)
        await self.client.hset(self.key, origin, entry.dumps())
        return rules

    def _keep(self, origin: str, entry: RobotsEntry) -> RobotsRules:
        rules = self.local.get(origin)
        if rules is None or rules.entry != entry:
            rules = self.local[origin] = RobotsRules(entry, self.user_agent)
        return rules
