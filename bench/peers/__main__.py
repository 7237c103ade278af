"""Smoke-run the peers once each against a generated site, and print a table.

    python -m bench.peers [--only a,b] [--urls 2000] [--concurrency C[,C2...]] [--no-warmup]

Generates the bench.site pages in a temp dir, serves them with nginx (or the aiohttp fallback)
on a free 127.0.0.1 port, writes the URL file, starts a private redis-server on a free
loopback port when a distributed peer is chosen (never 6379; each run deletes its own keys),
makes the peers' venvs if needed, warms the site up once (bench.raw_aiohttp, unmeasured) and
runs each chosen peer once per concurrency (default: the peer's own). For the suite's real
numbers use the orchestrator; this is for checking that the peers work.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from bench import site
from bench.peers import PEERS, PeerError, PeerResult, child_env, ensure_venvs, run_peer
from bench.procs import redis_server


def log(msg: object) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    p.add_argument("--only", type=lambda s: s.split(","), default=list(PEERS),
                   help=f"comma-separated subset of {', '.join(PEERS)}")
    p.add_argument("--urls", type=int, default=2000, help="pages in the site and the list")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                   default=[None], help="C per process (a list runs each); default per peer")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--fallback-server", action="store_true", help="aiohttp instead of nginx")
    args = p.parse_args(argv)
    if unknown := set(args.only) - set(PEERS):
        p.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
    return args


def row(r: PeerResult, c: int) -> str:
    return (f"| {r.name} | {c} | {r.processes} | {r.pages} | {r.ok} | {r.elapsed:.2f} | "
            f"{r.pages / r.elapsed:,.0f} | {r.wall:.2f} | {r.pages / r.wall:,.0f} | "
            f"{1000 * r.cpu_s / r.pages:.3f} | {r.peak_rss_mib:.0f} | {r.note} |")


HEADER = ("| peer | C | procs | pages | ok | elapsed s | pages/s | wall s "
          "| pages/s incl. start-up | CPU ms/page | peak RSS MiB | note |\n" + "|---" * 12 + "|")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    chosen = [PEERS[n] for n in args.only]
    ensure_venvs([p.name for p in chosen], log=log)
    tmp = Path(tempfile.mkdtemp(prefix="crawler-peers-"))
    lines, versions = [], {}
    try:
        root = tmp / "site"
        site.generate(root, args.urls)
        need_redis = any(p.family == "distributed" for p in chosen)
        with site.serve(root, tmp, force_fallback=args.fallback_server) as srv, \
                redis_server(tmp) if need_redis else nullcontext() as redis:
            urlfile = tmp / "urls.txt"
            site.write_url_file(urlfile, srv.base, args.urls)
            log(f"site: {srv.server} at {srv.base}, {args.urls} pages; "
                f"redis: {redis.url if redis else 'not started'}")
            if not args.no_warmup:
                subprocess.run([sys.executable, "-m", "bench.raw_aiohttp", str(urlfile),
                                "--concurrency", "100"], env=child_env(), capture_output=True)
            for peer in chosen:
                for c in args.concurrency:
                    conc = c or peer.default_concurrency
                    try:
                        r = run_peer(peer.name, urlfile, conc, redis.url if redis else None,
                                     tmp)
                    except PeerError as exc:
                        log(f"{peer.name} C={conc}: FAILED {exc}")
                        lines.append(f"| {peer.name} | {conc} | FAILED: {exc} |")
                        continue
                    log(f"{peer.name} C={conc}: {r.pages / r.elapsed:,.0f} pages/s, "
                        f"wall {r.wall:.1f} s")
                    lines.append(row(r, conc))
                    versions[peer.venv] = r.versions
            if problems := srv.problems():
                log(f"site errors: {len(problems)}, first: {problems[0]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(HEADER)
    print("\n".join(lines))
    print("\n" + "\n".join(f"- {venv}: {v}" for venv, v in versions.items()))


if __name__ == "__main__":
    main()
