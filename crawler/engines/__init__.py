"""Fetch engines: the same FetchResult from aiohttp ("async") or requests in threads ("threads")."""

from __future__ import annotations

from crawler.engines.aio import AioEngine
from crawler.engines.base import Engine
from crawler.engines.config import FetchConfig
from crawler.engines.threads import ThreadEngine
from crawler.guard import Resolver, StaticResolver, SystemResolver

ENGINES: dict[str, type[Engine]] = {AioEngine.name: AioEngine, ThreadEngine.name: ThreadEngine}

__all__ = [
    "ENGINES",
    "AioEngine",
    "Engine",
    "FetchConfig",
    "Resolver",
    "StaticResolver",
    "SystemResolver",
    "ThreadEngine",
    "make_engine",
]


def make_engine(mode: str, config: FetchConfig, *, resolver: Resolver | None = None) -> Engine:
    """The engine for `mode` ("async" or "threads"); ValueError for anything else."""
    try:
        cls = ENGINES[mode]
    except KeyError:
        raise ValueError(f"unknown engine {mode!r}; expected one of {sorted(ENGINES)}") from None
    return cls(config, resolver=resolver)
