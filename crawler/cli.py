"""The `crawler` command: parse flags, call the library, print, exit with a named code.

No crawling logic lives here. Every user mistake ends as one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crawler import __version__, cli_jobs, gcpause, loops
from crawler.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    add_common_options,
    add_crawl_options,
    job_id_arg,
    open_output,
    read_error_exit,
    settings_from_args,
)
from crawler.embedded import CrawlSummary, crawl
from crawler.errors import CrawlerError
from crawler.export import format_for_path
from crawler.jobs import new_job_id
from crawler.logs import format_from_env, setup_logging
from crawler.progress import Progress
from crawler.urls import IntakeStats, iter_urls, open_source

log = logging.getLogger("crawler")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="crawler", description="A distributed task-queue web crawler.")
    p.add_argument("--version", action="version", version=f"crawler {__version__}")
    add_common_options(p, default=None)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    c = sub.add_parser("crawl", help="crawl a URL list in this process (embedded mode)")
    add_common_options(c, default=argparse.SUPPRESS)
    c.add_argument("source", metavar="FILE|-", help="one URL a line; '-' reads stdin")
    c.add_argument("-o", "--output", help="write records here (default stdout)")
    c.add_argument("--format", choices=["jsonl", "csv"],
                   help="output format (default from -o's extension, else jsonl)")
    c.add_argument("--job-id", type=job_id_arg, help="name the job (default: a new short id)")
    c.add_argument("--no-progress", action="store_true",
                   help="no live view on stderr (a terminal) and no progress lines (otherwise)")
    c.add_argument("--stats-json", metavar="FILE", help="also write the summary as JSON here")
    add_crawl_options(c)
    COMMANDS.update(cli_jobs.register(sub))
    return p


def cmd_crawl(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    intake = IntakeStats()
    fmt = format_for_path(args.output, args.format)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_source(args.source))
        out: IO[bytes] = (
            stack.enter_context(open_output(args.output)) if args.output else sys.stdout.buffer
        )
        # Opened now: a path that cannot be written fails before the crawl, not after it.
        stats = stack.enter_context(open_output(args.stats_json)) if args.stats_json else None
        job_id = args.job_id or new_job_id()
        progress = stack.enter_context(Progress(
            job_id, enabled=not args.no_progress, qps=settings.qps,
            per_host_qps=settings.per_host_qps))
        urls: Iterator[str] = iter_urls(source, intake)
        gcpause.settle()
        summary = loops.run(crawl(
            urls, settings, intake=intake, out=out, fmt=fmt, job_id=job_id,
            on_start=progress.attach,
        ))
        if stats is not None:
            stats.write(orjson.dumps(summary_dict(summary), option=orjson.OPT_INDENT_2))
    print_summary(summary, args.output)
    return read_error_exit(intake)


def summary_dict(s: CrawlSummary) -> dict[str, Any]:
    """The machine-readable summary (`--stats-json`): benchmarks and scripts read it."""
    st = s.stats
    return {
        "job": s.job_id, "done": st.done, "ok": st.ok, "failed": st.failed, "bytes": st.bytes,
        "elapsed_s": round(st.elapsed, 4), "pages_per_s": round(st.rate, 1),
        "retries": st.retries, "penalties": st.penalties, "limiter_calls": st.limiter_calls,
        "store_calls": st.store_calls, "late_slots": st.late_slots,
        "links_found": st.links_found, "links_new": st.links_new,
        "robots_disallowed": st.robots_disallowed,
        "errors": dict(st.errors), "statuses": dict(st.statuses), "exported": s.exported,
        "intake": {"lines": s.intake.lines, "accepted": s.intake.accepted,
                   "rejected": s.intake.rejected, "duplicates": s.intake.duplicates},
        "event_loop": loops.LOOP_NAME,
    }


def print_summary(s: CrawlSummary, output: str | None) -> None:
    st = s.stats
    errors = ", ".join(f"{k} {v}" for k, v in sorted(st.errors.items())) or "none"
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(st.statuses.items()))
    err = sys.stderr
    if s.intake.rejected or s.intake.duplicates:
        print(s.intake.summary(), file=err)
    print(
        f"job {s.job_id}: fetched {st.done} URLs in {st.elapsed:.2f} s "
        f"({st.rate:.1f}/s): {st.ok} ok, {st.failed} failed", file=err,
    )
    print(f"  status: {statuses or 'none'}; errors: {errors}", file=err)
    calls = st.limiter_calls / st.done if st.done else 0.0
    print(
        f"  retries {st.retries}, penalties {st.penalties}, "
        f"limiter round trips/fetch {calls:.3f}, {st.bytes} body bytes", file=err,
    )
    if st.links_found or st.robots_disallowed:
        print(f"  links found {st.links_found}, new {st.links_new}; robots.txt disallowed "
              f"{st.robots_disallowed}", file=err)
    if output:
        print(f"  {s.exported} records written to {output}", file=err)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"crawl": cmd_crawl}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before the settings load (a bad one is the command's one-line error): the flags, else
    # CRAWLER_LOG_FORMAT. The summary and error lines below are output, not logs: plain text.
    setup_logging(args.log_level or "WARNING", args.log_format or format_from_env())
    try:
        return COMMANDS[args.command](args)
    except CrawlerError as exc:
        print(f"crawler: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (RedisConnectionError, RedisTimeoutError) as exc:
        print(f"crawler: error: lost the connection to Redis: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("crawler: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK  # `crawler crawl urls.txt | head`: the reader left, nothing to report


if __name__ == "__main__":
    sys.exit(main())
