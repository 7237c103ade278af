"""Crawl scope: which discovered URLs a crawl may follow. Pure: strings in, verdicts out.

Two independent checks, both applied to canonical URLs (`crawler.urls.canonicalize`):

* `scope_key` names the "site" of a host, and a link is in scope when its key equals the
  seed's: the host itself (``"host"``), its registrable domain (``"domain"``), or one key
  for everything (``"any"``).
* `UrlFilter` holds the user's allow and deny regexes over the whole URL.

Registrable domains come from the Public Suffix List snapshot bundled in the
``publicsuffixlist`` wheel, read from disk once; nothing here ever fetches the list, so a
crawl's scope does not change under it and an offline worker decides like the others.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache
from typing import Literal

from publicsuffixlist import PublicSuffixList

__all__ = [
    "MAX_PATTERN_LENGTH",
    "ScopeMode",
    "UrlFilter",
    "check_patterns",
    "registered_domain",
    "scope_key",
]

ScopeMode = Literal["host", "domain", "any"]
SCOPE_MODES: tuple[ScopeMode, ...] = ("host", "domain", "any")

#: Longest accepted allow/deny pattern: real ones are short, and a huge one is a mistake
#: (or a pasted file) whose compile time and memory we would rather not pay in every worker.
MAX_PATTERN_LENGTH = 1000
#: Hosts whose registrable domain is remembered: a crawl touches far fewer, and one lookup
#: is a few microseconds, so a miss costs little once the cache is full.
_DOMAIN_CACHE_SIZE = 65_536
# A backreference (\1) or a conditional ((?(1)...) would point at another pattern's group
# once groups are renumbered in one alternation. False positives only cost speed.
_NUMBERED_REFERENCE = re.compile(r"\\[1-9]|\(\?\(")


@cache
def _psl() -> PublicSuffixList:
    """The bundled list, parsed on first use (~30 ms) rather than at import."""
    # accept_unknown=True is the PSL algorithm's default rule "*": an unlisted TLD is a
    # one-label public suffix, so a.b.internal belongs to b.internal.
    return PublicSuffixList(accept_unknown=True)


@lru_cache(maxsize=_DOMAIN_CACHE_SIZE)
def registered_domain(host: str) -> str:
    """The registrable domain of a canonical (lower-case) host: ``a.example.co.uk`` gives
    ``example.co.uk``.

    The private section of the list counts, as browsers count it for cookies: each
    ``*.github.io`` site is its own domain, because different people own them. An IP
    address (IPv6 with or without brackets), a single label such as ``localhost``, and a
    host that is itself a public suffix (``co.uk``) are their own domain.
    """
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        return host
    return _psl().privatesuffix(host) or host


def scope_key(host: str, mode: ScopeMode) -> str:
    """What two hosts must share to be in one scope under `mode`; ``""`` for ``"any"``."""
    if mode == "host":
        return host
    if mode == "domain":
        return registered_domain(host)
    if mode == "any":
        return ""
    raise ValueError(f"unknown scope mode {mode!r}: expected one of {', '.join(SCOPE_MODES)}")


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns as a list, or `ValueError` with a one-line message naming the first bad one.

    Meant for settings validation, so a typo fails at submit time instead of in a worker.
    """
    checked = list(patterns)
    for pattern in checked:
        _compile(pattern)
    return checked


def _compile(pattern: str) -> re.Pattern[str]:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(
            f"regex too long: {len(pattern)} characters (at most {MAX_PATTERN_LENGTH}): "
            f"{pattern[:40]!r}..."
        )
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


class UrlFilter:
    """Allow and deny regexes over canonical URLs, searched anywhere in the URL (`re.search`).

    A URL passes when there are no allow patterns or one of them matches, and no deny
    pattern matches. Each list is compiled once, into a single alternation when that cannot
    change what matches (see `_combine`), so a check is one or two regex searches.
    """

    def __init__(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        self.allow: tuple[str, ...] = tuple(check_patterns(allow))
        self.deny: tuple[str, ...] = tuple(check_patterns(deny))
        self._allow = _combine(self.allow)
        self._deny = _combine(self.deny)

    def allows(self, url: str) -> bool:
        """Whether `url` passes the allow and deny lists."""
        if self._allow and not any(p.search(url) for p in self._allow):
            return False
        return not any(p.search(url) for p in self._deny)

    def __repr__(self) -> str:
        return f"UrlFilter(allow={list(self.allow)!r}, deny={list(self.deny)!r})"


def _combine(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Compile `patterns` into one ``(?:a)|(?:b)`` regex when that is equivalent, else each.

    ``search(a|b)`` finds a match exactly when ``search(a)`` or ``search(b)`` does, unless
    a pattern refers to a group by number (renumbered in the alternation) or uses a global
    inline flag such as ``(?i)`` (an error anywhere but at the start): those, and duplicate
    group names, keep their own regex.
    """
    compiled = [_compile(p) for p in patterns]
    if len(compiled) < 2 or any(
        c.groups and _NUMBERED_REFERENCE.search(c.pattern) for c in compiled
    ):
        return compiled
    try:
        return [re.compile("|".join(f"(?:{p})" for p in patterns))]
    except re.error:
        return compiled
