"""Redis topologies owned by the tests: a 3-master Redis Cluster and a Sentinel-watched pair.

Real servers on loopback, made the way an operator makes them (`redis-cli --cluster create`,
`redis-sentinel` with a `sentinel monitor` line), and removed afterwards.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redisserver import RedisServer, free_port

NODE_TIMEOUT_MS = 2000  # cluster-node-timeout: a failed master is noticed within seconds
SERVICE = "crawler-test"  # the master's name for the sentinels
DOWN_AFTER_MS = 1000  # sentinel down-after-milliseconds: a quick failover for the test


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for servers we started to reach a state no event announces."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and below 65536 too."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterServers:
    """Three cluster-enabled redis-servers joined into one cluster (16384 slots, no replica)."""

    def __init__(self, masters: int = 3) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.skip("redis-cli is not installed")
        self.nodes = [
            RedisServer(extra_args=("--cluster-enabled", "yes", "--cluster-node-timeout",
                                    str(NODE_TIMEOUT_MS), "--cluster-config-file",
                                    "nodes.conf"), port=free_cluster_port())
            for _ in range(masters)
        ]
        try:
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=60)
            poll(self._ok, 30, "cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def _ok(self) -> bool:
        for node in self.nodes:
            c = node.client()
            try:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
            finally:
                c.close()
        return True

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def flushall(self) -> None:
        for node in self.nodes:
            c = node.client()
            c.flushall()
            c.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelGroup:
    """One master, one replica and three sentinels watching them (quorum 2)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-sentinel") or shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.master = RedisServer()
        self.replica = RedisServer(extra_args=("--replicaof", "127.0.0.1",
                                               str(self.master.port)))
        self.sentinels: list[tuple[int, subprocess.Popen[bytes]]] = []
        try:
            poll(self._replica_synced, 30, "the replica to sync")
            for _ in range(3):
                self._start_sentinel(exe)
            poll(self._sentinels_see_all, 30, "every sentinel to see the replica and the others")
        except BaseException:
            self.stop()
            raise
        hosts = ",".join(f"127.0.0.1:{port}" for port, _ in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _start_sentinel(self, exe: str) -> None:
        port = free_port()
        conf = Path(self.master.dir) / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.master.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        args = [exe, str(conf)] if exe.endswith("sentinel") else [exe, str(conf), "--sentinel"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sentinels.append((port, proc))

    def _replica_synced(self) -> bool:
        c = self.replica.client()
        try:
            return c.info("replication").get("master_link_status") == "up"
        finally:
            c.close()

    def _sentinels_see_all(self) -> bool:
        for port, _ in self.sentinels:
            c = redis.Redis(host="127.0.0.1", port=port)
            try:
                state = c.sentinel_master(SERVICE)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
            finally:
                c.close()
        return True

    def master_port(self) -> int:
        """The port the sentinels currently name as the master."""
        c = redis.Redis(host="127.0.0.1", port=self.sentinels[0][0])
        try:
            return int(c.sentinel_get_master_addr_by_name(SERVICE)[1])
        finally:
            c.close()

    def failover(self, timeout: float = 30) -> int:
        """Make the sentinels promote the replica (SENTINEL FAILOVER, as an operator does for
        maintenance); returns the new master's port once every sentinel names it."""
        old = self.master_port()
        c = redis.Redis(host="127.0.0.1", port=self.sentinels[0][0])
        try:
            c.execute_command("SENTINEL", "FAILOVER", SERVICE)
        finally:
            c.close()
        poll(lambda: all(self._named_by(port) != old for port, _ in self.sentinels), timeout,
             "every sentinel to name the new master")
        return self.master_port()

    def _named_by(self, sentinel_port: int) -> int:
        c = redis.Redis(host="127.0.0.1", port=sentinel_port)
        try:
            return int(c.sentinel_get_master_addr_by_name(SERVICE)[1])
        finally:
            c.close()

    def stop(self) -> None:
        for _, proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        self.replica.stop()
        self.master.stop()
