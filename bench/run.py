"""Run the benchmark: our two engines and two raw loops, interleaved, against a local site.

    python -m bench.run [--urls 20000] [--repeat 3] [--async-concurrency 100]
                        [--threads-concurrency 32] [--only NAME,...] [--no-redis]

Writes bench/results/latest.md and latest.json and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import report, site
from bench.contenders import ALL, BY_NAME, Contender, ParseError, crawler_command
from bench.procs import (
    Finished,
    Redis,
    cpu_model,
    git_revision,
    redis_server,
    run_measured,
    tree_cpu,
)
from bench.report import Sample

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RUN_TIMEOUT = 300.0  # s per child: a hung contender fails its run instead of the benchmark


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--urls", type=int, default=20_000, help="pages in the site and the job")
    p.add_argument("--repeat", type=int, default=3, help="runs per contender (median reported)")
    p.add_argument("--async-concurrency", type=int, default=100,
                   help="for raw-aiohttp and ours --mode async")
    p.add_argument("--threads-concurrency", type=int, default=32,
                   help="for raw-threads and ours --mode threads")
    p.add_argument("--only", type=lambda s: s.split(","), default=[c.name for c in ALL],
                   help=f"comma-separated subset of {', '.join(BY_NAME)}")
    p.add_argument("--no-redis", action="store_true", help="skip the +redis variants")
    p.add_argument("--fallback-server", action="store_true",
                   help="serve with the aiohttp fallback even when nginx is installed")
    p.add_argument("--timeout", type=float, default=RUN_TIMEOUT, help="s per child run")
    p.add_argument("--out", type=Path, default=RESULTS, help="where latest.md/json go")
    args = p.parse_args(argv)
    unknown = set(args.only) - set(BY_NAME)
    if unknown:
        p.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    return args


def child_env(redis: Redis | None) -> dict[str, str]:
    """Our environment minus any CRAWLER_* setting, so every run sees the same defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    if redis is not None:
        env["CRAWLER_REDIS_URL"] = redis.url
    return env


def describe_failure(fin: Finished, why: str) -> str:
    tail = " | ".join(fin.stderr.strip().splitlines()[-3:])[-400:]
    status = "timed out" if fin.timed_out else f"exit {fin.returncode}"
    return f"{why} ({status}): {tail or 'no stderr'}"


def measure(c: Contender, rep: int, conc: int, urlfile: Path, ctx: dict[str, Any]) -> Sample:
    redis: Redis | None = ctx["redis"] if c.redis else None
    if redis is not None:
        redis.flush()  # every run starts from an empty server
    nginx0 = tree_cpu(ctx["site"].pid)
    redis0 = tree_cpu(redis.pid) if redis else 0.0
    fin = run_measured(c.build(urlfile, conc), env=child_env(redis), cwd=REPO,
                       tmp=ctx["tmp"], timeout=ctx["timeout"])
    s = Sample(c.name, rep, conc, wall=fin.wall, cpu=fin.cpu, maxrss_kib=fin.maxrss_kib,
               nginx_cpu=tree_cpu(ctx["site"].pid) - nginx0,
               redis_cpu=tree_cpu(redis.pid) - redis0 if redis else None)
    if fin.returncode != 0:
        s.error = describe_failure(fin, "failed")
        return s
    try:
        p = c.parse(fin.stdout, fin.stderr)
    except ParseError as exc:
        s.error = describe_failure(fin, str(exc))
        return s
    s.pages, s.ok, s.elapsed, s.limiter_rt = p.pages, p.ok, p.elapsed, p.limiter_rt
    if p.elapsed <= 0 or p.pages == 0:
        s.error = f"nothing fetched: {p}"
    return s


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def show(s: Sample) -> str:
    if s.error:
        return f"{s.contender:<20} rep {s.rep}: FAILED {s.error}"
    return (f"{s.contender:<20} rep {s.rep}: {s.pages / s.elapsed:8,.0f} pages/s "
            f"({s.ok}/{s.pages} ok, wall {s.wall:.2f} s, CPU {1000 * s.cpu / s.pages:.3f} "
            f"ms/page, RSS {s.maxrss_kib / 1024:.0f} MiB)")


def warm_up(urlfile: Path, ctx: dict[str, Any]) -> None:
    """Fill nginx's file cache and the page cache, and compile our .pyc files, unmeasured."""
    raw = BY_NAME["raw-aiohttp"]
    s = measure(raw, 0, 100, urlfile, ctx)
    log(f"warm-up: {show(s)}")
    subprocess.run([*crawler_command(), "--version"], cwd=REPO, capture_output=True)


def machine_info(
    args: argparse.Namespace, server: str, page_bytes: float, redis: Redis | None
) -> dict[str, Any]:
    model, git = cpu_model(), git_revision(REPO)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({model}), {platform.platform()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": f"aiohttp {version('aiohttp')}, requests {version('requests')}",
        "site": f"{server}, {args.urls} pages of ~{page_bytes / 1024:.1f} KiB on 127.0.0.1",
        "redis for +redis rows": f"redis-server {redis.version}" if redis else "not run",
        "job": f"{args.urls} URLs, {args.repeat} repetitions interleaved, --retries 0",
        "git": f"{git} (working tree as it was)",
    }


def run(args: argparse.Namespace) -> str:
    chosen = [c for c in ALL if c.name in args.only and not (args.no_redis and c.redis)]
    conc = {"async": args.async_concurrency, "threads": args.threads_concurrency}
    tmp = Path(tempfile.mkdtemp(prefix="crawler-bench-"))
    try:
        root = tmp / "site"
        site.generate(root, args.urls)
        page_bytes = sum(p.stat().st_size for p in (root / "p").rglob("*.html")) / args.urls
        need_redis = any(c.redis for c in chosen)
        with site.serve(root, tmp, force_fallback=args.fallback_server) as srv, \
                redis_server(tmp) if need_redis else nullcontext() as redis:
            urlfile = tmp / "urls.txt"
            site.write_url_file(urlfile, srv.base, args.urls)
            if need_redis and redis is None:
                log("redis-server not found: skipping the +redis variants")
                chosen = [c for c in chosen if not c.redis]
            log(f"site: {srv.server} at {srv.base}, {args.urls} pages")
            ctx = {"site": srv, "redis": redis, "tmp": tmp, "timeout": args.timeout}
            warm_up(urlfile, ctx)
            samples = run_interleaved(chosen, conc, urlfile, args.repeat, ctx)
            info = machine_info(args, srv.server, page_bytes, redis)
            if problems := srv.problems():
                info["SITE ERRORS (numbers suspect)"] = f"{len(problems)}, first: {problems[0]}"
                log(f"site errors: {len(problems)}, first: {problems[0]}")
        return report.write(args.out, info, samples)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_interleaved(chosen: list[Contender], conc: dict[str, int], urlfile: Path,
                    repeat: int, ctx: dict[str, Any]) -> list[Sample]:
    """A, B, C, A, B, C...: drift on the machine hits every contender alike."""
    samples: list[Sample] = []
    broken: set[str] = set()
    for rep in range(1, repeat + 1):
        for c in chosen:
            if c.name in broken:
                continue  # failed once: don't spend minutes failing again
            s = measure(c, rep, conc[c.family], urlfile, ctx)
            log(show(s))
            samples.append(s)
            if s.error:
                broken.add(c.name)
    return samples


def main(argv: list[str] | None = None) -> None:
    print(run(parse_args(argv)))


if __name__ == "__main__":
    main()
