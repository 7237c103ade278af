"""Crawl scope (crawler.scope): registrable domains, scope keys, allow/deny filters."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any, NoReturn

import pytest

from crawler import scope
from crawler.scope import (
    MAX_PATTERN_LENGTH,
    UrlFilter,
    check_patterns,
    registered_domain,
    scope_key,
)


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        pytest.param("a.example.co.uk", "example.co.uk", id="icann-two-label-suffix"),
        pytest.param("example.co.uk", "example.co.uk", id="already-registrable"),
        pytest.param("www.example.com", "example.com", id="com"),
        pytest.param("a.b.c.example.com", "example.com", id="deep"),
        pytest.param("foo.github.io", "foo.github.io", id="private-section"),
        pytest.param("x.foo.github.io", "foo.github.io", id="private-section-deep"),
        pytest.param("www.city.kobe.jp", "city.kobe.jp", id="exception-rule"),
        pytest.param("xn--bcher-kva.de", "xn--bcher-kva.de", id="punycode"),
        pytest.param("co.uk", "co.uk", id="public-suffix-itself"),
        pytest.param("github.io", "github.io", id="private-suffix-itself"),
        pytest.param("localhost", "localhost", id="single-label"),
        pytest.param("a.b.internal", "b.internal", id="unknown-tld-default-rule"),
        pytest.param("127.0.0.1", "127.0.0.1", id="ipv4"),
        pytest.param("10.1.2.3", "10.1.2.3", id="ipv4-private"),
        pytest.param("::1", "::1", id="ipv6"),
        pytest.param("[2001:db8::1]", "[2001:db8::1]", id="ipv6-brackets"),
    ],
)
def test_registered_domain(host: str, domain: str) -> None:
    assert registered_domain(host) == domain


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param("a.example.co.uk", "b.example.co.uk", True, id="siblings"),
        pytest.param("example.co.uk", "www.example.co.uk", True, id="apex-and-www"),
        pytest.param("example.co.uk", "other.co.uk", False, id="different-owners"),
        pytest.param("foo.github.io", "bar.github.io", False, id="github-pages-users"),
        pytest.param("127.0.0.1", "127.0.0.2", False, id="ips"),
    ],
)
def test_domain_scope(a: str, b: str, same: bool) -> None:
    """Each ``*.github.io`` site is its own domain: the private section of the PSL counts,
    as it does for browser cookies, because different people own those sites."""
    assert (scope_key(a, "domain") == scope_key(b, "domain")) is same


def test_host_scope_is_the_exact_host_and_any_is_one_key() -> None:
    assert scope_key("a.example.co.uk", "host") != scope_key("b.example.co.uk", "host")
    assert scope_key("a.example.co.uk", "host") == "a.example.co.uk"
    assert scope_key("a.example.co.uk", "any") == scope_key("other.test", "any") == ""


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scope mode 'site'"):
        scope_key("example.com", "site")  # type: ignore[arg-type]


def test_registered_domain_is_cached_and_bounded() -> None:
    info = registered_domain.cache_info()
    assert info.maxsize is not None and info.maxsize >= 1024


def _no_network(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError(f"network access attempted: {args!r}")


def test_the_suffix_list_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no way out at all: sockets, name resolution and urllib fail loudly
    for name in ("socket", "create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, _no_network)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    # When the list is loaded afresh and used
    scope._psl.cache_clear()
    registered_domain.cache_clear()
    try:
        # Then the bundled snapshot answers
        assert registered_domain("a.example.co.uk") == "example.co.uk"
        assert scope_key("bar.github.io", "domain") == "bar.github.io"
    finally:
        scope._psl.cache_clear()
        registered_domain.cache_clear()


@pytest.mark.parametrize(
    ("allow", "deny", "url", "passes"),
    [
        pytest.param([], [], "https://a.test/x", True, id="no-patterns"),
        pytest.param([r"/blog/"], [], "https://a.test/blog/1", True, id="allow-match"),
        pytest.param([r"/blog/"], [], "https://a.test/shop/1", False, id="allow-miss"),
        pytest.param([r"/blog/", r"/news/"], [], "https://a.test/news/1", True, id="any-allow"),
        pytest.param([], [r"\.pdf$"], "https://a.test/a.pdf", False, id="deny-match"),
        pytest.param([], [r"\.pdf$"], "https://a.test/a.html", True, id="deny-miss"),
        pytest.param(
            [r"/blog/"],
            [r"\?page="],
            "https://a.test/blog/?page=2",
            False,
            id="deny-wins-over-allow",
        ),
        pytest.param([r"/blog/"], [r"\?page="], "https://a.test/blog/", True, id="allow-only"),
        pytest.param(
            [r"^https://a\.test/"], [], "https://b.test/?u=https://a.test/", False, id="anchored"
        ),
        pytest.param(
            [r"a\.test"], [], "https://b.test/?u=https://a.test/", True, id="searched-anywhere"
        ),
        pytest.param([r"(?i)/BLOG/"], [], "https://a.test/blog/", True, id="global-flag-alone"),
        pytest.param(
            [r"/x/", r"(?i)/BLOG/"], [], "https://a.test/blog/", True, id="global-flag-not-combined"
        ),
        pytest.param(
            [r"/(a)\1/", r"/(b)\1/"],
            [],
            "https://a.test/bb/",
            True,
            id="backreferences-not-combined",
        ),
        pytest.param(
            [r"/(?P<s>a)/", r"/(?P<s>b)/"],
            [],
            "https://a.test/b/",
            True,
            id="duplicate-group-names",
        ),
        pytest.param(
            [r"/(blog|news)/", r"/shop/"],
            [],
            "https://a.test/news/",
            True,
            id="plain-groups-combined",
        ),
        pytest.param([r"a|b"], [r"x|/z"], "https://c.test/z", False, id="alternations-wrapped"),
    ],
)
def test_url_filter(allow: list[str], deny: list[str], url: str, passes: bool) -> None:
    assert UrlFilter(allow, deny).allows(url) is passes
    # the combined alternation never changes the verdict of the patterns one by one
    one_by_one = UrlFilter([], [])
    one_by_one._allow = [scope._compile(p) for p in allow]
    one_by_one._deny = [scope._compile(p) for p in deny]
    assert one_by_one.allows(url) is passes


def test_safe_patterns_are_combined_into_one_regex() -> None:
    f = UrlFilter([r"/blog/", r"/(news|press)/"], [r"\.pdf$", r"\.zip$"])
    assert len(f._allow) == 1 and len(f._deny) == 1
    assert "allow=['/blog/'" in repr(f)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        pytest.param(
            "(", "invalid regex '(': missing ), unterminated subpattern at position 0", id="paren"
        ),
        pytest.param("[a-", "invalid regex '[a-': unterminated character set", id="set"),
        pytest.param("*x", "invalid regex '*x': nothing to repeat at position 0", id="repeat"),
    ],
)
def test_bad_regex_is_one_line_naming_the_pattern(pattern: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_patterns(["ok", pattern])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="invalid regex"):
        UrlFilter(deny=[pattern])


def test_overlong_pattern_is_refused() -> None:
    assert check_patterns(["a" * MAX_PATTERN_LENGTH]) == ["a" * MAX_PATTERN_LENGTH]
    with pytest.raises(ValueError, match=r"regex too long: 1001 characters \(at most 1000\)"):
        check_patterns(["a" * (MAX_PATTERN_LENGTH + 1)])
    with pytest.raises(ValueError, match="too long"):
        UrlFilter(allow=["a" * 5000])


def test_check_patterns_returns_the_patterns() -> None:
    assert check_patterns(p for p in [r"/a/", r"\d+"]) == [r"/a/", r"\d+"]
