"""DNS rebinding: a name that answers an allowed address, then a forbidden one.

The SSRF guard checks the resolved addresses and the engines connect to exactly those (they
never resolve the name again), so a second, different answer between check and connect
cannot redirect the request. Both engines.
"""

from __future__ import annotations

from typing import Any

import pytest
from httpserver import PAGE

from crawler.engines import FetchConfig, make_engine
from crawler.records import ErrorClass


class RebindingResolver:
    """First answer: the allowed test server. Every later answer: a forbidden address."""

    def __init__(self, first: str, later: str) -> None:
        self.answers = [first]
        self.later = later
        self.calls = 0

    def _next(self) -> list[str]:
        self.calls += 1
        return [self.answers.pop()] if self.answers else [self.later]

    async def resolve(self, host: str, port: int) -> list[str]:
        return self._next()

    def resolve_sync(self, host: str, port: int) -> list[str]:
        return self._next()


@pytest.mark.parametrize("mode", ["async", "threads"])
async def test_the_checked_address_is_the_one_connected_to(
    mode: str, make_http_server: Any
) -> None:
    srv = make_http_server("127.0.0.2")
    resolver = RebindingResolver("127.0.0.2", "127.0.0.3")  # .3 is not allowed
    config = FetchConfig(timeout=5, connect_timeout=2, read_timeout=2, dns_ttl=0,
                         allow_private_networks=False, allowed_networks=("127.0.0.2/32",))
    async with make_engine(mode, config, resolver=resolver) as engine:
        ok = await engine.fetch(f"http://rebind.test:{srv.port}/ok")
        assert (ok.status, ok.bytes) == (200, len(PAGE))
        assert resolver.calls == 1  # one answer per fetch, checked and used
        # The name now answers a forbidden address: the next fetch resolves again, is refused.
        blocked = await engine.fetch(f"http://rebind2.test:{srv.port}/ok")
        assert blocked.error is ErrorClass.BLOCKED_ADDRESS
    assert [a.path for a in srv.arrivals()] == ["/ok"]
