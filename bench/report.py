"""Samples in, medians, goal ratios and the markdown/JSON report out (no I/O but writing it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench.contenders import BY_NAME, GOALS


@dataclass
class Sample:
    """One run of one contender."""

    contender: str
    rep: int
    concurrency: int
    pages: int = 0
    ok: int = 0
    elapsed: float = 0.0  # s, the child's own crawl timer
    wall: float = 0.0  # s, spawn to exit
    cpu: float = 0.0  # s, user + system of the child
    maxrss_kib: int = 0
    limiter_rt: float | None = None
    nginx_cpu: float = 0.0  # s, the site's CPU during this run
    redis_cpu: float | None = None  # s, the redis-server's CPU during this run
    error: str | None = None


@dataclass
class Row:
    """Medians over a contender's successful runs."""

    contender: str
    concurrency: int
    runs: int
    pages: int
    ok: int
    rate: float  # pages/s over the child's crawl timer
    rate_wall: float  # pages/s over the whole process
    wall: float
    cpu_ms: float  # child CPU ms per page
    rss_mib: float
    limiter_rt: float | None
    nginx_ms: float
    redis_ms: float | None


def _med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def summarize(samples: list[Sample]) -> list[Row]:
    rows = []
    for name in dict.fromkeys(s.contender for s in samples):
        good = [s for s in samples if s.contender == name and s.error is None and s.pages]
        if not good:
            continue
        rows.append(Row(
            contender=name,
            concurrency=good[0].concurrency,
            runs=len(good),
            pages=int(median(s.pages for s in good)),
            ok=int(median(s.ok for s in good)),
            rate=median(s.pages / s.elapsed for s in good),
            rate_wall=median(s.pages / s.wall for s in good),
            wall=median(s.wall for s in good),
            cpu_ms=median(1000 * s.cpu / s.pages for s in good),
            rss_mib=median(s.maxrss_kib / 1024 for s in good),
            limiter_rt=_med([s.limiter_rt for s in good]),
            nginx_ms=median(1000 * s.nginx_cpu / s.pages for s in good),
            redis_ms=_med([None if s.redis_cpu is None else 1000 * s.redis_cpu / s.pages
                           for s in good]),
        ))
    return rows


@dataclass
class Ratio:
    ours: str
    raw: str
    goal: float
    rate: float  # ours/raw, medians of crawl-timer pages/s
    rate_wall: float  # ours/raw, medians of whole-process pages/s
    paired: float | None  # median over repetitions of ours/raw within the same repetition

    @property
    def met(self) -> bool:
        return self.rate >= self.goal


def paired_ratio(samples: list[Sample], ours: str, raw: str) -> float | None:
    def rates(name: str) -> dict[int, float]:
        return {s.rep: s.pages / s.elapsed for s in samples
                if s.contender == name and s.error is None and s.pages}

    a, b = rates(ours), rates(raw)
    return _med([a[rep] / b[rep] for rep in a if rep in b])


def ratios(rows: list[Row], samples: list[Sample]) -> list[Ratio]:
    by = {r.contender: r for r in rows}
    raws = {BY_NAME[r.contender].family: r for r in rows if BY_NAME[r.contender].raw}
    out = []
    for r in rows:
        c = BY_NAME[r.contender]
        base = raws.get(c.family)
        if c.raw or base is None:
            continue
        out.append(Ratio(r.contender, base.contender, GOALS[c.family],
                         r.rate / base.rate, r.rate_wall / by[base.contender].rate_wall,
                         paired_ratio(samples, r.contender, base.contender)))
    return out


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[Row]) -> str:
    head = (
        "| contender | C | runs | pages (ok) | pages/s | pages/s incl. start-up | wall s "
        "| CPU ms/page | peak RSS MiB | limiter RT/fetch | nginx CPU ms/page "
        "| redis CPU ms/page |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    body = "".join(
        f"| {r.contender} | {r.concurrency} | {r.runs} | {r.pages} ({r.ok}) | {r.rate:,.0f} "
        f"| {r.rate_wall:,.0f} | {r.wall:.2f} | {r.cpu_ms:.3f} | {r.rss_mib:.0f} "
        f"| {_f(r.limiter_rt, '.3f')} | {r.nginx_ms:.3f} | {_f(r.redis_ms, '.3f')} |\n"
        for r in rows
    )
    return head + body


def ratio_lines(rs: list[Ratio]) -> str:
    return "".join(
        f"- {r.ours} / {r.raw}: **{r.rate:.2f}** (goal >= {r.goal:.2f}: "
        f"{'met' if r.met else 'NOT met'}); paired by repetition {_f(r.paired, '.2f')}, "
        f"including start-up {r.rate_wall:.2f}\n"
        for r in rs
    )


def failures(samples: list[Sample]) -> str:
    bad = [s for s in samples if s.error]
    return "".join(f"- {s.contender} rep {s.rep}: {s.error}\n" for s in bad)


def markdown(info: dict[str, Any], samples: list[Sample]) -> str:
    rows = summarize(samples)
    machine = "".join(f"- {k}: {v}\n" for k, v in info.items())
    text = (
        f"# Crawler benchmark\n\n{machine}\n## Medians\n\n{table(rows)}\n"
        "## Goal ratios (pages/s, same run)\n\n"
        + (ratio_lines(ratios(rows, samples)) or "- none (a raw loop or ours did not finish)\n")
    )
    if fails := failures(samples):
        text += f"\n## Failed runs\n\n{fails}"
    return text


def write(dest: Path, info: dict[str, Any], samples: list[Sample]) -> str:
    """Write latest.md and latest.json under dest; returns the markdown."""
    dest.mkdir(parents=True, exist_ok=True)
    text = markdown(info, samples)
    rows = summarize(samples)
    data = {
        "info": info,
        "medians": [asdict(r) for r in rows],
        "ratios": [{**asdict(r), "met": r.met} for r in ratios(rows, samples)],
        "samples": [asdict(s) for s in samples],
    }
    (dest / "latest.md").write_text(text)
    (dest / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    return text
