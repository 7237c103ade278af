"""The Python API of the distributed mode; the CLI is a thin layer over it.

    from crawler import Crawler
    with Crawler(redis_url="redis://127.0.0.1:6379/0") as c:
        job = c.submit(["https://example.org/"], qps=5)
        c.wait(job)
        for record in c.results(job):
            ...

`AsyncCrawler` is the same for asyncio code; `Crawler` runs it on a private event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import Any

from crawler import loops
from crawler.backend import check_redis, redis_client
from crawler.broker import check_broker, send_batches
from crawler.engines import make_engine
from crawler.errors import InputError, JobActive
from crawler.extract import check_extract
from crawler.feed import claimed_batches
from crawler.frontier import LinkPolicy
from crawler.jobs import TERMINAL, JobControl, JobState, JobStatus, check_job_id, new_job_id
from crawler.leases import Leases, LeaseTiming
from crawler.options import CrawlOptions
from crawler.politeness import polite_fetcher, robots_cache
from crawler.ratelimit import AsyncRateLimiter
from crawler.request import by_priority
from crawler.retention import expire_job, purge_job
from crawler.schedule import Schedule
from crawler.seeding import with_sitemaps
from crawler.settings import Settings, job_options, load_settings
from crawler.urls import IntakeStats, accept_urls

# URLs per task: amortises Celery's ~1 ms per task and the batch's own start and end (measured:
# one worker reaches 0.93 of the embedded crawl at 1,000, 0.84 at 500), small enough to share.
DEFAULT_BATCH_SIZE = 1000
WAIT_POLL = 0.5  # s between status reads while waiting for a job


class AsyncCrawler:
    """Submit, watch and control jobs run by `crawler worker` processes."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or load_settings(**overrides)
        self.client = redis_client(self.settings.shared_redis_url, name="crawler-client",
                                   patience=self.settings.redis_patience)
        self.jobs = JobControl(self.client, self.settings.key_prefix)
        self.leases = Leases(self.client, self.settings.key_prefix,
                             LeaseTiming(self.settings.lease_seconds))
        self.schedule = Schedule(self.client, self.settings.key_prefix,
                                 self.settings.priority_aging)
        self._checked = False

    async def _ready(self) -> None:
        if not self._checked:
            await check_redis(self.client, self.settings.shared_redis_url)
            self._checked = True

    async def submit_canonical(
        self,
        urls: Iterator[str],
        *,
        options: CrawlOptions | None = None,
        job_id: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        intake: IntakeStats | None = None,
    ) -> str:
        """Store the job and enqueue its batches; `urls` are already canonical (see urls.py)."""
        await self._ready()
        spec = (options or self.settings).job_spec()
        broker = self.settings.shared_broker_url
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, check_broker, broker)  # before any state is written
        if (options or self.settings).extract is not None:  # workers import it the same way
            check_extract((options or self.settings).extract or "")
        job_id = check_job_id(job_id) if job_id else new_job_id()
        intake = intake or IntakeStats()
        await self.jobs.create(job_id, spec)
        store = self.jobs.store(job_id, options or self.settings)
        opts = options or self.settings
        policy = LinkPolicy(self.client, self.settings.key_prefix, job_id, opts)
        batch_no = 0
        batches = claimed_batches(urls, store, intake, batch_size, cap=opts.max_pages,
                                  limit=opts.max_queued, on_accepted=policy.add_seeds)
        async with contextlib.AsyncExitStack() as stack:
            if opts.sitemaps:  # read here, through the job's robots cache that workers share
                engine = await stack.enter_async_context(
                    make_engine(opts.mode, opts.fetch_config()))
                limiter = AsyncRateLimiter(self.client, opts.limiter_config(
                    self.settings.key_prefix))
                batches = with_sitemaps(
                    batches, fetch=polite_fetcher(engine, limiter), policy=policy, store=store,
                    robots=robots_cache(self.client, self.settings.key_prefix, job_id, opts,
                                        engine, limiter),
                    cap=opts.max_pages, size=batch_size)
            async for batch in batches:
                for line_priority, part in by_priority(batch):  # a batch has one priority
                    pipe = self.client.pipeline(transaction=False)
                    self.jobs.add_batch(pipe, job_id, batch_no, part, priority=line_priority)
                    await pipe.execute()
                    await self._send(job_id, [batch_no], "submitted", urls=part,
                                     priorities=[opts.priority + line_priority])
                    batch_no += 1
        await self.jobs.mark_submitted(job_id, rejected=intake.rejected)
        await self._expire(job_id)  # a job with nothing to fetch ended at once
        # Found-link batches held until the seeds were all in (a level barrier): send them.
        held = await self.jobs.release_held(job_id, lease_ms=self.leases.timing.pending_ms)
        if held:
            await self._send(job_id, held, "released")
        if intake.stopped_at is not None:
            raise InputError(
                f"job {job_id} holds --max-queued {opts.max_queued} URLs (they run); input "
                f"from line {intake.stopped_at} on was not read: submit it as another job")
        return job_id

    async def submit(self, urls: Iterable[str], *, job_id: str | None = None,
                     batch_size: int = DEFAULT_BATCH_SIZE, **options: Any) -> str:
        """Submit raw URL strings (validated and canonicalized like a URL file)."""
        opts = job_options(self.settings, options)
        return await self.submit_canonical(
            accept_urls(urls, IntakeStats()), options=opts, job_id=job_id, batch_size=batch_size)

    async def status(self, job_id: str) -> JobStatus:
        await self._ready()
        return await self.jobs.status(job_id)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Until the job is finished or cancelled; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = await self.status(job_id)
            if st.state in TERMINAL:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {st.state}")
            await asyncio.sleep(WAIT_POLL)

    async def results(self, job_id: str, *, errors_only: bool = False
                      ) -> AsyncIterator[dict[str, Any]]:
        await self.status(job_id)  # JobNotFound for an unknown id
        async for rec in self.jobs.store(job_id).iter_records(errors_only=errors_only):
            yield rec

    async def control(self, job_id: str, op: str) -> JobState:
        """'pause', 'resume' or 'cancel'; returns the state after."""
        await self._ready()
        after, _before, requeue = await self.jobs.control(job_id, op)
        if after is JobState.CANCELLED:  # its keys expire `ttl` after now (README, "Redis keys")
            await self._expire(job_id)
        if requeue:
            await self._send(job_id, requeue, "resumed")
        return after

    async def _send(self, job_id: str, batch_nos: list[int], why: str,
                    urls: list[str] | None = None, priorities: list[int] | None = None) -> None:
        """Put the batches in the shared line (crawler.schedule), then send a message each."""
        if priorities is None:
            job = CrawlOptions.model_validate(await self.jobs.spec(job_id)).priority
            lines = await self.schedule.line_priorities(job_id, batch_nos)
            priorities = [job + p for p in lines]
        await self.schedule.add(job_id, list(zip(batch_nos, priorities, strict=True)))
        send_batches(self.settings.shared_broker_url, job_id, batch_nos, why=why, urls=urls,
                     queue_type=self.settings.broker_queue_type)

    async def _expire(self, job_id: str) -> None:
        """An ended job's keys get their expiry now, and it goes on the reapers' list: the
        first reaper to see no batch holds it sends its finish hooks (worker_runtime)."""
        ttl = CrawlOptions.model_validate(await self.jobs.spec(job_id)).ttl
        if await expire_job(self.client, self.settings.key_prefix, job_id, ttl) is not None:
            await self.leases.mark([job_id])

    async def purge(self, job_id: str) -> int:
        """Delete a finished or cancelled job's keys now; the number deleted. A job still
        queued, running or paused is refused (JobActive): cancel it first."""
        st = await self.status(job_id)
        if st.state not in TERMINAL:
            raise JobActive(f"job {job_id} is {st.state}: cancel it first")
        return await purge_job(self.client, self.settings.key_prefix, job_id)

    async def recent(self, limit: int = 20) -> list[JobStatus]:
        await self._ready()
        return await self.jobs.recent(limit)

    async def aclose(self) -> None:
        await self.client.aclose()


class Crawler:
    """Blocking twin of `AsyncCrawler` for scripts and notebooks."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self._runner = loops.runner()
        self._async = self._run(_make(settings, overrides))

    def _run(self, coro: Any) -> Any:
        return self._runner.run(coro)

    def submit(self, urls: Iterable[str], **kwargs: Any) -> str:
        return str(self._run(self._async.submit(urls, **kwargs)))

    def status(self, job_id: str) -> JobStatus:
        return self._run(self._async.status(job_id))  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        return self._run(self._async.wait(job_id, timeout))  # type: ignore[no-any-return]

    def results(self, job_id: str, *, errors_only: bool = False) -> Iterator[dict[str, Any]]:
        agen = self._async.results(job_id, errors_only=errors_only)
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def cancel(self, job_id: str) -> JobState:
        return self._run(self._async.control(job_id, "cancel"))  # type: ignore[no-any-return]

    def pause(self, job_id: str) -> JobState:
        return self._run(self._async.control(job_id, "pause"))  # type: ignore[no-any-return]

    def resume(self, job_id: str) -> JobState:
        return self._run(self._async.control(job_id, "resume"))  # type: ignore[no-any-return]

    def purge(self, job_id: str) -> int:
        return self._run(self._async.purge(job_id))  # type: ignore[no-any-return]

    def jobs(self, limit: int = 20) -> list[JobStatus]:
        return self._run(self._async.recent(limit))  # type: ignore[no-any-return]

    def close(self) -> None:
        self._run(self._async.aclose())
        self._runner.close()

    def __enter__(self) -> Crawler:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


async def _make(settings: Settings | None, overrides: dict[str, Any]) -> AsyncCrawler:
    return AsyncCrawler(settings, **overrides)  # the redis client binds to the runner's loop
