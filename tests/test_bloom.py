"""The Bloom filter intake dedupe (`dedupe = "bloom"`): sizing, claim.lua's bloom mode, options."""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Callable

import orjson
import pydantic
import pytest
import redis.asyncio as aioredis
from sitegraph import expected
from siteserver import SiteServer

from crawler.bloom import MAX_BITS, BloomParams, expected_fp_rate, max_capacity, positions
from crawler.embedded import crawl
from crawler.options import CrawlOptions
from crawler.settings import Settings
from crawler.store import BatchTarget, ResultStore, url_digest

SMALL = BloomParams.for_capacity(1_000, 0.01)
SITE_ADDRESSES = ("127.0.0.41", "127.0.0.42", "127.0.0.43")  # no other test serves these


def urls(tag: str, n: int) -> list[str]:
    return [f"http://{tag}.example/p/{i}" for i in range(n)]


# --- sizing (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "p", "m", "k"), [
    pytest.param(1_000_000, 0.01, 9_585_064, 7, id="1M-1%"),
    pytest.param(1_000_000, 0.001, 14_377_592, 10, id="1M-0.1%"),
    pytest.param(10_000_000, 0.001, 143_775_880, 10, id="default"),
    pytest.param(1_000, 1e-9, 43_136, 30, id="tiny-p"),
])
def test_params_follow_the_standard_formulas(n: int, p: float, m: int, k: int) -> None:
    params = BloomParams.for_capacity(n, p)
    assert params == (m, k)
    assert params.m_bits % 8 == 0
    assert math.isclose(expected_fp_rate(*params, n), p, rel_tol=0.05)


def test_expected_fp_rate_grows_with_load() -> None:
    m, k = BloomParams.for_capacity(1_000_000, 0.01)
    assert expected_fp_rate(m, k, 0) == 0
    assert expected_fp_rate(m, k, 500_000) < 0.01 < expected_fp_rate(m, k, 2_000_000)


def test_a_filter_beyond_a_redis_bitmap_is_refused() -> None:
    most = max_capacity(0.001)
    assert BloomParams.for_capacity(most, 0.001).m_bits <= MAX_BITS
    with pytest.raises(ValueError, match="at most 2\\^32 bits"):
        BloomParams.for_capacity(most + 1000, 0.001)


def test_options_refuse_a_filter_that_does_not_fit() -> None:
    with pytest.raises(pydantic.ValidationError, match="298,726,561 URLs"):
        CrawlOptions(dedupe="bloom", bloom_capacity=4_000_000_000, bloom_error_rate=0.001)
    # The same numbers are harmless with the exact set (they are not used).
    assert CrawlOptions(bloom_capacity=4_000_000_000).bloom_params() is None
    assert CrawlOptions(dedupe="bloom").bloom_params() == BloomParams.for_capacity(
        10_000_000, 0.001)


@pytest.mark.parametrize("m", [8, 1000, 9_585_064, MAX_BITS])
def test_positions_are_k_offsets_below_m(m: int) -> None:
    for u in urls("pos", 200):
        got = positions(url_digest(u), m, 7)
        assert len(got) == 7 and all(0 <= p < m for p in got)
    # An odd step over a power-of-two m never repeats an offset within k.
    assert all(len(set(positions(url_digest(u), MAX_BITS, 30))) == 30 for u in urls("q", 200))


# --- claim.lua in bloom mode ----------------------------------------------------------------


async def test_new_urls_are_accepted_once(client: aioredis.Redis) -> None:
    store = ResultStore(client, "j1", bloom=SMALL)
    assert await store.claim(["http://a/", "http://b/", "http://a/"]) == ["http://a/", "http://b/"]
    assert await store.claim(["http://b/", "http://c/"]) == ["http://c/"]
    c = await store.counters()
    assert c["total"] == 3 and c["duplicates"] == 2
    assert not await client.exists(store.keys["queued"])  # the set is not used
    assert await client.strlen(store.keys["bloom"]) == SMALL.m_bits // 8  # allocated whole


async def test_lua_sets_the_bits_python_computes(client: aioredis.Redis) -> None:
    store = ResultStore(client, "j1", bloom=SMALL)
    batch = urls("bits", 300)
    assert await store.claim(batch) == batch
    want = bytearray(SMALL.m_bits // 8)
    for u in batch:
        for p in positions(url_digest(u), *SMALL):
            want[p // 8] |= 0x80 >> (p % 8)  # Redis bitmaps are big-endian within a byte
    assert await client.get(store.keys["bloom"]) == bytes(want)


async def test_the_cap_is_honoured(client: aioredis.Redis) -> None:
    store = ResultStore(client, "j1", bloom=SMALL)
    assert await store.claim(urls("cap", 5), cap=3) == urls("cap", 3)
    assert await store.claim([*urls("cap", 2), "http://other/"], cap=3) == []
    c = await store.counters()
    assert c["total"] == 3 and c["over_limit"] == 3 and c["duplicates"] == 2
    assert store.over_limit == 3
    # URLs over the cap were not added to the filter.
    assert await ResultStore(client, "j1", bloom=SMALL).claim(urls("cap", 5)[3:]) == urls(
        "cap", 5)[3:]


async def test_found_links_are_queued_as_a_batch(client: aioredis.Redis) -> None:
    store = ResultStore(client, "j1", bloom=SMALL)
    await store.claim(["http://a/"])
    key = "crawler:job:{j1}:"
    target = BatchTarget(7, key + "batch:7", key + "leases", key + "owners", key + "depths",
                         60_000)
    links = ["http://a/", "http://b/", "http://c/", "http://b/"]
    assert await store.claim(links, depth=2, batch=target) == ["http://b/", "http://c/"]
    assert await client.lrange(target.key, 0, -1) == [b"http://b/", b"http://c/"]
    assert await client.hget(target.owners, "7") == b""  # a pending lease
    assert await client.zscore(target.leases, "7") is not None
    assert await client.hget(target.depths, "7") == b"2"
    c = await store.counters()
    assert c["total"] == 3 and c["link_duplicates"] == 2 and c["lvl:a:2"] == 2


async def test_a_retried_claim_gets_the_same_answer(client: aioredis.Redis) -> None:
    store = ResultStore(client, "j1", bloom=SMALL)
    keys = [store.keys["bloom"], store.keys["counters"], "crawler:job:{j1}:claim:call1"]
    args = [0, 0, "", 0, *SMALL, *(url_digest(u) for u in ("http://a/", "http://b/"))]
    first = await store._claim_script(keys=keys, args=args)
    again = await store._claim_script(keys=keys, args=args)
    assert first == again == b"11"
    assert (await store.counters())["total"] == 2


async def test_a_filter_of_another_size_is_an_error(client: aioredis.Redis) -> None:
    await ResultStore(client, "j1", bloom=SMALL).claim(["http://a/"])
    other = ResultStore(client, "j1", bloom=BloomParams.for_capacity(2_000, 0.01))
    with pytest.raises(aioredis.ResponseError, match="has 9592 bits, this call expects"):
        await other.claim(["http://b/"])


async def test_measured_false_positive_rate(redis_url: str) -> None:
    # A real server only: fakeredis copies the whole bitmap on every bit it sets (the other
    # tests run there on a 1.2 kB filter; this one would take ~12 s on 24 kB).
    # Given a filter sized for 20,000 URLs at 1 %, filled with 20,000 URLs (10 claim calls)
    n, target = 20_000, 0.01
    client = aioredis.Redis.from_url(redis_url)
    store = ResultStore(client, "fp", bloom=BloomParams.for_capacity(n, target))
    inserted = urls("in", n)
    assert len(await store.claim(inserted)) == n - (await store.counters()).get("duplicates", 0)
    # When 20,000 other URLs are asked at the cap (known ones answer '0', new ones '2' over
    # the cap, and nothing is added: the load stays that of the inserted URLs)
    cap = (await store.counters())["total"]
    before = store.over_limit
    assert await store.claim(urls("out", n), cap=cap) == []
    false_positives = n - (store.over_limit - before)
    # Then the rate is near the target (deterministic URLs: the same count every run)
    assert false_positives / n < 2 * target
    assert false_positives > 0  # the filter really is probabilistic at this size
    # And every inserted URL is still known (no false negatives: none is over the cap).
    before = store.over_limit
    assert await store.claim(inserted, cap=cap) == []
    assert store.over_limit == before
    await client.aclose()


async def test_an_embedded_crawl_with_bloom_fetches_each_page_once(
    make_site_server: Callable[..., SiteServer], redis_url: str,
) -> None:
    # Given a generated 300-page site on three hosts of its own, no Crawl-delay
    server = make_site_server(addresses=SITE_ADDRESSES, pages=300, crawl_delay=None)
    want = expected(server.site, server.site.seeds, depth=None, scope="any")
    # When the embedded crawl follows every link with a Bloom filter on the test Redis (1e-6: no
    # false positive to expect among a few hundred URLs, whatever ports the hosts got)
    settings = Settings(redis_url=redis_url, dedupe="bloom", bloom_capacity=1_000,
                        bloom_error_rate=1e-6, depth=-1, scope="any",
                        allow_private_networks=True, retries=0)
    out = io.BytesIO()
    summary = await crawl(iter(server.site.seeds), settings, out=out)
    # Then it recorded exactly the reachable pages, each requested as often as the reference
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(r["url"] for r in records) == sorted(want.records)
    assert summary.counters["total"] == summary.counters["done"] == len(want.records)
    hits = Counter(h.url for h in server.requests() if h.target != "/robots.txt")
    assert hits == want.hits
    # And the filter, not the set, did the dedupe
    client = aioredis.Redis.from_url(redis_url)
    key = f"crawler:job:{{{summary.job_id}}}:"
    assert await client.exists(key + "bloom") and not await client.exists(key + "queued")
    await client.aclose()


async def test_high_offsets_reach_redis_exactly(redis_url: str) -> None:
    # Offsets of 9 digits (a 12.5 MB filter): Lua passes them to SETBIT as numbers.
    client = aioredis.Redis.from_url(redis_url)
    params = BloomParams(100_000_000, 5)
    batch = urls("high", 50)
    assert await ResultStore(client, "hi", bloom=params).claim(batch) == batch
    key = "crawler:job:{hi}:bloom"
    assert await client.strlen(key) == params.m_bits // 8
    want = sorted({p for u in batch for p in positions(url_digest(u), *params)})
    assert await client.bitcount(key) == len(want)
    pipe = client.pipeline(transaction=False)
    for p in want:
        pipe.getbit(key, p)
    assert set(await pipe.execute()) == {1}
    await client.aclose()
