"""Celery tasks: validate the arguments, hand the batch to the process's runtime."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from crawler.broker import FETCH_BATCH
from crawler.jobs import JOB_ID_RE
from crawler.worker_runtime import WorkerRuntime
from workers.app import BATCH_LIMIT, app, settings

log = logging.getLogger(__name__)

_runtime: WorkerRuntime | None = None
_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    """The process's one runtime, made by the first task (after Celery forked, if it does)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = WorkerRuntime(settings, batch_time_limit=BATCH_LIMIT - 60)
        return _runtime


@worker_ready.connect
def _start_runtime(**_: Any) -> None:
    """At start, not at the first task: an idle worker must reap the leases of dead ones
    (after a full restart, no message may be left to wake a worker up)."""
    runtime()


@worker_shutting_down.connect
def _stop_batches(**_: Any) -> None:
    """SIGTERM (warm shutdown): running batches land what is in flight and hand back the
    rest, so Celery's wait for running tasks is bounded by one request timeout."""
    if _runtime is not None:
        _runtime.shutdown()


@worker_shutdown.connect
def _close_runtime(**_: Any) -> None:
    if _runtime is not None:
        _runtime.close()


@app.task(name=FETCH_BATCH)
def fetch_batch(job_id: Any, batch_no: Any) -> dict[str, Any]:
    """Fetch one stored batch of a job; returns a summary Flower shows as the task result."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id) or not isinstance(
        batch_no, int
    ) or isinstance(batch_no, bool) or batch_no < 0:
        log.error("rejected %s with invalid arguments %r, %r", FETCH_BATCH, job_id, batch_no)
        return {"outcome": "rejected_arguments"}
    return runtime().run_batch(job_id, batch_no)
