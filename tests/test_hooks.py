"""Finish hooks (crawler.hooks): delivery, retries, and the SSRF guard."""

from __future__ import annotations

from hookserver import HookReceiver

from crawler.engines.config import FetchConfig
from crawler.hooks import post_status


async def test_a_503_is_retried_and_the_status_delivered(hook: HookReceiver) -> None:
    ok = await post_status(hook.url, {"job_id": "j", "state": "finished"},
                           FetchConfig(allow_private_networks=True), backoff=0.01)
    assert ok and hook.answers == [503, 200] and hook.bodies[-1]["job_id"] == "j"


async def test_the_ssrf_guard_keeps_a_private_target_unreached(hook: HookReceiver) -> None:
    ok = await post_status(hook.url, {"job_id": "j"}, FetchConfig(), attempts=2, backoff=0.01)
    assert not ok and hook.bodies == []
    allowed = await post_status(hook.url, {"job_id": "j"},
                                FetchConfig(allowed_networks=("127.0.0.5/32",)), backoff=0.01)
    assert allowed and hook.bodies[-1] == {"job_id": "j"}
