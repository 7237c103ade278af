"""Extraction functions the tests name with --extract (tests/ is on the workers' PYTHONPATH)."""

from __future__ import annotations

import threading
from typing import Any

RELEASE = threading.Event()  # set by a test once the other pages have been fetched


def title(page: Any) -> dict[str, Any]:
    text = page.text
    start = text.find("<title>")
    return {"title": text[start + 7:text.find("</title>")] if start >= 0 else None,
            "status": page.status, "meta": page.meta, "type": page.headers["content-type"]}


def boom(page: Any) -> dict[str, Any]:
    raise ValueError(f"no luck with {page.url}")


def not_a_dict(page: Any) -> Any:
    return ["a", "list"]


def not_json(page: Any) -> dict[str, Any]:
    return {"x": {1, 2}}


def too_big(page: Any) -> dict[str, Any]:
    return {"x": "y" * 300_000}


def blocker(page: Any) -> dict[str, Any]:
    """Holds its thread until RELEASE (the loop must fetch on meanwhile)."""
    if "block" in page.url:
        return {"released": RELEASE.wait(20)}
    return {}


def follow_api(page: Any) -> dict[str, Any]:
    """From /page/N: a POST request to /echo carrying meta, and a relative link."""
    if "/page/" not in page.url:
        return {}
    n = int(page.url.rsplit("/", 1)[1].split("?")[0])
    page.follow({"url": f"/echo?from={n}", "json": {"n": n}, "meta": {"from": n}})
    page.follow(f"/status/{200 + n % 2}")
    page.follow({"url": "ftp://not/followed"})
    return {"n": n}
