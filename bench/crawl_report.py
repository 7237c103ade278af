"""The crawl benchmark's samples, medians, goal ratios and report (no I/O but writing it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench.crawl_contenders import GOALS


@dataclass
class CrawlSample:
    """One run of one contender (a row name carries its concurrency when several were run)."""

    row: str
    contender: str
    family: str
    rep: int
    concurrency: int
    pages: int = 0  # as the contender counts them
    ok: int = 0
    lines: int = 0  # URLs it wrote, one per page
    unique: int = 0
    missing: int = 0  # reachable pages it never wrote
    extra: int = 0  # pages it wrote that are not reachable (or not on the site)
    elapsed: float | None = None  # s, the contender's own crawl timer
    wall: float = 0.0  # s, spawn to exit
    cpu: float = 0.0  # s, user + system of the child
    maxrss_kib: int = 0
    nginx_cpu: float = 0.0
    error: str | None = None

    @property
    def same_set(self) -> bool:
        return self.missing == 0 and self.extra == 0

    def rate(self) -> float:
        """pages/s on its own timer, else on the wall clock."""
        return self.unique / (self.elapsed or self.wall)


@dataclass
class Row:
    row: str
    family: str
    concurrency: int
    runs: int
    pages: int
    unique: int
    duplicates: int
    missing: int
    extra: int
    same_set_runs: int
    rate: float  # unique pages / own crawl timer
    rate_wall: float  # unique pages / spawn-to-exit
    wall: float
    cpu_ms: float
    rss_mib: float
    nginx_ms: float


def summarize(samples: list[CrawlSample]) -> list[Row]:
    rows = []
    for name in dict.fromkeys(s.row for s in samples):
        good = [s for s in samples if s.row == name and s.error is None and s.unique]
        if not good:
            continue
        rows.append(Row(
            row=name, family=good[0].family, concurrency=good[0].concurrency, runs=len(good),
            pages=int(median(s.lines for s in good)),
            unique=int(median(s.unique for s in good)),
            duplicates=int(median(s.lines - s.unique for s in good)),
            missing=int(median(s.missing for s in good)),
            extra=int(median(s.extra for s in good)),
            same_set_runs=sum(s.same_set for s in good),
            rate=median(s.rate() for s in good),
            rate_wall=median(s.unique / s.wall for s in good),
            wall=median(s.wall for s in good),
            cpu_ms=median(1000 * s.cpu / s.unique for s in good),
            rss_mib=median(s.maxrss_kib / 1024 for s in good),
            nginx_ms=median(1000 * s.nginx_cpu / s.unique for s in good),
        ))
    return rows


def best_of(rows: list[Row], family: str) -> Row | None:
    """A family's fastest row: the goal is against each contender as well tuned as we could."""
    mine = [r for r in rows if r.family == family]
    return max(mine, key=lambda r: r.rate) if mine else None


def paired(samples: list[CrawlSample], a: str, b: str) -> float | None:
    def rates(name: str) -> dict[int, float]:
        return {s.rep: s.rate() for s in samples if s.row == name and s.error is None
                and s.unique}

    ra, rb = rates(a), rates(b)
    both = [ra[k] / rb[k] for k in ra if k in rb]
    return median(both) if both else None


def ratios(rows: list[Row], samples: list[CrawlSample]) -> list[dict[str, Any]]:
    ours = best_of(rows, "ours")
    out = []
    for family, goal in GOALS.items():
        theirs = best_of(rows, family)
        if ours is None or theirs is None:
            continue
        rate = ours.rate / theirs.rate
        out.append({"ours": ours.row, "theirs": theirs.row, "goal": goal, "rate": rate,
                    "rate_wall": ours.rate_wall / theirs.rate_wall, "met": rate >= goal,
                    "paired": paired(samples, ours.row, theirs.row),
                    "same_set": ours.same_set_runs == ours.runs})
    return out


def table(rows: list[Row], reachable: int) -> str:
    head = (
        "| contender | C | runs | pages | dup | pages/s | pages/s incl. start-up | wall s "
        "| CPU ms/page | peak RSS MiB | nginx CPU ms/page | found set vs reachable "
        f"({reachable}) |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n"
    )
    body = "".join(
        f"| {r.row} | {r.concurrency} | {r.runs} | {r.unique} | {r.duplicates} | {r.rate:,.0f} "
        f"| {r.rate_wall:,.0f} | {r.wall:.2f} | {r.cpu_ms:.3f} | {r.rss_mib:.0f} "
        f"| {r.nginx_ms:.3f} | {_set_cell(r)} |\n"
        for r in rows
    )
    return head + body


def _set_cell(r: Row) -> str:
    if r.same_set_runs == r.runs:
        return "equal in every run"
    return f"differs in {r.runs - r.same_set_runs}/{r.runs} runs: -{r.missing} +{r.extra}"


def ratio_lines(rs: list[dict[str, Any]]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    return "".join(
        f"- {r['ours']} / {r['theirs']}: **{r['rate']:.2f}x** (goal >= {r['goal']:.0f}x: "
        f"{'met' if r['met'] else 'NOT met'}); paired by repetition {f(r['paired'])}, "
        f"including start-up {r['rate_wall']:.2f}x; ours found the reachable set in every run: "
        f"{'yes' if r['same_set'] else 'NO'}\n"
        for r in rs
    )


def markdown(info: dict[str, Any], samples: list[CrawlSample], reachable: int,
             notes: list[str]) -> str:
    rows = summarize(samples)
    machine = "".join(f"- {k}: {v}\n" for k, v in info.items())
    text = (
        f"# Crawl benchmark: following links\n\n{machine}\n## Medians\n\n"
        f"{table(rows, reachable)}\n"
        "pages = distinct pages written (the rate's numerator); dup = pages fetched twice.\n\n"
        "## Goal ratios (pages/s, same run, against each contender's fastest row)\n\n"
        + (ratio_lines(ratios(rows, samples)) or "- none (ours or both others did not run)\n")
    )
    if notes:
        text += "\n## Notes\n\n" + "".join(f"- {n}\n" for n in notes)
    if bad := [s for s in samples if s.error]:
        text += "\n## Failed runs\n\n" + "".join(
            f"- {s.row} rep {s.rep}: {s.error}\n" for s in bad)
    return text


def write(dest: Path, info: dict[str, Any], samples: list[CrawlSample], reachable: int,
          notes: list[str]) -> str:
    """Write crawl.md and crawl.json under dest; returns the markdown."""
    dest.mkdir(parents=True, exist_ok=True)
    text = markdown(info, samples, reachable, notes)
    rows = summarize(samples)
    data = {
        "info": info, "reachable": reachable, "notes": notes,
        "medians": [asdict(r) for r in rows],
        "ratios": ratios(rows, samples),
        "samples": [asdict(s) for s in samples],
    }
    (dest / "crawl.md").write_text(text)
    (dest / "crawl.json").write_text(json.dumps(data, indent=2) + "\n")
    return text
