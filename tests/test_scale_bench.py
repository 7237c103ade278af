"""The scale simulation's pure helpers: how workers are dealt to processes, percentiles."""

from __future__ import annotations

import pytest

from bench.scale_sim import percentile, split


@pytest.mark.parametrize(("names", "parts", "expected"), [
    pytest.param(["w0"], 2, [["w0"]], id="fewer-workers-than-processes"),
    pytest.param(["w0", "w1", "w2"], 2, [["w0", "w2"], ["w1"]], id="round-robin"),
    pytest.param([f"w{i}" for i in range(4)], 4, [["w0"], ["w1"], ["w2"], ["w3"]], id="one-each"),
])
def test_split_deals_every_worker_once(names: list[str], parts: int,
                                       expected: list[list[str]]) -> None:
    assert split(names, parts) == expected


@pytest.mark.parametrize(("values", "q", "expected"), [
    pytest.param([], 0.99, 0.0, id="empty"),
    pytest.param([3.0, 1.0, 2.0], 0.5, 2.0, id="median"),
    pytest.param([float(i) for i in range(1, 101)], 0.99, 99.0, id="p99-nearest-rank"),
    pytest.param([5.0], 0.99, 5.0, id="single"),
])
def test_percentile_by_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected
