"""The link-following contenders: Scrapy, crawlee-python and our CLI, each a command + a parser.

Scrapy and crawlee run from their own virtualenvs (`venvs.py`) as the scripts beside this file;
ours runs as a user would: `crawler crawl SEEDFILE -o OUT.jsonl ... --depth inf --scope host`.
Every contender writes one line per page it fetched (its URL), which the harness compares with
the site's reachable set.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.contenders import ParseError, crawler_command, parse_cli
from bench.crawl_contenders import venvs

HERE = Path(__file__).resolve().parent
OURS_FLAGS = ("--depth", "--scope")  # the link-following flags of issue 6


@dataclass(frozen=True)
class Job:
    """One crawl to run: where it starts, where its URLs go, how wide it may go."""

    seed: str  # the seed URL
    seedfile: Path  # the same URL, one line (our CLI reads a file)
    out: Path  # the contender's one-line-per-page output
    concurrency: int


@dataclass(frozen=True)
class Outcome:
    """What a finished contender says it did, and the URLs it wrote."""

    pages: int
    ok: int
    elapsed: float | None  # s on the contender's own crawl timer, if it has one
    urls: list[str]  # one per page fetched, duplicates kept


@dataclass(frozen=True)
class CrawlContender:
    name: str
    family: str  # "scrapy", "crawlee" or "ours": the goal ratios compare the best of each
    venv: str | None  # benchmark-only virtualenv it needs, None for ours
    build: Callable[[Job], list[str]]
    parse: Callable[[str, str, Path], Outcome]


def _json_tail(stdout: str) -> dict[str, float]:
    try:
        return dict(json.loads(stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError) as exc:
        raise ParseError(f"no JSON line on stdout: {exc}") from None


def _jsonl_urls(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [json.loads(ln)["url"] for ln in out.read_text().splitlines() if ln.strip()]


def parse_script_jsonl(stdout: str, stderr: str, out: Path) -> Outcome:
    d = _json_tail(stdout)
    return Outcome(int(d["pages"]), int(d["ok"]), float(d["elapsed"]), _jsonl_urls(out))


def parse_script_lines(stdout: str, stderr: str, out: Path) -> Outcome:
    d = _json_tail(stdout)
    urls = out.read_text().split() if out.exists() else []
    return Outcome(int(d["pages"]), int(d["ok"]), float(d["elapsed"]), urls)


def parse_ours(stdout: str, stderr: str, out: Path) -> Outcome:
    p = parse_cli(stdout, stderr)
    return Outcome(p.pages, p.ok, p.elapsed, _jsonl_urls(out))


def scrapy_build(job: Job) -> list[str]:
    return [str(venvs.python("scrapy")), str(HERE / "scrapy_crawl.py"), job.seed, str(job.out),
            "--concurrency", str(job.concurrency)]


def crawlee_build(parser: str) -> Callable[[Job], list[str]]:
    def build(job: Job) -> list[str]:
        return [str(venvs.python("crawlee")), str(HERE / "crawlee_crawl.py"), job.seed,
                str(job.out), "--concurrency", str(job.concurrency), "--parser", parser]

    return build


def ours_build(job: Job) -> list[str]:
    return [
        *crawler_command(), "crawl", str(job.seedfile), "-o", str(job.out), "--mode", "async",
        "--concurrency", str(job.concurrency), "--allow-private-networks", "--no-progress",
        "--retries", "0", "--depth", "inf", "--scope", "host",
    ]


def ours_available(cwd: Path) -> str | None:
    """None when `crawler crawl` has the link-following flags, else why not."""
    done = subprocess.run([*crawler_command(), "crawl", "--help"], cwd=cwd,
                          capture_output=True, text=True)
    lacking = [f for f in OURS_FLAGS if f not in done.stdout]
    if done.returncode != 0 or lacking:
        return f"not available: `crawler crawl --help` has no {', '.join(lacking) or 'help'}"
    return None


# Run in this order within each repetition.
ALL = (
    CrawlContender("scrapy", "scrapy", "scrapy", scrapy_build, parse_script_jsonl),
    CrawlContender("crawlee", "crawlee", "crawlee", crawlee_build("parsel"), parse_script_lines),
    CrawlContender("crawlee-bs4", "crawlee", "crawlee", crawlee_build("beautifulsoup"),
                   parse_script_lines),
    CrawlContender("ours", "ours", None, ours_build, parse_ours),
)
BY_NAME = {c.name: c for c in ALL}
DEFAULT = ("scrapy", "crawlee", "ours")  # crawlee-bs4 on request (--only)
GOALS = {"scrapy": 3.0, "crawlee": 2.0}  # ours / theirs pages/s, from the issue
# The best of a sweep on 2 cores, 20,000 pages (pages/s): Scrapy 8/16/32/64/100 ->
# ~425/454/427/373/279 (CPU per page grows with C); crawlee 32/64/100/200 -> 470/583/594/566.
DEFAULT_CONCURRENCY = {"scrapy": 16, "crawlee": 100, "ours": 100}
