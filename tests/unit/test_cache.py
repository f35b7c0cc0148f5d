"""The cache's request merging, without Redis (the integration tests run it on a real one)."""

from __future__ import annotations

import asyncio

import pytest

from anomaly_stream.serve.cache import Cache
from anomaly_stream.settings import Settings


async def test_concurrent_look_ups_of_one_key_share_one_load():
    cache = Cache(Settings())  # not started: no Redis, every look-up loads
    calls = []

    async def load():
        calls.append(1)
        await asyncio.sleep(0.05)
        return b'{"x": 1}'

    results = await asyncio.gather(*(cache.get_or_load("anomaly", "0xab", load) for _ in range(20)))
    assert results == [b'{"x": 1}'] * 20 and len(calls) == 1
    assert await cache.get_or_load("anomaly", "0xab", load) == b'{"x": 1}' and len(calls) == 2, "done: loads again"


async def test_a_failed_load_fails_every_caller_that_shared_it():
    cache = Cache(Settings())

    async def load():
        await asyncio.sleep(0.01)
        raise RuntimeError("replica gone")

    results = await asyncio.gather(*(cache.get_or_load("address", "0xcd", load) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await cache.get_or_load("address", "0xcd", load)


async def test_a_redis_that_does_not_answer_the_close_does_not_stop_the_shutdown():
    import redis.asyncio as redis

    class Hanging:
        async def aclose(self):
            raise redis.TimeoutError("Timed out closing connection after 0.1")

    cache = Cache(Settings())
    cache.client = Hanging()
    await cache.stop()  # once raised, and the worker's on_stop skipped Faust's: it never exited
    assert cache.client is None
