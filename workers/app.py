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
from crawler.settings import is_amqp, load_settings

settings = load_settings()

# Seconds a batch may run: the runtime stops it and hands the rest back at the soft limit
# (minus a minute, workers/tasks.py); the hard limit is Celery's last resort (the threads pool
# does not enforce it). A batch that hits the limit is not lost: its rest is a new message.
BATCH_SOFT_LIMIT = 3600
HARD_LIMIT_SLACK = 300  # s from the soft limit to the hard one
# RabbitMQ closes a consumer's channel when a delivery stays unacknowledged longer than its
# `consumer_timeout` (30 min by default; per queue only from RabbitMQ 3.12): every message the
# worker holds goes back to the queue and the worker reconnects (its leases keep the batches
# from running twice, but acks are lost and every held batch is answered `leased` elsewhere).
# So on AMQP a batch hands back its rest and acknowledges after at most 24 min (25 minus the
# minute), before the default. A broker whose consumer_timeout is lower needs it raised to 30
# min or more in rabbitmq.conf; longer batches need nothing: their rest goes on as a new message.
AMQP_BATCH_SOFT_LIMIT = 25 * 60
# The Redis broker re-delivers a message left unacknowledged this many seconds, scanning every
# RESTORE_EVERY seconds. Recovery of a killed worker's running batch does not wait for this
# (leases, see crawler/leases.py); it covers a worker killed after receiving a message and
# before starting its batch (e.g. still booting). A re-delivered message of a batch that is
# still running elsewhere is answered `leased` by its lease and dropped, so a short value is
# safe: it costs one no-op task per VISIBILITY_TIMEOUT per long-running batch.
VISIBILITY_TIMEOUT = 45
RESTORE_EVERY = 5
# AMQP re-delivers a worker's unacknowledged messages as soon as its connection closes (a
# SIGKILL closes the socket at once). Heartbeats catch a connection that dies silently (a
# frozen host, a cut cable): both ends give up after two missed beats, 60 s at 30.
AMQP_HEARTBEAT = 30


def batch_soft_limit(broker_url: str) -> int:
    """The batch time limit this broker allows (see AMQP_BATCH_SOFT_LIMIT)."""
    return AMQP_BATCH_SOFT_LIMIT if is_amqp(broker_url) else BATCH_SOFT_LIMIT


def broker_options(broker_url: str, shared: dict[str, Any]) -> dict[str, Any]:
    """The worker settings that differ by broker: Redis's re-delivery scan, AMQP's heartbeat.
    `shared` is celery_config's; its transport options (Sentinel's master) are kept."""
    if is_amqp(broker_url):
        return {"broker_heartbeat": AMQP_HEARTBEAT}
    return {"broker_transport_options": shared.get("broker_transport_options", {}) | {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": RESTORE_EVERY,
        "unacked_restore_throttle": 1,  # scan on every interval, not every 10th
    }}


BROKER_URL = settings.shared_broker_url
BATCH_LIMIT = batch_soft_limit(BROKER_URL)


@celery_setup_logging.connect
def configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """The worker logs through crawler.logs: its format (log_format), its credential mask.
    With a receiver here Celery configures no logging itself, and its own loggers ("Task ...
    received", "... succeeded") propagate to our handler. `loglevel` is Celery's --loglevel
    (`crawler worker --loglevel`, default the log_level setting)."""
    setup_logging(loglevel or settings.log_level, settings.log_format)


app = Celery("crawler", include=["workers.tasks"])
SHARED_CONFIG = celery_config(BROKER_URL, settings.broker_queue_type)
app.conf.update(SHARED_CONFIG)
app.conf.update(
    task_acks_late=True,  # a batch is acknowledged only after it ran: a dead worker loses nothing
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,  # no batches hoarded by a busy worker
    task_ignore_result=True,  # results live in the job store; Flower reads task events
    worker_send_task_events=True,  # Flower shows tasks live
    task_send_sent_event=True,
    task_track_started=True,
    task_soft_time_limit=BATCH_LIMIT,
    task_time_limit=BATCH_LIMIT + HARD_LIMIT_SLACK,
    worker_pool="threads",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a broker restart must not end the worker
    **broker_options(BROKER_URL, SHARED_CONFIG),
)
