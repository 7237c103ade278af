"""Profile one contender with py-spy against the benchmark site and say where the CPU goes.

    pip install py-spy   # once; not a project dependency
    python -m bench.profile ours-async [--urls 20000] [--concurrency 100] [--redis]

Samples only the thread holding the GIL (`--gil`), so the shares below are shares of Python
CPU time. Prints them by area and by function, and keeps the raw stacks (flamegraph input).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from bench import site
from bench.contenders import BY_NAME
from bench.procs import redis_server
from bench.run import REPO, child_env

# First match wins; a sample is charged to the area of its outermost interesting frame.
AREAS = (
    ("start-up imports", ("_find_and_load",)),
    ("intake: read and canonicalize URLs", ("crawler/urls.py", "crawler/feed.py")),
    ("fakeredis (in-process Redis + Lua)", ("fakeredis/",)),
    ("redis-py client", ("redis/",)),
    ("records and store (JSON, digests)", ("crawler/store.py", "crawler/records.py")),
    ("export", ("crawler/export.py",)),
    ("aiohttp", ("aiohttp/", "yarl/", "multidict/")),
    ("requests/urllib3/http.client", ("requests/", "urllib3/", "/http/client.py")),
    ("engine glue (engines/, guard)", ("crawler/engines/", "crawler/guard.py")),
    ("runner", ("crawler/runner.py",)),
    ("thread pool", ("concurrent/futures/",)),
    ("event loop and the rest", ("",)),
)


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        out.append(([re.sub(r":\d+\)$", ")", f) for f in stack.split(";")], int(n)))
    return out


def summarize(stacks: list[tuple[list[str], int]], top: int = 20) -> str:
    total = sum(n for _, n in stacks) or 1
    areas: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, n in stacks:
        joined = ";".join(frames)
        areas[next(a for a, pats in AREAS if any(p in joined for p in pats))] += n
        leaves[frames[-1]] += n
    lines = [f"{total} GIL samples", "", "by area:"]
    lines += [f"  {n / total:6.1%}  {a}" for a, n in areas.most_common()]
    lines += ["", "by function (self):"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in leaves.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("contender", choices=[c for c in BY_NAME if not c.endswith("+redis")])
    p.add_argument("--urls", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, help="default: 100 async, 32 threads")
    p.add_argument("--redis", action="store_true", help="ours against a real redis-server")
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                   help="where <contender>.pyspy.txt (collapsed stacks) goes")
    args = p.parse_args()
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        sys.exit("py-spy not found: pip install py-spy")
    c = BY_NAME[args.contender]
    conc = args.concurrency or (100 if c.family == "async" else 32)
    with tempfile.TemporaryDirectory(prefix="crawler-profile-") as d:
        tmp = Path(d)
        site.generate(tmp / "site", args.urls)
        with site.serve(tmp / "site", tmp) as srv, \
                redis_server(tmp) if args.redis else nullcontext() as redis:
            urlfile = tmp / "urls.txt"
            site.write_url_file(urlfile, srv.base, args.urls)
            args.out.mkdir(parents=True, exist_ok=True)
            name = c.name + ("+redis" if args.redis else "")
            raw = args.out / f"{name}.pyspy.txt"
            cmd = [pyspy, "record", "--gil", "--nonblocking", "-r", str(args.rate), "-f", "raw",
                   "-o", str(raw), "--", *c.build(urlfile, conc)]
            subprocess.run(cmd, cwd=REPO, env=child_env(redis), check=True,
                           stdout=subprocess.DEVNULL)
    print(f"{name}, C={conc}, {args.urls} URLs; stacks in {raw}\n")
    print(summarize(read_stacks(raw)))


if __name__ == "__main__":
    main()
