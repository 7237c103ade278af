"""PacedLease: when a process under a global limit asks the limiter, and for how much."""

from __future__ import annotations

from crawler.pacing import LEASE_LOW, PacedLease


def lease(**kw: object) -> PacedLease:
    opts: dict[str, object] = {"period": 0.02, "concurrency": 100, "enabled": True} | kw
    return PacedLease(**opts)  # type: ignore[arg-type]


def test_off_without_a_global_limit_or_with_period_zero() -> None:
    for off in (lease(enabled=False), lease(period=0.0)):
        off.granted(50, 10.0, 1.0)
        assert off.should_ask(1, 100, 1.0)
        assert off.recheck_at() is None


def test_the_batch_follows_the_process_demand() -> None:
    p = lease()
    assert p.size() == 1  # nothing granted yet: ask for what is free
    t = 100.0
    for _ in range(30):  # 500 grants/s for 0.3 s, in calls of 5
        p.granted(5, t + 0.5, t)
        t += 0.01
    assert p.size() == 10  # 500/s x 20 ms


def test_the_batch_is_capped_at_a_quarter_of_the_slots() -> None:
    p = lease(concurrency=40)
    t = 100.0
    for _ in range(30):
        p.granted(100, t + 0.5, t)
        t += 0.01
    assert p.size() == 10


def test_waits_for_its_batch_while_reserved_slots_last() -> None:
    p = lease()
    t = 100.0
    for _ in range(30):
        p.granted(5, t + 0.5, t)
        t += 0.01
    assert not p.should_ask(3, 1000, t)  # 3 free of a batch of 10, slots reserved 0.5 s ahead
    assert p.should_ask(10, 1000, t)
    assert p.should_ask(3, 3, t)  # only 3 URLs left: no point waiting for more
    assert p.recheck_at() == p.last_due - LEASE_LOW
    assert p.should_ask(3, 1000, p.last_due - LEASE_LOW / 2)  # about to run dry: ask now


def test_an_old_window_says_nothing_about_demand_now() -> None:
    p = lease()
    t = 100.0
    for _ in range(30):
        p.granted(5, t + 0.5, t)
        t += 0.01
    p.granted(1, t + 10.0, t + 10.0)  # ten seconds of silence, then one grant
    p.granted(1, t + 10.3, t + 10.3)
    assert p.size() == 1
