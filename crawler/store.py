"""Per-job results in Redis: exactly one record per URL, counters, streaming export.

Key layout (all keys of a job share the hash tag `{id}`, so one script can touch them all,
also on Redis Cluster):

    {prefix}:job:{id}:queued    set of request digests accepted for the job (dedupe at intake)
    {prefix}:job:{id}:bloom     instead of `queued` with dedupe = "bloom": a Bloom filter
                                (bitmap, see crawler.bloom); `seen` stays an exact set
    {prefix}:job:{id}:seen      set of URL digests that have a record (idempotent writes)
    {prefix}:job:{id}:results   stream in completion order, one entry per write batch
                                (field r = the batch's records as JSON lines)
    {prefix}:job:{id}:counters  hash: total, duplicates, rejected, done, ok, failed, bytes,
                                error:<class>, status:<Nxx>
    {prefix}:job:{id}:bodies    hash digest -> zlib-compressed body (only with --store-body)
    {prefix}:job:{id}:rate      records per second, a 64-slot ring (status: rate of last 10 s)

Digests are 16-byte BLAKE2b of a request's key (`crawler.request`: the canonical URL of a
GET, else method, URL and body digest): a fixed, small member size whatever the URL length
(about 60 bytes per URL in Redis instead of the URL itself). Claim and batches take entries
(a URL, or a JSON request); records are keyed by their request's key.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis

from crawler.bloom import BloomParams
from crawler.keys import job_key
from crawler.records import Record, status_class
from crawler.request import entry_key

WRITE_MAX = 500  # records per store round trip (and per stream entry)
CLAIM_MAX = 2000  # URLs per claim call: Lua's unpack() takes at most ~8,000 values
# Stream entries per XRANGE page. An entry holds one write batch (up to WRITE_MAX records),
# so a page is at most 20 x 500 records in memory.
EXPORT_PAGE = 20


def url_digest(url: str) -> bytes:
    return hashlib.blake2b(url.encode(), digest_size=16).digest()


@dataclass(slots=True)
class PendingRecord:
    """A record on its way to Redis, with its optional body (already capped) and the links
    found on its page (claimed into the job before the record is written)."""

    record: Record
    body: bytes | None = None
    links: list[str] | None = None
    key: str | None = None  # the request's key when it is not the record's URL (a POST...)


@dataclass(frozen=True, slots=True)
class BatchTarget:
    """Where `ResultStore.claim` queues the URLs it accepts: batch `number` of the job."""

    number: int
    key: str
    leases: str
    owners: str
    depths: str
    lease_ms: int


class ResultStore:
    """Reads and writes one job's results. Async: the runner and workers live on an event loop.

    `bloom`: claim() dedupes with that Bloom filter instead of the exact `queued` set (the
    job's `dedupe = "bloom"`, see `CrawlOptions.bloom_params`); every store of a job must be
    built alike. Record writes are exactly-once either way (the `seen` set)."""

    def __init__(self, client: Redis, job_id: str, *, prefix: str = "crawler",
                 bloom: BloomParams | None = None) -> None:
        # Any: redis-py's stubs type replies as bytes | str unions; decode_responses is off here.
        self.client: Any = client
        self.job_id = job_id
        self.prefix = prefix
        self.bloom = bloom
        self.keys = {n: job_key(prefix, job_id, n) for n in (
            "queued", "bloom", "seen", "results", "counters", "bodies", "rate")}
        lua = resources.files("crawler").joinpath("lua")
        self._write_script = client.register_script(lua.joinpath("store_records.lua").read_text())
        self._claim_script = client.register_script(lua.joinpath("claim.lua").read_text())
        self.calls = 0  # Redis round trips made by write(): reported by the benchmark
        self.level_completed = False  # set by write(): see store_records.lua
        self.over_limit = 0  # URLs claim() dropped beyond the cap

    async def claim(
        self, urls: Sequence[str], *, cap: int = 0, depth: int = 0,
        batch: BatchTarget | None = None,
    ) -> list[str]:
        """Accept entries (URLs or JSON requests, deduped by their key) into the job,
        dropping ones accepted before and any beyond `cap` in all (the job's max_pages). With
        `batch`, the accepted entries are also queued as that batch, atomically (see
        claim.lua). One round trip per 2,000 entries; safe to retry."""
        out: list[str] = []
        for i in range(0, len(urls), CLAIM_MAX):
            out += await self._claim(urls[i:i + CLAIM_MAX], cap, depth, batch)
        return out

    async def _claim(self, urls: Sequence[str], cap: int, depth: int,
                     batch: BatchTarget | None) -> list[str]:
        call = job_key(self.prefix, self.job_id, f"claim:{os.urandom(8).hex()}")
        dedupe = "queued" if self.bloom is None else "bloom"
        keys = [self.keys[dedupe], self.keys["counters"], call]
        args: list[Any] = [cap, depth, "", 0, *(self.bloom or (0, 0))]
        if batch is None:
            args += [url_digest(entry_key(u)) for u in urls]
        else:
            keys += [batch.key, batch.leases, batch.owners, batch.depths]
            args[2:4] = [batch.number, batch.lease_ms]
            for u in urls:
                args += [url_digest(entry_key(u)), u]
        flags = await self._claim_script(keys=keys, args=args)
        self.over_limit += flags.count(b"2")
        return [u for u, f in zip(urls, flags, strict=True) if f == ord("1")]

    async def add_counter(self, name: str, amount: int) -> None:
        await self.client.hincrby(self.keys["counters"], name, amount)

    async def write(self, batch: Sequence[PendingRecord]) -> int:
        """Store records, skipping URLs already recorded. Returns how many were new;
        `level_completed` says whether this write completed a link level."""
        self.level_completed = False
        if not batch:
            return 0
        args: list[Any] = [len(batch)]
        kept: list[Any] = []
        for i, item in enumerate(batch, 1):
            rec = item.record
            rec.body_stored = item.body is not None
            meta = (f"{1 if rec.ok else 0} {status_class(rec.status)} {rec.bytes} {rec.depth} "
                    f"{rec.error or ''}\n")
            args.append(b"".join((url_digest(item.key or rec.url), meta.encode(),
                                  rec.to_json())))
            if item.body is not None:
                kept += [i, zlib.compress(item.body, 6)]
        args += kept
        keys = [self.keys[n] for n in ("seen", "results", "counters", "bodies", "rate")]
        self.calls += 1
        written, completed = await self._write_script(keys=keys, args=args)
        self.level_completed = bool(completed)
        return int(written)

    async def counters(self) -> dict[str, int]:
        raw = await self.client.hgetall(self.keys["counters"])
        return {k.decode(): int(v) for k, v in raw.items()}

    async def unrecorded(self, urls: Sequence[str]) -> list[str]:
        """The entries that have no record yet: a redelivered batch fetches only what is
        missing."""
        if not urls:
            return []
        seen = await self.client.smismember(self.keys["seen"],
                                            [url_digest(entry_key(u)) for u in urls])
        return [u for u, s in zip(urls, seen, strict=True) if not s]

    async def recent_rate(self, seconds: int = 10) -> float:
        """Records per second over the last `seconds` whole seconds, from the rate ring."""
        ring = await self.client.hgetall(self.keys["rate"])
        now = int((await self.client.time())[0])
        total = 0
        for slot in range(64):
            t = ring.get(f"t{slot}".encode())
            if t is not None and now - seconds <= int(t) < now:
                total += int(ring.get(f"n{slot}".encode(), 0))
        return total / seconds

    async def body(self, url: str) -> bytes | None:
        """The stored body of a URL's GET (or of any request, given its key)."""
        raw = await self.client.hget(self.keys["bodies"], url_digest(url))
        return zlib.decompress(raw) if raw is not None else None

    async def iter_records(self, *, errors_only: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Every record in completion order, one page of the stream in memory at a time."""
        start = "-"
        while True:
            page = await self.client.xrange(self.keys["results"], min=start, count=EXPORT_PAGE)
            if not page:
                return
            for _entry_id, fields in page:
                for line in fields[b"r"].split(b"\n"):
                    rec = orjson.loads(line)
                    if errors_only and rec.get("ok"):
                        continue
                    yield rec
            last = page[-1][0].decode()
            start = "(" + last
            if len(page) < EXPORT_PAGE:
                return


def fields_from_counters(counters: dict[str, int], prefix: str) -> dict[str, int]:
    """The `error:*` or `status:*` part of a counters hash, keyed without the prefix."""
    return {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith(prefix + ":")}

