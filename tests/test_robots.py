"""robots.txt: the verdict of one response, the rules of one origin, the cache every worker
shares through Redis (on fakeredis and on a real redis-server), and the politeness wiring
that turns a Crawl-delay into a limiter interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from httpserver import HTTPServer

import crawler.robots
from crawler.engines import make_engine
from crawler.engines.config import DEFAULT_USER_AGENT
from crawler.options import CrawlOptions
from crawler.politeness import robots_cache
from crawler.ratelimit import AsyncRateLimiter, LimiterConfig
from crawler.records import ErrorClass, FetchResult
from crawler.robots import (
    MAX_CRAWL_DELAY,
    MAX_ROBOTS_BYTES,
    Kind,
    RobotsCache,
    RobotsEntry,
    RobotsRules,
    classify,
    origin_of,
)

UA = DEFAULT_USER_AGENT
ORIGIN = "http://a.test"
ROBOTS_URL = ORIGIN + "/robots.txt"
NOW = 1_700_000_000.0
ROBOTS = "User-agent: *\nDisallow: /private\n"


def answer(status: int | None = 200, body: bytes | str = ROBOTS,
           error: ErrorClass | None = None) -> FetchResult:
    data = body.encode() if isinstance(body, str) else body
    return FetchResult(url=ROBOTS_URL, final_url=ROBOTS_URL, status=status, error=error,
                       body=data if status is not None else None, bytes=len(data))


def rules_of(text: str, user_agent: str = UA) -> RobotsRules:
    return RobotsRules(RobotsEntry(Kind.RULES, NOW, text), user_agent)


# --- classify ---------------------------------------------------------------------------------


def test_classify_2xx_is_rules_with_the_body() -> None:
    entry = classify(answer(200, ROBOTS), previous_tries=2, max_tries=4, now=NOW)
    assert entry == RobotsEntry(Kind.RULES, NOW, ROBOTS)  # tries reset, no detail


def test_classify_truncates_a_long_body() -> None:
    body = b"#" * (MAX_ROBOTS_BYTES - 1) + "é".encode() + b"x" * 100  # é split at the cap
    entry = classify(answer(200, body), 0, 4, NOW)
    assert entry.kind is Kind.RULES
    assert len(entry.text) == MAX_ROBOTS_BYTES
    assert entry.text.endswith("#\ufffd") and "x" not in entry.text


def test_classify_2xx_without_body_allows_everything() -> None:
    entry = classify(FetchResult(url=ROBOTS_URL, status=204), 0, 4, NOW)
    assert (entry.kind, entry.text) == (Kind.RULES, "")
    assert RobotsRules(entry, UA).allowed(ORIGIN + "/any")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
def test_classify_4xx_allows_all(status: int) -> None:
    assert classify(answer(status, "nope"), 3, 4, NOW) == RobotsEntry(Kind.ALLOW_ALL, NOW)


UNREACHABLE = [
    pytest.param(answer(429, "slow"), "robots.txt answered 429", id="429"),
    pytest.param(answer(500, "x"), "robots.txt answered 500", id="500"),
    pytest.param(answer(503, "x"), "robots.txt answered 503", id="503"),
    *(pytest.param(answer(None, error=e), f"robots.txt failed: {e}", id=str(e))
      for e in (ErrorClass.TIMEOUT, ErrorClass.CONNECTION, ErrorClass.DNS, ErrorClass.TLS)),
]


@pytest.mark.parametrize(("res", "detail"), UNREACHABLE)
def test_classify_unreachable_holds_then_refuses(res: FetchResult, detail: str) -> None:
    first = classify(res, 0, 3, NOW)
    assert first == RobotsEntry(Kind.HOLD, NOW, tries=1, detail=detail)
    assert classify(res, 1, 3, NOW) == RobotsEntry(Kind.HOLD, NOW, tries=2, detail=detail)
    assert classify(res, 2, 3, NOW) == RobotsEntry(Kind.REFUSE, NOW, tries=3, detail=detail)
    # One try allowed: the first failure refuses.
    assert classify(res, 0, 1, NOW).kind is Kind.REFUSE


@pytest.mark.parametrize("error", [ErrorClass.BLOCKED_ADDRESS, ErrorClass.INVALID_URL])
def test_classify_guard_refusals_are_no_answer(error: ErrorClass) -> None:
    # Even after failures and at the last try: the pages meet the same guard themselves.
    assert classify(answer(None, error=error), 3, 4, NOW) == RobotsEntry(Kind.ALLOW_ALL, NOW)


def test_entry_round_trips_through_json() -> None:
    entry = RobotsEntry(Kind.HOLD, NOW + 0.25, "text é", tries=2, detail="robots.txt failed")
    assert RobotsEntry.loads(entry.dumps()) == entry


# --- RobotsRules ------------------------------------------------------------------------------


def test_our_user_agent_picks_its_group_over_star() -> None:
    text = ("User-agent: *\nDisallow: /\nCrawl-delay: 9\n\n"
            "User-agent: Crawler\nDisallow: /private\nCrawl-delay: 3\n\n"
            "User-agent: crawler-other\nDisallow: /\n")
    ours = rules_of(text)
    assert ours.allowed(ORIGIN + "/page") is True
    assert ours.allowed(ORIGIN + "/private/x") is False
    assert ours.crawl_delay == 3.0
    other = rules_of(text, "otherbot/1.0")
    assert other.allowed(ORIGIN + "/page") is False
    assert other.crawl_delay == 9.0


def test_star_group_applies_when_no_group_names_us() -> None:
    rules = rules_of("User-agent: otherbot\nDisallow: /\n\nUser-agent: *\nDisallow: /tmp\n")
    assert rules.allowed(ORIGIN + "/page") is True
    assert rules.allowed(ORIGIN + "/tmp/x") is False


PRECEDENCE = (
    "User-agent: *\n"
    "Disallow: /shop\n"
    "Allow: /shop/public\n"
    "Disallow: /*.pdf$\n"
    "Allow: /equal\n"
    "Disallow: /equal\n"
    "Disallow: /tmp/*/secret\n"
)


@pytest.mark.parametrize(("path", "allowed"), [
    pytest.param("/shop/cart", False, id="prefix-disallow"),
    pytest.param("/shopping", False, id="prefix-is-not-a-segment"),
    pytest.param("/shop/public/x", True, id="longer-allow-wins"),
    pytest.param("/docs/a.pdf", False, id="wildcard-and-anchor"),
    pytest.param("/docs/a.pdf?x=1", True, id="anchor-stops-at-end"),
    pytest.param("/equal", True, id="allow-wins-a-tie"),
    pytest.param("/tmp/a/b/secret", False, id="star-spans-segments"),
    pytest.param("/tmp/secret", True, id="star-keeps-the-slashes"),
    pytest.param("/other", True, id="no-rule-allows"),
    pytest.param("/robots.txt", True, id="robots-txt-itself"),
])
def test_allow_disallow_precedence(path: str, allowed: bool) -> None:
    assert rules_of(PRECEDENCE).allowed(ORIGIN + path) is allowed


def test_dollar_anchor_on_the_root() -> None:
    rules = rules_of("User-agent: *\nDisallow: /\nAllow: /$\n")
    assert rules.allowed(ORIGIN + "/") is True
    assert rules.allowed(ORIGIN + "/x") is False


@pytest.mark.parametrize(("line", "delay"), [
    pytest.param("Crawl-delay: 0.5\n", 0.5, id="fraction"),
    pytest.param("Crawl-delay: 60\n", 60.0, id="at-the-cap"),
    pytest.param("Crawl-delay: 86400\n", MAX_CRAWL_DELAY, id="clamped"),
    pytest.param("Crawl-delay: soon\n", None, id="malformed"),
    pytest.param("", None, id="absent"),
])
def test_crawl_delay_clamped(line: str, delay: float | None) -> None:
    assert rules_of(f"User-agent: crawler\nDisallow: /x\n{line}").crawl_delay == delay


def test_crawl_delay_of_another_group_is_not_ours() -> None:
    text = "User-agent: *\nCrawl-delay: 5\n\nUser-agent: crawler\nDisallow: /x\n"
    assert rules_of(text).crawl_delay is None


@pytest.mark.parametrize(("kind", "allowed"), [
    (Kind.ALLOW_ALL, True), (Kind.REFUSE, False), (Kind.HOLD, False)])
def test_non_rules_answers(kind: Kind, allowed: bool) -> None:
    # The text is ignored: only a RULES answer is parsed.
    rules = RobotsRules(RobotsEntry(kind, NOW, "User-agent: *\nAllow: /\n"), UA)
    assert rules.allowed(ORIGIN + "/page") is allowed
    assert rules.allowed(ROBOTS_URL) is allowed
    assert rules.crawl_delay is None and rules.sitemaps == []


def test_sitemaps() -> None:
    text = ("Sitemap: http://a.test/one.xml\nUser-agent: *\nDisallow: /x\n"
            "Sitemap: https://cdn.test/two.xml.gz\n")
    assert rules_of(text).sitemaps == ["http://a.test/one.xml", "https://cdn.test/two.xml.gz"]
    assert rules_of(ROBOTS).sitemaps == []


def test_a_group_for_a_word_of_our_contact_url_is_not_ours() -> None:
    rules = rules_of("User-agent: github\nDisallow: /\n\nUser-agent: *\nAllow: /\n")
    assert rules.allowed(ORIGIN + "/page") is True


# --- origin_of --------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "origin"), [
    ("http://a.test/x/y?q=1", "http://a.test"),
    ("https://a.test:8443/x", "https://a.test:8443"),
    ("http://a.test:8080?q=1", "http://a.test:8080"),
    ("http://a.test", "http://a.test"),
    ("http://127.0.0.1:9/robots.txt", "http://127.0.0.1:9"),
    ("http://[::1]:8080/x", "http://[::1]:8080"),
])
def test_origin_of(url: str, origin: str) -> None:
    assert origin_of(url) == origin


def test_origin_of_drops_userinfo() -> None:
    assert origin_of("http://user:secret@a.test:8080/x") == "http://a.test:8080"


# --- RobotsCache ------------------------------------------------------------------------------


@pytest.fixture(params=["fakeredis", "redis"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Any]]:
    """A factory of clients of ONE Redis (each client is one worker's connection)."""
    made: list[Any] = []
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()

        def new() -> Any:
            made.append(fakeredis.FakeAsyncRedis(server=server))
            return made[-1]
    else:
        url = request.getfixturevalue("redis_url")

        def new() -> Any:
            made.append(aioredis.Redis.from_url(url))
            return made[-1]

    yield new
    for c in made:
        await c.aclose()


class Contention:
    """A client that reports when a SET NX (the fetch lock) is refused: another worker waits."""

    def __init__(self, client: Any, refused: asyncio.Event) -> None:
        self._client = client
        self._refused = refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        won = await self._client.set(*args, **kwargs)
        if kwargs.get("nx") and not won:
            self._refused.set()
        return won


class FakeFetch:
    """robots.txt answers in order (the last one repeats); optionally held at a gate."""

    def __init__(self, *answers: FetchResult, gate: asyncio.Event | None = None) -> None:
        self.answers = list(answers)
        self.gate = gate
        self.calls: list[str] = []

    async def __call__(self, url: str) -> FetchResult:
        self.calls.append(url)
        if self.gate is not None:
            await self.gate.wait()
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


class Clock:
    """Stands in for the `time` module inside crawler.robots: wall time moves only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(NOW)
    # Replaces the module's `time` name only: Redis, fakeredis and the event loop keep theirs.
    monkeypatch.setattr(crawler.robots, "time", c)
    return c


def cache(client: Any, fetch: Any, **kwargs: Any) -> RobotsCache:
    return RobotsCache(client, "crawler", "j1", user_agent=UA, fetch=fetch, **kwargs)


async def test_two_workers_fetch_once_and_share(connect: Callable[[], Any]) -> None:
    # Given two workers whose first fetch is held until the other one is waiting on the lock
    refused = asyncio.Event()
    fetch = FakeFetch(answer(200, ROBOTS), gate=refused)
    seen: list[tuple[str, RobotsEntry]] = []

    async def on_fetched(origin: str, rules: RobotsRules) -> None:
        seen.append((origin, rules.entry))

    a = cache(Contention(connect(), refused), fetch, on_fetched=on_fetched)
    b = cache(Contention(connect(), refused), fetch, on_fetched=on_fetched)
    # When both load the same origin at once
    async with asyncio.timeout(10):
        ra, rb = await asyncio.gather(a.load(ORIGIN), b.load(ORIGIN))
    # Then robots.txt was requested once in total, and both have the same answer
    assert fetch.calls == [ROBOTS_URL]
    assert sorted([a.fetches, b.fetches]) == [0, 1]
    assert ra.entry == rb.entry and ra.entry.kind is Kind.RULES and ra.entry.text == ROBOTS
    assert [r.allowed(ORIGIN + "/private/x") for r in (ra, rb)] == [False, False]
    assert seen == [(ORIGIN, ra.entry)]
    assert a.lookup(ORIGIN) is ra and b.lookup(ORIGIN) is rb

    # A worker that starts later reads the shared answer without a request
    late_fetch = FakeFetch(answer(500, "must not be asked"))
    c = cache(connect(), late_fetch, on_fetched=on_fetched)
    assert c.lookup(ORIGIN) is None
    rc = await c.load(ORIGIN)
    assert rc.entry == ra.entry
    assert late_fetch.calls == [] and c.fetches == 0 and len(seen) == 1
    assert c.lookup(ORIGIN) is rc


async def test_answers_are_per_job(connect: Callable[[], Any]) -> None:
    fetch = FakeFetch(answer(200, ROBOTS))
    client = connect()
    await cache(client, fetch).load(ORIGIN)
    other = RobotsCache(client, "crawler", "j2", user_agent=UA, fetch=fetch)
    await other.load(ORIGIN)
    assert fetch.calls == [ROBOTS_URL, ROBOTS_URL]


async def test_lookup_unknown_origin(connect: Callable[[], Any]) -> None:
    c = cache(connect(), FakeFetch(answer(200, ROBOTS)))
    await c.load(ORIGIN)
    assert c.lookup("http://b.test") is None
    assert c.lookup("http://a.test:8080") is None  # another port is another origin


async def test_rules_expire_after_ttl(connect: Callable[[], Any], clock: Clock) -> None:
    fetch = FakeFetch(answer(200, ROBOTS), answer(404, ""))
    c = cache(connect(), fetch, ttl=600.0)
    first = await c.load(ORIGIN)
    assert first.entry == RobotsEntry(Kind.RULES, NOW, ROBOTS)
    clock.now = NOW + 599.9
    assert c.lookup(ORIGIN) is first
    assert await c.load(ORIGIN) is first
    assert len(fetch.calls) == 1
    clock.now = NOW + 600.0
    assert c.lookup(ORIGIN) is None
    second = await c.load(ORIGIN)
    assert second.entry == RobotsEntry(Kind.ALLOW_ALL, NOW + 600.0)
    assert len(fetch.calls) == 2 and c.lookup(ORIGIN) is second


async def test_hold_is_asked_again_after_hold_then_refused(
    connect: Callable[[], Any], clock: Clock
) -> None:
    fetch = FakeFetch(answer(503, "busy"), answer(None, error=ErrorClass.TIMEOUT),
                      answer(503, "busy"), answer(200, ROBOTS))
    c = cache(connect(), fetch, hold=30.0, tries=3, ttl=3600.0)

    held = await c.load(ORIGIN)
    assert held.entry == RobotsEntry(Kind.HOLD, NOW, tries=1,
                                     detail="robots.txt answered 503")
    assert c.hold_until(held) == NOW + 30.0
    assert held.allowed(ORIGIN + "/page") is False
    clock.now = NOW + 29.9  # still held: no second request
    assert c.lookup(ORIGIN) is held
    assert await c.load(ORIGIN) is held
    assert len(fetch.calls) == 1

    clock.now = NOW + 30.0
    assert c.lookup(ORIGIN) is None
    again = await c.load(ORIGIN)
    assert (again.entry.kind, again.entry.tries) == (Kind.HOLD, 2)
    assert again.entry.detail == "robots.txt failed: timeout"

    clock.now = NOW + 60.0
    refused = await c.load(ORIGIN)
    assert refused.entry == RobotsEntry(Kind.REFUSE, NOW + 60.0, tries=3,
                                        detail="robots.txt answered 503")
    assert refused.allowed(ORIGIN + "/page") is False
    assert len(fetch.calls) == 3

    # A refusal lasts `ttl`, not `hold`; then robots.txt is asked afresh, tries from zero.
    clock.now = NOW + 60.0 + 3599.0
    assert c.lookup(ORIGIN) is refused
    assert await c.load(ORIGIN) is refused
    assert len(fetch.calls) == 3
    clock.now = NOW + 60.0 + 3600.0
    fresh = await c.load(ORIGIN)
    assert fresh.entry == RobotsEntry(Kind.RULES, clock.now, ROBOTS)
    assert len(fetch.calls) == 4


async def test_failed_tries_are_counted_across_workers(
    connect: Callable[[], Any], clock: Clock
) -> None:
    fetch = FakeFetch(answer(500, "down"))
    a = cache(connect(), fetch, hold=10.0, tries=3)
    b = cache(connect(), fetch, hold=10.0, tries=3)
    assert (await a.load(ORIGIN)).entry.tries == 1
    clock.now += 10.0
    assert (await b.load(ORIGIN)).entry.tries == 2
    # a's own answer expired; it reads b's from Redis instead of asking again.
    assert a.lookup(ORIGIN) is None
    assert (await a.load(ORIGIN)).entry.tries == 2
    clock.now += 10.0
    assert (await a.load(ORIGIN)).entry.kind is Kind.REFUSE
    assert (await b.load(ORIGIN)).entry.kind is Kind.REFUSE
    assert len(fetch.calls) == 3 and (a.fetches, b.fetches) == (2, 1)


async def test_hold_then_success_resets_tries(connect: Callable[[], Any], clock: Clock) -> None:
    fetch = FakeFetch(answer(429, "slow"), answer(200, ROBOTS))
    c = cache(connect(), fetch, hold=5.0, tries=2)
    assert (await c.load(ORIGIN)).entry.kind is Kind.HOLD
    clock.now += 5.0
    ok = await c.load(ORIGIN)
    assert ok.entry == RobotsEntry(Kind.RULES, clock.now, ROBOTS)


# --- politeness: the job's cache, through the engine and the limiter -------------------------


class RobotsEngine:
    """An engine that answers every URL with one robots.txt body."""

    def __init__(self, body: str) -> None:
        self.body = body.encode()
        self.calls: list[str] = []

    async def fetch(self, url: str, *, before_hop: Any = None) -> FetchResult:
        self.calls.append(url)
        return FetchResult(url=url, final_url=url, status=200, body=self.body,
                           bytes=len(self.body), content_type="text/plain")


@pytest.fixture
def fake_redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


@pytest.mark.parametrize(("options", "obeys"), [
    pytest.param(CrawlOptions(depth=0, robots="auto"), False, id="seeds-only-auto"),
    pytest.param(CrawlOptions(depth=1, robots="ignore"), False, id="ignore"),
    pytest.param(CrawlOptions(depth=1, robots="auto"), True, id="crawl-auto"),
    pytest.param(CrawlOptions(depth=0, robots="obey"), True, id="obey"),
])
def test_robots_cache_only_when_obeyed(
    options: CrawlOptions, obeys: bool, fake_redis: fakeredis.FakeAsyncRedis
) -> None:
    limiter = AsyncRateLimiter(fake_redis, LimiterConfig())
    made = robots_cache(fake_redis, "crawler", "j1", options, RobotsEngine(""), limiter)
    assert (made is not None) is obeys


def test_robots_cache_takes_the_job_options(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    options = CrawlOptions(depth=2, user_agent="jobbot/2", robots_ttl=99.0, robots_hold=7.0,
                           robots_tries=5, timeout=12.0)
    limiter = AsyncRateLimiter(fake_redis, LimiterConfig())
    made = robots_cache(fake_redis, "crawler", "j1", options, RobotsEngine(""), limiter)
    assert made is not None
    assert (made.user_agent, made.ttl, made.hold, made.tries, made.lock_for) == (
        "jobbot/2", 99.0, 7.0, 5, 42.0)


async def test_crawl_delay_sets_the_host_interval(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    engine = RobotsEngine("User-agent: *\nCrawl-delay: 2\nDisallow: /private\n")
    # Wide horizons, so waits of 2 and 4 s are granted (and visible) rather than deferred.
    limiter = AsyncRateLimiter(fake_redis, LimiterConfig(host_horizon=10.0, global_horizon=10.0))
    made = robots_cache(fake_redis, "crawler", "j1", CrawlOptions(depth=1), engine, limiter)
    assert made is not None
    before_us = round(time.time() * 1_000_000)

    rules = await made.load(ORIGIN)
    assert engine.calls == [ROBOTS_URL]
    assert rules.crawl_delay == 2.0 and rules.allowed(ORIGIN + "/private") is False
    state = await limiter.host_state("a.test")
    assert state["cd"] == 2_000_000

    # Two later requests, decided at one instant, are 2 s apart, the first 2 s after the
    # robots.txt request. (now_us fixes the instant: wall time between calls does not count.)
    [g1] = await limiter.acquire_many(["a.test"], now_us=before_us)
    [g2] = await limiter.acquire_many(["a.test"], now_us=before_us)
    assert g1.granted and g2.granted
    assert g1.wait_us >= 2_000_000
    assert g2.wait_us - g1.wait_us >= 2_000_000


async def test_no_crawl_delay_leaves_the_host_alone(
    fake_redis: fakeredis.FakeAsyncRedis
) -> None:
    engine = RobotsEngine("User-agent: *\nDisallow: /private\n")
    limiter = AsyncRateLimiter(fake_redis, LimiterConfig())
    made = robots_cache(fake_redis, "crawler", "j1", CrawlOptions(depth=1), engine, limiter)
    assert made is not None
    await made.load(ORIGIN)
    assert (await limiter.host_state("a.test"))["cd"] == 0


async def robots_through_engine(
    server: HTTPServer, body: str, options: CrawlOptions, redis: Any
) -> tuple[RobotsRules, Sequence[str]]:
    server.set_route("/robots.txt", body)
    limiter = AsyncRateLimiter(redis, LimiterConfig())
    async with make_engine("async", options.fetch_config()) as engine:
        made = robots_cache(redis, "crawler", "j1", options, engine, limiter)
        assert made is not None
        rules = await made.load(origin_of(server.url("/")))
    return rules, server.paths()


async def test_robots_through_a_real_engine(
    http_server: HTTPServer, fake_redis: fakeredis.FakeAsyncRedis
) -> None:
    options = CrawlOptions(depth=1, allow_private_networks=True, timeout=5.0)
    rules, paths = await robots_through_engine(http_server, ROBOTS, options, fake_redis)
    assert paths == ["/robots.txt"]
    assert rules.entry.kind is Kind.RULES
    assert rules.allowed(http_server.url("/private/x")) is False
    assert rules.allowed(http_server.url("/ok")) is True


async def test_an_oversized_robots_txt_is_no_rules_not_a_hold(
    http_server: HTTPServer, fake_redis: fakeredis.FakeAsyncRedis
) -> None:
    # Larger than --max-bytes: the engine keeps none of it, so there are no rules to read
    # (an allow-all, like a 4xx), never a host held and then refused.
    options = CrawlOptions(depth=1, allow_private_networks=True, timeout=5.0, max_bytes=1024)
    body = ROBOTS + "#" * 4096 + "\n"
    rules, paths = await robots_through_engine(http_server, body, options, fake_redis)
    assert paths == ["/robots.txt"]
    assert rules.entry.kind is Kind.ALLOW_ALL
    assert rules.allowed(http_server.url("/private/x")) is True
