"""The Celery app: `celery -A workers.app worker` / `celery -A workers.app flower`.

Configured from the same settings as the CLI (CRAWLER_* environment, config file). The pool
is `threads` (see README, "Worker process model"): several batches per process share one
event loop, one HTTP session and one in-flight budget.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging as celery_setup_logging

from crawler.broker import celery_config
from crawler.logs import setup_logging
from crawler.settings import load_settings

settings = load_settings()

# Seconds a batch may run: the runtime stops it and hands the rest back at the soft limit;
# the hard limit is Celery's last resort (the threads pool does not enforce it).
BATCH_SOFT_LIMIT = 3600
BATCH_HARD_LIMIT = BATCH_SOFT_LIMIT + 300
# The Redis broker re-delivers a message left unacknowledged this many seconds, scanning every
# RESTORE_EVERY seconds. Recovery of a killed worker's running batch does not wait for this
# (leases, see crawler/leases.py); it covers a worker killed after receiving a message and
# before starting its batch (e.g. still booting). A re-delivered message of a batch that is
# still running elsewhere is answered `leased` by its lease and dropped, so a short value is
# safe: it costs one no-op task per VISIBILITY_TIMEOUT per long-running batch.
VISIBILITY_TIMEOUT = 45
RESTORE_EVERY = 5


@celery_setup_logging.connect
def configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """The worker logs through crawler.logs: its format (log_format), its credential mask.
    With a receiver here Celery configures no logging itself, and its own loggers ("Task ...
    received", "... succeeded") propagate to our handler. `loglevel` is Celery's --loglevel
    (`crawler worker --loglevel`, default the log_level setting)."""
    setup_logging(loglevel or settings.log_level, settings.log_format)


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
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": RESTORE_EVERY,
        "unacked_restore_throttle": 1,  # scan on every interval, not every 10th
    },
)
