"""The live view of a job: one snapshot type, drawn with rich on a terminal, a line otherwise.

`crawler status JOB --watch` builds snapshots from the job's status in Redis (which workers
report into once a second); `crawler crawl` builds them from its own runner. Both draw the
same view, so a user reads a distributed job and an embedded crawl the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from crawler.jobs import JobStatus
    from crawler.runner import BatchRunner

TOP_HOSTS = 5  # hosts shown by the URLs they have waiting
TOP_ERRORS = 6


@dataclass
class WatchView:
    """What the view shows at one instant."""

    job_id: str
    state: str
    done: int
    total: int  # URLs known to the job so far (a crawl that follows links grows it)
    ok: int
    failed: int
    rate: float  # pages/s achieved recently
    qps: float = 0.0  # the job's global limit (0: none)
    per_host_qps: float = 0.0
    inflight: int = 0
    elapsed: float | None = None  # s since the job started
    hosts: list[tuple[str, int]] = field(default_factory=list)  # top hosts by queued URLs
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)  # pages by status class
    workers: list[tuple[str, float, int | None]] = field(default_factory=list)  # name, age s,
    # its requests in flight (None: it has not reported)
    final: bool = False  # total is final (input read whole, no links pending)

    @property
    def remaining(self) -> int:
        return max(self.total - self.done, 0)

    @property
    def eta(self) -> float | None:
        """Seconds left at the recent rate; None when unknown (no rate, or still growing)."""
        if self.rate <= 0:
            return None
        return self.remaining / self.rate


def from_status(st: JobStatus, *, now_ms: float | None = None) -> WatchView:
    """The view of a distributed job (crawler.jobs.JobStatus)."""
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    started = st.started or st.created
    end = st.finished or now_ms
    return WatchView(
        job_id=st.job_id, state=str(st.state), done=st.done + st.cancelled, total=st.total,
        ok=st.ok, failed=st.failed, rate=st.rate_10s,
        qps=float(st.spec.get("qps", 0) or 0),
        per_host_qps=float(st.spec.get("per_host_qps", 0) or 0),
        inflight=st.inflight, elapsed=(end - started) / 1000 if started else None,
        hosts=top(st.queued_hosts.items(), TOP_HOSTS),
        errors=st.errors, statuses=st.statuses,
        workers=[(name, max(0.0, (now_ms - seen) / 1000), st.worker_inflight.get(name))
                 for name, seen in sorted(st.workers.items())],
        final=st.submitted and st.depth == 0,
    )


def from_runner(job_id: str, runner: BatchRunner, *, rate: float, qps: float,
                per_host_qps: float, state: str = "running") -> WatchView:
    """The view of an embedded crawl. Call on the runner's loop (it reads the run's queues)."""
    st = runner.stats
    final = runner.input_read
    return WatchView(
        job_id=job_id, state=state, done=st.done, total=st.queued, ok=st.ok, failed=st.failed,
        rate=rate, qps=qps, per_host_qps=per_host_qps, inflight=st.inflight,
        elapsed=st.elapsed, hosts=top(runner.queued_by_host().items(), TOP_HOSTS),
        errors=dict(st.errors), statuses=dict(st.statuses), final=final,
    )


def top(counts: Iterable[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    return sorted(counts, key=lambda kv: (-kv[1], kv[0]))[:n]


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _rate_text(v: WatchView) -> str:
    if v.qps > 0:
        share = 100 * v.rate / v.qps
        target = f" of {v.qps:g}/s target ({share:.0f}%)"
    else:
        target = " (no global limit)"
    host = f", at most {v.per_host_qps:g}/s per host" if v.per_host_qps > 0 else ""
    return f"{v.rate:,.1f}/s{target}{host}"


def _counts(items: Iterable[tuple[str, int]], none: str) -> str:
    shown = [f"{k} {n:,}" for k, n in items]
    return " · ".join(shown) if shown else none


def render(v: WatchView) -> RenderableType:
    """The rich view (a terminal): a header, a bar with ETA, then one row per subject."""
    pct = 100.0 * v.done / v.total if v.total else 0.0
    eta = clock(v.eta) if v.state in ("running", "queued") else "-"
    head = Text.assemble((f"job {v.job_id}", "bold"), "  ", (v.state, _state_style(v.state)),
                         f"   elapsed {clock(v.elapsed)}")
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(v.total, 1), completed=v.done, width=40),
                f"{v.done:,}/{v.total:,}{'' if v.final else '+'}", f"{pct:5.1f}%", f"ETA {eta}")
    rows = Table.grid(padding=(0, 2))
    rows.add_column(style="bold cyan", no_wrap=True)
    rows.add_column()
    rows.add_row("rate", _rate_text(v))
    rows.add_row("pages", f"ok {v.ok:,}   failed {v.failed:,}   in flight {v.inflight:,}")
    rows.add_row("hosts", _counts(v.hosts, "none waiting"))
    rows.add_row("status", _counts(sorted(v.statuses.items()), "none yet"))
    rows.add_row("errors", _counts(top(v.errors.items(), TOP_ERRORS), "none"))
    if v.workers:
        rows.add_row("workers", "\n".join(
            f"{name}  seen {age:.1f} s ago" + (f", {n} in flight" if n is not None else "")
            for name, age, n in v.workers))
    return Group(head, bar, rows)


def plain(v: WatchView) -> str:
    """The view as one line (not a terminal: logs, pipes, CI)."""
    pct = 100.0 * v.done / v.total if v.total else 0.0
    errors = ",".join(f"{k}={n}" for k, n in top(v.errors.items(), TOP_ERRORS)) or "none"
    hosts = ",".join(f"{h}={n}" for h, n in v.hosts) or "none"
    qps = f"/{v.qps:g}" if v.qps > 0 else ""
    return (f"job {v.job_id} {v.state} {v.done}/{v.total} ({pct:.1f}%) rate {v.rate:.1f}{qps}/s"
            f" eta {clock(v.eta)} ok {v.ok} failed {v.failed} inflight {v.inflight}"
            f" errors {errors} hosts {hosts} workers {len(v.workers)}")


def _state_style(state: str) -> str:
    return {"running": "green", "finished": "bold green", "cancelled": "red",
            "paused": "yellow", "queued": "blue"}.get(state, "")


class RecentRate:
    """Pages per second over the last `window` seconds, from samples of a running count."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: list[tuple[float, int]] = []

    def __call__(self, done: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.pop(0)
        t0, d0 = self.samples[0]
        return (done - d0) / (now - t0) if now > t0 else 0.0
