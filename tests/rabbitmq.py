"""A RabbitMQ vhost owned by the tests, on the machine's RabbitMQ (127.0.0.1:5672).

RabbitMQ is too slow to start per test run (seconds, an Erlang VM), so the tests share the
machine's server and isolate themselves in a vhost of their own: made with `rabbitmqctl`
(about a second per call), removed at the end with every queue in it. Without rabbitmqctl or
a RabbitMQ answering, the AMQP tests skip with the reason, except on CI (`CI=true`), where
they fail: a CI machine without RabbitMQ is a broken CI machine, not a reason to test less.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid

import pytest

HOST, PORT = "127.0.0.1", 5672
USER, PASSWORD = "guest", "guest"  # RabbitMQ's default user, allowed from loopback only
CTL_TIMEOUT = 60.0  # s for one rabbitmqctl call (about 1 s; more on a loaded machine)


def unavailable() -> str | None:
    """Why the AMQP tests cannot run here, or None when they can."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed"
    try:
        with socket.create_connection((HOST, PORT), timeout=2):
            pass
    except OSError as exc:
        return f"no RabbitMQ answers on {HOST}:{PORT} ({exc.strerror or exc})"
    return None


def require_rabbitmq() -> None:
    """Skip (locally) or fail (CI=true) when RabbitMQ is not here."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}: .ci/run starts one", pytrace=False)
    pytest.skip(reason)


def rabbitmqctl(*args: str) -> str:
    res = subprocess.run(["rabbitmqctl", "--quiet", *args], capture_output=True, text=True,
                         timeout=CTL_TIMEOUT)
    if res.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {res.stderr.strip()[-500:]}")
    return res.stdout


class RabbitVhost:
    """A vhost of its own on the machine's RabbitMQ, guest allowed everything in it."""

    def __init__(self, prefix: str = "crawler-test") -> None:
        require_rabbitmq()
        self.name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", self.name)
        try:
            rabbitmqctl("set_permissions", "-p", self.name, USER, ".*", ".*", ".*")
        except Exception:
            self.delete()
            raise
        self.url = f"amqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{self.name}"

    def queue_types(self) -> dict[str, str]:
        """Queue name -> type ("classic", "quorum") in this vhost."""
        out = rabbitmqctl("list_queues", "-p", self.name, "--no-table-headers", "name", "type")
        return dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)

    def delete(self) -> None:
        """Remove the vhost and everything in it (queues, exchanges, messages)."""
        rabbitmqctl("delete_vhost", self.name)
