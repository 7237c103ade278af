"""Sending batch tasks to the Celery broker by name (the library never imports `workers`).

A producer-only Celery app: JSON messages, one connection reused for every message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from celery import Celery
from kombu.exceptions import OperationalError

from crawler.errors import BackendUnavailable
from crawler.jobs import LINK_BATCH_BASE
from crawler.settings import mask_url
from crawler.work import host_of

FETCH_BATCH = "crawler.fetch_batch"  # the stable task name workers register
QUEUE = "crawler"  # the queue `crawler worker` consumes
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
LABEL_HOSTS = 3  # hosts named in a task's label; the rest are counted


def celery_config(broker_url: str) -> dict[str, object]:
    """What producer and workers must agree on; workers add their own settings on top."""
    return {
        "broker_url": broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_default_queue": QUEUE,
        "broker_connection_retry_on_startup": True,
    }


@lru_cache(maxsize=4)
def producer_app(broker_url: str) -> Celery:
    app = Celery("crawler-producer", set_as_current=False)
    app.conf.update(celery_config(broker_url))
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
    hosts = Counter(map(host_of, urls))
    named = [h for h, _ in hosts.most_common(LABEL_HOSTS)]
    more = f" (+{len(hosts) - len(named)})" if len(hosts) > len(named) else ""
    return args, f"why={why} urls={len(urls)} hosts={','.join(named)}{more}"


def send_batches(broker_url: str, job_id: str, batch_nos: Iterable[int], *, why: str,
                 urls: Sequence[str] | None = None) -> int:
    """Enqueue `crawler.fetch_batch(job_id, n)` for each n over one broker connection.

    `why` (submitted, links, requeued, reaped, delayed, released, resumed) and, for a single
    batch, its `urls` label the task in Flower."""
    app = producer_app(broker_url)
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
