"""The `crawler` command: parse flags, call the library, print, exit with a named code.

No crawling logic lives here. Every user mistake ends as one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any, NoReturn

from crawler import __version__
from crawler.embedded import CrawlSummary, crawl
from crawler.errors import CrawlerError
from crawler.export import format_for_path
from crawler.progress import Progress
from crawler.settings import load_settings
from crawler.urls import IntakeStats, iter_urls, open_source

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected internal error (a bug): traceback printed
EXIT_USAGE = 2  # bad flags, bad settings, bad input, unreachable backend
EXIT_INTERRUPTED = 130

log = logging.getLogger("crawler")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`crawler: error: ...`) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"crawler: error: {message} (see: {self.prog} --help)\n")


def _header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), val.strip()


def _add_crawl_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs a crawl (and later `submit`)."""
    g = p.add_argument_group("crawl options (default: config file < CRAWLER_* env)")
    g.add_argument("--mode", choices=["async", "threads"], help="fetch engine (default async)")
    g.add_argument("--qps", type=float, help="global requests/s across all workers (0 = no limit)")
    g.add_argument("--burst", type=int, help="global burst above strict pacing (default 0)")
    g.add_argument("--per-host-qps", type=float, help="requests/s per host (0 = no limit)")
    g.add_argument("--per-host-burst", type=int, help="per-host burst (default 0)")
    g.add_argument("--concurrency", type=int, help="in-flight requests per process")
    g.add_argument("--timeout", type=float, help="seconds for one attempt, total")
    g.add_argument("--connect-timeout", type=float, help="seconds to connect")
    g.add_argument("--read-timeout", type=float, help="seconds of silence while reading")
    g.add_argument("--retries", type=int, help="extra attempts on network errors, 429, 5xx")
    g.add_argument("--max-bytes", type=int, help="cap on a decoded body, in bytes")
    g.add_argument("--max-redirects", type=int, help="redirects followed per attempt")
    g.add_argument("--user-agent", help="User-Agent header")
    g.add_argument("--header", dest="headers", type=_header, action="append",
                   metavar="'NAME: VALUE'", help="extra request header (repeatable)")
    g.add_argument("--insecure", action="store_const", const=True,
                   help="do NOT verify TLS certificates")
    g.add_argument("--allow-private-networks", action="store_const", const=True,
                   help="allow loopback/private/link-local targets (SSRF guard off)")
    g.add_argument("--allow-network", dest="allowed_networks", action="append", metavar="CIDR",
                   help="allow one private network through the SSRF guard (repeatable)")
    g.add_argument("--store-body", action="store_const", const=True,
                   help="keep bodies in Redis (capped, compressed)")


def _add_common_options(p: argparse.ArgumentParser, *, default: Any) -> None:
    """Options valid before or after the command; a subcommand's copy must not reset them."""
    p.add_argument("--config", default=default,
                   help="TOML settings file (default $CRAWLER_CONFIG or config/crawler.toml)")
    p.add_argument("--redis-url", default=default,
                   help="Redis for limiter, job state and results "
                   "(default $CRAWLER_REDIS_URL; none = embedded)")
    p.add_argument("--log-level", default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="crawler", description="A distributed task-queue web crawler.")
    p.add_argument("--version", action="version", version=f"crawler {__version__}")
    _add_common_options(p, default=None)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("crawl", help="crawl a URL list in this process (embedded mode)")
    _add_common_options(c, default=argparse.SUPPRESS)
    c.add_argument("source", metavar="FILE|-", help="one URL a line; '-' reads stdin")
    c.add_argument("-o", "--output", help="write records here (default stdout)")
    c.add_argument("--format", choices=["jsonl", "csv"],
                   help="output format (default from -o's extension, else jsonl)")
    c.add_argument("--job-id", help="name the job (default: a new short id)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_crawl_options(c)
    return p


SETTINGS_FLAGS = (
    "redis_url", "log_level", "mode", "qps", "burst", "per_host_qps", "per_host_burst",
    "concurrency", "timeout", "connect_timeout", "read_timeout", "retries", "max_bytes",
    "max_redirects", "user_agent", "insecure", "allow_private_networks", "allowed_networks",
    "store_body",
)


def settings_from_args(args: argparse.Namespace) -> Any:
    flags = {k: getattr(args, k, None) for k in SETTINGS_FLAGS}
    if getattr(args, "headers", None):
        flags["headers"] = dict(args.headers)
    return load_settings(args.config, **flags)


def cmd_crawl(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    intake = IntakeStats()
    fmt = format_for_path(args.output, args.format)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_source(args.source))
        out: IO[bytes] = (
            stack.enter_context(open(args.output, "wb")) if args.output else sys.stdout.buffer
        )
        progress = stack.enter_context(
            Progress(enabled=not args.no_progress and sys.stderr.isatty())
        )
        urls: Iterator[str] = iter_urls(source, intake)
        summary = asyncio.run(crawl(
            urls, settings, intake=intake, out=out, fmt=fmt, job_id=args.job_id,
            on_start=progress.attach,
        ))
    print_summary(summary, args.output)
    return EXIT_OK


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
    if output:
        print(f"  {s.exported} records written to {output}", file=err)


COMMANDS = {"crawl": cmd_crawl}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level or "WARNING", stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except CrawlerError as exc:
        print(f"crawler: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("crawler: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK  # `crawler crawl urls.txt | head`: the reader left, nothing to report


if __name__ == "__main__":
    sys.exit(main())
