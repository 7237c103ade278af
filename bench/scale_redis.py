"""Redis plumbing shared by the scale benchmarks: the client factory and server-side counters.

Everything that differs on a Redis Cluster is in this module, so `bench.scale_sim` and
`bench.scale_costs` run unchanged on either:

* `make_client(url)`: the asyncio client the simulated workers use. It goes through
  `crawler.backend.redis_client`, the factory real workers use, so a `redis+cluster://` URL
  gets redis-py's `RedisCluster` exactly as a worker would.
* `Servers`: one plain client per primary (one for a single server), for what a cluster
  answers per node: INFO (CPU, commandstats, memory) summed over the primaries, with each
  node's own reading kept, since a hot slot shows only on its node.
* `drop_keys(servers, pattern)`: SCAN + UNLINK on every primary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from crawler.backend import redis_client
from crawler.ratelimit.core import HASH_TAG


def make_client(url: str, name: str = "scale-sim") -> Any:
    """The one place a benchmark client is built (single server, or cluster via backend)."""
    return redis_client(url, name=name)


def is_cluster(client: Any) -> bool:
    return type(client).__name__ == "RedisCluster"


@dataclass
class ServerSample:
    """One reading of a server's counters (summed over primaries on a cluster)."""

    at: float  # time.monotonic() of the reading
    cpu_s: float  # used_cpu_user + used_cpu_sys
    used_memory: int
    clients: int
    commands: dict[str, dict[str, float]] = field(default_factory=dict)  # cmdstat_* parsed
    nodes: dict[str, ServerSample] = field(default_factory=dict)  # per primary (cluster only)

    def calls(self, name: str) -> int:
        return int(self.commands.get(name, {}).get("calls", 0))

    def usec(self, name: str) -> float:
        return float(self.commands.get(name, {}).get("usec", 0.0))


def _parse(info: dict[str, Any], at: float) -> ServerSample:
    commands = {k.removeprefix("cmdstat_"): v for k, v in info.items()
                if k.startswith("cmdstat_")}
    return ServerSample(at=at, cpu_s=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                        used_memory=int(info["used_memory"]),
                        clients=int(info["connected_clients"]), commands=commands)


def _sum(samples: dict[str, ServerSample], at: float) -> ServerSample:
    commands: dict[str, dict[str, float]] = {}
    for s in samples.values():
        for name, stats in s.commands.items():
            mine = commands.setdefault(name, {"calls": 0, "usec": 0.0})
            mine["calls"] += stats.get("calls", 0)
            mine["usec"] += stats.get("usec", 0.0)
    return ServerSample(at=at, cpu_s=sum(s.cpu_s for s in samples.values()),
                        used_memory=sum(s.used_memory for s in samples.values()),
                        clients=sum(s.clients for s in samples.values()),
                        commands=commands, nodes=samples)


class Servers:
    """Plain clients to each primary behind `url`, and which one holds the limiter's slot."""

    def __init__(self, nodes: dict[str, aioredis.Redis], rl_node: str) -> None:
        self.nodes = nodes  # "host:port" -> client
        self.rl_node = rl_node  # the primary serving the `{rl}` hash tag (every limiter key)

    @classmethod
    async def connect(cls, url: str) -> Servers:
        client = make_client(url, name="scale-probe")
        try:
            if not is_cluster(client):
                return cls({"single": client}, "single")
            await client.initialize()
            nodes = {n.name: aioredis.Redis(host=n.host, port=n.port)
                     for n in client.get_primaries()}
            rl_node = client.get_node_from_key(f"x:{HASH_TAG}:g").name
        finally:
            if is_cluster(client):
                await client.aclose()
        return cls(nodes, rl_node)

    @property
    def cluster(self) -> bool:
        return "single" not in self.nodes

    async def sample(self) -> ServerSample:
        """CPU, memory, clients and commandstats: one INFO per primary, summed."""
        at = time.monotonic()
        per = {name: _parse(await c.info("everything"), at) for name, c in self.nodes.items()}
        if not self.cluster:
            return per["single"]
        return _sum(per, at)

    async def reset_stats(self) -> None:
        for c in self.nodes.values():
            await c.config_resetstat()

    async def flushall(self) -> None:
        """Only for servers the benchmark started itself."""
        for c in self.nodes.values():
            await c.flushall()

    async def aclose(self) -> None:
        for c in self.nodes.values():
            await c.aclose()


def command_delta(before: ServerSample, after: ServerSample) -> dict[str, dict[str, float]]:
    """Per command: calls and usec between two samples (no CONFIG RESETSTAT needed)."""
    out: dict[str, dict[str, float]] = {}
    for name in after.commands:
        calls = after.calls(name) - before.calls(name)
        if calls > 0:
            usec = after.usec(name) - before.usec(name)
            out[name] = {"calls": calls, "usec": usec, "usec_per_call": usec / calls}
    return out


def cpu_share(before: ServerSample, after: ServerSample) -> dict[str, Any]:
    """Redis CPU over the interval, in % of one core: total, and the busiest primary."""
    wall = max(after.at - before.at, 1e-9)
    total = 100 * (after.cpu_s - before.cpu_s) / wall
    out: dict[str, Any] = {"cpu_pct": round(total, 1), "busiest": None, "busiest_pct": None,
                           "per_node_pct": {}}
    if after.nodes:
        per = {n: 100 * (after.nodes[n].cpu_s - before.nodes[n].cpu_s) / wall
               for n in after.nodes}
        busiest = max(per, key=per.__getitem__)
        out.update(busiest=busiest, busiest_pct=round(per[busiest], 1),
                   per_node_pct={n: round(v, 1) for n, v in per.items()})
    return out


async def drop_keys(servers: Servers, pattern: str) -> int:
    """UNLINK every key matching `pattern` on every primary (a benchmark's own prefix: never
    FLUSHALL a server someone pointed us at). One key per UNLINK: a cluster node refuses a
    multi-key command across slots."""
    dropped = 0
    for c in servers.nodes.values():
        pipe = c.pipeline(transaction=False)
        queued = 0
        async for key in c.scan_iter(match=pattern, count=1000):
            pipe.unlink(key)
            queued += 1
            if queued >= 500:
                dropped += sum(await pipe.execute())
                queued = 0
        if queued:
            dropped += sum(await pipe.execute())
    return dropped
