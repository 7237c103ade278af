"""Redis key names, in one place. Every key of a job carries the hash tag `{<job id>}`, so the
scripts that touch several of them run unchanged on Redis Cluster (one slot per job)."""

from __future__ import annotations


def job_key(prefix: str, job_id: str, name: str) -> str:
    """`{prefix}:job:{<id>}:<name>`: meta, batch:<n>, parked, queued, seen, results, ..."""
    return f"{prefix}:job:{{{job_id}}}:{name}"


def jobs_index(prefix: str) -> str:
    """Sorted set of every job id by creation time (ms): `crawler jobs` reads it."""
    return f"{prefix}:jobs"


def leased_jobs(prefix: str) -> str:
    """Set of job ids that may have leased batches: the reapers' work list."""
    return f"{prefix}:leased-jobs"


def sched_key(prefix: str, name: str) -> str:
    """`{prefix}:{sched}:<name>`: ready, claimed, scores (crawler.schedule). One hash tag, so
    its scripts run on Redis Cluster; shared by every job of the deployment."""
    return f"{prefix}:{{sched}}:{name}"
