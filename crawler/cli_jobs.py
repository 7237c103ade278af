"""The distributed commands: worker, submit, status, wait, results, cancel/pause/resume, jobs.

Each parses, calls `crawler.api.AsyncCrawler`, prints. `worker` replaces this process with a
Celery worker (the library never imports `workers`; it names it on the command line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from celery.utils.nodenames import host_format
from rich.console import Console
from rich.live import Live

from crawler import loops
from crawler.api import DEFAULT_BATCH_SIZE, AsyncCrawler
from crawler.broker import QUEUE
from crawler.cli_common import (
    EXIT_OK,
    add_common_options,
    add_crawl_options,
    int_in,
    job_id_arg,
    open_output,
    read_error_exit,
    seconds,
    settings_from_args,
)
from crawler.errors import ConfigError
from crawler.export import export, format_for_path
from crawler.jobs import TERMINAL, JobState, JobStatus
from crawler.urls import IntakeStats, iter_urls, open_source
from crawler.watch import from_status, plain, render

EXIT_TIMEOUT = 1  # `wait`: the job did not end in time
EXIT_CANCELLED = 3  # `wait`: the job was cancelled
DEFAULT_BATCHES = 4  # batches in flight per worker process (Celery threads)
MAX_BATCHES = 1024  # Celery threads per worker process; more is a typo, not a plan
# URLs per task: a batch is one Redis list that one worker reads whole and submit holds whole.
MAX_BATCH_SIZE = 100_000
MAX_JOBS_LISTED = 10_000
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")  # Celery's names
WATCH_REFRESH = 1.0  # s between redraws of `status --watch` (workers report once a second)
FLOWER_PORT = 5555
FLOWER_COLUMNS = "name,args,kwargs,state,result,received,runtime,worker,uuid"
FLOWER_AUTH = "FLOWER_BASIC_AUTH"  # user:password[,user:password]; Flower reads it itself


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the distributed commands to the `crawler` parser; returns name -> handler."""

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        add_common_options(p, default=argparse.SUPPRESS)
        return p

    w = command("worker", "start a Celery worker that fetches batches")
    w.add_argument("--concurrency", type=int, help="in-flight requests in this process")
    w.add_argument("--batches", type=int_in(1, MAX_BATCHES), default=DEFAULT_BATCHES,
                   help=f"batches in flight in this process (default {DEFAULT_BATCHES})")
    w.add_argument("--hostname", type=_hostname, help="worker name shown in Flower and records")
    w.add_argument("--metrics-port", type=int_in(1, 65535),
                   help="serve Prometheus metrics here (default $CRAWLER_METRICS_PORT; none: off)")
    w.add_argument("--metrics-address", help="address for the metrics (default 127.0.0.1)")
    w.add_argument("--metrics-dir", type=_directory,
                   help="share one metrics port among this machine's workers through this "
                   "directory (default $PROMETHEUS_MULTIPROC_DIR)")
    w.add_argument("--loglevel", type=str.upper, choices=LOG_LEVELS,
                   help="log level (default: the log_level setting, INFO)")

    f = command("flower", "start Flower, the Celery web monitor, for these workers")
    f.add_argument("--port", type=int_in(1, 65535), default=FLOWER_PORT,
                   help=f"(default {FLOWER_PORT})")
    f.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this host only)")

    s = command("submit", "enqueue a job for the workers; prints its id")
    s.add_argument("source", metavar="FILE|-", help="one URL a line; '-' reads stdin")
    s.add_argument("--job-id", type=job_id_arg, help="name the job (default: a new short id)")
    s.add_argument("--batch-size", type=int_in(1, MAX_BATCH_SIZE), default=DEFAULT_BATCH_SIZE,
                   help=f"URLs per task (default {DEFAULT_BATCH_SIZE})")
    add_crawl_options(s)

    st = command("status", "show a job's progress")
    st.add_argument("job", type=job_id_arg)
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument("--watch", action="store_true", help="live progress until the job ends")

    wt = command("wait", "wait for a job: exit 0 finished, 3 cancelled, 1 timeout")
    wt.add_argument("job", type=job_id_arg)
    # Its own dest: `timeout` is the crawl setting (seconds per fetch) settings_from_args reads.
    wt.add_argument("--timeout", dest="wait_timeout", type=seconds,
                    help="seconds (default: forever)")

    r = command("results", "export a job's records")
    r.add_argument("job", type=job_id_arg)
    r.add_argument("-o", "--output", help="write here (default stdout)")
    r.add_argument("--format", choices=["jsonl", "csv"])
    r.add_argument("--errors-only", action="store_true", help="only records that are not ok")

    for op, text in (("cancel", "cancel a job (pending URLs are dropped and counted)"),
                     ("pause", "pause a job (pending URLs are held)"),
                     ("resume", "resume a paused job")):
        command(op, text).add_argument("job", type=job_id_arg)

    j = command("jobs", "recent jobs, one line each")
    j.add_argument("--limit", type=int_in(1, MAX_JOBS_LISTED), default=20,
                   help="how many (default 20)")
    j.add_argument("--purge", type=job_id_arg, metavar="JOB",
                   help="delete a finished or cancelled job's keys now (else they expire "
                   "--ttl after its end)")
    return {
        "worker": cmd_worker, "submit": cmd_submit, "status": cmd_status, "wait": cmd_wait,
        "results": cmd_results, "cancel": cmd_control, "pause": cmd_control,
        "resume": cmd_control, "jobs": cmd_jobs, "flower": cmd_flower,
    }


def _hostname(text: str) -> str:
    """An argparse type: a Celery node name, whose %h/%n/%d must expand (checked before exec)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a worker name, got an empty string")
    try:
        host_format(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown %-sequence in {text[:40]!r}: use %h, %n, %d or %% for a literal %") from None
    return text


def _with_crawler(args: argparse.Namespace, body: Callable[[AsyncCrawler], Any]) -> Any:
    settings = settings_from_args(args)

    async def go() -> Any:
        crawler = AsyncCrawler(settings)
        try:
            return await body(crawler)
        finally:
            await crawler.aclose()

    return loops.run(go())


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)  # a bad setting fails here, not inside Celery
    env = _celery_env(args, settings)
    env["CRAWLER_CONCURRENCY"] = str(settings.concurrency)
    # The worker logs through crawler.logs (workers/app.py) at Celery's --loglevel, in the
    # log_format setting: carried across exec, with the level, for the worker's own settings.
    loglevel = args.loglevel or settings.log_level
    if loglevel in ("DEBUG", "INFO", "WARNING", "ERROR"):  # the setting has no CRITICAL
        env["CRAWLER_LOG_LEVEL"] = loglevel
    env["CRAWLER_LOG_FORMAT"] = settings.log_format
    # The node name Flower and the records show: where it runs (host) and which process.
    # Several workers on one machine get distinct names; exec keeps this pid.
    node = args.hostname or f"crawler-{os.getpid()}@%h"
    if args.hostname or not settings.worker_name:  # Celery's %h/%n/%d expanded the same way
        env["CRAWLER_WORKER_NAME"] = host_format(node)
    _metrics_env(args, settings, env)
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", "threads",
            "--concurrency", str(args.batches), "--queues", QUEUE, "--loglevel", loglevel,
            "--task-events", "--without-gossip", "--without-mingle", "--hostname", node]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)  # same pid: signals reach Celery directly


def _celery_env(args: argparse.Namespace, settings: Any) -> dict[str, str]:
    """The environment a Celery process we exec needs: the same Redis, broker and config."""
    env = dict(os.environ)
    env["CRAWLER_REDIS_URL"] = settings.shared_redis_url
    env["CRAWLER_BROKER_URL"] = settings.shared_broker_url
    if args.config:
        env["CRAWLER_CONFIG"] = args.config
    return env


def _metrics_env(args: argparse.Namespace, settings: Any, env: dict[str, str]) -> None:
    """Pass the metrics flags on to the worker; a port another process holds is refused now,
    in one line, unless the workers share it (multi-process mode, see crawler.metrics)."""
    from crawler.metrics import MULTIPROC_ENV  # prometheus_client: only `worker` needs it

    port = args.metrics_port or settings.metrics_port
    address = args.metrics_address or settings.metrics_address
    if args.metrics_dir:
        env[MULTIPROC_ENV] = args.metrics_dir
    if port is None:
        return
    env["CRAWLER_METRICS_PORT"] = str(port)
    env["CRAWLER_METRICS_ADDRESS"] = address
    if env.get(MULTIPROC_ENV):
        return
    try:
        with socket.create_server((address, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}; "
                          "give each worker its own --metrics-port, or let them share one "
                          "with --metrics-dir DIR") from None


def _directory(text: str) -> str:
    """An argparse type: an existing directory, as an absolute path."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"not a directory: {text[:80]!r}")
    return os.path.abspath(text)


def cmd_flower(args: argparse.Namespace) -> int:
    """Replace this process with Flower on the workers' broker, always behind a login.

    Flower 2 serves its API only to logged-in users, so a login is always set: the one in
    $FLOWER_BASIC_AUTH, else a new random password printed once on stderr. It goes to
    Flower in its environment, never on a command line (`ps` shows those to every user)."""
    env = _celery_env(args, settings_from_args(args))
    auth = env.get(FLOWER_AUTH, "")
    if auth and not all(_login_ok(pair) for pair in auth.split(",")):
        raise ConfigError(f"${FLOWER_AUTH} must be user:password[,user:password]")
    if not auth:
        auth = env[FLOWER_AUTH] = f"admin:{secrets.token_urlsafe(12)}"
        print(f"Flower login: {auth} (set ${FLOWER_AUTH} to choose one)", file=sys.stderr)
    host = f"[{args.address}]" if ":" in args.address else args.address
    print(f"Flower: http://{host}:{args.port}/ (metrics: /metrics)", file=sys.stderr)
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "flower",
            f"--port={args.port}", f"--address={args.address}", "--purge_offline_workers=600"]
    if "FLOWER_TASKS_COLUMNS" not in env:  # the task list shows each batch's label and result
        argv.append(f"--tasks_columns={FLOWER_COLUMNS}")
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def _login_ok(pair: str) -> bool:
    user, sep, password = pair.partition(":")
    return bool(user and sep and password)


def cmd_submit(args: argparse.Namespace) -> int:
    intake = IntakeStats()
    with open_source(args.source) as source:
        new_id = _with_crawler(args, lambda c: c.submit_canonical(
            iter_urls(source, intake), job_id=args.job_id, batch_size=args.batch_size,
            intake=intake))
    print(new_id)
    if intake.rejected or intake.duplicates:
        print(intake.summary(), file=sys.stderr)
    return read_error_exit(intake)



def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _with_crawler(args, lambda c: watch(c, args.job))  # type: ignore[no-any-return]
    st: JobStatus = _with_crawler(args, lambda c: c.status(args.job))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(st.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
    else:
        print(format_status(st))
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    try:
        st: JobStatus = _with_crawler(args, lambda c: c.wait(args.job, args.wait_timeout))
    except TimeoutError as exc:
        print(f"crawler: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_CANCELLED if st.state is JobState.CANCELLED else EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    fmt = format_for_path(args.output, args.format)
    with contextlib.ExitStack() as stack:
        out: IO[bytes] = (
            stack.enter_context(open_output(args.output)) if args.output else sys.stdout.buffer
        )
        _with_crawler(args, lambda c: export(
            c.results(args.job, errors_only=args.errors_only), out, fmt))
    return EXIT_OK


def cmd_control(args: argparse.Namespace) -> int:
    state = _with_crawler(args, lambda c: c.control(args.job, args.command))
    print(f"job {args.job}: {state}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.purge:
        deleted = _with_crawler(args, lambda c: c.purge(args.purge))
        print(f"job {args.purge}: purged ({deleted} keys deleted)")
        return EXIT_OK
    for st in _with_crawler(args, lambda c: c.recent(args.limit)):
        print(f"{st.job_id}  {st.state:<9}  {st.done}/{st.total}  ok {st.ok}  failed "
              f"{st.failed}  created {_when(st.created)}")
    return EXIT_OK


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_status(st: JobStatus) -> str:
    pct = 100.0 * (st.done + st.cancelled) / st.total if st.total else 100.0
    now_ms = time.time() * 1000
    workers = ", ".join(f"{w} ({max(0, (now_ms - t) / 1000):.0f} s ago)"
                        for w, t in sorted(st.workers.items())) or "none yet"
    errors = ", ".join(f"{k} {v}" for k, v in sorted(st.errors.items())) or "none"
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(st.statuses.items())) or "none"
    return "\n".join([
        f"job {st.job_id}: {st.state}" + ("" if st.submitted else " (still being submitted)"),
        f"  progress  {st.done}/{st.total} ({pct:.1f}%)  ok {st.ok}  failed {st.failed}  "
        f"pending {st.pending}  cancelled {st.cancelled}",
        f"  input     rejected {st.rejected}  duplicates {st.duplicates}",
        *([f"  links     depth {'any' if st.depth < 0 else st.depth}  found again "
           f"{st.link_duplicates}  over --max-pages {st.over_limit}"] if st.depth else []),
        f"  rate      {st.rate_10s:.1f}/s over the last 10 s",
        f"  errors    {errors}",
        f"  statuses  {statuses}",
        f"  created   {_when(st.created)}  started {_when(st.started)}  "
        f"finished {_when(st.finished)}",
        f"  workers   {workers}",
    ])


async def watch(crawler: AsyncCrawler, job_id: str, *, console: Console | None = None,
                refresh: float = WATCH_REFRESH) -> int:
    """The live view (crawler.watch) until the job ends: redrawn in place on a terminal, a
    plain line per refresh otherwise; then the full status."""
    console = console or Console()
    st = await crawler.status(job_id)
    if console.is_terminal:
        with Live(render(from_status(st)), console=console, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while st.state not in TERMINAL:
                await asyncio.sleep(refresh)
                st = await crawler.status(job_id)
                live.update(render(from_status(st)), refresh=True)
    else:
        while True:
            console.print(plain(from_status(st)), soft_wrap=True, highlight=False, markup=False)
            if st.state in TERMINAL:
                break
            await asyncio.sleep(refresh)
            st = await crawler.status(job_id)
    console.print(format_status(st), soft_wrap=True, highlight=False, markup=False)
    return EXIT_OK
