"""The SSRF guard: the address policy table, resolvers, and the aiohttp resolver adapter."""

from __future__ import annotations

import socket

import pytest

from crawler.guard import (
    AiohttpGuardResolver,
    BlockedAddress,
    DNSFailure,
    Guard,
    StaticResolver,
    SystemResolver,
    is_blocked,
)


def P(ip: str, expected: bool, *, allow_private: bool = False, allowed: tuple = (), id: str):
    return pytest.param(ip, allow_private, allowed, expected, id=id)


@pytest.mark.parametrize(
    ("ip", "allow_private", "allowed", "blocked"),
    [
        P("8.8.8.8", False, id="public-v4"),
        P("2606:4700::1111", False, id="public-v6"),
        P("127.0.0.1", True, id="loopback"),
        P("127.9.9.9", True, id="loopback-range"),
        P("10.1.2.3", True, id="rfc1918-10"),
        P("172.16.0.1", True, id="rfc1918-172"),
        P("192.168.1.1", True, id="rfc1918-192"),
        P("100.64.0.1", True, id="cgnat"),
        P("169.254.169.254", True, id="link-local-metadata"),
        P("0.0.0.0", True, id="unspecified-v4"),
        P("224.0.0.1", True, id="multicast-v4"),
        P("240.0.0.1", True, id="reserved-v4"),
        P("255.255.255.255", True, id="broadcast"),
        P("192.0.2.1", True, id="documentation"),
        P("::1", True, id="loopback-v6"),
        P("::", True, id="unspecified-v6"),
        P("fe80::1", True, id="link-local-v6"),
        P("fc00::1", True, id="unique-local-v6"),
        P("ff02::1", True, id="multicast-v6"),
        P("::ffff:127.0.0.1", True, id="v4-mapped-loopback"),
        P("::ffff:10.0.0.1", True, id="v4-mapped-private"),
        P("::ffff:8.8.8.8", False, id="v4-mapped-public"),
        P("64:ff9b::7f00:1", True, id="nat64-loopback"),
        P("64:ff9b::808:808", False, id="nat64-public"),
        P("2002:7f00:1::", True, id="6to4-loopback"),
        P("2001:db8::1", True, id="documentation-v6"),
        # allow_private opens private ranges, never multicast/unspecified
        P("127.0.0.1", False, allow_private=True, id="allow-loopback"),
        P("10.0.0.1", False, allow_private=True, id="allow-private"),
        P("::ffff:127.0.0.1", False, allow_private=True, id="allow-mapped"),
        P("0.0.0.0", True, allow_private=True, id="allow-still-unspecified"),
        P("224.0.0.1", True, allow_private=True, id="allow-still-multicast"),
        # allowed_networks opens exactly those networks
        P("127.0.0.2", False, allowed=("127.0.0.2/32",), id="allowed-net"),
        P("127.0.0.3", True, allowed=("127.0.0.2/32",), id="outside-allowed-net"),
        P("::ffff:127.0.0.2", False, allowed=("127.0.0.2/32",), id="allowed-net-mapped"),
        P("10.1.2.3", False, allowed=("10.0.0.0/8", "fd00::/8"), id="allowed-net-of-two"),
        P("fd00::5", False, allowed=("10.0.0.0/8", "fd00::/8"), id="allowed-net-v6"),
    ],
)
def test_is_blocked(ip: str, allow_private: bool, allowed: tuple, blocked: bool) -> None:
    assert is_blocked(ip, allow_private=allow_private, allowed_networks=allowed) is blocked


def strict_guard(mapping: dict[str, list[str]], **kw: object) -> Guard:
    return Guard(StaticResolver(mapping), allow_private=False, **kw)  # type: ignore[arg-type]


def test_literal_checked_without_resolving() -> None:
    guard = strict_guard({})
    assert guard.resolve_sync("8.8.8.8", 80) == ["8.8.8.8"]
    assert guard.resolve_sync("[2606:4700::1111]", 80) == ["2606:4700::1111"]
    with pytest.raises(BlockedAddress, match="--allow-private-networks"):
        guard.resolve_sync("127.0.0.1", 80)
    with pytest.raises(BlockedAddress):
        guard.check_literal("[::1]")
    assert guard.check_literal("example.test") is None


def test_names_are_filtered_and_all_blocked_is_refused() -> None:
    guard = strict_guard({"mixed.test": ["10.0.0.1", "8.8.4.4"], "inside.test": ["10.0.0.1"]})
    assert guard.resolve_sync("mixed.test", 80) == ["8.8.4.4"]
    with pytest.raises(BlockedAddress, match=r"inside\.test.*--allow-private-networks"):
        guard.resolve_sync("inside.test", 80)


async def test_async_resolve_matches_sync() -> None:
    guard = strict_guard({"mixed.test": ["10.0.0.1", "8.8.4.4"]})
    assert await guard.resolve("mixed.test", 80) == ["8.8.4.4"]
    with pytest.raises(DNSFailure):
        await guard.resolve("unknown.test", 80)


def test_static_resolver_names_are_case_and_dot_insensitive() -> None:
    r = StaticResolver({"Site.Test.": ["192.0.2.7"]})
    assert r.resolve_sync("site.test", 1) == ["192.0.2.7"]
    assert r.resolve_sync("SITE.TEST.", 1) == ["192.0.2.7"]
    with pytest.raises(DNSFailure, match="unknown name"):
        r.resolve_sync("other.test", 1)


class CountingResolver(StaticResolver):
    calls = 0

    def resolve_sync(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return super().resolve_sync(host, port)


def test_cache_keeps_checked_answers_for_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = CountingResolver({"a.test": ["8.8.8.8"]})
    guard = Guard(resolver, allow_private=False, cache_ttl=60)
    now = [1000.0]
    monkeypatch.setattr("crawler.guard.time.monotonic", lambda: now[0])
    for _ in range(3):
        assert guard.resolve_sync("a.test", 80) == ["8.8.8.8"]
    assert resolver.calls == 1
    now[0] += 61
    guard.resolve_sync("a.test", 80)
    assert resolver.calls == 2


def test_no_cache_by_default() -> None:
    resolver = CountingResolver({"a.test": ["8.8.8.8"]})
    guard = Guard(resolver, allow_private=False)
    guard.resolve_sync("a.test", 80)
    guard.resolve_sync("a.test", 80)
    assert resolver.calls == 2


async def test_system_resolver_numeric_and_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    r = SystemResolver()
    # A numeric host never leaves the machine.
    assert r.resolve_sync("127.0.0.1", 80) == ["127.0.0.1"]
    assert await r.resolve("127.0.0.1", 80) == ["127.0.0.1"]

    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(DNSFailure, match=r"cannot resolve nowhere\.test"):
        r.resolve_sync("nowhere.test", 80)


async def test_aiohttp_adapter_returns_checked_addresses() -> None:
    guard = Guard(StaticResolver({"two.test": ["10.0.0.1", "fd00::1"]}), allow_private=True)
    adapter = AiohttpGuardResolver(guard)
    both = await adapter.resolve("two.test", 443, family=socket.AF_UNSPEC)
    assert [(r["host"], r["family"], r["port"]) for r in both] == [
        ("10.0.0.1", socket.AF_INET, 443),
        ("fd00::1", socket.AF_INET6, 443),
    ]
    v4 = await adapter.resolve("two.test", 443, family=socket.AF_INET)
    assert [r["host"] for r in v4] == ["10.0.0.1"]
    strict = AiohttpGuardResolver(Guard(guard.resolver, allow_private=False))
    with pytest.raises(BlockedAddress):
        await strict.resolve("two.test", 443)
    await adapter.close()


def test_literal_verdicts_are_memoised_and_still_raise() -> None:
    from crawler.guard import BlockedAddress, Guard, StaticResolver

    guard = Guard(StaticResolver({}), allow_private=False)
    for _ in range(3):  # the cached verdict behaves exactly like the first one
        with pytest.raises(BlockedAddress, match="--allow-private-networks"):
            guard.check_literal("127.0.0.1")
        assert guard.check_literal("8.8.8.8") == "8.8.8.8"
        assert guard.check_literal("example.com") is None
