"""Benchmark-only virtualenvs (Scrapy, crawlee), made on demand under bench/.venvs/.

Never the project's dependencies: each contender gets its own interpreter, so its pins (Twisted,
lxml, impit...) cannot move ours. A venv is reused while its marker file holds the same
requirements; otherwise pip installs them again (from the ordinary package index).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_DIR = REPO / "bench" / ".venvs"  # git-ignored
MARKER = ".bench-requirements"

REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "scrapy": ("scrapy==2.19.*",),
    "crawlee": ("crawlee[parsel,beautifulsoup]==1.11.*",),
    # The peers of bench/peers/. crawlee with only the parsel extra; feapder 1.9.3 imports
    # `packaging` without declaring it; scrapy-redis 0.9.1 runs on Scrapy 2.19 (its
    # start_requests() is no longer called, the first batch comes on the first idle signal).
    "crawlee-parsel": ("crawlee[parsel]==1.11.*",),
    "feapder": ("feapder==1.9.*", "packaging"),
    "scrapy-redis": ("scrapy==2.19.*", "scrapy-redis==0.9.*"),
}
# Distributions whose versions the report names, per venv.
REPORTED = {"scrapy": ("scrapy", "twisted", "lxml", "parsel"),
            "crawlee": ("crawlee", "impit", "parsel", "lxml"),
            "crawlee-parsel": ("crawlee", "impit", "parsel", "lxml"),
            "feapder": ("feapder", "requests", "urllib3", "redis"),
            "scrapy-redis": ("scrapy-redis", "scrapy", "twisted", "redis")}


def python(name: str) -> Path:
    return VENV_DIR / name / "bin" / "python"


def ensure(name: str, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The venv's interpreter, after creating the venv or installing what it lacks."""
    root, reqs = VENV_DIR / name, REQUIREMENTS[name]
    marker = root / MARKER
    if marker.exists() and marker.read_text() == "\n".join(reqs) and python(name).exists():
        return python(name)
    if not python(name).exists():
        log(f"creating {root}")
        # The base interpreter, not ours: a venv made from a venv would chain to it.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(root)], check=True)
    log(f"installing {' '.join(reqs)} into {root}")
    subprocess.run([str(python(name)), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", *reqs], check=True)
    marker.write_text("\n".join(reqs))
    return python(name)


def versions(name: str) -> str:
    """'scrapy 2.19.0, twisted 25.5.0, ...' as installed in the venv."""
    code = ("import importlib.metadata as m, sys\n"
            "print(', '.join(f'{d} {m.version(d)}' for d in sys.argv[1:]))")
    out = subprocess.run([str(python(name)), "-c", code, *REPORTED[name]],
                         capture_output=True, text=True)
    return out.stdout.strip() or f"? ({out.stderr.strip()[-200:]})"
