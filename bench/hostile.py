"""Hostile servers at scale: an embedded crawl of N URLs, a few % of every hostile kind, with
the crawling process's RSS sampled every second.

    python -m bench.hostile [--urls 100000] [--mode async|threads] [--concurrency 100]
                            [--hostile-pct 1.0] [--timeout 1.5] [--retries 1]
                            [--fakeredis] [--seed 1] [--out DIR]

The servers (tests/httpserver.py for good pages and HTTP-level trouble, tests/rawserver.py
for broken framing, huge headers, resets and TLS trouble) run in a child process
(`python -m bench.hostile serve`): they share neither the GIL nor the RSS with the crawl. The
crawl is `crawler.embedded.crawl`, what `crawler crawl` runs, in this process, against a
private redis-server on a free loopback port, so the RSS is the crawler's own (with
`--fakeredis` the results live in this process and their growth is counted too).

Good pages are spread over four addresses; each hostile kind is `--hostile-pct` % of the URLs,
spread at random (seeded). A sampler thread reads VmRSS from /proc/self/status every second.
Reported: peak RSS, RSS after warm-up (10 % of the URLs done), at 50 % and at the end, the
growth ratio end / warm-up (goal: at most 1.10), URLs/s, records per error class, and per kind
what its URLs ended as. Exit status 1 when a URL has no record or more than one, a kind ended
in a class it should not, or RSS grew more than 10 % after warm-up. Writes
bench/results/hostile.md and hostile.json and prints the markdown. No traffic leaves
127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench.procs import cpu_model, git_revision, redis_server  # noqa: E402
from crawler import loops  # noqa: E402
from crawler.embedded import crawl  # noqa: E402
from crawler.runner import BatchRunner  # noqa: E402
from crawler.settings import Settings  # noqa: E402
from crawler.urls import IntakeStats, accept_urls  # noqa: E402

RESULTS = REPO / "bench" / "results"
GOOD_HOSTS = ["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4"]
HTTP_HOST, RAW_HOST, TLS_RESET_HOST, TLS_HANG_HOST, SELF_SIGNED_HOST = (
    "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")  # fmt: skip
BLOCKED_TARGET = "http://127.0.0.9:9/"  # never contacted: the guard refuses the hop
WARMUP = 0.10  # RSS after this share of the URLs is the baseline
MAX_GROWTH = 1.10  # end RSS / warm-up RSS
SAMPLE_EVERY = 1.0  # s
MiB = 1024 * 1024


@dataclass(frozen=True)
class Kind:
    """One server behaviour: where it is served and what its URLs must end as."""

    name: str
    server: str  # key in the child's JSON of base URLs
    path: str  # "{n}" makes every URL unique (the crawl dedupes)
    expect: str  # an error class, or a status as text


KINDS = [
    Kind("slow-loris-body", "http", "/drip?bytes=1000&interval=0.3&n={n}", "timeout"),
    Kind("slow-loris-headers", "raw", "/slow-headers?n={n}", "timeout"),
    Kind("slow-loris-chunk-size", "raw", "/slow-chunk-size?n={n}", "timeout"),
    Kind("silent-server", "http", "/hang?n={n}", "timeout"),
    Kind("tls-handshake-silent", "tls-hang", "/?n={n}", "timeout"),
    Kind("endless-body", "http", "/endless?n={n}", "too_large"),
    Kind("gzip-bomb", "http", "/gzip-bomb?n={n}", "too_large"),
    Kind("redirect-loop", "http", "/redirect-loop?n={n}", "too_many_redirects"),
    Kind("redirect-to-private", "http", f"/redirect-to?url={BLOCKED_TARGET}&n={{n}}",
         "blocked_address"),
    Kind("broken-chunked", "raw", "/broken-chunked?n={n}", "connection"),
    Kind("reset-before-response", "raw", "/reset?n={n}", "connection"),
    Kind("close-before-response", "raw", "/close?n={n}", "connection"),
    Kind("reset-mid-body", "http", "/reset?n={n}", "connection"),
    Kind("not-http", "raw", "/garbage-status?n={n}", "connection"),
    Kind("huge-header-line", "raw", "/huge-header?n={n}", "connection"),
    Kind("many-headers", "raw", "/many-headers?n={n}", "connection"),
    Kind("tls-handshake-reset", "tls-reset", "/?n={n}", "connection"),
    Kind("plain-http-on-https", "plain-as-tls", "/ok?n={n}", "tls"),
    Kind("self-signed-tls", "self-signed", "/ok?n={n}", "tls"),
    Kind("unknown-charset", "http", "/charset-unknown?n={n}", "200"),
    Kind("latin1-content-type", "raw", "/latin1-content-type?n={n}", "200"),
    Kind("latin1-location", "raw", "/latin1-location?n={n}", "404"),
]  # fmt: skip
GOOD = Kind("good", "good", "/page/{n}", "200")


# --- the servers' process -------------------------------------------------------------------


def serve() -> None:
    """Child: start every server, print their base URLs as one JSON line, run until SIGTERM."""
    from httpserver import HTTPServer, self_signed_cert, server_tls_context
    from rawserver import TLS_HANG, TLS_RESET, RawServer

    http = HTTPServer(HTTP_HOST, log_arrivals=False)
    servers: dict[str, Any] = {
        "http": http,
        "raw": RawServer(RAW_HOST),
        "tls-reset": RawServer(TLS_RESET_HOST, on_connect=TLS_RESET),
        "tls-hang": RawServer(TLS_HANG_HOST, on_connect=TLS_HANG),
    }
    servers |= {f"good{i}": HTTPServer(h, log_arrivals=False) for i, h in enumerate(GOOD_HOSTS)}
    tmp = Path(tempfile.mkdtemp(prefix="crawler-hostile-tls-"))
    if shutil.which("openssl"):
        ctx = server_tls_context(*self_signed_cert(tmp, SELF_SIGNED_HOST))
        servers["self-signed"] = HTTPServer(SELF_SIGNED_HOST, ssl_context=ctx, log_arrivals=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for srv in servers.values():
            srv.start()
        http.set_route("/charset-unknown", b"<p>hi</p>", content_type="text/html; charset=x-no")
        bases = {name: srv.url("/").rstrip("/") for name, srv in servers.items()}
        bases["plain-as-tls"] = bases["http"].replace("http://", "https://", 1)
        print(json.dumps(bases), flush=True)
        stop.wait()
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def servers_process() -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.hostile", "serve"], cwd=REPO,
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the child prints once every server listens
        if not line:
            raise RuntimeError(f"the servers' process exited with {proc.wait()}")
        yield proc, json.loads(line)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the URLs -------------------------------------------------------------------------------


def kinds_served(bases: dict[str, str]) -> list[Kind]:
    return [k for k in KINDS if k.server in bases]


def url_of(kind: Kind, bases: dict[str, str], n: int) -> str:
    server = f"good{n % len(GOOD_HOSTS)}" if kind is GOOD else kind.server
    return bases[server] + kind.path.format(n=n)


def generate(total: int, pct: float, kinds: list[Kind], bases: dict[str, str],
             seed: int) -> Iterator[str]:
    """`total` URLs, lazily: each hostile kind `pct` % of them, at seeded random places."""
    rng = random.Random(seed)
    share = pct / 100
    for n in range(total):
        j = int(rng.random() / share)
        yield url_of(kinds[j] if j < len(kinds) else GOOD, bases, n)


def classifier(kinds: list[Kind], bases: dict[str, str]) -> Callable[[str], Kind]:
    """URL (canonical) -> its kind, by scheme, address and path."""
    table: dict[tuple[str, str, str], Kind] = {}
    for k in kinds:
        parts = urlsplit(url_of(k, bases, 0))
        table[(parts.scheme, parts.netloc, parts.path)] = k

    def kind_of(url: str) -> Kind:
        parts = urlsplit(url)
        if parts.path.startswith("/page/"):
            return GOOD
        return table[(parts.scheme, parts.netloc, parts.path)]

    return kind_of


# --- measuring ------------------------------------------------------------------------------


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Sample:
    t: float  # s since the crawl started
    rss_kib: int
    done: int


class Sampler(threading.Thread):
    """Every SAMPLE_EVERY s: this process's RSS and how many URLs are done."""

    def __init__(self) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.samples: list[Sample] = []
        self.runner: BatchRunner | None = None
        self.started_at = time.monotonic()
        self._halt = threading.Event()

    def sample(self) -> None:
        done = self.runner.stats.done if self.runner is not None else 0
        self.samples.append(Sample(round(time.monotonic() - self.started_at, 1), rss_kib(), done))

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY):  # a clock, not synchronisation
            if self.runner is not None and self.runner.stats.finished is not None:
                return  # the crawl is over: export and verification are not measured
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join()


class UnexpectedErrors(logging.Handler):
    """Counts the engines' 'unexpected fetch error' warnings: an exception nobody mapped."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "unexpected" in record.getMessage():
            self.count += 1
            self.first = self.first or f"{record.getMessage()}: {record.exc_info}"


# --- the run --------------------------------------------------------------------------------


@dataclass
class Result:
    args: dict[str, Any]
    kinds: int = 0
    urls: int = 0
    records: int = 0
    duplicated: int = 0
    missing: int = 0
    elapsed_s: float = 0.0
    urls_per_s: float = 0.0
    peak_rss_mib: float = 0.0
    warmup_rss_mib: float = 0.0
    warmup_done: int = 0
    mid_rss_mib: float = 0.0
    end_rss_mib: float = 0.0
    growth: float = 0.0  # end / warm-up
    peak_after_warmup: float = 0.0  # max after warm-up / warm-up
    redis_rss_mib: float | None = None
    servers_rss_mib: float = 0.0
    unexpected_errors: int = 0
    first_unexpected: str | None = None
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""

    @property
    def wrong_kinds(self) -> list[str]:
        return [k for k, v in self.by_kind.items() if set(v["got"]) != {v["expect"]}
                and k != "good"]

    @property
    def passed(self) -> bool:
        return (self.missing == 0 and self.duplicated == 0 and not self.wrong_kinds
                and self.growth <= MAX_GROWTH)


def settings_for(args: argparse.Namespace, redis_url: str | None) -> Settings:
    """Small timeouts (a slow kind costs one budget per attempt); our servers' addresses are
    allowed by CIDR, so a redirect to any other private address is still refused."""
    return Settings(
        mode=args.mode, concurrency=args.concurrency, timeout=args.timeout,
        connect_timeout=min(1.0, args.timeout), read_timeout=min(1.0, args.timeout),
        retries=args.retries, retry_backoff=0.1, max_bytes=MiB, max_redirects=5,
        allowed_networks=["127.0.0.2/31", "127.0.0.4/31", "127.0.0.6/32", "127.0.1.0/24"],
        redis_url=redis_url, worker_name="bench-hostile",
    )  # fmt: skip


def summarise_rss(res: Result, samples: list[Sample], total: int) -> None:
    mib = [s.rss_kib / 1024 for s in samples]
    warm = next((i for i, s in enumerate(samples) if s.done >= WARMUP * total), 0)
    mid = next((i for i, s in enumerate(samples) if s.done >= 0.5 * total), len(samples) - 1)
    res.peak_rss_mib = round(max(mib), 1)
    res.warmup_rss_mib, res.warmup_done = round(mib[warm], 1), samples[warm].done
    res.mid_rss_mib = round(mib[mid], 1)
    res.end_rss_mib = round(mib[-1], 1)
    res.growth = round(mib[-1] / mib[warm], 3)
    res.peak_after_warmup = round(max(mib[warm:]) / mib[warm], 3)
    res.samples = [asdict(s) for s in samples]


def check_records(res: Result, export: Path, kind_of: Callable[[str], Kind],
                  urls: int) -> None:
    """Exactly one record per URL; per kind, what its URLs ended as."""
    seen: Counter[str] = Counter()
    got: dict[str, Counter[str]] = defaultdict(Counter)
    with export.open("rb") as f:
        for line in f:
            rec = json.loads(line)
            seen[rec["url"]] += 1
            got[kind_of(rec["url"]).name][rec["error"] or str(rec["status"])] += 1
    res.records = sum(seen.values())
    res.duplicated = sum(n - 1 for n in seen.values())
    res.missing = urls - len(seen)
    expect = {k.name: k.expect for k in [GOOD, *KINDS]}
    res.by_kind = {name: {"urls": sum(c.values()), "expect": expect[name], "got": dict(c)}
                   for name, c in sorted(got.items())}


def run(args: argparse.Namespace) -> Result:
    for key in [k for k in os.environ if k.startswith("CRAWLER_")]:
        del os.environ[key]  # every run sees the same defaults
    res = Result(args={k: str(v) for k, v in vars(args).items() if k != "command"})
    tmp = Path(tempfile.mkdtemp(prefix="crawler-hostile-"))
    unexpected = UnexpectedErrors()
    logging.getLogger("crawler.engines").addHandler(unexpected)
    try:
        with (nullcontext(None) if args.fakeredis else redis_server(tmp)) as redis, \
                servers_process() as (servers, bases):  # fmt: skip
            kinds = kinds_served(bases)
            res.kinds = len(kinds)
            settings = settings_for(args, redis.url if redis else None)
            intake = IntakeStats()
            urls = accept_urls(generate(args.urls, args.hostile_pct, kinds, bases, args.seed),
                               intake)
            sampler = Sampler()
            export = tmp / "records.jsonl"
            res.load_before = load_average()
            log(f"crawling {args.urls:,} URLs ({len(kinds)} hostile kinds at "
                f"{args.hostile_pct:g} % each), mode {args.mode}, C={args.concurrency}")

            def attach(runner: BatchRunner) -> None:
                sampler.runner = runner
                sampler.started_at = time.monotonic()
                sampler.sample()
                sampler.start()

            with export.open("wb") as out:
                summary = loops.run(crawl(urls, settings, intake=intake, out=out,
                                          on_start=attach))
            sampler.stop()
            res.load_after = load_average()
            res.redis_rss_mib = round(rss_kib(redis.pid) / 1024, 1) if redis else None
            res.servers_rss_mib = round(rss_kib(servers.pid) / 1024, 1)
            st = summary.stats
            res.urls = intake.accepted
            res.elapsed_s = round(st.elapsed, 1)
            res.urls_per_s = round(st.done / st.elapsed, 1)
            res.errors = dict(sorted(st.errors.items()))
            res.statuses = dict(sorted(st.statuses.items()))
            summarise_rss(res, sampler.samples, args.urls)
            check_records(res, export, classifier(kinds, bases), intake.accepted)
    finally:
        logging.getLogger("crawler.engines").removeHandler(unexpected)
        shutil.rmtree(tmp, ignore_errors=True)
    res.unexpected_errors, res.first_unexpected = unexpected.count, unexpected.first
    return res


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the report -----------------------------------------------------------------------------


def markdown(res: Result) -> str:
    a = res.args
    store = "in-process fakeredis (results count in the RSS)" if a["fakeredis"] == "True" \
        else "a private redis-server on a free loopback port"
    lines = [
        "# Hostile servers at scale",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, git {git_revision(REPO)}",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}); load average before "
        f"{res.load_before}, after {res.load_after} (other jobs shared the machine)",
        f"- command: `nice -n 19 python -m bench.hostile --urls {a['urls']} --mode {a['mode']} "
        f"--concurrency {a['concurrency']} --hostile-pct {a['hostile_pct']} "
        f"--timeout {a['timeout']} --retries {a['retries']}`",
        f"- crawl: `crawler.embedded.crawl` in the measured process, event loop "
        f"{loops.LOOP_NAME}; store and limiter: {store}; servers in a child process",
        f"- {res.kinds} hostile kinds at {a['hostile_pct']} % of the URLs each, the rest good "
        f"pages on {len(GOOD_HOSTS)} addresses; timeout {a['timeout']} s, connect and read "
        f"{min(1.0, float(a['timeout'])):g} s, max_bytes 1 MiB, max_redirects 5, "
        f"{a['retries']} retry",
        "",
        "| measure | value |",
        "|---|---|",
        f"| URLs | {res.urls:,} |",
        f"| records (one per URL) | {res.records:,} (missing {res.missing}, "
        f"duplicated {res.duplicated}) |",
        f"| elapsed | {res.elapsed_s} s |",
        f"| URLs/s | {res.urls_per_s:,.0f} |",
        f"| peak RSS | {res.peak_rss_mib} MiB |",
        f"| RSS after warm-up ({res.warmup_done:,} URLs done) | {res.warmup_rss_mib} MiB |",
        f"| RSS at 50 % | {res.mid_rss_mib} MiB |",
        f"| RSS at the end | {res.end_rss_mib} MiB |",
        f"| **growth after warm-up** (end / warm-up, goal <= {MAX_GROWTH:.2f}) | "
        f"**{res.growth:.3f}** |",
        f"| highest after warm-up / warm-up | {res.peak_after_warmup:.3f} |",
        f"| redis-server RSS at the end | "
        f"{'-' if res.redis_rss_mib is None else f'{res.redis_rss_mib} MiB'} |",
        f"| servers' process RSS at the end | {res.servers_rss_mib} MiB |",
        f"| unexpected (unmapped) exceptions | {res.unexpected_errors} |",
        "",
        "Verdict: " + ("PASS" if res.passed else "FAIL") + (
            f" (kinds that ended otherwise: {', '.join(res.wrong_kinds)})"
            if res.wrong_kinds else ""),
        "",
        "## Records by error class and status",
        "",
        "| error | records |",
        "|---|--:|",
        *[f"| {k} | {v:,} |" for k, v in res.errors.items()],
        "",
        "| status | records |",
        "|---|--:|",
        *[f"| {k} | {v:,} |" for k, v in res.statuses.items()],
        "",
        "## What each kind ended as",
        "",
        "| kind | URLs | expected | got |",
        "|---|--:|---|---|",
        *[f"| {k} | {v['urls']:,} | {v['expect']} | "
          + ", ".join(f"{c} {n:,}" for c, n in sorted(v["got"].items())) + " |"
          for k, v in res.by_kind.items()],
        "",
        "## RSS by progress",
        "",
        "| URLs done | s | RSS MiB |",
        "|--:|--:|--:|",
        *[f"| {s['done']:,} | {s['t']} | {s['rss_kib'] / 1024:.1f} |"
          for s in thin(res.samples, res.urls)],
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def thin(samples: list[dict[str, Any]], total: int) -> list[dict[str, Any]]:
    """The first sample past every 10 % of the URLs, and the last one."""
    out: list[dict[str, Any]] = []
    for tenth in range(11):
        hit = next((s for s in samples if s["done"] >= tenth * total / 10), None)
        if hit is not None and hit not in out:
            out.append(hit)
    if samples and samples[-1] not in out:
        out.append(samples[-1])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.hostile",
                                description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", choices=["run", "serve"], default="run",
                   help="serve: the servers' child process (started by run)")
    p.add_argument("--urls", type=int, default=100_000)
    p.add_argument("--mode", choices=["async", "threads"], default="async")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--hostile-pct", type=float, default=1.0, help="% of the URLs per kind")
    p.add_argument("--timeout", type=float, default=1.5, help="s, total per attempt")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--fakeredis", action="store_true",
                   help="the in-process store instead of a private redis-server")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS, help="where hostile.md/json go")
    args = p.parse_args(argv)
    if args.hostile_pct * len(KINDS) > 100:
        p.error(f"--hostile-pct {args.hostile_pct} x {len(KINDS)} kinds is over 100 %")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        serve()
        return 0
    res = run(args)
    text = markdown(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.md").write_text(text)
    payload = asdict(res) | {"passed": res.passed, "wrong_kinds": res.wrong_kinds}
    (args.out / "hostile.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())
