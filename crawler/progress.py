"""A live progress bar on stderr for the embedded crawl, fed from the runner's counters.

A daemon thread refreshes it, so the event loop never waits on the terminal.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crawler.runner import BatchRunner

REFRESH = 0.25  # s between redraws: smooth enough, costs nothing measurable


class Progress:
    """Context manager; `attach(runner)` starts drawing. Does nothing when disabled."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        return self

    def attach(self, runner: BatchRunner) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._draw, args=(runner,), daemon=True)
        self._thread.start()

    def _draw(self, runner: BatchRunner) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        st = runner.stats
        columns = (
            TextColumn("[bold]crawl"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.1f}/s ok {task.fields[ok]} failed "
                       "{task.fields[failed]} in flight {task.fields[inflight]}"),
            TimeElapsedColumn(),
        )
        with RichProgress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("crawl", total=None, rate=0.0, ok=0, failed=0, inflight=0)
            while not self._stop.wait(REFRESH):
                bar.update(task, completed=st.done, total=max(st.queued, 1), rate=st.rate,
                           ok=st.ok, failed=st.failed, inflight=st.inflight)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
