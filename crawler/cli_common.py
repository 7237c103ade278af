"""Shared pieces of the command line: exit codes, the parser class, option groups."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import IO, Any, NoReturn

from crawler.errors import ConfigError, InputError
from crawler.jobs import JOB_ID_RE
from crawler.scope import check_patterns
from crawler.settings import Settings, load_settings
from crawler.urls import IntakeStats

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected internal error (a bug): traceback printed
EXIT_USAGE = 2  # bad flags, bad settings, bad input, unreachable backend
EXIT_INTERRUPTED = 130
# How much of a bad flag value an error line repeats: enough to recognise it, one line.
SHOWN_VALUE = 40

class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`crawler: error: ...`) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"crawler: error: {message} (see: {self.prog} --help)\n")


def _shown(text: str) -> str:
    """A flag value as an error line repeats it: quoted, escaped, cut to one short line."""
    return repr(text if len(text) <= SHOWN_VALUE else text[:SHOWN_VALUE] + "...")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `lo` to `hi`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number, got {_shown(text)}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {lo} to {hi}, got {_shown(text)}")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {_shown(text)}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds >= 0, got {_shown(text)}")
    return value


def depth_arg(text: str) -> int:
    """An argparse type: a link depth, a whole number >= 0, or `inf` for no limit (-1)."""
    if text.strip().lower() in ("inf", "unlimited", "all"):
        return -1
    return int_in(0, 1_000_000)(text)


def regex_arg(text: str) -> str:
    """An argparse type: a Python regular expression that compiles."""
    try:
        check_patterns([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def job_id_arg(text: str) -> str:
    """An argparse type: a job id as `crawler.jobs` names them (checked before any I/O)."""
    if not JOB_ID_RE.fullmatch(text):  # fullmatch: `$` alone would let a trailing newline in
        raise argparse.ArgumentTypeError(
            f"invalid job id {_shown(text)}: use 1-64 letters, digits, '-' or '_'")
    return text


def _header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        # The value is not repeated: it may be a credential (`Authorization Bearer ...`).
        raise argparse.ArgumentTypeError("expected 'Name: value' (a name, a colon, a value)")
    return name.strip(), val.strip()


def read_error_exit(intake: IntakeStats) -> int:
    """EXIT_OK, or one line and EXIT_USAGE when the input broke off (what came before is kept)."""
    if intake.read_error is None:
        return EXIT_OK
    print(f"crawler: error: {intake.read_error}; the {intake.accepted} URLs accepted before "
          "it were kept", file=sys.stderr)
    return EXIT_USAGE


def open_output(path: str) -> IO[bytes]:
    """Open an output file for writing; `InputError` (one line, exit 2) when it cannot be."""
    try:
        return open(path, "wb")  # the caller closes it
    except OSError as exc:
        raise InputError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def add_crawl_options(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("--proxy", metavar="URL",
                   help="send every request through this proxy: http://, https://, socks4:// "
                   "or socks5:// [user:password@]host:port (the proxy resolves names)")
    g.add_argument("--cookies", action="store_const", const=True,
                   help="keep a cookie jar per job (per worker process, not shared across "
                   "machines); default: no cookies")
    g.add_argument("--store-body", action="store_const", const=True,
                   help="keep bodies in Redis (capped, compressed)")
    g.add_argument("--priority", type=int_in(-100, 100), metavar="N",
                   help="the job's priority, -100..100 (default 0): higher batches are taken "
                   "first, each point worth priority_aging s (60) of waiting")
    g.add_argument("--extract", metavar="MODULE:FUNCTION",
                   help="run this function (package.module:function) on every 2xx page: "
                   "its dict becomes the record's data (workers import it: PYTHONPATH)")
    g.add_argument("--on-finish", metavar="URL",
                   help="POST the job's final status (JSON) to this URL when it ends")
    g.add_argument("--on-finish-task", metavar="NAME",
                   help="send this Celery task with the job's final status when it ends")
    g.add_argument("--ttl", type=float, metavar="SECONDS",
                   help="keep the job's keys and results this long after it ends (default "
                   "604800: 7 days)")
    f = p.add_argument_group("following links (default: fetch the input URLs only)")
    f.add_argument("--depth", type=depth_arg, metavar="N|inf",
                   help="follow links N levels deep from the input URLs (0 = none, inf = any)")
    f.add_argument("--scope", choices=["host", "domain", "any"],
                   help="links kept: the input URLs' hosts (default), registered domains, or all")
    f.add_argument("--allow", action="append", type=regex_arg, metavar="REGEX",
                   help="follow only links matching one of these (repeatable)")
    f.add_argument("--deny", action="append", type=regex_arg, metavar="REGEX",
                   help="never follow links matching this (repeatable)")
    f.add_argument("--max-pages", type=int_in(0, 10**12), metavar="N",
                   help="at most N URLs in the job, input URLs included (0 = no limit)")
    f.add_argument("--max-queued", type=int_in(0, 10**12), metavar="N",
                   help="submit: stop reading input once the job holds N URLs and say at "
                   "which line (default 10,000,000; 0 = no limit)")
    f.add_argument("--robots", choices=["auto", "obey", "ignore"],
                   help="robots.txt: auto (default) obeys it when following links, obey "
                   "always, ignore never")
    f.add_argument("--ignore-robots", dest="robots", action="store_const", const="ignore",
                   help="the same as --robots ignore")
    f.add_argument("--sitemaps", action="store_const", const=True,
                   help="also start from the sitemaps named in the seed hosts' robots.txt")
    f.add_argument("--dedupe", choices=["set", "bloom"],
                   help="per-job URL dedupe: exact set (default) or a Bloom filter")


def add_common_options(p: argparse.ArgumentParser, *, default: Any) -> None:
    """Options valid before or after the command; a subcommand's copy must not reset them."""
    p.add_argument("--config", default=default,
                   help="TOML settings file (default $CRAWLER_CONFIG or config/crawler.toml)")
    p.add_argument("--redis-url", default=default,
                   help="Redis for limiter, job state and results "
                   "(default $CRAWLER_REDIS_URL; none = embedded)")
    p.add_argument("--log-level", default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default=default, choices=["text", "json"],
                   help="log lines as text or JSON (default $CRAWLER_LOG_FORMAT, else text)")


SETTINGS_FLAGS = (
    "redis_url", "log_level", "mode", "qps", "burst", "per_host_qps", "per_host_burst",
    "concurrency", "timeout", "connect_timeout", "read_timeout", "retries", "max_bytes",
    "max_redirects", "user_agent", "insecure", "allow_private_networks", "allowed_networks",
    "proxy", "cookies", "store_body", "extract", "priority", "on_finish", "on_finish_task",
    "ttl", "depth", "scope", "allow", "deny", "max_pages", "max_queued", "robots", "sitemaps",
    "dedupe", "log_format",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k, None) for k in SETTINGS_FLAGS}
    if getattr(args, "headers", None):
        flags["headers"] = dict(args.headers)
    if args.config == "":  # load_settings would take it for "not given"
        raise ConfigError("--config needs a file name, got an empty string")
    return load_settings(args.config, **flags)
