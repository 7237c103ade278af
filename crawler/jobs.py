"""Jobs: identity now; the stored spec and states (queued, running, ...) come with the workers."""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789abcdefghijkmnpqrstvwxyz"  # no l/o/u: readable aloud, no look-alikes
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_job_id() -> str:
    """A short printable id, unique across machines: 8 chars of time, 6 of randomness."""
    n = (int(time.time() * 1000) << 30) | int.from_bytes(os.urandom(4), "big") >> 2
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))
