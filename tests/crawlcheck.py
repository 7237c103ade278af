"""What a correct crawl of a generated site looks like at the server and in the records."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sitegraph import ExpectedCrawl
from siteserver import SiteServer


def check_exact(records: list[dict[str, Any]], want: ExpectedCrawl, server: SiteServer, *,
                shortest: bool = True, robots: bool = True) -> None:
    """Exactly the expected records, each fetched as often as the reference says (once, plus
    once per redirect that leads to it), nothing else requested; at their shortest depth when
    the crawl had a depth limit (levels), else at least that (the depth they were found at)."""
    urls = Counter(r["url"] for r in records)
    assert max(urls.values()) == 1, "a URL got two records"
    missing, extra = want.records - set(urls), set(urls) - want.records
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    by_url = {r["url"]: r for r in records}
    depths = {u: r["depth"] for u, r in by_url.items()}
    if shortest:
        assert depths == want.depth
    else:
        assert all(depths[u] >= d for u, d in want.depth.items())
    disallowed = {u for u, r in by_url.items() if r["error"] == "robots_disallowed"}
    assert disallowed == set(want.disallowed)
    assert {u: r["status"] for u, r in by_url.items() if u not in disallowed} == want.status
    hits = Counter(h.url for h in server.requests() if h.target != "/robots.txt")
    assert hits == want.hits
    asked = Counter(h.host for h in server.requests() if h.target == "/robots.txt")
    if robots:  # once per host per job
        assert set(asked.values()) == {1}, asked
    else:
        assert not asked
