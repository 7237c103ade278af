"""A generated website with a known link graph, and a reference crawl over the graph.

Pure: no sockets (tests/siteserver.py serves a `Site`). `build_site` makes pages spread over
a few hosts; `expected` says what a correct crawl of them records and fetches, computed from
the graph itself (each `Link` knows its target), never by parsing the HTML the site serves,
so it checks the crawler's link extraction instead of repeating it.

A page is keyed by ``(host index, request target)``; the target is the canonical path plus
``?query`` (``"/s3/p17.html"``, ``"/s3/p17.html?a=1&view=print"``). `Site.hosts` are the
authorities the site is served on (``"127.0.0.21:40123"``), known before building because
absolute and cross-host links spell them out.

Rules the reference implements (a crawler must agree with them):

* Depth: seeds are depth 0; a link found on a page at depth d has depth d + 1; a URL's depth
  is its shortest distance from the seeds through fetched HTML pages. ``depth=N`` records
  the URLs of depth <= N and follows no link of a depth-N page; ``None`` is unlimited.
* Which links are kept: those whose target is in scope and passes allow/deny, like
  crawler.scope: ``"host"`` compares host names (no port), ``"domain"`` registrable domains
  (an IP address is its own domain), ``"any"`` keeps everything; allow/deny are regexes
  searched in the canonical URL (a URL passes if no allow or some allow matches, and no deny
  matches). Seeds are exempt from scope and allow/deny: a user asked for them.
* robots.txt (when obeyed): a URL its host's rules disallow for `user_agent` (protego's
  group matching) gets a record with error robots_disallowed, is never fetched, and its links
  are unknown. A host without robots.txt (404) allows everything.
* Redirects are one hop, on one host, to an allowed 200 HTML page. The redirecting URL gets
  the record (final_url = the target, the target's status), and the links of the target page
  are followed from it (depth + 1). The target is crawled on its own only if something links
  to it: a redirect does not mark its target seen. So a server sees the target once per
  redirecting URL fetched, plus once if it is crawled itself (`ExpectedCrawl.hits`).
* 404 pages and non-HTML resources (a PDF and a text file whose bytes look like links to
  ``/never/...``) are fetched; no link of theirs is followed.
"""

from __future__ import annotations

import gzip
import html
import ipaddress
import random
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Literal
from urllib.parse import urlsplit

from protego import Protego
from publicsuffixlist import PublicSuffixList

from crawler.engines.config import DEFAULT_USER_AGENT
from crawler.urls import canonicalize

Key = tuple[int, str]  # (host index, canonical path plus "?query")
Scope = Literal["host", "domain", "any"]

NEVER = "/never/"  # prefix of every decoy link: a request for it means a parsing bug
PRINT_QUERY = "a=1&view=print"  # canonical query of a page's print view...
PRINT_QUERY_HREF = "view=print&a=1"  # ...and as links write it: canonicalization sorts it
SECTIONS = 10  # page directories /s0/ ... /s9/: relative links cross directories
# robots.txt groups of the default site, by host index (hosts past these have no robots.txt):
# host 0 is for everyone; host 2 has a group for our user agent that differs from "*".
GATED = {0: ("/private/", "/private/open/"), 1: ("/private/",), 2: ("/members/", "/staff/")}
NON_LINKS = (
    "mailto:someone@example.com", "javascript:void(0)", "#top", "tel:+15550100",
    "data:text/html,<a href=/never/data>x</a>",
)  # fmt: skip
TRAPS = (
    '<!-- <a href="/never/comment">old</a> -->'
    "<script>document.write('<a href=\"/never/script\">x</a>')</script>"
    '<link rel="stylesheet" href="/never/style.css"><a>no href</a><a href="">empty</a>'
)  # HTML that a correct link extractor finds no link in


class Kind(StrEnum):
    HTML = "html"
    FILE = "file"  # not HTML: fetched, never parsed
    REDIRECT = "redirect"


@dataclass(frozen=True, slots=True)
class Link:
    """One `<a href>`: what the page says, and where it must lead (None: nowhere)."""

    href: str
    target: Key | None


@dataclass(frozen=True, slots=True)
class Resource:
    kind: Kind
    links: tuple[Link, ...] = ()
    base_href: str | None = None
    traps: bool = False
    content_type: str = "text/html; charset=utf-8"
    body: bytes = b""  # FILE only
    status: int = 200  # REDIRECT: 301 or 302
    location: Key | None = None  # REDIRECT: where it leads...
    location_href: str = ""  # ...as the Location header spells it


@dataclass(frozen=True, slots=True)
class Reply:
    """What a server answers for one request."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Site:
    hosts: tuple[str, ...]  # canonical authorities, e.g. "127.0.0.21:40123"
    resources: dict[Key, Resource]
    robots: tuple[str | None, ...]  # robots.txt text per host; None: 404
    documents: dict[Key, Reply] = field(default_factory=dict)  # sitemaps
    sitemap_urls: frozenset[str] = frozenset()  # every page URL the sitemaps list
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {h: i for i, h in enumerate(self.hosts)})

    def url(self, key: Key) -> str:
        return canonicalize(f"http://{self.hosts[key[0]]}{key[1]}")

    def key_of(self, url: str) -> Key | None:
        """The key of a URL on one of the site's hosts (any spelling), else None."""
        parts = urlsplit(canonicalize(url))
        host = self._index.get(parts.netloc)
        if host is None:
            return None
        return host, parts.path + (f"?{parts.query}" if parts.query else "")

    @property
    def seeds(self) -> list[str]:
        """The default seed: the home page of host 0."""
        return [self.url((0, "/"))]

    def rules(self, host: int) -> Protego | None:
        text = self.robots[host] if host < len(self.robots) else None
        return None if text is None else Protego.parse(text)

    def crawl_delay(self, host: int, user_agent: str = DEFAULT_USER_AGENT) -> float | None:
        rules = self.rules(host)
        return None if rules is None else rules.crawl_delay(user_agent)

    def render(self, key: Key) -> bytes:
        """The HTML of a page (the graph's links, spelled as their hrefs)."""
        res = self.resources[key]
        base = f'<base href="{html.escape(res.base_href)}">' if res.base_href else ""
        links = "".join(
            f'<p><a href="{html.escape(link.href)}">link {i}</a></p>'
            for i, link in enumerate(res.links)
        )
        return (
            f'<!doctype html><html><head><meta charset="utf-8"><title>{key[1]}</title>{base}'
            f"</head><body><h1>{html.escape(key[1])}</h1>{links}"
            f"{TRAPS if res.traps else ''}</body></html>"
        ).encode()

    def respond(self, key: Key) -> Reply:
        """The answer to a request for `key`: robots.txt, sitemaps, pages, files or 404."""
        if key[1] == "/robots.txt":
            text = self.robots[key[0]] if key[0] < len(self.robots) else None
            if text is not None:
                return Reply(200, "text/plain", text.encode())
        if (doc := self.documents.get(key)) is not None:
            return doc
        res = self.resources.get(key)
        if res is None:
            return Reply(404, "text/html", b"<!doctype html><title>404</title>not found")
        if res.kind is Kind.REDIRECT:
            return Reply(res.status, "text/plain", b"moved", (("Location", res.location_href),))
        if res.kind is Kind.FILE:
            return Reply(200, res.content_type, res.body)
        return Reply(200, res.content_type, self.render(key))


# --- the reference crawl -------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedCrawl:
    depth: dict[str, int]  # every URL that must get a record -> its (shortest) depth
    disallowed: frozenset[str]  # records with error robots_disallowed, never requested
    not_found: frozenset[str]  # fetched, answered 404
    status: dict[str, int]  # every fetched URL -> the status its record holds (after redirects)
    redirects: dict[str, str]  # redirecting URL -> its final_url
    hits: Counter[str]  # requests the server must see per URL (robots.txt not counted)

    @property
    def records(self) -> frozenset[str]:
        return frozenset(self.depth)

    @property
    def fetched(self) -> frozenset[str]:
        return self.records - self.disallowed


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList(accept_unknown=True)  # an unlisted TLD (.test) is a suffix


def registrable_domain(host: str) -> str:
    """The registrable domain of a host name; an IP address is its own domain."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return _psl().privatesuffix(host) or host
    return host


def expected(
    site: Site,
    seeds: Iterable[str],
    *,
    depth: int | None,
    scope: Scope,
    allow: Sequence[str] = (),
    deny: Sequence[str] = (),
    obey_robots: bool = True,
    user_agent: str = DEFAULT_USER_AGENT,
    domain_of: Callable[[str], str] = registrable_domain,
) -> ExpectedCrawl:
    """What a correct crawl of `site` from `seeds` records (the rules: module docstring)."""
    rules = {h: site.rules(h) for h in range(len(site.hosts))}
    kept = _link_filter(site, seeds, scope, allow, deny, domain_of)
    depth_of: dict[str, int] = {}
    queue: deque[str] = deque()
    for seed in map(canonicalize, seeds):
        if seed not in depth_of:
            depth_of[seed] = 0
            queue.append(seed)
    disallowed: set[str] = set()
    status: dict[str, int] = {}
    redirects: dict[str, str] = {}
    hits: Counter[str] = Counter()
    while queue:
        url = queue.popleft()
        key = site.key_of(url)
        if key is None:
            raise ValueError(f"{url} is not on the site")
        robots = rules[key[0]]
        if obey_robots and robots is not None and not robots.can_fetch(url, user_agent):
            disallowed.add(url)
            continue
        hits[url] += 1
        res = site.resources.get(key)
        if res is not None and res.kind is Kind.REDIRECT:
            assert res.location is not None
            redirects[url] = site.url(res.location)
            hits[redirects[url]] += 1
            res = site.resources[res.location]
        status[url] = 404 if res is None else 200
        if res is None or res.kind is not Kind.HTML:
            continue
        if depth is not None and depth_of[url] >= depth:
            continue
        for link in res.links:
            if link.target is None:
                continue
            target = site.url(link.target)
            if target not in depth_of and kept(target):
                depth_of[target] = depth_of[url] + 1
                queue.append(target)
    not_found = frozenset(u for u, s in status.items() if s == 404)
    return ExpectedCrawl(depth_of, frozenset(disallowed), not_found, status, redirects, hits)


def _link_filter(
    site: Site,
    seeds: Iterable[str],
    scope: Scope,
    allow: Sequence[str],
    deny: Sequence[str],
    domain_of: Callable[[str], str],
) -> Callable[[str], bool]:
    """Whether a discovered link is kept: in the seeds' scope and through allow/deny."""

    def scope_key(url: str) -> str:
        host = urlsplit(url).hostname or ""
        return {"host": host, "domain": domain_of(host), "any": ""}[scope]

    keys = {scope_key(canonicalize(s)) for s in seeds}
    allows, denies = [re.compile(p) for p in allow], [re.compile(p) for p in deny]

    def kept(url: str) -> bool:
        if scope_key(url) not in keys:
            return False
        if allows and not any(p.search(url) for p in allows):
            return False
        return not any(p.search(url) for p in denies)

    return kept


# --- the generated site ---------------------------------------------------------------------


def default_robots(hosts: Sequence[str], crawl_delay: float | None = 0.2) -> tuple[str | None, ...]:
    """robots.txt per host: 0 for everyone (with Crawl-delay), 1 none, 2 per user agent."""
    delay = f"Crawl-delay: {crawl_delay}\n" if crawl_delay is not None else ""
    texts: list[str | None] = [None] * len(hosts)
    texts[0] = (
        "User-agent: *\nDisallow: /private/\nAllow: /private/open/\nDisallow: /*sid=\n" + delay
    )
    if len(hosts) > 2:
        texts[2] = (
            "User-agent: otherbot\nDisallow: /\n\n"
            "User-agent: crawlerbot\nDisallow: /\n\n"  # a longer token: another bot's group
            "User-agent: crawler\nDisallow: /members/\n\n"
            "User-agent: *\nDisallow: /staff/\n\n"
            f"Sitemap: http://{hosts[2]}/sitemap.xml\n"
        )
    return tuple(texts)


def build_site(
    seed: int,
    hosts: Sequence[str],
    pages: int = 2000,
    *,
    crawl_delay: float | None = 0.2,
    robots: Sequence[str | None] | None = None,
) -> Site:
    """A deterministic site of about `pages` resources over `hosts` (authorities).

    From host 0's home page everything is reachable but: orphans (about 5 %, some listed
    in host 2's sitemap), what only robots-disallowed pages link to, and decoy links.
    """
    graph = _Graph(random.Random(seed), len(hosts), pages)
    graph.generate()
    robots_texts = tuple(robots) if robots is not None else default_robots(hosts, crawl_delay)
    resources = _Writer(graph, tuple(hosts)).resources()
    site = Site(tuple(hosts), resources, robots_texts)
    if len(hosts) > 2:
        docs, listed = _sitemaps(site, graph)
        site = Site(site.hosts, resources, robots_texts, docs, listed)
    return site


class _Graph:
    """Phase 1: which page links to which (keys only), and each special resource."""

    def __init__(self, rng: random.Random, hosts: int, pages: int) -> None:
        self.rng, self.hosts, self.pages = rng, hosts, pages
        self.out: dict[Key, list[Key | None]] = {}
        self.files: dict[Key, tuple[str, bytes]] = {}
        self.redirects: dict[Key, Key] = {}
        self.orphans: list[Key] = []
        self.normal: list[Key] = []
        self.by_host: dict[int, list[Key]] = {h: [] for h in range(hosts)}
        self._n = 0

    def new(self, host: int, directory: str) -> Key:
        self._n += 1
        return host, f"{directory}p{self._n}.html"

    def page(self, key: Key, *links: Key | None) -> Key:
        self.out[key] = list(links)
        return key

    def attach(self, key: Key, host: int) -> None:
        """Link to `key` from a random ordinary page of `host`."""
        self.out[self.rng.choice(self.by_host[host])].append(key)

    def generate(self) -> None:
        rng, part = self.rng, max(1, self.pages // 100)
        self._ordinary(self.pages - 18 * part)
        self._chain(2 * part)
        for host in range(self.hosts):
            for prefix in GATED.get(host, ("/private/",)):
                self._gated(host, prefix, max(1, part // 2))
        for _ in range(2 * part):
            self._redirect(rng.randrange(self.hosts))
        for i in range(part):
            self._file(i)
        for _ in range(2 * part):
            self._print_view(rng.choice(self.normal[self.hosts :]))
        self._orphans(5 * part)
        self._broken()

    def _ordinary(self, n: int) -> None:
        """Home pages, then a random tree over `n` pages, then random links (cycles)."""
        rng = self.rng
        self.normal = [(h, "/") for h in range(self.hosts)]
        self.normal += [
            self.new(rng.randrange(self.hosts), f"/s{rng.randrange(SECTIONS)}/")
            for _ in range(max(0, n))
        ]
        for key in self.normal:
            self.page(key)
            self.by_host[key[0]].append(key)
        for i, key in enumerate(self.normal[1:], 1):
            self.out[self.normal[rng.randrange(i)]].append(key)
        for key in self.normal:
            self.out[key] += rng.choices(self.normal, k=rng.randint(2, 4))
            if rng.random() < 0.1:
                self.out[key].append(key)  # a link to itself

    def _chain(self, n: int) -> None:
        """A path n pages long from host 0's home: depth limits cut it at every level."""
        home = (0, "/")
        prev = home
        for j in range(1, n + 1):
            key = self.page((0, f"/chain/p{j}.html"), home)
            self.out[prev].append(key)
            prev = key

    def _gated(self, host: int, prefix: str, n: int) -> None:
        """Pages under `prefix`, each the only way to a page of its own behind it."""
        behind_dir = "/via-" + prefix.strip("/").replace("/", "-") + "/"
        for _ in range(n):
            behind = self.page(self.new(host, behind_dir), self.rng.choice(self.normal))
            self.attach(self.page(self.new(host, prefix), behind), host)

    def _redirect(self, host: int) -> None:
        """A redirect to an ordinary page, or to a page (and its child) nothing else links."""
        rng = self.rng
        if rng.random() < 0.5:
            target = rng.choice(self.by_host[host])
        else:
            child = self.page(self.new(host, "/after-move/"), rng.choice(self.normal))
            target = self.page(self.new(host, "/moved/"), child, rng.choice(self.normal))
        key = self.new(host, "/old/")
        self.redirects[key] = target
        self.attach(key, host)

    def _file(self, i: int) -> None:
        for name, ctype in ((f"doc{i}.pdf", "application/pdf"), (f"note{i}.txt", "text/plain")):
            host = self.rng.randrange(self.hosts)
            key = (host, f"/files/{name}")
            head = "%PDF-1.4\n" if ctype == "application/pdf" else ""
            body = f'{head}<html><a href="{NEVER}{name}">x</a></html>\n'.encode()
            self.files[key] = (ctype, body)
            self.attach(key, host)

    def _print_view(self, of: Key) -> None:
        key = (of[0], f"{of[1]}?{PRINT_QUERY}")
        if key not in self.out:
            self.page(key, of, self.rng.choice(self.normal))
            self.attach(key, of[0])

    def _orphans(self, n: int) -> None:
        """Pages nothing reachable links to (they link to reachable pages and each other)."""
        rng = self.rng
        for _ in range(n):
            key = self.new(rng.randrange(self.hosts), f"/s{rng.randrange(SECTIONS)}/")
            others = rng.sample(self.orphans, min(2, len(self.orphans)))
            self.page(key, rng.choice(self.normal), *others)
            self.orphans.append(key)

    def _broken(self) -> None:
        """Links that 404 (or that host 0's robots.txt forbids by pattern), and non-links."""
        rng = self.rng
        for key in self.normal:
            roll = rng.random()
            if roll < 0.05:
                self.out[key].append(self.new(rng.randrange(self.hosts), "/missing/"))
            elif roll < 0.08:
                self.out[key].append((key[0], f"{key[1].partition('?')[0]}?b=2"))
            elif roll < 0.10 and key[0] == 0:
                self.out[key].append((0, f"{key[1]}?sid={self._n}"))
            if rng.random() < 0.15:
                self.out[key].append(None)


class _Writer:
    """Phase 2: spell every link as an href, the way real pages do (many ways)."""

    def __init__(self, graph: _Graph, hosts: tuple[str, ...]) -> None:
        self.g, self.hosts, self.rng = graph, hosts, graph.rng

    def resources(self) -> dict[Key, Resource]:
        rng = self.rng
        out: dict[Key, Resource] = {}
        for key, targets in self.g.out.items():
            base_host, base_dir, base_href = key[0], _directory(key[1]), None
            if rng.random() < 0.1:
                base_host = rng.choice((key[0], rng.randrange(len(self.hosts))))
                base_dir = f"/s{rng.randrange(SECTIONS)}/"
                same = base_host == key[0] and rng.random() < 0.5
                base_href = base_dir if same else f"http://{self.hosts[base_host]}{base_dir}"
            links = tuple(self._link(t, base_host, base_dir) for t in targets)
            out[key] = Resource(Kind.HTML, links, base_href, traps=rng.random() < 0.1)
        for key, (ctype, body) in self.g.files.items():
            out[key] = Resource(Kind.FILE, content_type=ctype, body=body)
        for key, target in self.g.redirects.items():
            href = target[1] if rng.random() < 0.5 else f"http://{self.hosts[target[0]]}{target[1]}"
            out[key] = Resource(
                Kind.REDIRECT, status=rng.choice((301, 302)), location=target, location_href=href
            )
        return out

    def _link(self, target: Key | None, base_host: int, base_dir: str) -> Link:
        rng = self.rng
        if target is None:
            return Link(rng.choice(NON_LINKS), None)
        host, written = target[0], _unsorted(target[1])
        authority = self.hosts[host]
        styles = ["absolute", "scheme-relative", "upper"]
        if host == base_host:
            styles += ["path", "path", "relative", "relative", "dots", "padded"]
        style = rng.choice(styles)
        href = {
            "absolute": lambda: f"http://{authority}{written}",
            "scheme-relative": lambda: f"//{authority}{written}",
            "upper": lambda: f"HTTP://{authority.upper()}{written}",
            "path": lambda: written,
            "relative": lambda: _relative(base_dir, written),
            "dots": lambda: f"/x/y/../..{written}",
            "padded": lambda: written,
        }[style]()
        if rng.random() < 0.1:
            href += f"#sec{rng.randrange(9)}"
        return Link(f"  {href}\n" if style == "padded" else href, target)


def _directory(target: str) -> str:
    path = target.partition("?")[0]
    return path[: path.rindex("/") + 1]


def _relative(base_dir: str, target: str) -> str:
    """An href that resolves to `target` against a page in `base_dir` (both start with /)."""
    if target.startswith(base_dir):
        return target[len(base_dir) :] or "./"
    return "../" * (base_dir.count("/") - 1) + target[1:] or "./"


def _unsorted(target: str) -> str:
    """The target with its query fields reversed: only canonicalization puts them back."""
    path, sep, query = target.partition("?")
    return path + sep + "&".join(reversed(query.split("&"))) if sep else path


def _sitemaps(site: Site, graph: _Graph) -> tuple[dict[Key, Reply], frozenset[str]]:
    """Host 2's /sitemap.xml: an index of a gzipped urlset and a plain one."""
    pages = [k for k in graph.normal if k[0] == 2] + [k for k in graph.orphans if k[0] == 2]
    listed = sorted(graph.rng.sample(pages, len(pages) // 2))
    half = len(listed) // 2
    base = f"http://{site.hosts[2]}"

    def urlset(keys: Sequence[Key]) -> bytes:
        locs = "".join(f"<url><loc>{html.escape(site.url(k))}</loc></url>" for k in keys)
        ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
        return f'<?xml version="1.0" encoding="UTF-8"?><urlset {ns}>{locs}</urlset>'.encode()

    index = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<sitemap><loc>{base}/sitemaps/pages.xml.gz</loc></sitemap>"
        f"<sitemap><loc>{base}/sitemaps/more.xml</loc></sitemap></sitemapindex>"
    ).encode()
    docs = {
        (2, "/sitemap.xml"): Reply(200, "application/xml", index),
        (2, "/sitemaps/pages.xml.gz"): Reply(
            200, "application/gzip", gzip.compress(urlset(listed[:half]), mtime=0)
        ),
        (2, "/sitemaps/more.xml"): Reply(200, "application/xml", urlset(listed[half:])),
    }
    return docs, frozenset(site.url(k) for k in listed)
