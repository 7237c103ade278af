"""The embedded crawl's live view on stderr: `crawler.watch` fed from the crawl's own runner.

On a terminal the view is redrawn in place; otherwise one plain line every PLAIN_EVERY
seconds (a crawl shorter than that prints none). A task on the crawl's loop takes the
snapshots (they read the run's queues, which only that loop may touch); a daemon thread
draws them, so the event loop never waits on the terminal.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.live import Live

from crawler.watch import RecentRate, WatchView, from_runner, plain, render

if TYPE_CHECKING:
    from crawler.runner import BatchRunner

REFRESH = 0.5  # s between snapshots and redraws on a terminal
PLAIN_EVERY = 10.0  # s between plain lines when stderr is not a terminal


class Progress:
    """Context manager; `attach(runner)` (on the crawl's loop) starts the view."""

    def __init__(self, job_id: str, *, enabled: bool, qps: float = 0.0,
                 per_host_qps: float = 0.0,
                 stream: TextIO | None = None, terminal: bool | None = None,
                 refresh: float = REFRESH, plain_every: float = PLAIN_EVERY) -> None:
        self.job_id = job_id
        self.enabled = enabled
        self.qps = qps
        self.per_host_qps = per_host_qps
        self.console = Console(file=stream, stderr=stream is None, force_terminal=terminal)
        self.refresh = refresh if self.console.is_terminal else plain_every
        self.latest: WatchView | None = None
        self._fresh = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> Progress:
        return self

    def attach(self, runner: BatchRunner) -> None:
        if not self.enabled:
            return
        self._task = asyncio.get_running_loop().create_task(self._snapshots(runner))
        draw = self._live if self.console.is_terminal else self._lines
        self._thread = threading.Thread(target=draw, name="crawl-view", daemon=True)
        self._thread.start()

    async def _snapshots(self, runner: BatchRunner) -> None:
        rate = RecentRate()
        while runner.stats.finished is None:
            self.latest = from_runner(self.job_id, runner, rate=rate(runner.stats.done),
                                      qps=self.qps, per_host_qps=self.per_host_qps)
            self._fresh.set()
            await asyncio.sleep(self.refresh)

    def _live(self) -> None:
        with Live(console=self.console, auto_refresh=False, transient=True,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while not self._stop.is_set():
                self._fresh.wait(self.refresh)
                self._fresh.clear()
                if self.latest is not None and not self._stop.is_set():
                    live.update(render(self.latest), refresh=True)

    def _lines(self) -> None:
        while not self._stop.wait(self.refresh):
            if self.latest is not None:
                self.console.print(plain(self.latest), soft_wrap=True, highlight=False,
                                   markup=False)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._fresh.set()
        # The snapshot task ended with the run (or with its loop, which cancels what is left).
        if self._thread is not None:
            self._thread.join(timeout=2)
