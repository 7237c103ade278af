"""Bad input at the command line: every option of every command, job ids, URL files.

What a user can get wrong ends as one line on stderr and exit status 2, found before any
network I/O; good values never end as a usage error; URL input is streamed in bounded memory,
canonicalised before dedupe, and an input that breaks off keeps what was accepted before it.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import math
import os
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from cliharness import EXEC, Outcome, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler.urls import IntakeStats, RejectReason, iter_urls

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-pw"  # a password that must never reach stderr or stdout

FAST = settings(
    max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- places: a closed port, files ----------------------------------------------------------


@dataclass(frozen=True)
class Places:
    """Where generated values point: a port nothing answers on, files and folders."""

    closed_port: int
    dir: Path
    empty_urls: Path  # a URL file with only comments: a crawl with nothing to fetch
    good_toml: Path
    bad_toml: Path  # not TOML
    unknown_key_toml: Path

    @property
    def closed_url(self) -> str:
        return f"redis://127.0.0.1:{self.closed_port}/0"

    def env(self) -> dict[str, str]:
        """Distributed commands never default to the machine's Redis on 6379."""
        return {"CRAWLER_REDIS_URL": self.closed_url, "CRAWLER_BROKER_URL": self.closed_url}


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Places]:
    # Bound but never listening: connections are refused at once, and no other process can
    # start listening on this port while the tests run.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    d = tmp_path_factory.mktemp("cli-input")
    (d / "urls.txt").write_text("# nothing to fetch\n")
    (d / "good.toml").write_text("qps = 1.0\nretries = 1\n")
    (d / "bad.toml").write_text("qps = = 1\n")
    (d / "unknown.toml").write_text("qsp = 1\n")
    (d / "out").mkdir()
    yield Places(sock.getsockname()[1], d, d / "urls.txt", d / "good.toml", d / "bad.toml",
                 d / "unknown.toml")
    sock.close()


# --- value strategies ---------------------------------------------------------------------

Values = Callable[[Places], st.SearchStrategy[str]]
NO_NUL = st.characters(codec="utf-8", blacklist_characters="\x00")
garbage = st.text(NO_NUL, max_size=24)  # a process's argv never holds NUL


def _parses(kind: type) -> Callable[[str], bool]:
    def ok(text: str) -> bool:
        try:
            kind(text)
        except (ValueError, OverflowError):
            return False
        return True

    return ok


def int_values(lo: int, hi: int) -> tuple[Values, Values]:
    good = st.integers(lo, hi).map(str)
    bad = st.one_of(
        st.integers(max_value=lo - 1).map(str),
        st.integers(min_value=hi + 1).map(str),
        st.just(str(10**30)),
        st.floats().filter(lambda f: not f.is_integer() if math.isfinite(f) else True).map(repr),
        garbage.filter(lambda t: not _parses(int)(t)),
    )
    return (lambda p: good), (lambda p: bad)


def float_values(lo: float, hi: float, *, lo_open: bool = False) -> tuple[Values, Values]:
    good = st.floats(lo, hi, exclude_min=lo_open).map(repr)
    bad = st.one_of(
        st.floats(max_value=lo, allow_nan=False).filter(
            lambda f: f <= lo if lo_open else f < lo).map(repr),
        st.floats(min_value=hi, exclude_min=True, allow_nan=False).map(repr),
        st.sampled_from(["nan", "inf", "-inf", "1e400", ""]),
        garbage.filter(lambda t: not _parses(float)(t)),
    )
    return (lambda p: good), (lambda p: bad)


def choice_values(
    *choices: str, valid: Callable[[str], bool] | None = None
) -> tuple[Values, Values]:
    """Good: `choices`; bad: text that `valid` (default: being one of them) refuses."""
    good = st.sampled_from(choices)
    bad = garbage.filter(lambda t: not (valid(t) if valid else t in choices))
    return (lambda p: good), (lambda p: bad)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CELERY_LOG_LEVELS = (*LOG_LEVELS, "CRITICAL", "FATAL")


VISIBLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
CONTROL = st.sampled_from(["\n", "\r", "\x01", "\x7f", "\x1b", "\u0085"])
NON_ASCII = st.characters(min_codepoint=0x80, codec="utf-8")
TOKEN = st.text(st.sampled_from("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzXYZ"),
                min_size=1, max_size=12)


def _with(base: st.SearchStrategy[str], extra: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`base` with one `extra` character inserted somewhere."""
    return st.tuples(base, extra, st.integers(0, 64)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2]:])


def user_agent_good(p: Places) -> st.SearchStrategy[str]:
    return st.text(VISIBLE, min_size=1, max_size=40)


def user_agent_bad(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""), st.text(VISIBLE, min_size=513, max_size=600),
        _with(st.text(VISIBLE, max_size=20), CONTROL),
        _with(st.text(VISIBLE, max_size=20), NON_ASCII))


def header_good(p: Places) -> st.SearchStrategy[str]:
    return st.builds(lambda n, v: f"{n}: {v.strip()}", TOKEN, st.text(VISIBLE, max_size=30))


def header_bad(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(VISIBLE, max_size=20).filter(lambda t: ":" not in t),  # no colon
        st.builds(lambda v: f": {v}", st.text(VISIBLE, max_size=10)),  # no name
        st.builds(lambda n, v: f"{n}: {v}",  # a name that is not a token
                  _with(TOKEN, st.sampled_from(" \"(),/;<=>?@[]{}\u00e9")),
                  st.text(VISIBLE, max_size=10)),
        st.builds(lambda n, v: f"{n}: {v}", TOKEN,  # a value with a control or non-ASCII char
                  _with(st.text(VISIBLE, max_size=10), st.one_of(CONTROL, NON_ASCII))),
    )


def _cidr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> str:
    return f"{addr}/{bits % (addr.max_prefixlen + 1)}"


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def network_good(p: Places) -> st.SearchStrategy[str]:
    return st.builds(_cidr, st.ip_addresses(), st.integers(0, 128))


def network_bad(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["10.0.0.0/33", "::/129", "10.0.0.0/-1", "256.0.0.0/8", "localhost", "",
                         "10.0.0.0/8/8", "fe80::1%eth0/64x"]),
        garbage.filter(lambda t: not _is_network(t)),
    )


def job_id_good(p: Places) -> st.SearchStrategy[str]:
    return st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}", fullmatch=True)


def job_id_bad(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""), st.text(st.sampled_from("abc-_"), min_size=65, max_size=80),
        _with(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
              st.sampled_from([" ", "\n", "/", ":", "{", "}", "*", "\u00e9", ".", "\t"])),
    )


def config_good(p: Places) -> st.SearchStrategy[str]:
    return st.just(str(p.good_toml))


def config_bad(p: Places) -> st.SearchStrategy[str]:
    return st.sampled_from(
        ["", str(p.dir / "missing.toml"), str(p.bad_toml), str(p.unknown_key_toml), str(p.dir)])


def redis_url_good(p: Places) -> st.SearchStrategy[str]:
    return st.sampled_from([
        p.closed_url, f"redis://:{SECRET}@127.0.0.1:{p.closed_port}/3",
        f"redis://user:{SECRET}@127.0.0.1:{p.closed_port}",
        f"rediss://127.0.0.1:{p.closed_port}/0?ssl_cert_reqs=required",
        f"unix://{p.dir}/no-such.sock",
    ])


def redis_url_bad(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([
            "http://127.0.0.1/", "amqp://127.0.0.1//", "redis://", "redis:", "redis://:pw@/0",
            f"redis://:{SECRET}@127.0.0.1:notaport/0", "redis://127.0.0.1:99999/0",
            "redis://127.0.0.1/abc", f"redis://:{SECRET}@127.0.0.1/0?socket_timeout=abc",
            "redis://127.0.0.1/0?ssl_cert_reqs=required", "redis://127.0.0.1/0?nosuch=1",
            "rediss://127.0.0.1/0?ssl_cert_reqs=maybe", "redis://[::1/0", "127.0.0.1:6379",
        ]),
        st.builds(lambda s, rest: f"{s}://{rest}",
                  st.from_regex(r"[a-z][a-z0-9+.-]{0,8}", fullmatch=True).filter(
                      lambda s: s not in {"redis", "rediss", "unix"}), garbage),
    )


def out_path_good(p: Places) -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z0-9]{1,12}\.(jsonl|csv|out)", fullmatch=True).map(
        lambda n: str(p.dir / "out" / n))


def out_path_bad(p: Places) -> st.SearchStrategy[str]:
    return st.sampled_from(["", str(p.dir), str(p.dir / "no" / "such" / "dir.jsonl"),
                            str(p.empty_urls / "under-a-file.jsonl")])


def source_good(p: Places) -> st.SearchStrategy[str]:
    return st.just(str(p.empty_urls))


def source_bad(p: Places) -> st.SearchStrategy[str]:
    return st.sampled_from(["", str(p.dir), str(p.dir / "missing.txt")])


def hostname_good(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(st.from_regex(r"[a-z0-9_-]{1,20}(@%h)?", fullmatch=True),
                     st.sampled_from(["w1@%h", "w%n.%d", "a%%b"]))


def hostname_bad(p: Places) -> st.SearchStrategy[str]:
    return st.sampled_from(["", "%z", "w@%q", "%y%h"])


def depth_good(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(["inf", "INF", "all"]))


def depth_bad(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(max_value=-1).map(str), st.integers(min_value=10**6 + 1).map(str),
        st.sampled_from(["", "1.5", "-inf", "infinity!", "nan"]),
        garbage.filter(lambda t: not _parses(int)(t) and t.strip().lower() not in (
            "inf", "unlimited", "all")),
    )


def regex_good(p: Places) -> st.SearchStrategy[str]:
    return st.one_of(st.from_regex(r"[a-z0-9/._-]{1,20}", fullmatch=True),
                     st.sampled_from([r"\.html$", r"^https://", r"/p/(a|b)/", r"(?i)SID="]))


def regex_bad(p: Places) -> st.SearchStrategy[str]:
    return st.sampled_from(["(", "[a-", "*x", "a{2,1}", "(?P<x>a)(?P<x>b)", "x" * 1001, "\\"])


def seconds_values() -> tuple[Values, Values]:
    good = st.floats(0, 1e9).map(repr)
    bad = st.one_of(st.floats(max_value=-1e-9).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "1e400", ""]),
                    garbage.filter(lambda t: not _parses(float)(t)))
    return (lambda p: good), (lambda p: bad)


# --- the options of each command ----------------------------------------------------------


@dataclass(frozen=True)
class Opt:
    """A flag and how to make good and bad values for it; a switch has no value."""

    flag: str
    good: Values | None = None
    bad: Values | None = None

    @property
    def switch(self) -> bool:
        return self.good is None


MIB = 1024 * 1024
COMMON = [
    Opt("--config", config_good, config_bad),
    Opt("--redis-url", redis_url_good, redis_url_bad),
    # Only the quiet levels as good values: with DEBUG, stderr holds logs besides the error.
    Opt("--log-level", *choice_values("WARNING", "ERROR", valid=LOG_LEVELS.__contains__)),
]
CRAWL_OPTIONS = [
    Opt("--mode", *choice_values("async", "threads")),
    Opt("--qps", *float_values(0, 1e6)),
    Opt("--burst", *int_values(0, 10**6)),
    Opt("--per-host-qps", *float_values(0, 1e6)),
    Opt("--per-host-burst", *int_values(0, 10**6)),
    Opt("--concurrency", *int_values(1, 10_000)),
    Opt("--timeout", *float_values(0, 3600, lo_open=True)),
    Opt("--connect-timeout", *float_values(0, 3600, lo_open=True)),
    Opt("--read-timeout", *float_values(0, 3600, lo_open=True)),
    Opt("--retries", *int_values(0, 20)),
    Opt("--max-bytes", *int_values(1, 1024 * MIB)),
    Opt("--max-redirects", *int_values(0, 100)),
    Opt("--user-agent", user_agent_good, user_agent_bad),
    Opt("--header", header_good, header_bad),
    Opt("--insecure"),
    Opt("--allow-private-networks"),
    Opt("--allow-network", network_good, network_bad),
    Opt("--store-body"),
    Opt("--depth", depth_good, depth_bad),
    Opt("--scope", *choice_values("host", "domain", "any")),
    Opt("--allow", regex_good, regex_bad),
    Opt("--deny", regex_good, regex_bad),
    Opt("--max-pages", *int_values(0, 10**12)),
    Opt("--robots", *choice_values("auto", "obey", "ignore")),
    Opt("--ignore-robots"),
    Opt("--sitemaps"),
    Opt("--dedupe", *choice_values("set", "bloom")),
]
JOB = Opt("JOB", job_id_good, job_id_bad)
SOURCE = Opt("FILE", source_good, source_bad)


@dataclass(frozen=True)
class Command:
    name: str
    positional: Opt | None
    options: list[Opt]
    distributed: bool = True  # needs a Redis (pointed at the closed port)


COMMANDS = [
    Command("crawl", SOURCE, [
        *COMMON, *CRAWL_OPTIONS,
        Opt("--output", out_path_good, out_path_bad),
        Opt("--format", *choice_values("jsonl", "csv")),
        Opt("--job-id", job_id_good, job_id_bad),
        Opt("--no-progress"),
        Opt("--stats-json", out_path_good, out_path_bad),
    ], distributed=False),
    Command("submit", SOURCE, [
        *COMMON, *CRAWL_OPTIONS,
        Opt("--job-id", job_id_good, job_id_bad),
        Opt("--batch-size", *int_values(1, 100_000)),
    ]),
    Command("status", JOB, [*COMMON, Opt("--json"), Opt("--watch")]),
    Command("wait", JOB, [*COMMON, Opt("--timeout", *seconds_values())]),
    Command("results", JOB, [
        *COMMON, Opt("--output", out_path_good, out_path_bad),
        Opt("--format", *choice_values("jsonl", "csv")), Opt("--errors-only")]),
    Command("cancel", JOB, COMMON),
    Command("pause", JOB, COMMON),
    Command("resume", JOB, COMMON),
    Command("jobs", None, [*COMMON, Opt("--limit", *int_values(1, 10_000))]),
    Command("worker", None, [
        *COMMON,
        Opt("--concurrency", *int_values(1, 10_000)),
        Opt("--batches", *int_values(1, 1024)),
        Opt("--hostname", hostname_good, hostname_bad),
        Opt("--loglevel", *choice_values("DEBUG", "info", "Warning", "ERROR", "CRITICAL",
                                         valid=lambda t: t.upper() in CELERY_LOG_LEVELS)),
    ]),
]
BY_NAME = {c.name: c for c in COMMANDS}
ALL_FLAGS = sorted({o.flag for c in COMMANDS for o in c.options})


def _arg(opt: Opt, value: str | None) -> list[str]:
    # --flag=value: a value that starts with "-" is still a value
    return [opt.flag] if value is None else [f"{opt.flag}={value}"]


@st.composite
def good_args(draw: st.DrawFn, cmd: Command, p: Places, exclude: str = "") -> list[str]:
    """Some of `cmd`'s options, each once, with good values (a bad one is added elsewhere)."""
    pool = [o for o in cmd.options if o.flag != exclude]
    chosen = draw(st.lists(st.sampled_from(pool), max_size=4, unique_by=lambda o: o.flag))
    args: list[str] = []
    for opt in chosen:
        args += _arg(opt, None if opt.good is None else draw(opt.good(p)))
    return args


def invoke(cmd: Command, p: Places, options: list[str], positional: str | None) -> Outcome:
    # The positional first: a bad one may start with "-", and options may end with a flag
    # whose value is missing. Good positionals never start with "-".
    head = [] if positional is None else [positional]
    return run_cli([cmd.name, *head, *options], env=p.env() if cmd.distributed else {})


@st.composite
def bad_invocation(draw: st.DrawFn, cmd: Command, p: Places) -> tuple[list[str], str | None]:
    """Good options around exactly one mistake: a bad value, a bad positional, an unknown
    flag, a missing value or a value given to a switch."""
    valued = [o for o in cmd.options if not o.switch]
    switches = [o for o in cmd.options if o.switch]
    kinds = ["bad_value", "unknown_flag", "missing_value"] + (["switch_value"] if switches else [])
    kinds += ["bad_positional"] if cmd.positional else []
    kind = draw(st.sampled_from(kinds))
    positional = None if cmd.positional is None else draw(cmd.positional.good(p))  # type: ignore[misc]
    if kind == "bad_positional":
        assert cmd.positional is not None and cmd.positional.bad is not None
        return draw(good_args(cmd, p)), draw(cmd.positional.bad(p))
    if kind == "unknown_flag":
        own = [o.flag for o in cmd.options]
        flag = draw(st.one_of(
            st.from_regex(r"--zz[a-z-]{0,10}", fullmatch=True),
            st.sampled_from(["-Q", "-x", "--"]).filter(lambda f: f != "--"),
            st.sampled_from([f for f in ALL_FLAGS if not any(o.startswith(f) for o in own)]
                            or ["--zz"]),
        ))
        mistake = [flag] if draw(st.booleans()) else [f"{flag}=1"]
        opt_name = flag
    elif kind == "switch_value":
        opt = draw(st.sampled_from(switches))
        mistake, opt_name = [f"{opt.flag}={draw(garbage)}"], opt.flag
    else:
        opt = draw(st.sampled_from(valued))
        assert opt.bad is not None
        opt_name = opt.flag
        if kind == "missing_value":
            return [*draw(good_args(cmd, p, exclude=opt.flag)), opt.flag], positional
        mistake = [f"{opt.flag}={draw(opt.bad(p))}"]
    others = draw(good_args(cmd, p, exclude=opt_name))
    at = draw(st.integers(0, len(others)))
    return [*others[:at], *mistake, *others[at:]], positional


def check_bad(outcome: Outcome) -> None:
    line = outcome.one_line_error()
    assert "cannot reach" not in line, "a bad option must be refused before any network I/O"
    assert SECRET not in outcome.err + outcome.out


# --- 1. every option of every command ----------------------------------------------------


@pytest.mark.parametrize("name", list(BY_NAME))
@FAST
@given(data=st.data())
def test_bad_values_are_one_line_and_exit_2(name: str, places: Places, data: st.DataObject
                                            ) -> None:
    cmd = BY_NAME[name]
    options, positional = data.draw(bad_invocation(cmd, places))
    check_bad(invoke(cmd, places, options, positional))


@pytest.mark.parametrize("name", list(BY_NAME))
@FAST
@given(data=st.data())
def test_good_values_are_never_a_usage_error(name: str, places: Places, data: st.DataObject
                                             ) -> None:
    cmd = BY_NAME[name]
    options = data.draw(good_args(cmd, places))
    positional = None if cmd.positional is None else data.draw(cmd.positional.good(places))  # type: ignore[misc]
    outcome = invoke(cmd, places, options, positional)
    assert not outcome.is_usage_error(), outcome.err
    assert "Traceback" not in outcome.err
    if cmd.name == "worker":
        assert outcome.code == EXEC and outcome.exec_argv[1:3] == ["-m", "celery"]
    elif cmd.distributed or any(a.startswith("--redis-url=") for a in options):
        # Pointed at the closed port: one line naming the (masked) address, exit 2.
        line = outcome.one_line_error()
        assert "cannot reach" in line and SECRET not in outcome.err
    else:
        assert outcome.code == 0, outcome.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["wait", "j1", "--timeout", "5000"], "cannot reach", id="wait-timeout-own"),
        pytest.param(["wait", "j1", "--timeout", "-1"], "--timeout", id="wait-timeout-neg"),
        pytest.param(["jobs", "--limit", "0"], "--limit", id="jobs-limit-0"),
        pytest.param(["jobs", "--limit", "9" * 30], "--limit", id="jobs-limit-huge"),
        pytest.param(["worker", "--hostname", "%z"], "--hostname", id="worker-hostname-format"),
        pytest.param(["worker", "--loglevel", "chatty"], "--loglevel", id="worker-loglevel"),
        pytest.param(["status", "abc\n"], "invalid job id", id="job-id-newline"),
        pytest.param(["crawl", "-", "--job-id", "bad id"], "invalid job id", id="crawl-job-id"),
        pytest.param(["crawl", "-", "-o", "/no/such/dir/x.jsonl"], "cannot write",
                     id="crawl-output"),
        pytest.param(["crawl", "-", "--stats-json", "/no/such/dir/s.json"], "cannot write",
                     id="crawl-stats-json"),
        pytest.param(["results", "j1", "-o", "/no/such/dir/x.jsonl"], "cannot write",
                     id="results-output"),
        pytest.param(["crawl", "-", "--config", ""], "--config", id="config-empty"),
        pytest.param(["crawl", "-", "--redis-url", "redis://h:x/0"], "malformed URL",
                     id="redis-url-port"),
        pytest.param(["crawl", "-", "--redis-url", "redis://h/0?ssl_cert_reqs=required"],
                     "rediss://", id="redis-url-tls-option"),
        pytest.param(["crawl", "-", "--redis-url", "amqp://h//"], "unsupported URL scheme",
                     id="redis-url-amqp"),
        pytest.param(["crawl", "-", "--user-agent", "a\nb"], "user_agent", id="ua-newline"),
        pytest.param(["crawl", "-", "--header", "X: caf\u00e9"], "invalid header",
                     id="header-non-ascii"),
    ],
)
def test_mistakes_found_by_hand(argv: list[str], expected: str, places: Places) -> None:
    """Each was a traceback, a late failure or a silent wrong meaning before it was fixed."""
    outcome = run_cli(argv, env=places.env())
    assert expected in outcome.one_line_error()


def test_wait_timeout_is_not_the_fetch_timeout(places: Places) -> None:
    # `wait --timeout 5000` once set the crawl's fetch timeout (limit 3600 s) and failed.
    outcome = run_cli(["wait", "j1", "--timeout", "5000"], env=places.env())
    assert "cannot reach Redis" in outcome.one_line_error()


# --- 2. unknown job ids ------------------------------------------------------------------

JOB_COMMANDS = ["status", "wait", "results", "cancel", "pause", "resume"]


@pytest.mark.parametrize("command", JOB_COMMANDS)
@pytest.mark.parametrize(
    ("job", "expected"),
    [
        pytest.param("nope", "no job 'nope'", id="unknown"),
        pytest.param("J" * 64, "no job", id="unknown-64"),
        pytest.param("a-b_c", "no job", id="unknown-dash"),
        pytest.param("", "invalid job id", id="empty"),
        pytest.param("J" * 65, "invalid job id", id="too-long"),
        pytest.param("bad id", "invalid job id", id="space"),
        pytest.param("x\n", "invalid job id", id="newline"),
        pytest.param("{x}", "invalid job id", id="hash-tag"),
        pytest.param("caf\u00e9", "invalid job id", id="non-ascii"),
        pytest.param("../x", "invalid job id", id="path"),
    ],
)
def test_unknown_job_ids(command: str, job: str, expected: str, redis_url: str) -> None:
    outcome = run_cli([command, "--", job], env={"CRAWLER_REDIS_URL": redis_url})
    assert expected in outcome.one_line_error()
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("*") == []  # nothing was created for an unknown job
    finally:
        client.close()


# --- 3. oversize lines and a million lines, in bounded memory ---------------------------

GOOD_URLS = [f"http://127.0.0.1:9/page/{i}" for i in range(4)]
TEN_MB = 10 * 1024 * 1024


def oversize_file(path: Path) -> Path:
    """Good URLs around a 10 MB line, and a 10 MB line with no newline at the end."""
    with path.open("wb") as f:
        f.write(f"{GOOD_URLS[0]}\n{GOOD_URLS[1]}\n".encode())
        f.write(b"http://127.0.0.1:9/" + b"a" * TEN_MB + b"\n")
        f.write(f"{GOOD_URLS[2]}\n{GOOD_URLS[3]}\n".encode())
        f.write(b"x" * TEN_MB)
    return path


def test_oversize_lines_are_rejected_in_bounded_memory(tmp_path: Path) -> None:
    src = oversize_file(tmp_path / "urls.txt")
    stats = IntakeStats()
    tracemalloc.start()
    try:
        accepted = list(iter_urls(src, stats))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert accepted == GOOD_URLS
    assert stats.rejected == 2 and stats.by_reason == {RejectReason.TOO_LONG: 2}
    assert [r.lineno for r in stats.examples] == [3, 6]
    assert all(len(r.text) <= 80 for r in stats.examples)  # shown cut to one terminal line
    assert peak < 1024 * 1024, f"peak {peak} bytes for 20 MB of over-long lines"


def _job_urls(redis_url: str, job: str) -> list[str]:
    """Every URL stored in the job's batches."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [str(url) for key in sorted(client.keys(f"crawler:job:{{{job}}}:batch:*"))
                for url in client.lrange(key, 0, -1)]
    finally:
        client.close()


def _status(redis_url: str, job: str) -> dict:
    outcome = run_cli(["status", job, "--json"], env={"CRAWLER_REDIS_URL": redis_url})
    assert outcome.code == 0, outcome.err
    return dict(orjson.loads(outcome.out))


def test_submit_keeps_the_urls_around_oversize_lines(tmp_path: Path, redis_url: str) -> None:
    src = oversize_file(tmp_path / "urls.txt")
    outcome = run_cli(["submit", str(src), "--job-id", "big"],
                      env={"CRAWLER_REDIS_URL": redis_url})
    assert outcome.code == 0, outcome.err
    assert outcome.out == "big\n"
    assert "2 rejected (too_long: 2)" in outcome.err
    assert sorted(_job_urls(redis_url, "big")) == sorted(GOOD_URLS)
    st = _status(redis_url, "big")
    assert (st["total"], st["rejected"]) == (4, 2)


def line(i: int) -> bytes:
    """Input line i: an IP literal, so that even a crawl of it never looks a name up."""
    return b"http://127.0.%d.%d:9/p/%d?q=%d\n" % (i // 250 % 250, i % 250 + 1, i, i)


class Lines(io.RawIOBase):
    """A read-only byte stream of `n` generated URL lines (never held whole in memory); with
    `fail_after`, reading line `fail_after` + 1 fails as a broken disk or pipe would."""

    def __init__(self, n: int, fail_after: int | None = None) -> None:
        self.n, self.i, self.fail_after = n, 0, fail_after
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while len(self.pending) < len(b) and self.i < self.n and self.i != self.fail_after:
            self.pending += line(self.i)
            self.i += 1
        if not self.pending and self.i == self.fail_after:  # every line before it was read
            raise OSError(errno.EIO, "Input/output error")
        size = min(len(b), len(self.pending))
        b[:size], self.pending = self.pending[:size], self.pending[size:]
        return size


@pytest.mark.slow  # tracemalloc makes it take about 20 s
def test_a_quarter_million_lines_stream_through_intake_in_bounded_memory() -> None:
    # The whole intake, canonicalize included, under tracemalloc (44 s for a million lines on
    # 2 cores); tests/test_urls.py streams a million lines with canonicalize stubbed out.
    n = 250_000
    stats = IntakeStats()
    stream = io.BufferedReader(Lines(n))
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_urls(stream, stats))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == stats.accepted == n
    input_size = sum(len(line(i)) for i in range(n))
    assert peak < 1024 * 1024 < input_size // 8, f"peak {peak} bytes for {input_size}"


def _peak_rss_kib(argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run a child, wait for it with wait4: its own peak RSS (KiB on Linux), stdout, stderr."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == 0, err.decode()
    return usage.ru_maxrss, out, err


@pytest.mark.slow
def test_submit_of_a_million_lines_has_bounded_memory(tmp_path: Path, redis_url: str) -> None:
    """`crawler submit` of 1,000,000 URLs (about 40 MB) to a real Redis: the process's peak RSS
    is within a few MB of submitting 1,000, nowhere near the input's size."""
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    with big.open("wb") as f:
        reader = io.BufferedReader(Lines(1_000_000), buffer_size=1 << 20)
        while chunk := reader.read(1 << 20):
            f.write(chunk)
    small.write_bytes(b"".join(b"http://s.example/%d\n" % i for i in range(1000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    env["CRAWLER_REDIS_URL"] = redis_url
    base = [sys.executable, "-m", "crawler", "submit"]
    small_rss, _, _ = _peak_rss_kib([*base, str(small), "--job-id", "small"], env)
    big_rss, out, _ = _peak_rss_kib([*base, str(big), "--job-id", "big"], env)
    assert out == b"big\n"
    assert _status(redis_url, "big")["total"] == 1_000_000
    grew_mib = (big_rss - small_rss) / 1024
    input_mib = big.stat().st_size / (1024 * 1024)
    assert grew_mib < input_mib / 4, f"peak RSS grew {grew_mib:.1f} MiB for {input_mib:.0f} MiB"


# --- 4. one URL, many spellings ---------------------------------------------------------

SPELLINGS = {
    "http://example.com/a/b?x=1&y=2": [
        "http://example.com/a/b?x=1&y=2",
        "HTTP://EXAMPLE.COM/a/b?x=1&y=2",
        "http://Example.Com:80/a/b?x=1&y=2",
        "http://example.com/a/./b?x=1&y=2",
        "http://example.com/a/c/../b?x=1&y=2",
        "http://example.com/a/b?y=2&x=1",
        "http://example.com/a/b?x=1&y=2#section",
        "http://example.com/%61/b?x=1&y=2",
        "  http://example.com/a/b?x=1&y=2\t",
    ],
    "https://example.com/a%2Fb": [
        "https://example.com/a%2Fb", "https://example.com/a%2fb",
        "https://example.com:443/a%2fb", "HTTPS://example.COM/a%2Fb#top",
    ],
    "https://example.com/": [
        "https://example.com", "https://example.com/", "https://example.com/?",
        "https://example.com:443", "https://EXAMPLE.com/#", "https://example.com/./",
        "https://example.com/a/..",
    ],
}


def test_every_spelling_is_accepted_once(tmp_path: Path, redis_url: str) -> None:
    lines = [s for spellings in SPELLINGS.values() for s in spellings]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(lines) + "\n")
    outcome = run_cli(["submit", str(src), "--job-id", "spell", "--batch-size", "2"],
                      env={"CRAWLER_REDIS_URL": redis_url})
    assert outcome.code == 0, outcome.err
    assert sorted(_job_urls(redis_url, "spell")) == sorted(SPELLINGS)
    st = _status(redis_url, "spell")
    assert (st["total"], st["duplicates"], st["rejected"]) == (
        len(SPELLINGS), len(lines) - len(SPELLINGS), 0)


# --- 5. nothing already accepted is lost --------------------------------------------------


def test_submit_keeps_good_urls_among_bad_lines(tmp_path: Path, redis_url: str) -> None:
    src = tmp_path / "urls.txt"
    src.write_bytes(b"\n".join([
        GOOD_URLS[0].encode(), b"ftp://x/", b"\xff\xfe", GOOD_URLS[1].encode(), b"http://",
        b"\x00binary", GOOD_URLS[2].encode(), b"http://h:99999/", GOOD_URLS[3].encode(),
    ]))
    outcome = run_cli(["submit", str(src), "--job-id", "mixed"],
                      env={"CRAWLER_REDIS_URL": redis_url})
    assert outcome.code == 0, outcome.err
    assert sorted(_job_urls(redis_url, "mixed")) == sorted(GOOD_URLS)
    st = _status(redis_url, "mixed")
    assert (st["total"], st["rejected"], st["submitted"]) == (4, 5, True)


def test_submit_keeps_what_came_before_a_read_error(redis_url: str) -> None:
    """stdin fails after 2,500 lines: the job holds those 2,500 URLs and can finish."""
    stdin = io.BufferedReader(Lines(10_000, fail_after=2500))
    outcome = run_cli(["submit", "-", "--job-id", "cut", "--batch-size", "1000"],
                      env={"CRAWLER_REDIS_URL": redis_url}, stdin=stdin)
    assert outcome.code == 2
    assert outcome.out == "cut\n"  # the job exists: its id is printed all the same
    assert outcome.err_lines[-1] == (
        "crawler: error: cannot read the input after line 2500: Input/output error; "
        "the 2500 URLs accepted before it were kept")
    st = _status(redis_url, "cut")
    assert (st["total"], st["batches"], st["submitted"]) == (2500, 3, True)


def test_crawl_keeps_what_came_before_a_read_error(tmp_path: Path) -> None:
    """Embedded: the URLs read before the error are crawled and their records written."""
    out = tmp_path / "out.jsonl"
    stdin = io.BufferedReader(Lines(100, fail_after=30))
    outcome = run_cli(["crawl", "-", "-o", str(out), "--no-progress"], stdin=stdin)
    assert outcome.code == 2
    assert outcome.err_lines[-1].startswith("crawler: error: cannot read the input after line 30")
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(records) == 30  # the SSRF guard blocks them: no request leaves this machine
    assert {r["error"] for r in records} == {"blocked_address"}


def test_a_late_option_mistake_is_found_before_any_work(tmp_path: Path) -> None:
    src = tmp_path / "urls.txt"
    src.write_text(GOOD_URLS[0] + "\n")
    outcome = run_cli(["crawl", str(src), "-o", str(tmp_path / "out.jsonl"),
                       "--stats-json", str(tmp_path / "missing" / "stats.json")])
    assert "cannot write" in outcome.one_line_error()
    assert (tmp_path / "out.jsonl").read_bytes() == b""  # nothing was crawled, nothing lost


def test_reusing_a_job_id_leaves_the_first_job_whole(tmp_path: Path, redis_url: str) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(GOOD_URLS) + "\n")
    env = {"CRAWLER_REDIS_URL": redis_url}
    assert run_cli(["submit", str(src), "--job-id", "once"], env=env).code == 0
    other = tmp_path / "other.txt"
    other.write_text("http://127.0.0.1:9/other\n")
    outcome = run_cli(["submit", str(other), "--job-id", "once"], env=env)
    assert "job once already exists" in outcome.one_line_error()
    assert sorted(_job_urls(redis_url, "once")) == sorted(GOOD_URLS)
    assert _status(redis_url, "once")["total"] == len(GOOD_URLS)
