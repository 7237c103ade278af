"""The crawl's steps inside a run: the level barrier, robots.txt gating, handing long-deferred
hosts back, and claiming found links. A mixin of `crawler.runner._Run`, whose state it shares
(one dispatcher coroutine mutates it; these steps run on the same loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

from crawler.logs import Throttle
from crawler.pacing import MIN_RETRY_GAP
from crawler.records import ErrorClass, FetchResult
from crawler.robots import Kind, RobotsRules, origin_of
from crawler.store import PendingRecord
from crawler.work import Frontier, RunStats, Work

if TYPE_CHECKING:
    from crawler.runner import BatchRunner

log = logging.getLogger(__name__)
# Per host, so per URL when each host has one: at most one line a minute each.
_robots_errors = Throttle()
_hand_off_errors = Throttle()


class CrawlSteps:
    """Crawl-only steps of a run; the attributes below belong to `_Run`."""

    r: BatchRunner
    stats: RunStats
    loop: asyncio.AbstractEventLoop
    ready: deque[Work]
    parked: dict[str, deque[Work]]
    host_timer: set[str]
    pending: int
    wake: asyncio.Event
    exhausted: bool
    side: set[asyncio.Task[None]]
    robots_wait: dict[str, list[Work]]
    level_open: int | None
    level_pending: Counter[int]
    held: dict[int, deque[Work]]

    if TYPE_CHECKING:  # _Run's own

        def _timer(self, due: float, item: Work | str) -> None: ...
        def _host_timer(self, host: str, due: float) -> None: ...
        def _emit(self, w: Work, res: FetchResult) -> None: ...
        def _admit_work(self, w: Work) -> None: ...

    def _open_levels(self) -> None:
        """Release the next link level once every URL of the open one has its record."""
        if self.level_open is None or not self.exhausted:
            return
        while self.held and self.level_pending[self.level_open] <= 0:
            self.level_open += 1
            for w in self.held.pop(self.level_open, ()):
                parked = self.parked.get(w.host)
                (parked.append if parked is not None else self.ready.append)(w)
            self.wake.set()

    def _robots_allow(self, w: Work) -> bool:
        """May `w` go to the limiter now? Otherwise it waits for its origin's robots.txt, waits
        out a hold, or is recorded as disallowed (no request)."""
        robots = self.r.robots
        assert robots is not None
        origin = origin_of(w.url)
        rules = robots.lookup(origin)
        if rules is None:
            waiting = self.robots_wait.get(origin)
            if waiting is None:
                self.robots_wait[origin] = [w]
                task = asyncio.create_task(self._load_robots(origin))
                self.side.add(task)
                task.add_done_callback(self.side.discard)
            else:
                waiting.append(w)
            return False
        if rules.entry.kind is Kind.HOLD:
            wait = max(robots.hold_until(rules) - time.time(), MIN_RETRY_GAP)
            self._timer(self.loop.time() + wait, w)
            return False
        if rules.entry.kind is Kind.REFUSE or not rules.allowed(w.url):
            self._refuse(w, rules)
            return False
        return True

    def _refuse(self, w: Work, rules: RobotsRules) -> None:
        detail = (f"robots.txt unavailable: {rules.entry.detail}" if rules.entry.detail
                  else "disallowed by robots.txt")
        self.stats.robots_disallowed += 1
        self._emit(w, FetchResult(w.url, error=ErrorClass.ROBOTS_DISALLOWED,
                                  error_detail=detail))

    async def _load_robots(self, origin: str) -> None:
        robots = self.r.robots
        assert robots is not None
        try:
            await robots.load(origin)
        except Exception as exc:  # Redis outages are waited out below us: this is unexpected
            _robots_errors.log(log, logging.WARNING, "robots.txt of %s: %s; trying again in 1 s",
                               origin, exc)
            for w in self.robots_wait.pop(origin, []):
                self._timer(self.loop.time() + 1.0, w)
            return
        for w in reversed(self.robots_wait.pop(origin, [])):
            self.ready.appendleft(w)
        self.wake.set()

    async def _hand_off(self, host: str, works: list[Work], wait: float) -> None:
        """A host deferred for longer than `handoff_after`: its URLs wait in Redis (a delayed
        batch), not here, and this run can end without them."""
        assert self.r.defer is not None
        by_depth: dict[int, list[Work]] = {}
        for w in works:
            by_depth.setdefault(w.depth, []).append(w)
        for depth, group in by_depth.items():
            try:
                await self.r.defer([w.entry for w in group], depth, wait)
            except Exception as exc:  # keep them here: slower, never lost
                _hand_off_errors.log(log, logging.WARNING, "could not hand %d URLs of %s back: %s",
                                     len(group), host, exc)
                self.parked.setdefault(host, deque()).extend(group)
                if host not in self.host_timer:
                    self._host_timer(host, self.loop.time() + wait)
                continue
            self.pending -= len(group)
            self.stats.handed_off += len(group)
            if self.level_open is not None:
                self.level_pending[depth] -= len(group)
        self.wake.set()

    async def _follow(self, frontier: Frontier, batch: list[PendingRecord]) -> None:
        """Claim the links of these pages into the job before their records are written."""
        pages = [(item.record.depth, item.links) for item in batch if item.links]
        if not pages:
            return
        fresh = await frontier.add(pages)
        self.stats.links_found += sum(len(links) for _, links in pages)
        self.stats.links_new += len(fresh)
        for entry, depth in fresh:
            self._admit_work(Work.of(entry, depth))
        for item in batch:
            item.links = None
