"""`crawler crawl` following links in one process (embedded, in-process fakeredis): the same
frontier rules as the workers, checked against the generated site's reference crawl.

The crawl runs as a user runs it, `crawler crawl ...` in its own process, so the site's server
(a thread here) never shares a GIL with the crawler it judges.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from crawlcheck import check_exact
from sitegraph import expected
from siteserver import SiteServer

DELAY = 0.01  # s: host 0's Crawl-delay, small so a whole-site crawl stays fast


@pytest.fixture(scope="module")
def site() -> Any:
    from siteserver import serve_site

    with serve_site(("127.0.0.31", "127.0.0.32", "127.0.0.33"), crawl_delay=DELAY) as server:
        yield server


def crawl(server: SiteServer, tmp_path: Path, *flags: str, seeds: list[str] | None = None
          ) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    server.reset()
    src = tmp_path / "seeds.txt"
    src.write_text("".join(u + "\n" for u in (seeds or server.site.seeds)))
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    proc = subprocess.run(
        [sys.executable, "-m", "crawler", "crawl", str(src), "-o", str(out), "--no-progress",
         "--allow-private-networks", "--stats-json", str(stats), *flags],
        capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    return records, orjson.loads(stats.read_bytes()), proc.stderr.decode()


def test_whole_site_exactly_once(site: SiteServer, tmp_path: Path) -> None:
    want = expected(site.site, site.site.seeds, depth=None, scope="any")
    records, _stats, _err = crawl(site, tmp_path, "--depth", "inf", "--scope", "any")
    check_exact(records, want, site, shortest=False)


@pytest.mark.parametrize("mode", ["async", "threads"])
def test_depth_is_exact_and_shortest(site: SiteServer, tmp_path: Path, mode: str) -> None:
    want = expected(site.site, site.site.seeds, depth=2, scope="host")
    records, _stats, _err = crawl(site, tmp_path, "--depth", "2", "--mode", mode)
    check_exact(records, want, site)


def test_depth_zero_fetches_the_seeds_only_and_no_robots(site: SiteServer, tmp_path: Path
                                                         ) -> None:
    records, _stats, _err = crawl(site, tmp_path)
    assert [r["url"] for r in records] == site.site.seeds
    assert [h.target for h in site.requests()] == ["/"]


def test_allow_deny_and_domain_scope(site: SiteServer, tmp_path: Path) -> None:
    allow, deny = [r"/s[0-4]/", r"\.html$"], [r"/s2/"]
    want = expected(site.site, site.site.seeds, depth=3, scope="domain", allow=allow,
                    deny=deny)
    flags = ["--depth", "3", "--scope", "domain"]
    for a in allow:
        flags += ["--allow", a]
    records, _stats, _err = crawl(site, tmp_path, *flags, "--deny", deny[0])
    check_exact(records, want, site)


def test_ignore_robots_fetches_disallowed_pages(site: SiteServer, tmp_path: Path) -> None:
    want = expected(site.site, site.site.seeds, depth=2, scope="any", obey_robots=False)
    records, _stats, _err = crawl(site, tmp_path, "--depth", "2", "--scope", "any",
                                  "--ignore-robots")
    check_exact(records, want, site, robots=False)


def test_max_pages_is_exact(site: SiteServer, tmp_path: Path) -> None:
    reachable = expected(site.site, site.site.seeds, depth=None, scope="any").records
    records, stats, _err = crawl(site, tmp_path, "--depth", "inf", "--scope", "any",
                                 "--max-pages", "150")
    assert len(records) == 150 == stats["done"]
    assert {r["url"] for r in records} <= reachable


def test_sitemaps_seed_the_listed_pages(site: SiteServer, tmp_path: Path) -> None:
    # Given host 2's robots.txt names a sitemap index (a gzipped urlset and a plain one)
    seed = site.site.url((2, "/"))
    records, _stats, _err = crawl(site, tmp_path, "--sitemaps", "--robots", "obey",
                                  seeds=[seed])
    # Then every page they list is recorded once (depth 0: nothing is followed), the
    # disallowed ones without a request
    rules = site.site.rules(2)
    listed = set(site.site.sitemap_urls)
    assert {r["url"] for r in records} == listed | {seed}
    assert len(records) == len(listed | {seed})
    for r in records:
        allowed = rules is None or rules.can_fetch(r["url"], "crawler/0.1")
        assert (r["error"] == "robots_disallowed") == (not allowed), r


def test_on_finish_posts_the_crawls_counters(site: SiteServer, tmp_path: Path,
                                             hook: Any) -> None:
    hook.answers.append(0)  # answer 200 at once
    records, _stats, _err = crawl(site, tmp_path, "--on-finish", hook.url)
    assert hook.got.wait(10)
    (final,) = hook.bodies
    assert final["state"] == "finished" and final["done"] == len(records) > 0
