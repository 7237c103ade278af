"""Link-following crawl benchmark: ours beside Scrapy and crawlee-python on the same local site.

    python -m bench.crawl [--pages 20000] [--repeat 3] [--only scrapy,crawlee,ours]
                          [--scrapy-concurrency 32] [--crawlee-concurrency 100]
                          [--ours-concurrency 100] [--quick]

Every contender starts from the one seed page and follows every same-host link, each page once,
unlimited depth, robots.txt obeyed (the site has none: 404, so all allowed). Writes
bench/results/crawl.md and crawl.json and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import crawl_report, site
from bench.contenders import ParseError
from bench.crawl_contenders import (
    BY_NAME,
    DEFAULT,
    DEFAULT_CONCURRENCY,
    CrawlContender,
    Job,
    ours_available,
    venvs,
)
from bench.crawl_report import CrawlSample
from bench.procs import Finished, cpu_model, git_revision, run_measured, tree_cpu

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RUN_TIMEOUT = 600.0  # s per child: Scrapy needs ~60 s for 20,000 pages on 2 cores
SEED_PAGE = 0  # /p/000/000000.html
QUICK_PAGES = 2_000
# The generator's own link format (bench/site.py render_page): a regex is exact here.
# nginx logs the site's missing robots.txt as an [error]: expected (404 = allow all), not a fault.
EXPECTED_404 = re.compile(r'open\(\) "[^"]*/robots\.txt" failed \(2: ')
HREF = re.compile(rb'<a href="(/p/\d{3}/\d{6}\.html)">')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.crawl",
                                description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=20_000, help="pages in the generated site")
    p.add_argument("--repeat", type=int, default=3, help="runs per row (median reported)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK_PAGES} pages, 1 repetition")
    p.add_argument("--only", type=lambda s: s.split(","), default=list(DEFAULT),
                   help=f"comma-separated subset of {', '.join(BY_NAME)} "
                        f"(default {','.join(DEFAULT)})")
    for fam, c in DEFAULT_CONCURRENCY.items():
        p.add_argument(f"--{fam}-concurrency", type=_ints, default=[c], metavar="C[,C...]",
                       help=f"concurrency of the {fam} rows; a list makes one row each "
                            f"(default {c})")
    p.add_argument("--fallback-server", action="store_true",
                   help="serve with the aiohttp fallback even when nginx is installed")
    p.add_argument("--timeout", type=float, default=RUN_TIMEOUT, help="s per child run")
    p.add_argument("--out", type=Path, default=RESULTS, help="where crawl.md/json go")
    args = p.parse_args(argv)
    if unknown := set(args.only) - set(BY_NAME):
        p.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.pages, args.repeat = QUICK_PAGES, 1
    return args


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def reachable(root: Path, n: int, seed: int = SEED_PAGE) -> set[str]:
    """Paths reachable from the seed page, by BFS over the generated files."""
    start = site.page_path(seed)
    seen, todo = {start}, deque([start])
    while todo:
        body = (root / todo.popleft().lstrip("/")).read_bytes()
        for m in HREF.finditer(body):
            path = m.group(1).decode()
            if path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


def on_site(urls: list[str], base: str) -> list[str]:
    """URLs as site paths; anything not on the site keeps its full URL (so it counts as extra)."""
    netloc = urlsplit(base).netloc
    out = []
    for u in urls:
        parts = urlsplit(u)
        out.append(parts.path if parts.netloc == netloc and not parts.query else u)
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    """Our environment minus CRAWLER_* and venv variables: same defaults for every run."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_") and k not in drop}


def describe_failure(fin: Finished, why: str) -> str:
    tail = " | ".join(fin.stderr.strip().splitlines()[-3:])[-400:]
    status = "timed out" if fin.timed_out else f"exit {fin.returncode}"
    return f"{why} ({status}): {tail or 'no stderr'}"


def measure(row: str, c: CrawlContender, rep: int, conc: int, ctx: dict[str, Any]) -> CrawlSample:
    tmp: Path = ctx["tmp"]
    job = Job(ctx["seed"], ctx["seedfile"], tmp / f"found-{row}.out", conc)
    job.out.unlink(missing_ok=True)
    nginx0 = tree_cpu(ctx["site"].pid)
    fin = run_measured(c.build(job), env=child_env(), cwd=REPO, tmp=tmp,
                       timeout=ctx["timeout"])
    s = CrawlSample(row, c.name, c.family, rep, conc, wall=fin.wall, cpu=fin.cpu,
                    maxrss_kib=fin.maxrss_kib, nginx_cpu=tree_cpu(ctx["site"].pid) - nginx0)
    if fin.returncode != 0:
        s.error = describe_failure(fin, "failed")
        return s
    try:
        o = c.parse(fin.stdout, fin.stderr, job.out)
    except (ParseError, ValueError, KeyError) as exc:
        s.error = describe_failure(fin, f"unreadable output: {exc}")
        return s
    found = on_site(o.urls, ctx["site"].base)
    unique = set(found)
    want: set[str] = ctx["reachable"]
    s.pages, s.ok, s.elapsed = o.pages, o.ok, o.elapsed
    s.lines, s.unique = len(found), len(unique)
    s.missing, s.extra = len(want - unique), len(unique - want)
    if not unique:
        s.error = f"nothing fetched: {o.pages} pages, {len(found)} URLs written"
    job.out.unlink(missing_ok=True)
    return s


def show(s: CrawlSample) -> str:
    if s.error:
        return f"{s.row:<16} rep {s.rep}: FAILED {s.error}"
    timer = "own timer" if s.elapsed else "wall"
    return (f"{s.row:<16} rep {s.rep}: {s.rate():8,.0f} pages/s ({timer}; {s.unique} pages, "
            f"{s.lines - s.unique} dup, -{s.missing} +{s.extra} vs reachable, wall "
            f"{s.wall:.2f} s, CPU {1000 * s.cpu / s.unique:.3f} ms/page, "
            f"RSS {s.maxrss_kib / 1024:.0f} MiB)")


def plan(args: argparse.Namespace) -> list[tuple[str, CrawlContender, int]]:
    """(row name, contender, concurrency) in run order; C in the name when a list was given."""
    out = []
    for c in (BY_NAME[n] for n in BY_NAME if n in args.only):
        concs = getattr(args, f"{c.family}_concurrency")
        out += [(c.name if len(concs) == 1 else f"{c.name}@{k}", c, k) for k in concs]
    return out


def prepare(rows: list[tuple[str, CrawlContender, int]], notes: list[str]) -> tuple[
        list[tuple[str, CrawlContender, int]], dict[str, str]]:
    """Make the venvs the chosen rows need, check ours has its flags; drop what can't run."""
    libs: dict[str, str] = {}
    for name in sorted({c.venv for _, c, _ in rows if c.venv}):
        venvs.ensure(name, log)
        libs[name] = venvs.versions(name)
    if any(c.name == "ours" for _, c, _ in rows) and (why := ours_available(REPO)):
        notes.append(f"ours: {why}; its rows were not run")
        log(f"ours: {why}")
        rows = [r for r in rows if r[1].name != "ours"]
    return rows, libs


def warm_up(ctx: dict[str, Any], n: int) -> None:
    """Fill nginx's and the OS's caches with every page, unmeasured (bench.run's raw loop)."""
    urlfile = ctx["tmp"] / "urls.txt"
    site.write_url_file(urlfile, ctx["site"].base, n)
    fin = run_measured([sys.executable, "-m", "bench.raw_aiohttp", str(urlfile)],
                       env=child_env(), cwd=REPO, tmp=ctx["tmp"], timeout=ctx["timeout"])
    log(f"warm-up: {n} pages in {fin.wall:.2f} s (exit {fin.returncode})")


def machine_info(args: argparse.Namespace, server: str, page_bytes: float,
                 libs: dict[str, str], reachable_n: int) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.platform()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "ours": f"crawler {version('crawler')}, aiohttp {version('aiohttp')}, "
                f"selectolax {version('selectolax')}",
        **{f"{name} venv": v for name, v in libs.items()},
        "site": f"{server}, {args.pages} pages of ~{page_bytes / 1024:.1f} KiB on 127.0.0.1, "
                f"{site.LINKS_PER_PAGE} links a page",
        "seed": f"{site.page_path(SEED_PAGE)}; {reachable_n} pages reachable from it (BFS)",
        "job": f"{args.repeat} repetitions interleaved, no retries, robots.txt obeyed (404)",
        "git": f"{git_revision(REPO)} (working tree as it was)",
    }


def run_interleaved(rows: list[tuple[str, CrawlContender, int]], repeat: int,
                    ctx: dict[str, Any]) -> list[CrawlSample]:
    """A, B, C, A, B, C...: drift on the machine hits every row alike."""
    samples: list[CrawlSample] = []
    broken: set[str] = set()
    for rep in range(1, repeat + 1):
        for row, c, conc in rows:
            if row in broken:
                continue  # failed once: don't spend minutes failing again
            s = measure(row, c, rep, conc, ctx)
            log(show(s))
            samples.append(s)
            if s.error:
                broken.add(row)
    return samples


def run(args: argparse.Namespace) -> str:
    notes: list[str] = []
    rows, libs = prepare(plan(args), notes)
    tmp = Path(tempfile.mkdtemp(prefix="crawler-crawl-bench-"))
    try:
        root = tmp / "site"
        site.generate(root, args.pages)
        page_bytes = sum(p.stat().st_size for p in (root / "p").rglob("*.html")) / args.pages
        want = reachable(root, args.pages)
        with site.serve(root, tmp, force_fallback=args.fallback_server) as srv:
            seed = srv.base + site.page_path(SEED_PAGE)
            seedfile = tmp / "seed.txt"
            seedfile.write_text(seed + "\n")
            log(f"site: {srv.server} at {srv.base}, {args.pages} pages, {len(want)} reachable")
            ctx = {"site": srv, "tmp": tmp, "timeout": args.timeout, "seed": seed,
                   "seedfile": seedfile, "reachable": want}
            warm_up(ctx, args.pages)
            samples = run_interleaved(rows, args.repeat, ctx)
            info = machine_info(args, srv.server, page_bytes, libs, len(want))
            if problems := [p for p in srv.problems() if not EXPECTED_404.search(p)]:
                info["SITE ERRORS (numbers suspect)"] = f"{len(problems)}, first: {problems[0]}"
        return crawl_report.write(args.out, info, samples, len(want), notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    print(run(parse_args(argv)))


if __name__ == "__main__":
    main()
