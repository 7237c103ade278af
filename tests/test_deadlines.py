"""The async engine's shared deadline timer: its expiry is a timeout, a stop stays a stop."""

from __future__ import annotations

import asyncio

from httpserver import HTTPServer
from test_engines import config

from crawler.engines import make_engine
from crawler.engines.deadlines import Deadlines
from crawler.records import ErrorClass


async def test_a_budget_cancels_its_task_and_says_so() -> None:
    deadlines = Deadlines(0.05)
    loop = asyncio.get_running_loop()

    async def slow() -> None:
        task = asyncio.current_task()
        assert task is not None
        key = deadlines.start(task, loop)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert deadlines.expired(task)
            raise
        finally:
            deadlines.finish(task, key)

    task = asyncio.create_task(slow())
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done and task.cancelled()


async def test_a_finished_task_is_never_cancelled_later() -> None:
    deadlines = Deadlines(0.02)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    key = deadlines.start(task, loop)
    deadlines.finish(task, key)
    await asyncio.sleep(0.1)  # several ticks past the budget: no CancelledError arrives
    assert not deadlines.expired(task)


async def test_a_stop_during_a_fetch_is_a_cancellation_not_a_timeout(
    http_server: HTTPServer,
) -> None:
    async with make_engine("async", config(timeout=30.0, read_timeout=30.0)) as engine:
        hanging = asyncio.create_task(engine.fetch(http_server.url("/hang")))
        while not http_server.arrivals():
            await asyncio.sleep(0.01)
        hanging.cancel()
        done, _ = await asyncio.wait([hanging], timeout=5)
        assert hanging in done and hanging.cancelled()
        res = await engine.fetch(http_server.url("/page/1"))  # the engine goes on
        assert res.status == 200


async def test_the_budget_bounds_a_fetch_and_the_engine_goes_on(http_server: HTTPServer) -> None:
    async with make_engine("async", config(timeout=0.3, read_timeout=30.0)) as engine:
        res = await engine.fetch(http_server.url("/hang"))
        assert res.error == ErrorClass.TIMEOUT
        assert 250 < res.elapsed_ms < 2000
        assert (await engine.fetch(http_server.url("/page/1"))).status == 200
