"""The chaos benchmark, small: it must keep passing (0 lost, 0 duplicated) as code changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.conftest import crawler_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_small_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--urls", "600", "--qps", "30",
         "--batch-size", "30", "--kill-every", "4", "--lease", "6", "--timeout", "240",
         "--out", str(tmp_path)],
        cwd=ROOT, env=crawler_env(""), capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    out = json.loads((tmp_path / "chaos.json").read_text())
    assert out["state"] == "finished" and out["records"] == 600
    assert out["lost"] == 0 and out["duplicated"] == 0
    assert out["kills"] >= 3 and out["redis_restarts"] == 1
