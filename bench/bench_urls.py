"""Throughput of URL intake: `canonicalize` and `iter_urls`, slow path (w3lib) vs fast path.

    python -m bench.bench_urls                      # 200,000 URLs per shape, best of 3
    python -m bench.bench_urls --urls 50000 --repeat 1

Shapes, typical of a crawl list: ``http://127.0.0.1:8080/page/123`` (a local test site),
``https://www.example42.com/a/b123?x=123&y=2`` (hosts, a path and a sorted query) and a mix
with one URL in five in a non-canonical spelling (upper case, default port, unsorted query,
``%7e``, a fragment) that always takes the slow path. "slow" runs `_canonicalize_slow`, i.e.
`canonicalize` as it was before the fast path; `iter_urls` reads the URLs from an in-memory
binary stream, one per line. Both paths are checked to give the same URLs.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from crawler import urls


def shape_ipv4(i: int) -> str:
    return f"http://127.0.0.1:8080/page/{i}"


def shape_query(i: int) -> str:
    return f"https://www.example{i % 1000}.com/a/b{i}?x={i}&y=2"


def shape_mixed(i: int) -> str:
    if i % 5:
        return shape_query(i) if i % 2 else shape_ipv4(i)
    return [
        f"HTTP://WWW.Example{i % 1000}.com/a/{i}",
        f"http://www.example{i % 1000}.com:80/a/{i}",
        f"https://www.example{i % 1000}.com/s?y=2&x={i}",
        f"http://www.example{i % 1000}.com/%7euser/{i}",
        f"http://www.example{i % 1000}.com/a/{i}#top",
    ][(i // 5) % 5]


SHAPES: dict[str, Callable[[int], str]] = {
    "ipv4-port-path": shape_ipv4,
    "host-path-query": shape_query,
    "mixed-20%-slow": shape_mixed,
}


@contextmanager
def slow_path_only() -> Iterator[None]:
    """Make `iter_urls` call the slow path, as intake did before the fast path."""
    fast = urls.canonicalize
    urls.canonicalize = urls._canonicalize_slow
    try:
        yield
    finally:
        urls.canonicalize = fast


def best_rate(run: Callable[[], object], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return n / best


def bench_shape(lines: list[str], repeat: int) -> dict[str, float]:
    data = ("\n".join(lines) + "\n").encode()
    n = len(lines)

    def canon(fn: Callable[[str], str]) -> Callable[[], list[str]]:
        return lambda: [fn(line) for line in lines]

    def intake() -> list[str]:
        return list(urls.iter_urls(io.BytesIO(data), urls.IntakeStats()))

    fast_out, slow_out = canon(urls.canonicalize)(), canon(urls._canonicalize_slow)()
    assert fast_out == slow_out, "fast and slow paths disagree"
    with slow_path_only():
        slow_intake = intake()
    assert intake() == slow_intake == slow_out
    rates = {
        "canonicalize slow": best_rate(canon(urls._canonicalize_slow), n, repeat),
        "canonicalize fast": best_rate(canon(urls.canonicalize), n, repeat),
    }
    with slow_path_only():
        rates["iter_urls slow"] = best_rate(intake, n, repeat)
    rates["iter_urls fast"] = best_rate(intake, n, repeat)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=200_000, help="URLs per shape")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure; best is kept")
    args = parser.parse_args(argv)
    print(f"{args.urls} URLs per shape, best of {args.repeat}; URLs/s")
    print(f"{'shape':<18} {'what':<13} {'slow':>10} {'fast':>10} {'speedup':>8}")
    for name, shape in SHAPES.items():
        rates = bench_shape([shape(i) for i in range(args.urls)], args.repeat)
        for what in ("canonicalize", "iter_urls"):
            slow, fast = rates[f"{what} slow"], rates[f"{what} fast"]
            print(f"{name:<18} {what:<13} {slow:>10,.0f} {fast:>10,.0f} {fast / slow:>7.1f}x")


if __name__ == "__main__":
    main()
