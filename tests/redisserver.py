"""A redis-server process owned by the tests, on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import redis


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process owned by the tests (never the machine's shared one)."""

    def __init__(self, *, appendonly: bool = False, extra_args: tuple[str, ...] = (),
                 port: int | None = None) -> None:
        """`appendonly`: persist every write (AOF, fsync always), so `restart()` keeps data."""
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.exe = exe
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="crawler-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--dir", self.dir, *extra_args]
        self.args += (["--appendonly", "yes", "--appendfsync", "always"] if appendonly
                      else ["--appendonly", "no"])
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)  # polling a process we just started: no event to await
        client.close()

    def halt(self) -> None:
        """Stop the server (SIGTERM: an AOF server flushes) but keep its data for `start()`."""
        self.proc.terminate()
        self.proc.wait(10)

    def restart(self) -> None:
        self.halt()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
