"""SSRF guard: resolve a host, refuse private/reserved addresses, hand out only checked ones.

Engines connect to exactly the addresses returned here (never re-resolving the name), so a
DNS answer that changes between the check and the connect (DNS rebinding) cannot slip past.

    Resolver (protocol)       resolve(host, port) / resolve_sync(host, port) -> ["ip", ...]
    ├── SystemResolver        getaddrinfo (the async one through loop.getaddrinfo)
    └── StaticResolver        a fixed name -> addresses map (tests, a future --resolve flag)
    Guard                     Resolver + policy: literals checked directly, names filtered
    AiohttpGuardResolver      the Guard as an aiohttp resolver for TCPConnector
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_HINT = "use --allow-private-networks to allow it"
# NAT64 well-known prefix (RFC 6052): the last 32 bits are an IPv4 address reached via a gateway.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class BlockedAddress(Exception):
    """A host resolves only to addresses the SSRF policy refuses."""


class DNSFailure(Exception):
    """A host name could not be resolved."""


# --- the pure policy ---------------------------------------------------------------------


def parse_networks(networks: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(
        n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False) for n in networks
    )


def embedded_ipv4(addr: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address really reaches (mapped, NAT64, 6to4), else itself."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if addr.sixtofour is not None:
            return addr.sixtofour
    return addr


def is_blocked(
    ip: str | IPAddress,
    *,
    allow_private: bool,
    allowed_networks: Iterable[str | IPNetwork] = (),
) -> bool:
    """Whether the policy refuses a connection to `ip`.

    `allowed_networks` wins over everything. Multicast and unspecified addresses are refused
    even with `allow_private` (they are never a legitimate TCP peer; 0.0.0.0 means "this
    host"). Otherwise only globally routable unicast addresses are allowed unless
    `allow_private` is set.
    """
    original = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    addr = embedded_ipv4(original)
    for net in parse_networks(allowed_networks):
        if addr in net or original in net:
            return False
    if addr.is_multicast or addr.is_unspecified:
        return True
    if allow_private:
        return False
    return (
        not addr.is_global
        or addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_reserved
    )


def ip_literal(host: str) -> IPAddress | None:
    """The address if `host` is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# --- resolvers -----------------------------------------------------------------------------


@runtime_checkable
class Resolver(Protocol):
    """Turns a host name into IP address strings; raises DNSFailure."""

    async def resolve(self, host: str, port: int) -> list[str]: ...

    def resolve_sync(self, host: str, port: int) -> list[str]: ...


def _addresses(infos: list[tuple]) -> list[str]:
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class SystemResolver:
    """The operating system's resolver (getaddrinfo: /etc/hosts, then DNS)."""

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise DNSFailure(f"cannot resolve {host}: {exc}") from exc
        return self._check(host, _addresses(infos))

    def resolve_sync(self, host: str, port: int) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise DNSFailure(f"cannot resolve {host}: {exc}") from exc
        return self._check(host, _addresses(infos))

    @staticmethod
    def _check(host: str, addrs: list[str]) -> list[str]:
        if not addrs:
            raise DNSFailure(f"cannot resolve {host}: no addresses")
        return addrs


class StaticResolver:
    """A fixed map of host names to addresses; any other name fails like an NXDOMAIN."""

    def __init__(self, mapping: dict[str, list[str]]) -> None:
        self.mapping = {_norm(k): list(v) for k, v in mapping.items()}

    async def resolve(self, host: str, port: int) -> list[str]:
        return self.resolve_sync(host, port)

    def resolve_sync(self, host: str, port: int) -> list[str]:
        addrs = self.mapping.get(_norm(host))
        if not addrs:
            raise DNSFailure(f"cannot resolve {host}: unknown name")
        return list(addrs)


def _norm(host: str) -> str:
    return host.rstrip(".").lower()


# --- the guard -------------------------------------------------------------------------------


LITERAL_CACHE_MAX = 4096  # hosts whose literal check is memoised (cleared when full)
DNS_CACHE_MAX = 4096  # (host, port) answers kept: a crawl over millions of hosts stays bounded


class Guard:
    """Resolves through a Resolver and keeps only the addresses the policy allows.

    `cache_ttl` > 0 keeps checked answers that long (the thread engine's DNS cache; aiohttp
    has its own).
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        allow_private: bool,
        allowed_networks: Iterable[str | IPNetwork] = (),
        cache_ttl: float = 0,
        trusted_hosts: Iterable[str] = (),
    ) -> None:
        self.resolver = resolver
        self.allow_private = allow_private
        self.allowed_networks = parse_networks(allowed_networks)
        self.cache_ttl = cache_ttl
        # The job's proxy: the user named it, so its address is never refused (a proxy on
        # 127.0.0.1 is common). Only connections to the proxy resolve it; targets behind it
        # are checked by check_literal (IP literals) and resolved by the proxy.
        self.trusted_hosts = frozenset(_norm(h.strip("[]")) for h in trusted_hosts)
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._lock = threading.Lock()
        # Host string -> verdict of check_literal. The policy is fixed for the Guard's life,
        # so a verdict never goes stale; parsing an address per fetch showed in profiles.
        self._literals: dict[str, str | BlockedAddress | None] = {}

    def blocked(self, ip: str | IPAddress) -> bool:
        return is_blocked(
            ip, allow_private=self.allow_private, allowed_networks=self.allowed_networks
        )

    def check_literal(self, host: str) -> str | None:
        """The checked address if `host` is an IP literal, None for a name (resolve it)."""
        try:
            verdict = self._literals[host]
        except KeyError:
            try:
                verdict = self._check_literal(host)
            except BlockedAddress as exc:
                verdict = exc
            if len(self._literals) >= LITERAL_CACHE_MAX:
                self._literals.clear()
            self._literals[host] = verdict
        if isinstance(verdict, BlockedAddress):
            raise BlockedAddress(*verdict.args)
        return verdict

    def _check_literal(self, host: str) -> str | None:
        addr = ip_literal(host)
        if addr is None:
            return None
        if self.blocked(addr):
            raise BlockedAddress(f"{addr} is a private/reserved address; {ALLOW_HINT}")
        return str(addr)

    def allowed(self, host: str, addrs: list[str]) -> list[str]:
        """The allowed subset of a name's addresses; BlockedAddress when nothing is left."""
        ok = [a for a in addrs if not self.blocked(a)]
        if not ok:
            shown = ", ".join(addrs[:3])
            raise BlockedAddress(
                f"{host} resolves to private/reserved address {shown}; {ALLOW_HINT}"
            )
        return ok

    def _known(self, host: str, port: int) -> list[str] | None:
        """Addresses that need no lookup: a checked IP literal, or a cached answer."""
        literal = self.check_literal(host)
        return [literal] if literal is not None else self._cached(host, port)

    def _trusted(self, host: str) -> list[str] | None:
        """[the address] of a trusted IP literal, [] for a trusted name, None if untrusted."""
        if not self.trusted_hosts or _norm(host.strip("[]")) not in self.trusted_hosts:
            return None
        addr = ip_literal(host)
        return [] if addr is None else [str(addr)]

    async def resolve(self, host: str, port: int) -> list[str]:
        trusted = self._trusted(host)
        if trusted is not None:
            return trusted or await self.resolver.resolve(host, port)
        known = self._known(host, port)
        if known is not None:
            return known
        return self._store(host, port, self.allowed(host, await self.resolver.resolve(host, port)))

    def resolve_sync(self, host: str, port: int) -> list[str]:
        trusted = self._trusted(host)
        if trusted is not None:
            return trusted or self.resolver.resolve_sync(host, port)
        known = self._known(host, port)
        if known is not None:
            return known
        return self._store(host, port, self.allowed(host, self.resolver.resolve_sync(host, port)))

    def _cached(self, host: str, port: int) -> list[str] | None:
        if self.cache_ttl <= 0:
            return None
        with self._lock:
            hit = self._cache.get((_norm(host), port))
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def _store(self, host: str, port: int, addrs: list[str]) -> list[str]:
        if self.cache_ttl > 0:
            now = time.monotonic()
            with self._lock:
                if len(self._cache) >= DNS_CACHE_MAX:  # expired answers first, else all
                    live = {k: v for k, v in self._cache.items() if v[0] >= now}
                    self._cache = live if len(live) < DNS_CACHE_MAX // 2 else {}
                self._cache[(_norm(host), port)] = (now + self.cache_ttl, addrs)
        return addrs


class AiohttpGuardResolver(AbstractResolver):
    """The Guard for aiohttp's TCPConnector: it connects to exactly the checked addresses."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        out: list[ResolveResult] = []
        for addr in await self.guard.resolve(host, port):
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            out.append(
                ResolveResult(
                    hostname=host,
                    host=addr,
                    port=port,
                    family=fam,
                    proto=0,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not out:
            raise DNSFailure(f"cannot resolve {host}: no address of the requested family")
        return out

    async def close(self) -> None:
        return None
