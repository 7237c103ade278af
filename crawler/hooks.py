"""Finish hooks: a job's final status, posted to its `--on-finish` URL once it has ended.

Posted by a worker (the one whose reaper first sees the ended job that no batch holds any
more, elected in Redis, see `JobControl.claim_finish_notice`), with retries and capped
back-off with jitter: a 2xx is delivered, a 4xx other than 408/429 is a refusal not retried,
anything else (5xx, 408, 429, a connection error) is tried again. The SSRF guard applies as
to any fetch: private targets need the job's `--allow-private-networks` or an allowed network.
TLS is verified unless the job said `--insecure`. No redirect is followed (a POST should not
wander). Python users can name a Celery task instead (`on_finish_task`), sent with the same
status dictionary over the job's broker.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from crawler.engines.aio import tls_context
from crawler.engines.config import FetchConfig
from crawler.guard import AiohttpGuardResolver, BlockedAddress, Guard, SystemResolver
from crawler.settings import mask_url

log = logging.getLogger(__name__)

ATTEMPTS = 6  # tries in all: back-off 1, 2, 4, 8, 16 s between them (about 30 s)
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
TIMEOUT = 10.0  # s for one attempt
RETRIED_4XX = frozenset({408, 429})


async def post_status(url: str, status: dict[str, Any], config: FetchConfig, *,
                      attempts: int = ATTEMPTS, backoff: float = BACKOFF_BASE) -> bool:
    """POST `status` as JSON to `url` under the job's own fetch policy (`config`: its SSRF
    guard and TLS verification, as its engines apply them); True once a 2xx came back, False
    when it was refused or every attempt failed (logged, credentials masked)."""
    guard = Guard(SystemResolver(), allow_private=config.allow_private_networks,
                  allowed_networks=config.allowed_networks)
    where = mask_url(url)
    try:  # aiohttp resolves names through the guard, but connects to an IP literal directly
        guard.check_literal(urlsplit(url).hostname or "")
    except BlockedAddress as exc:
        log.warning("finish hook %s for job %s not sent: %s", where, status.get("job_id"), exc)
        return False
    connector = aiohttp.TCPConnector(resolver=AiohttpGuardResolver(guard),
                                     ssl=tls_context(config.verify_tls))
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        for attempt in range(attempts):
            try:
                async with session.post(url, json=status, allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    why = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status not in RETRIED_4XX:
                        log.warning("finish hook %s refused job %s: %s", where,
                                    status.get("job_id"), why)
                        return False
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < attempts:
                await asyncio.sleep(min(BACKOFF_CAP, backoff * 2 ** attempt)
                                    * random.uniform(0.5, 1.0))
    log.warning("finish hook %s: job %s not delivered after %d attempts (%s)", where,
                status.get("job_id"), attempts, why)
    return False
