"""Broker cost per batch message, for `bench.scale_costs`: Redis and RabbitMQ.

A job's URLs reach workers as one Celery message per batch (`crawler.broker.send_batches`,
as `crawler submit` sends them: one call per batch, labelled with the batch's hosts). Per
broker: messages on the queue after N batches (so messages per URL = that / URLs), bytes per
message while queued, publish and consume rates of one client, and the broker's CPU per
message (redis-server: INFO used_cpu_*; RabbitMQ: the beam.smp process's utime + stime from
/proc, which also counts anything else the machine's RabbitMQ does meanwhile).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kombu import Connection, Consumer

from bench.procs import CLK_TCK, redis_server
from crawler.broker import QUEUE, send_batches, task_queue

REPO = Path(__file__).resolve().parent.parent
JOB = "scale-costs"
CONSUME_IDLE = 5.0  # s without a message before the consumer gives up (a lost message)


def host_urls(batch: int, size: int) -> list[str]:
    return [f"https://www.host-{(batch * size + i) % 5000}.example.com/p/{batch}/{i}.html"
            for i in range(size)]


def publish(url: str, batches: int, size: int) -> float:
    """Send `batches` messages as submit does; returns the seconds it took."""
    labels = [host_urls(b, size) for b in range(batches)]
    t = time.perf_counter()
    for b in range(batches):
        send_batches(url, JOB, [b], why="submitted", urls=labels[b])
    return time.perf_counter() - t


def consume(url: str, expected: int) -> tuple[int, float]:
    """Take and ack every message as a worker would (prefetch 100); (taken, seconds)."""
    got = 0

    def on_message(_body: Any, message: Any) -> None:
        nonlocal got
        message.ack()
        got += 1

    t = time.perf_counter()
    with Connection(url) as conn, Consumer(conn.channel(), queues=[task_queue("classic")],
                                          callbacks=[on_message], accept=["json"],
                                          prefetch_count=100):
        idle = time.monotonic()
        while got < expected and time.monotonic() - idle < CONSUME_IDLE:
            before = got
            with contextlib.suppress(TimeoutError):  # an idle second: checked below
                conn.drain_events(timeout=1)
            if got > before:
                idle = time.monotonic()
    return got, time.perf_counter() - t


def per_message(name: str, batches: int, size: int, publish_s: float, queued: int,
                queued_bytes: float, cpu_pub: float, got: int, consume_s: float,
                cpu_con: float) -> dict[str, Any]:
    return {"broker": name, "batches": batches, "urls": batches * size,
            "messages_queued": queued, "messages_per_url": queued / (batches * size),
            "bytes_per_message": round(queued_bytes / max(queued, 1)),
            "publish_per_s": round(batches / publish_s), "consumed": got,
            "consume_per_s": round(got / consume_s) if consume_s else None,
            "cpu_us_publish": round(1e6 * cpu_pub / batches, 1),
            "cpu_us_consume": round(1e6 * cpu_con / max(got, 1), 1)}


def redis_broker(tmp: Path, batches: int, size: int) -> dict[str, Any]:
    with redis_server(tmp) as server:
        if server is None:
            return {"broker": "redis", "skipped": "redis-server is not installed"}
        client = redis.Redis.from_url(server.url)

        def cpu() -> float:
            info = client.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        publish(server.url, 1, size)  # connection, queue declaration
        client.delete(QUEUE)
        mem, c0 = int(client.info("memory")["used_memory"]), cpu()
        took = publish(server.url, batches, size)
        c1 = cpu()
        queued = int(client.llen(QUEUE))
        grown = int(client.info("memory")["used_memory"]) - mem
        got, consume_s = consume(server.url, queued)
        row = per_message("redis", batches, size, took, queued, grown, c1 - c0, got,
                          consume_s, cpu() - c1)
        client.close()
        return row


def beam_cpu() -> Callable[[], float]:
    """A reader of the RabbitMQ server's CPU seconds (0 when its process is not visible)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "beam.smp":
                stat = entry / "stat"
                break
        except OSError:
            continue
    else:
        return lambda: 0.0

    def read() -> float:
        f = stat.read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / CLK_TCK

    return read


def rabbit_broker(batches: int, size: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from rabbitmq import RabbitVhost, rabbitmqctl, unavailable  # tests/ is not a package

    if reason := unavailable():
        return {"broker": "rabbitmq", "skipped": reason}
    vhost = RabbitVhost("crawler-scale")
    try:
        cpu = beam_cpu()
        publish(vhost.url, 1, size)
        consume(vhost.url, 1)
        c0 = cpu()
        took = publish(vhost.url, batches, size)
        c1 = cpu()
        line = rabbitmqctl("list_queues", "-p", vhost.name, "--no-table-headers", "name",
                           "messages", "message_bytes")
        counts = {f[0]: f[1:] for f in (ln.split("\t") for ln in line.splitlines()) if f}
        queued, body_bytes = (int(x) for x in counts.get(QUEUE, ["0", "0"])[:2])
        got, consume_s = consume(vhost.url, queued)
        row = per_message("rabbitmq", batches, size, took, queued, body_bytes, c1 - c0, got,
                          consume_s, cpu() - c1)
        row["bytes_are"] = "message_bytes (bodies only)"
        return row
    finally:
        vhost.delete()


def measure(tmp: Path, batches: int, size: int, *, rabbitmq: bool) -> list[dict[str, Any]]:
    rows = [redis_broker(tmp, batches, size)]
    if rabbitmq:
        rows.append(rabbit_broker(batches, size))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| broker | batches (URLs) | messages queued | messages/URL | bytes/message "
             "| publish msg/s | consume msg/s | broker CPU us/msg publish | consume |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['broker']} | skipped: {r['skipped']} |||||||| ")
            continue
        lines.append(
            f"| {r['broker']} | {r['batches']:,} ({r['urls']:,}) | {r['messages_queued']:,} "
            f"| {r['messages_per_url']:.4f} | {r['bytes_per_message']:,} "
            f"| {r['publish_per_s']:,} | {r['consume_per_s']:,} | {r['cpu_us_publish']} "
            f"| {r['cpu_us_consume']} |")
    return "\n".join(lines)
