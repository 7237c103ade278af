"""The whole benchmark suite in one run: `python -m bench` -> docs/benchmarks.md + .png.

Sections, each in this process's one run, so every ratio compares rows of the same run:

* list: one URL list of the generated nginx site, every contender interleaved per
  repetition (raw loops, ours embedded and distributed, Scrapy, crawlee, feapder,
  scrapy-redis and feapder with 2 processes on one Redis); nginx's connection count per run
  shows keep-alive (a row that opens a connection per request shows ~1 per page);
* links: following links from one seed (`bench.crawl`: ours, Scrapy, crawlee);
* latency: the 100 ms server, C up to 1,000 (`bench.latency`, with its worker RSS check);
* qps: the global limit over 4 processes with real fetches (`bench.bench_qps`).

Peers run from their own venvs (bench/.venvs, made on first use). `--quick` is a smoke run
of every section (a few minutes); the default is what docs/benchmarks.md shows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import site
from bench.contenders import BY_NAME as OURS_AND_RAW
from bench.procs import cpu_model, git_revision, redis_server, tree_cpu
from bench.run import measure as measure_cli

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# (row, kind, family, concurrency): kind says who runs it; family groups rows in the table.
LIST_ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("raw-aiohttp", "cli", "raw loop", 100),
    ("raw-threads", "cli", "raw loop", 32),
    ("ours-async", "cli", "ours, embedded", 100),
    ("ours-async+redis", "cli", "ours, embedded", 100),
    ("ours-threads", "cli", "ours, embedded", 32),
    ("ours W=1", "dist", "ours, distributed", 100),
    ("ours W=2", "dist", "ours, distributed", 100),
    ("scrapy-list", "peer", "peer, 1 process", 0),
    ("crawlee-http", "peer", "peer, 1 process", 0),
    ("crawlee-parsel", "peer", "peer, 1 process", 0),
    ("feapder-list", "peer", "peer, 1 process", 0),
    ("scrapy-redis", "peer", "peer, 2 processes", 0),
    ("feapder-redis", "peer", "peer, 2 processes", 0),
)
DIST_BATCH = 1000  # URLs per batch for our distributed rows (bench.distributed's best)


@dataclass
class ListRun:
    row: str
    rep: int
    concurrency: int
    pages: int = 0
    elapsed: float = 0.0  # s on the crawl's own timer
    wall: float = 0.0
    cpu: float | None = None  # s of the contender's processes
    rss_mib: float | None = None
    limiter_rt: float | None = None
    connections: int | None = None  # nginx connections accepted during the run
    processes: int = 1
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.pages / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class Ctx:
    srv: site.Site
    redis: Any
    tmp: Path
    urlfile: Path
    timeout: float
    peer_versions: dict[str, str] = field(default_factory=dict)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def accepted(srv: site.Site) -> int | None:
    n = site.connections_accepted(srv)
    return None if n is None else n - 1  # the status request's own connection


def run_cli_row(ctx: Ctx, row: str, rep: int, conc: int) -> ListRun:
    c = OURS_AND_RAW[row]
    s = measure_cli(c, rep, conc, ctx.urlfile, {"site": ctx.srv, "redis": ctx.redis,
                                                "tmp": ctx.tmp, "timeout": ctx.timeout})
    return ListRun(row, rep, conc, s.pages, s.elapsed, s.wall, s.cpu, s.maxrss_kib / 1024,
                   s.limiter_rt, error=s.error)


def run_dist_row(ctx: Ctx, row: str, rep: int, conc: int) -> ListRun:
    from bench import distributed as d

    n = int(row.split("W=")[1])
    dctx = d.Ctx(ctx.srv, ctx.redis, ctx.tmp, ctx.timeout, ctx.urlfile,
                 env={k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
                 | {"CRAWLER_REDIS_URL": ctx.redis.url, "CRAWLER_BROKER_URL": ctx.redis.url})
    # Queue filled first, then the workers start together: as the 2-process peers run.
    r = d.presubmitted(dctx, "async", conc, DIST_BATCH, rep, n=n)
    return ListRun(row, rep, conc, r.pages, r.elapsed, r.wall, r.cpu, r.maxrss_mib,
                   processes=n, error=r.error)


def run_peer_row(ctx: Ctx, row: str, rep: int, conc: int) -> ListRun:
    from bench import peers

    try:
        res = peers.run_peer(row, ctx.urlfile, conc or None, ctx.redis.url, ctx.tmp)
    except peers.PeerError as exc:
        return ListRun(row, rep, conc, error=str(exc)[-400:])
    ctx.peer_versions[row] = res.versions
    c = conc or peers.PEERS[row].default_concurrency
    return ListRun(row, rep, c, res.pages, res.elapsed, res.wall, res.cpu_s, res.peak_rss_mib,
                   processes=res.processes)


RUNNERS: dict[str, Callable[[Ctx, str, int, int], ListRun]] = {
    "cli": run_cli_row, "dist": run_dist_row, "peer": run_peer_row}


def list_section(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rows = [r for r in LIST_ROWS if r[0] in args.list_rows]
    peer_rows = [r[0] for r in rows if r[1] == "peer"]
    if peer_rows:
        from bench import peers

        peers.ensure_venvs(peer_rows, log=log)
    root = tmp / "site"
    site.generate(root, args.pages)
    runs: list[ListRun] = []
    with site.serve(root, tmp) as srv, redis_server(tmp) as redis:
        if redis is None:
            sys.exit("the suite needs redis-server (distributed rows and peers)")
        urlfile = tmp / "urls.txt"
        site.write_url_file(urlfile, srv.base, args.pages)
        ctx = Ctx(srv, redis, tmp, urlfile, args.timeout)
        log(f"list: {srv.server} at {srv.base}, {args.pages} pages")
        run_cli_row(ctx, "raw-aiohttp", 0, 100)  # warm-up: nginx and page caches, .pyc files
        broken: set[str] = set()
        for rep in range(1, args.repeat + 1):
            for row, kind, _family, conc in rows:
                if row in broken:
                    continue
                redis.flush()
                before, cpu0 = accepted(srv), tree_cpu(srv.pid)
                run = RUNNERS[kind](ctx, row, rep, conc)
                after = accepted(srv)
                if before is not None and after is not None:
                    run.connections = after - before
                runs.append(run)
                log(f"{row:<18} rep {rep}: " + (f"FAILED {run.error}" if run.error else
                    f"{run.rate:8,.0f} pages/s, {run.connections} connections, "
                    f"nginx {1000 * (tree_cpu(srv.pid) - cpu0) / max(run.pages, 1):.3f} "
                    "ms/page"))
                if run.error:
                    broken.add(row)
        server = srv.server
    return {"server": server, "pages": args.pages, "repeat": args.repeat,
            "rows": [(r, k, f, c) for r, k, f, c in rows], "runs": [asdict(r) for r in runs],
            "peer_versions": ctx.peer_versions}


def medians(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per row: medians over its successful runs, and the first error if any failed."""
    out: dict[str, dict[str, Any]] = {}
    for row, _kind, family, _conc in section["rows"]:
        runs = [r for r in section["runs"] if r["row"] == row]
        good = [r for r in runs if not r["error"] and r["elapsed"] > 0]
        m: dict[str, Any] = {"family": family, "runs": len(good),
                             "error": next((r["error"] for r in runs if r["error"]), None)}
        if good:
            def med(key: str, runs: list[dict[str, Any]] = good) -> float | None:
                vals = [r[key] for r in runs if r[key] is not None]
                return statistics.median(vals) if vals else None

            m.update(
                concurrency=good[0]["concurrency"], processes=good[0]["processes"],
                pages=good[0]["pages"],
                rate=statistics.median(r["pages"] / r["elapsed"] for r in good),
                cpu_ms=med("cpu") and 1000 * med("cpu") / good[0]["pages"],  # type: ignore
                rss_mib=med("rss_mib"), limiter_rt=med("limiter_rt"),
                connections=med("connections"))
        out[row] = m
    return out


def rate(meds: dict[str, dict[str, Any]], row: str) -> float | None:
    m = meds.get(row)
    return m.get("rate") if m else None


def ratio(meds: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    ra, rb = rate(meds, a), rate(meds, b)
    return ra / rb if ra and rb else None


# --- the other sections: run by their own modules, read back from their JSON ---------------


def links_section(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from bench import crawl

    argv = ["--out", str(out), "--repeat", str(args.repeat)]
    if args.quick:
        argv += ["--quick"]
    crawl.run(crawl.parse_args(argv))
    return dict(json.loads((out / "crawl.json").read_text()))


def latency_section(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from bench import latency

    argv = ["--out", str(out), "--repeat", str(args.repeat)]
    if args.quick:
        argv += ["--concurrency", "10,100,1000", "--rounds", "10", "--worker-urls", "20000"]
    return {"result": latency.run(latency.parse_args(argv))}


def qps_section(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from bench import bench_qps

    argv = ["--out", str(out)] + (["--seconds", "10"] if args.quick else [])
    bench_qps.main(argv)
    return dict(json.loads((out / "qps.json").read_text()))


# --- goals, report, chart ------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    measured: str
    met: bool | None  # None: not measured in this run


def _r(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def goals(res: dict[str, Any]) -> list[Goal]:
    out: list[Goal] = []

    def add(text: str, value: float | None, goal: float, shown: str | None = None,
            at_most: bool = False) -> None:
        met = None if value is None else (value <= goal if at_most else value >= goal)
        out.append(Goal(text, shown or _r(value), met))

    if "list" in res:
        m = medians(res["list"])
        best_crawlee = max((rate(m, r) or 0 for r in ("crawlee-http", "crawlee-parsel")),
                           default=0) or None
        ours = rate(m, "ours-async")
        add("embedded async / raw aiohttp >= 0.70", ratio(m, "ours-async", "raw-aiohttp"), 0.7)
        add("embedded async (real Redis) / raw aiohttp >= 0.70",
            ratio(m, "ours-async+redis", "raw-aiohttp"), 0.7)
        add("embedded async / crawlee (faster of HttpCrawler, ParselCrawler) >= 2.5x",
            ours / best_crawlee if ours and best_crawlee else None, 2.5)
        add("embedded async / Scrapy (URL list) >= 6x", ratio(m, "ours-async", "scrapy-list"), 6)
        add("threads engine / raw thread pool >= 0.90",
            ratio(m, "ours-threads", "raw-threads"), 0.9)
        add("2 workers / scrapy-redis with 2 processes >= 3x",
            ratio(m, "ours W=2", "scrapy-redis"), 3)
        add("2 workers / feapder with 2 processes >= 3x", ratio(m, "ours W=2", "feapder-redis"), 3)
        add("scale-out: 2 workers / 1 worker >= 1.6x", ratio(m, "ours W=2", "ours W=1"), 1.6)
    if "links" in res:
        rs = {r["theirs"]: r for r in res["links"]["ratios"]}
        for theirs, goal in (("crawlee", 3.0), ("scrapy", 5.0)):
            r = rs.get(theirs)
            same = "" if r is None or r.get("same_set") else " (page sets differ!)"
            add(f"following links: ours / {theirs} >= {goal:g}x (same page set)",
                r["rate"] if r and r.get("same_set") else None, goal,
                shown=(_r(r["rate"]) + same) if r else None)
    if "latency" in res:
        lat = res["latency"]["result"]
        oursr = [r for r in lat["ratios"] if r["row"] == "ours"]
        worst = min(oursr, key=lambda r: r["ratio"]) if oursr else None
        add("latency-bound (100 ms): ours / raw at the same C >= 0.95, every C up to 1,000",
            worst["ratio"] if worst else None, 0.95,
            shown=(f"{worst['ratio']:.2f} (worst, at C={worst['conc']})" if worst else None))
        w = lat.get("worker") or {}
        if w.get("peak_rss_mib") is not None:
            add("worker peak RSS at C=1,000 < 200 MB", w["peak_rss_mib"] * 1.048576, 200,
                shown=f"{w['peak_rss_mib'] * 1.048576:.0f} MB", at_most=True)
            add(f"worker RSS flat over {w['urls']:,} URLs (end / 10 %) <= 1.10", w["growth"],
                1.10, at_most=True)
    if "qps" in res:
        leased = [r for r in res["qps"]["rows"] if r["lease_period"] > 0]
        if leased:
            q = leased[-1]
            add("global limit 2,000 QPS / 4 processes: achieved within 1 % of R",
                abs(100 - q["achieved_vs_R_pct"]), 1.0, at_most=True,
                shown=f"{q['achieved_vs_R_pct']} % of R")
            add("no 1-second window above R + B + 1 (+2 % with leases)", q["over_bound_pct"],
                2.0, at_most=True, shown=f"{q['max_1s_window']:,} ({q['over_bound_pct']:+.2f} %)")
            add("script calls per fetch with leases <= 0.2", q["calls_per_fetch"], 0.2,
                at_most=True, shown=f"{q['calls_per_fetch']:.3f}")
    return out


def list_markdown(section: dict[str, Any]) -> str:
    m = medians(section)
    raw = {"async": rate(m, "raw-aiohttp"), "threads": rate(m, "raw-threads")}
    lines = [
        f"{section['pages']:,} pages of the generated site, {section['server']}, "
        f"{section['repeat']} repetitions interleaved (A, B, C, A, B, C ...), medians.",
        "",
        "| row | kind | C | processes | pages/s | vs raw aiohttp | CPU ms/page | peak RSS MiB | "
        "limiter calls/fetch | connections opened |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for row, v in m.items():
        if v.get("rate") is None:
            lines.append(f"| {row} | {v['family']} | | | failed: {v['error']} | | | | | |")
            continue
        vs = v["rate"] / raw["async"] if raw["async"] else None
        lines.append(
            f"| {row} | {v['family']} | {v['concurrency']} | {v['processes']} | "
            f"{v['rate']:,.0f} | {_r(vs)} | {_r(v['cpu_ms'], '.3f')} | "
            f"{_r(v['rss_mib'], '.0f')} | {_r(v['limiter_rt'], '.3f')} | "
            f"{_r(v['connections'], ',.0f')} |")
    lines += ["", "Versions of the peers: " + "; ".join(
        f"{k}: {v}" for k, v in section["peer_versions"].items()) + "."]
    return "\n".join(lines)


def links_markdown(section: dict[str, Any]) -> str:
    lines = ["| row | C | pages/s | CPU ms/page | peak RSS MiB | pages | found set vs reachable |",
             "|---|--:|--:|--:|--:|--:|---|"]
    for r in section["medians"]:
        same = "equal in every run" if r["same_set_runs"] == r["runs"] else \
            f"differed in {r['runs'] - r['same_set_runs']} of {r['runs']} runs"
        lines.append(f"| {r['row']} | {r['concurrency']} | {r['rate']:,.0f} | "
                     f"{r['cpu_ms']:.3f} | {r['rss_mib']:.0f} | {r['unique']:,} | {same} |")
    lines += ["", f"{section['reachable']:,} pages reachable from the seed. " + "; ".join(
        f"ours / {r['theirs']} {r['rate']:.2f}x" for r in section["ratios"]) + "."]
    return "\n".join(lines)


def qps_markdown(section: dict[str, Any]) -> str:
    from bench import bench_qps

    text = bench_qps.markdown(section["info"], section["rows"])
    return text.split("\n", 2)[2]  # without its own title


def chart(res: dict[str, Any], path: Path) -> None:
    """Horizontal bars of pages/s: the URL list and the link-following crawl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "list" in res:
        m = medians(res["list"])
        panels.append(("URL list, 20,000 pages on nginx (pages/s)",
                       [(k, v.get("rate") or 0.0, v["family"]) for k, v in m.items()]))
    if "links" in res:
        panels.append(("Following links from one seed (pages/s)",
                       [(r["row"], r["rate"], "ours" if r["row"] == "ours" else "peer")
                        for r in res["links"]["medians"]]))
    if not panels:
        return
    colour = {"raw loop": "#999999", "ours, embedded": "#1f77b4", "ours, distributed": "#0b3d91",
              "ours": "#1f77b4"}
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.2 + 0.42 * sum(len(p[1])
                                                                         for p in panels)),
                             squeeze=False)
    for ax, (title, bars) in zip(axes[:, 0], panels, strict=True):
        names = [b[0] for b in bars][::-1]
        values = [b[1] for b in bars][::-1]
        ax.barh(names, values, color=[colour.get(b[2], "#ff7f0e") for b in bars][::-1])
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.set_xlim(0, max(values) * 1.15 if values else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.platform()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "ours": (f"crawler {version('crawler')}, aiohttp {version('aiohttp')}, "
                 f"redis-py {version('redis')}, celery {version('celery')}"),
        "git": f"{git_revision(REPO)} (working tree as it was)",
    }


def report(res: dict[str, Any], info: dict[str, str], png: Path) -> str:
    lines = ["# Benchmarks", "",
             "Made by `python -m bench` (see bench/README.md); every number below comes from "
             "this one run on this machine. Compare rows of the same run, not runs from "
             "different machines.", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", f"![pages/s]({png.name})", "", "## Goals (issue 7)", "",
              "| goal | measured | met |", "|---|--:|---|"]
    for g in goals(res):
        met = "not measured" if g.met is None else ("yes" if g.met else "**no**")
        lines.append(f"| {g.text} | {g.measured} | {met} |")
    if "list" in res:
        lines += ["", "## URL list", "", list_markdown(res["list"])]
    if "links" in res:
        lines += ["", "## Following links", "", links_markdown(res["links"])]
    if "latency" in res:  # its own sections become subsections here
        from bench import latency

        body = latency.markdown(res["latency"]["result"]).split("\n", 1)[1].lstrip()
        lines += ["", "## Latency-bound (100 ms server)", "", body.replace("\n## ", "\n### ")]
    if "qps" in res:
        lines += ["", "## Global limit across processes", "", qps_markdown(res["qps"])]
    return "\n".join(lines) + "\n"


SECTIONS = ("list", "links", "latency", "qps")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections of {SECTIONS}")
    p.add_argument("--rows", default=",".join(r[0] for r in LIST_ROWS),
                   help="rows of the list section")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pages", type=int, default=20_000)
    p.add_argument("--quick", action="store_true", help="smoke run: small, one repetition")
    p.add_argument("--timeout", type=float, default=600.0, help="s per run")
    p.add_argument("--out", type=Path, default=DOCS, help="where benchmarks.md/.png/.json go")
    p.add_argument("--render", action="store_true",
                   help="only rebuild benchmarks.md and .png from the benchmarks.json in --out")
    args = p.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    args.list_rows = [s for s in args.rows.split(",") if s]
    if bad := set(args.only) - set(SECTIONS):
        p.error(f"unknown section(s): {', '.join(sorted(bad))}")
    if bad := set(args.list_rows) - {r[0] for r in LIST_ROWS}:
        p.error(f"unknown row(s): {', '.join(sorted(bad))}")
    if args.quick:
        args.repeat, args.pages = 1, min(args.pages, 2000)
    return args


def render(out: Path) -> str:
    """Rebuild the report and chart from a run's JSON (after a change to the report only)."""
    data = json.loads((out / "benchmarks.json").read_text())
    res = {k: data[k] for k in SECTIONS if k in data}
    png = out / "benchmarks.png"
    chart(res, png)
    text = report(res, data["info"], png)
    (out / "benchmarks.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        print(render(args.out))
        return
    started = time.perf_counter()
    res: dict[str, Any] = {}
    results = REPO / "bench" / "results"  # each section's own files, as when run alone
    tmp = Path(tempfile.mkdtemp(prefix="crawler-suite-"))
    try:
        if "list" in args.only:
            res["list"] = list_section(args, tmp)
        if "links" in args.only:
            res["links"] = links_section(args, results)
        if "latency" in args.only:
            res["latency"] = latency_section(args, results)
        if "qps" in args.only:
            res["qps"] = qps_section(args, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine() | {"suite wall": f"{time.perf_counter() - started:.0f} s",
                        "sections": ", ".join(args.only) + (" (--quick)" if args.quick else "")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps({"info": info, **res}, indent=1,
                                                         default=str))
    print(render(args.out))
