"""The reference crawl on a hand-made graph, the generated site's promises, and its server."""

from __future__ import annotations

import gzip
import time

import pytest
import requests
from sitegraph import (
    NEVER,
    ExpectedCrawl,
    Key,
    Kind,
    Link,
    Resource,
    Site,
    build_site,
    default_robots,
    expected,
)
from siteserver import SiteServer, serve_site

from crawler.engines.config import DEFAULT_USER_AGENT
from crawler.links import extract_links

HOSTS = ("a.site.test", "b.site.test", "other.test")
FAKE = ("127.0.0.21:40001", "127.0.0.22:40002", "127.0.0.23:40003")


def page(*targets: Key) -> Resource:
    return Resource(Kind.HTML, tuple(Link(f"http://{HOSTS[h]}{p}", (h, p)) for h, p in targets))


def u(host: int, path: str) -> str:
    return f"http://{HOSTS[host]}{path}"


# Given a tiny site: a (host 0) / -> /1 -> /2 -> /3 and a shortcut / -> /3 from /1's sibling;
# a cycle back to /; a redirect; a PDF; a 404; robots-disallowed pages; other hosts.
TINY = Site(
    HOSTS,
    {
        (0, "/"): page((0, "/1"), (0, "/side"), (0, "/old"), (0, "/doc.pdf"), (0, "/gone")),
        (0, "/1"): page((0, "/2"), (0, "/")),
        (0, "/2"): page((0, "/3"), (1, "/")),
        (0, "/3"): page((0, "/4")),
        (0, "/4"): page(),
        (0, "/side"): page((0, "/3"), (0, "/private/x"), (0, "/mine/y"), (2, "/")),
        (0, "/private/x"): page((0, "/behind")),
        (0, "/behind"): page(),
        (0, "/mine/y"): page(),
        (0, "/old"): Resource(
            Kind.REDIRECT, status=301, location=(0, "/new"), location_href="/new"
        ),
        (0, "/new"): page((0, "/from-new")),
        (0, "/from-new"): page(),
        (0, "/doc.pdf"): Resource(Kind.FILE, content_type="application/pdf", body=b"<a href=/x>"),
        (0, "/orphan"): page((0, "/")),
        (1, "/"): page((1, "/b1")),
        (1, "/b1"): page(),
        (2, "/"): page(),
    },
    (
        "User-agent: *\nDisallow: /private/\n\n"
        "User-agent: crawler\nDisallow: /mine/\nDisallow: /private/\n",
        None,
        None,
    ),
)
SEEDS = [u(0, "/")]


def crawl(**kw: object) -> ExpectedCrawl:
    options: dict = {"depth": None, "scope": "any"} | kw
    return expected(TINY, SEEDS, **options)


def test_depth_is_the_shortest_distance() -> None:
    exp = crawl()
    assert exp.depth[u(0, "/3")] == 2  # via /side, not via /1 -> /2 (3)
    assert exp.depth[u(0, "/4")] == 3
    assert exp.depth[u(0, "/")] == 0  # the cycle back from /1 changes nothing
    assert u(0, "/orphan") not in exp.records


def test_depth_limit_records_the_last_level_but_follows_none_of_its_links() -> None:
    exp = crawl(depth=1)
    assert exp.records == {u(0, p) for p in ("/", "/1", "/side", "/old", "/doc.pdf", "/gone")}
    assert exp.fetched == exp.records
    assert u(0, "/from-new") not in exp.records  # the redirect's page is at depth 1
    assert crawl(depth=0).records == {u(0, "/")}


def test_robots_disallowed_pages_get_a_record_but_are_never_fetched_nor_followed() -> None:
    exp = crawl()
    assert exp.disallowed == {u(0, "/private/x"), u(0, "/mine/y")}  # "crawler" group
    assert u(0, "/behind") not in exp.records
    assert exp.hits[u(0, "/private/x")] == 0
    ignored = crawl(obey_robots=False)
    assert ignored.disallowed == frozenset()
    assert ignored.depth[u(0, "/behind")] == 3


@pytest.mark.parametrize(
    ("user_agent", "disallowed"),
    [
        pytest.param(DEFAULT_USER_AGENT, {"/private/x", "/mine/y"}, id="our-group-and-star"),
        pytest.param("Crawler/2.0", {"/private/x", "/mine/y"}, id="token-case-insensitive"),
        pytest.param("somebot/1.0", {"/private/x"}, id="star-only"),
        pytest.param("mycrawler/1.0", {"/private/x"}, id="token-inside-a-word-is-another-bot"),
    ],
)
def test_robots_groups_by_user_agent(user_agent: str, disallowed: set[str]) -> None:
    assert crawl(user_agent=user_agent).disallowed == {u(0, p) for p in disallowed}


def test_protego_picks_only_the_most_specific_group() -> None:
    """A matching group replaces "*": its rules are not added to "*"'s."""
    site = Site(HOSTS, TINY.resources, ("User-agent: *\nDisallow: /\n\nUser-agent: crawler\n"
                                        "Disallow: /mine/\n", None, None))  # fmt: skip
    assert expected(site, SEEDS, depth=None, scope="any").disallowed == {u(0, "/mine/y")}


def test_a_redirect_is_one_record_whose_links_come_from_its_target() -> None:
    exp = crawl()
    assert exp.redirects == {u(0, "/old"): u(0, "/new")}
    assert exp.status[u(0, "/old")] == 200
    assert exp.depth[u(0, "/from-new")] == 2
    assert u(0, "/new") not in exp.records  # only a link would make it a record of its own
    assert exp.hits[u(0, "/new")] == 1  # requested while following /old


def test_404_and_non_html_are_fetched_and_never_followed() -> None:
    exp = crawl()
    assert exp.not_found == {u(0, "/gone")}
    assert exp.status[u(0, "/doc.pdf")] == 200
    assert u(0, "/x") not in exp.records


@pytest.mark.parametrize(
    ("scope", "hosts"),
    [
        pytest.param("host", {0}, id="host"),
        pytest.param("domain", {0, 1}, id="domain"),  # a.site.test and b.site.test
        pytest.param("any", {0, 1, 2}, id="any"),
    ],
)
def test_scope(scope: str, hosts: set[int]) -> None:
    exp = crawl(scope=scope)
    assert {TINY.key_of(url)[0] for url in exp.records} == hosts  # type: ignore[index]


def test_allow_and_deny_filter_links_but_not_seeds() -> None:
    exp = crawl(allow=[r"/[0-9]$"], deny=[r"/3$"])
    assert exp.records == {u(0, "/"), u(0, "/1"), u(0, "/2")}
    assert crawl(allow=["nothing"]).records == {u(0, "/")}


def test_seed_spellings_are_one_seed() -> None:
    exp = expected(TINY, ["HTTP://A.site.test:80/1#top", u(0, "/1")], depth=0, scope="host")
    assert exp.records == {u(0, "/1")}


# --- the generated site ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Site:
    return build_site(6, FAKE)


def test_build_is_fast_and_deterministic(site: Site) -> None:
    start = time.perf_counter()
    again = build_site(6, FAKE)
    assert time.perf_counter() - start < 1.0
    assert again == site
    assert build_site(7, FAKE) != site
    assert len(site.resources) >= 2000


def test_every_page_holds_exactly_the_links_of_its_graph(site: Site) -> None:
    """The generator and crawler.links agree: hrefs, <base>, traps and non-links included."""
    for key, res in site.resources.items():
        if res.kind is Kind.HTML:
            wanted = [site.url(link.target) for link in res.links if link.target is not None]
            assert extract_links(site.render(key), site.url(key)) == list(dict.fromkeys(wanted))


def test_the_generated_site_has_every_case(site: Site) -> None:
    exp = expected(site, site.seeds, depth=None, scope="any")
    html = [k for k, r in site.resources.items() if r.kind is Kind.HTML]
    assert {site.url(k) for k in html} - exp.records, "pages unreachable from the seeds"
    assert exp.disallowed and exp.not_found and exp.redirects
    assert any(url.endswith(".pdf") for url in exp.fetched)
    assert max(exp.depth.values()) >= 20  # the chain
    assert {site.key_of(url)[0] for url in exp.fetched} == {0, 1, 2}  # type: ignore[index]
    ignoring = expected(site, site.seeds, depth=None, scope="any", obey_robots=False)
    assert ignoring.records > exp.records  # pages behind disallowed ones
    star = expected(site, site.seeds, depth=None, scope="any", user_agent="somebot/1")
    assert star.disallowed != exp.disallowed  # host 2 has a group of our own
    assert any("/members/" in url for url in exp.disallowed)
    assert any("/staff/" in url for url in exp.fetched)
    assert any("/private/open/" in url for url in exp.fetched)
    assert any("?a=1&view=print" in url for url in exp.fetched)
    host = expected(site, site.seeds, depth=None, scope="host")
    assert host.records < exp.records
    assert site.crawl_delay(0) == 0.2 and site.crawl_delay(1) is None
    assert all(not url.startswith(tuple(f"http://{h}{NEVER}" for h in FAKE)) for url in exp.records)


def test_robots_can_be_configured() -> None:
    robots = default_robots(FAKE, crawl_delay=0.05)
    assert "Crawl-delay: 0.05" in (robots[0] or "")
    site = build_site(6, FAKE, 200, robots=(None, None, None))
    assert expected(site, site.seeds, depth=None, scope="any").disallowed == frozenset()


# --- the server ----------------------------------------------------------------------------


def test_server_serves_pages_robots_404_files_redirects_and_logs_them(
    site_server: SiteServer,
) -> None:
    srv, site = site_server, site_server.site
    home = site.seeds[0]
    with requests.Session() as http:
        http.headers["User-Agent"] = "sitetest/1"
        resp = http.get(home, timeout=5)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/html")
        assert extract_links(resp.content, home)
        robots = http.get(f"{srv.base_urls[0]}/robots.txt", timeout=5)
        assert robots.text == site.robots[0]
        assert http.get(f"{srv.base_urls[1]}/robots.txt", timeout=5).status_code == 404
        assert http.get(f"{srv.base_urls[0]}/missing/nothing.html", timeout=5).status_code == 404
        pdf = next(k for k, r in site.resources.items() if k[1].endswith(".pdf"))
        resp = http.get(site.url(pdf), timeout=5)
        assert resp.headers["Content-Type"] == "application/pdf" and NEVER.encode() in resp.content
        old = next(k for k, r in site.resources.items() if r.kind is Kind.REDIRECT)
        resp = http.get(site.url(old), timeout=5, allow_redirects=False)
        assert resp.status_code in (301, 302)
        assert site.key_of(requests.compat.urljoin(site.url(old), resp.headers["Location"])) == (
            site.resources[old].location
        )
        index = http.get(f"{srv.base_urls[2]}/sitemap.xml", timeout=5)
        assert b"sitemapindex" in index.content
        urlset = http.get(f"{srv.base_urls[2]}/sitemaps/pages.xml.gz", timeout=5).content
        assert b"<urlset" in gzip.decompress(urlset)
    hits = srv.requests()
    assert len(hits) == 8
    assert {h.user_agent for h in hits} == {"sitetest/1"}
    assert srv.count(home) == 1 and srv.count(home.upper()) == 1
    assert [h.status for h in hits][:4] == [200, 200, 404, 404]
    host0 = [h for h in hits if h.host == 0 and h.target != "/robots.txt"]
    assert len(srv.gaps(0)) == len(host0) - 1 and srv.gaps(0) == sorted(
        srv.gaps(0)
    )  # robots.txt left out
    assert srv.gaps(srv.base_urls[0]) == srv.gaps(0)
    srv.reset()
    assert srv.requests() == []


def test_hosts_are_distinct_addresses(site_server: SiteServer) -> None:
    addresses = [h.rpartition(":")[0] for h in site_server.site.hosts]
    assert len(set(addresses)) == len(addresses) == 3


def test_serve_site_with_options_and_a_site_must_fit_its_server() -> None:
    with serve_site(("127.0.0.24",), seed=1, pages=100, robots=("",)) as srv:
        assert requests.get(srv.site.seeds[0], timeout=5).status_code == 200
        with pytest.raises(ValueError, match="served on"):
            srv.serve(build_site(1, FAKE[:1], 100))
