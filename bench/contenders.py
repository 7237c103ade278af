"""The contenders: two raw loops and our CLI in both modes, each a command plus a parser.

Ours runs exactly as a user would run it: `crawler crawl URLFILE -o /dev/null ...`, embedded
(in-process fakeredis) or against the benchmark's own redis-server via CRAWLER_REDIS_URL.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SUMMARY = re.compile(
    r"fetched (?P<pages>\d+) URLs in (?P<elapsed>[\d.]+) s \([\d.]+/s\): (?P<ok>\d+) ok"
)
ROUND_TRIPS = re.compile(r"limiter round trips/fetch (?P<rt>[\d.]+)")


@dataclass(frozen=True)
class Parsed:
    pages: int
    ok: int
    elapsed: float  # s of crawling as the child measured it
    limiter_rt: float | None = None


class ParseError(ValueError):
    pass


def parse_raw(stdout: str, stderr: str) -> Parsed:
    try:
        d = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise ParseError(f"no JSON line on stdout: {exc}") from None
    return Parsed(int(d["pages"]), int(d["ok"]), float(d["elapsed"]))


def parse_cli(stdout: str, stderr: str) -> Parsed:
    m, rt = SUMMARY.search(stderr), ROUND_TRIPS.search(stderr)
    if m is None:
        raise ParseError("no 'fetched N URLs in X s' summary on stderr")
    return Parsed(
        int(m["pages"]), int(m["ok"]), float(m["elapsed"]),
        float(rt["rt"]) if rt else None,
    )


@dataclass(frozen=True)
class Contender:
    name: str
    family: str  # "async" or "threads": which concurrency it uses and whom it is compared with
    raw: bool
    redis: bool  # needs the benchmark's redis-server
    build: Callable[[Path, int], list[str]]
    parse: Callable[[str, str], Parsed]


def crawler_command() -> list[str]:
    """The installed `crawler` script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("crawler")
    return [str(script)] if script.exists() else [sys.executable, "-m", "crawler.cli"]


def raw(module: str) -> Callable[[Path, int], list[str]]:
    def build(urlfile: Path, c: int) -> list[str]:
        return [sys.executable, "-m", module, str(urlfile), "--concurrency", str(c)]

    return build


def ours(mode: str) -> Callable[[Path, int], list[str]]:
    def build(urlfile: Path, c: int) -> list[str]:
        return [
            *crawler_command(), "crawl", str(urlfile), "-o", "/dev/null", "--mode", mode,
            "--concurrency", str(c), "--allow-private-networks", "--no-progress",
            "--retries", "0",
        ]

    return build


# Run in this order within each repetition, so every contender sees the same conditions.
ALL = (
    Contender("raw-aiohttp", "async", True, False, raw("bench.raw_aiohttp"), parse_raw),
    Contender("ours-async", "async", False, False, ours("async"), parse_cli),
    Contender("ours-async+redis", "async", False, True, ours("async"), parse_cli),
    Contender("raw-threads", "threads", True, False, raw("bench.raw_threads"), parse_raw),
    Contender("ours-threads", "threads", False, False, ours("threads"), parse_cli),
    Contender("ours-threads+redis", "threads", False, True, ours("threads"), parse_cli),
)
BY_NAME = {c.name: c for c in ALL}
GOALS = {"async": 0.5, "threads": 0.8}  # ours / raw pages/s, from the issue
