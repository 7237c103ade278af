"""Shared pieces of the command line: exit codes, the parser class, option groups."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from crawler.settings import Settings, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected internal error (a bug): traceback printed
EXIT_USAGE = 2  # bad flags, bad settings, bad input, unreachable backend
EXIT_INTERRUPTED = 130

class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`crawler: error: ...`) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"crawler: error: {message} (see: {self.prog} --help)\n")


def _header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), val.strip()


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
    g.add_argument("--store-body", action="store_const", const=True,
                   help="keep bodies in Redis (capped, compressed)")


def add_common_options(p: argparse.ArgumentParser, *, default: Any) -> None:
    """Options valid before or after the command; a subcommand's copy must not reset them."""
    p.add_argument("--config", default=default,
                   help="TOML settings file (default $CRAWLER_CONFIG or config/crawler.toml)")
    p.add_argument("--redis-url", default=default,
                   help="Redis for limiter, job state and results "
                   "(default $CRAWLER_REDIS_URL; none = embedded)")
    p.add_argument("--log-level", default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


SETTINGS_FLAGS = (
    "redis_url", "log_level", "mode", "qps", "burst", "per_host_qps", "per_host_burst",
    "concurrency", "timeout", "connect_timeout", "read_timeout", "retries", "max_bytes",
    "max_redirects", "user_agent", "insecure", "allow_private_networks", "allowed_networks",
    "store_body",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k, None) for k in SETTINGS_FLAGS}
    if getattr(args, "headers", None):
        flags["headers"] = dict(args.headers)
    return load_settings(args.config, **flags)


