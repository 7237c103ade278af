"""Sending batch tasks to the Celery broker by name (the library never imports `workers`).

A producer-only Celery app: JSON messages, one connection reused for every message. The
broker is Redis or RabbitMQ (AMQP); producer and workers declare the task queue the same way
(`celery_config`), since RabbitMQ refuses a second declaration with other arguments.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from crawler.errors import BackendUnavailable
from crawler.jobs import LINK_BATCH_BASE
from crawler.redis_urls import kombu_broker
from crawler.request import entry_url
from crawler.settings import is_amqp, mask_url
from crawler.work import host_of

FETCH_BATCH = "crawler.fetch_batch"  # the stable task name workers register
QUEUE = "crawler"  # the queue `crawler worker` consumes
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
LABEL_HOSTS = 3  # hosts named in a task's label; the rest are counted
QueueType = Literal["classic", "quorum"]  # RabbitMQ queue types (README, "RabbitMQ")


def task_queue(queue_type: QueueType) -> Queue:
    """The queue batches go to. A quorum queue (RabbitMQ only) is replicated over the
    RabbitMQ cluster's nodes; Celery sees its `x-queue-type` and turns global QoS off."""
    args = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
    return Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE, durable=True,
                 queue_arguments=args)


def celery_config(broker_url: str, queue_type: QueueType = "classic") -> dict[str, object]:
    """What producer and workers must agree on; workers add their own settings on top.

    A `redis+sentinel://` URL becomes kombu's own Sentinel form (the master it names)."""
    url, transport = (broker_url, {}) if is_amqp(broker_url) else kombu_broker(broker_url)
    extra: dict[str, object] = {}
    if transport:
        extra["broker_transport_options"] = transport
    if urlsplit(broker_url).scheme == "rediss+sentinel":
        extra["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}  # verified, as rediss
    return extra | {
        "task_queues": [task_queue(queue_type)],
        "broker_url": url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_default_queue": QUEUE,
        "broker_connection_retry_on_startup": True,
    }


@lru_cache(maxsize=4)
def producer_app(broker_url: str, queue_type: QueueType = "classic") -> Celery:
    app = Celery("crawler-producer", set_as_current=False)
    app.conf.update(celery_config(broker_url, queue_type))
    return app


def check_broker(broker_url: str) -> None:
    """One clear line (masked URL) when the broker does not answer, before anything is queued."""
    try:
        with producer_app(broker_url).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except (OperationalError, OSError) as exc:
        raise BackendUnavailable(f"cannot reach the broker at {mask_url(broker_url)}: {exc}") \
            from None


def batch_name(batch_no: int) -> str:
    """How people read a batch number: submitted batches as they are, link batches 'L<n>'."""
    return f"L{batch_no - LINK_BATCH_BASE}" if batch_no >= LINK_BATCH_BASE else str(batch_no)


def task_label(job_id: str, batch_no: int, why: str, urls: Sequence[str] | None = None
               ) -> tuple[str, str]:
    """(argsrepr, kwargsrepr): what Flower's task list and the worker's log show for a task.

    The message's real arguments stay `[job_id, batch_no]`; these strings are only its
    description, so a label can say what the batch holds without the worker reading it."""
    args = f"job={job_id} batch={batch_name(batch_no)}"
    if urls is None:
        return args, f"why={why}"
    hosts = Counter(host_of(entry_url(u)) for u in urls)  # entries: URLs or JSON requests
    named = [h for h, _ in hosts.most_common(LABEL_HOSTS)]
    more = f" (+{len(hosts) - len(named)})" if len(hosts) > len(named) else ""
    return args, f"why={why} urls={len(urls)} hosts={','.join(named)}{more}"


def send_callback(broker_url: str, task_name: str, status: dict[str, object]) -> None:
    """Send a user's Celery task (a job's `on_finish_task`) with the job's final status; the
    task runs wherever a worker of the user's own app consumes the default queue."""
    app = producer_app(broker_url)
    try:
        app.send_task(task_name, args=[status], queue="celery", retry=True,
                      retry_policy=PUBLISH_RETRY)
    except OperationalError as exc:
        raise BackendUnavailable(f"cannot reach the broker at {mask_url(broker_url)}: "
                                 f"{exc}") from None


def send_batches(broker_url: str, job_id: str, batch_nos: Iterable[int], *, why: str,
                 urls: Sequence[str] | None = None, queue_type: QueueType = "classic") -> int:
    """Enqueue `crawler.fetch_batch(job_id, n)` for each n over one broker connection.

    `why` (submitted, links, requeued, reaped, delayed, released, resumed) and, for a single
    batch, its `urls` label the task in Flower. `queue_type` is the broker_queue_type
    setting: the producer declares the queue as the workers do."""
    app = producer_app(broker_url, queue_type)
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for n in batch_nos:
                argsrepr, kwargsrepr = task_label(job_id, n, why, urls)
                app.send_task(FETCH_BATCH, args=[job_id, n], producer=producer,
                              argsrepr=argsrepr, kwargsrepr=kwargsrepr,
                              retry=True, retry_policy=PUBLISH_RETRY)
                sent += 1
    except (OperationalError, OSError) as exc:
        raise BackendUnavailable(f"cannot reach the broker at {mask_url(broker_url)}: {exc}") \
            from None
    return sent
