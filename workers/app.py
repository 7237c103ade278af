"""The Celery app: `celery -A workers.app worker` / `celery -A workers.app flower`.

Configured from the same settings as the CLI (CRAWLER_* environment, config file). The pool
is `threads` (see README, "Worker process model"): several batches per process share one
event loop, one HTTP session and one in-flight budget.
"""

from __future__ import annotations

from celery import Celery

from crawler.broker import celery_config
from crawler.settings import load_settings

settings = load_settings()

# Seconds a batch may run: the runtime stops it and hands the rest back at the soft limit;
# the hard limit is Celery's last resort (the threads pool does not enforce it).
BATCH_SOFT_LIMIT = 3600
BATCH_HARD_LIMIT = BATCH_SOFT_LIMIT + 300
# Seconds after which the Redis broker re-delivers an unacknowledged message. Recovery of a
# killed worker's batch does not wait for this (leases, see crawler/leases.py); it only covers
# a worker killed between receiving a message and starting its batch. A re-delivered message
# of a batch still running elsewhere is dropped by its lease, so a short value is safe.
VISIBILITY_TIMEOUT = 600

app = Celery("crawler", include=["workers.tasks"])
app.conf.update(celery_config(settings.shared_broker_url))
app.conf.update(
    task_acks_late=True,  # a batch is acknowledged only after it ran: a dead worker loses nothing
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,  # no batches hoarded by a busy worker
    task_ignore_result=True,  # results live in the job store; Flower reads task events
    worker_send_task_events=True,  # Flower shows tasks live
    task_send_sent_event=True,
    task_track_started=True,
    task_soft_time_limit=BATCH_SOFT_LIMIT,
    task_time_limit=BATCH_HARD_LIMIT,
    worker_pool="threads",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a Redis restart must not end the worker
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
)
