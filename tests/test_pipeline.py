"""Runner + real engines + a local HTTP server: retries, Retry-After, penalties, both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import fakeredis
import pytest
from httpserver import HTTPServer

from crawler.engines import make_engine
from crawler.engines.config import FetchConfig
from crawler.ratelimit import AsyncRateLimiter, LimiterConfig
from crawler.retry import RetryPolicy
from crawler.runner import BatchRunner, RunnerOptions
from crawler.store import ResultStore

MODES = ["async", "threads"]


async def one_batch(urls: Sequence[str]) -> AsyncIterator[Sequence[str]]:
    yield urls


async def crawl(urls: Sequence[str], mode: str, *, retries: int = 3, backoff: float = 0.05,
                limiter: LimiterConfig | None = None, concurrency: int = 8) -> dict[str, dict]:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    config = FetchConfig(allow_private_networks=True, timeout=5, concurrency=concurrency)
    async with make_engine(mode, config) as engine:
        runner = BatchRunner(
            engine, AsyncRateLimiter(redis, limiter or LimiterConfig()),
            RunnerOptions(
                concurrency=concurrency, policy=RetryPolicy(retries=retries, backoff=backoff)
            ),
        )
        store = ResultStore(redis, "t")
        await runner.run(one_batch(urls), store)
        recs = {r["url"]: r async for r in store.iter_records()}
    await redis.aclose()
    assert len(recs) == len(set(urls))
    return recs


@pytest.mark.parametrize("mode", MODES)
async def test_retry_without_retry_after_then_success(mode: str, http_server: HTTPServer) -> None:
    url = http_server.url(f"/flaky/{mode}/2")
    rec = (await crawl([url], mode))[url]
    assert rec["status"] == 200 and rec["ok"] and rec["attempts"] == 3
    assert http_server.paths().count(f"/flaky/{mode}/2") == 3


@pytest.mark.parametrize("mode", MODES)
async def test_retries_exhausted_503(mode: str, http_server: HTTPServer) -> None:
    url = http_server.url("/status/503")
    rec = (await crawl([url], mode, retries=2))[url]
    assert rec["status"] == 503 and not rec["ok"] and rec["error"] is None
    assert rec["attempts"] == 3


@pytest.mark.parametrize("mode", MODES)
async def test_retry_after_is_honoured_and_shared(mode: str, http_server: HTTPServer) -> None:
    # 429 with Retry-After: 1 on the first attempt only.
    http_server.set_route("/limited", "slow down", status=429, headers={"Retry-After": "1"})
    url = http_server.url("/limited")
    rec = (await crawl([url], mode, retries=1))[url]
    assert rec["attempts"] == 2 and rec["status"] == 429
    first, second = [a.at for a in http_server.arrivals() if a.path == "/limited"]
    assert second - first >= 1.0 - 0.01  # waited for Retry-After, not the 50 ms back-off


@pytest.mark.parametrize("mode", MODES)
async def test_penalty_holds_the_host_for_every_request(
    mode: str, http_server: HTTPServer
) -> None:
    http_server.set_route("/first", "slow down", status=429, headers={"Retry-After": "1"})
    urls = [http_server.url("/first")] + [http_server.url(f"/page/{i}") for i in range(3)]
    # One at a time, so every later request is sent after the penalty was recorded.
    recs = await crawl(urls, mode, retries=0, concurrency=1)
    assert recs[urls[0]]["status"] == 429
    assert all(recs[u]["status"] == 200 for u in urls[1:])
    [penalized] = [a.at for a in http_server.arrivals() if a.path == "/first"]
    later = [a.at for a in http_server.arrivals() if a.path.startswith("/page/")]
    assert min(later) - penalized >= 1.0 - 0.01  # nobody reached the host during Retry-After


@pytest.mark.parametrize("mode", MODES)
async def test_404_is_a_result_and_not_retried(mode: str, http_server: HTTPServer) -> None:
    url = http_server.url("/status/404")
    rec = (await crawl([url], mode))[url]
    assert rec == rec | {"status": 404, "ok": False, "error": None, "attempts": 1}


# Arrivals are stamped by the in-process server's thread, which waits for the GIL: on a loaded
# machine the first stamp can come tens of ms late. A broken limiter fails every run.
@pytest.mark.flaky(reruns=2)
@pytest.mark.parametrize("mode", MODES)
async def test_global_qps_paces_arrivals(mode: str, http_server: HTTPServer) -> None:
    urls = [http_server.url(f"/page/{i}") for i in range(11)]
    await crawl(urls, mode, limiter=LimiterConfig(qps=20, scope=f"t-{mode}"))
    times = sorted(a.at for a in http_server.arrivals())
    assert len(times) == 11
    # Strict pacing at 20/s: 11 arrivals span at least 10 intervals of 50 ms (less jitter).
    assert times[-1] - times[0] >= 0.5 - 0.03
