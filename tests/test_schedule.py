"""The shared line of work (crawler.schedule): priority with aging, claims, reaping; on
fakeredis, a real Redis and a 3-master cluster (the `client` fixture)."""

from __future__ import annotations

import asyncio
from typing import Any

from crawler.keys import sched_key
from crawler.request import by_priority, parse_object
from crawler.schedule import Schedule


async def drain(s: Schedule) -> list[tuple[str, int]]:
    out = []
    while (picked := await s.pop()) is not None:
        out.append(picked)
        await s.done(*picked)
    return out


async def test_higher_priority_first_then_arrival_order(client: Any) -> None:
    s = Schedule(client, "t1", aging=3600)
    await s.add("low", [(0, 0), (1, 0)])
    await s.add("high", [(0, 5), (1, 5)])
    await s.add("mid", [(0, 2)])
    await s.add("neg", [(0, -3)])
    assert await drain(s) == [("high", 0), ("high", 1), ("mid", 0), ("low", 0), ("low", 1),
                              ("neg", 0)]


async def test_waiting_outweighs_priority_after_aging(client: Any) -> None:
    # aging 0.05 s per point: a batch that waited 0.3 s beats one 5 points higher (0.25 s)
    s = Schedule(client, "t2", aging=0.05)
    await s.add("old", [(0, 0)])
    await asyncio.sleep(0.3)  # the waiting is the thing under test (Redis's clock)
    await s.add("new", [(0, 5)])
    await s.add("newer", [(0, 7)])  # 0.35 s of credit: ahead of the old one
    assert await drain(s) == [("newer", 0), ("old", 0), ("new", 0)]


async def test_a_batch_in_line_keeps_its_place(client: Any) -> None:
    s = Schedule(client, "t3", aging=60)
    await s.add("a", [(0, 0)])
    await s.add("b", [(0, 0)])
    assert await s.add("a", [(0, 0)]) == 0  # a second add (a reaper's, say) changes nothing
    assert await drain(s) == [("a", 0), ("b", 0)]


async def test_an_unstarted_claim_goes_back_at_its_old_place(client: Any) -> None:
    s = Schedule(client, "t4", aging=60)
    await s.add("a", [(0, 0)])
    await s.add("b", [(0, 0)])
    assert await s.pop() == ("a", 0)  # ... and the worker dies before its batch start
    assert await s.reap() == {}  # its claim has not run out
    await client.zadd(sched_key("t4", "claimed"), {"a/0": 0})  # now it has
    assert await s.reap() == {"a": [0]}
    assert await drain(s) == [("a", 0), ("b", 0)]
    assert await s.reap() == {} and await s.length() == 0


async def test_line_priorities_are_kept_per_batch(client: Any) -> None:
    s = Schedule(client, "t5", aging=60)
    await client.hset("t5:job:{j}:prio", mapping={3: 7})
    assert await s.line_priorities("j", [2, 3]) == [0, 7]


def test_entries_split_by_line_priority_highest_first() -> None:
    hi = parse_object({"url": "http://a/1", "priority": 9}).entry
    lo = parse_object({"url": "http://a/2", "priority": -1}).entry
    assert by_priority(["http://a/0", hi, lo, "http://a/3"]) == [
        (9, [hi]), (0, ["http://a/0", "http://a/3"]), (-1, [lo])]
