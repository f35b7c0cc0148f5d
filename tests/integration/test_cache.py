"""The Redis read-through cache against the real Redis of the stack."""

from __future__ import annotations

import asyncio
import os

import pytest

from anomaly_stream.serve.cache import Cache
from anomaly_stream.settings import Settings

from ..support import REDIS_URL

pytestmark = pytest.mark.integration


async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_failing(stack):
    # 60 look-ups at once through 2 connections: a plain pool raised MaxConnectionsError and
    # put the cache in its cool-down (a fresh-clone run's enrichment test saw it).
    cache = Cache(Settings.from_env({"REDIS_URL": REDIS_URL, "REDIS_MAX_CONNECTIONS": "2",
                                     "REDIS_TIMEOUT_SECONDS": "2", "REDIS_KEY_PREFIX": f"pool-{os.getpid()}"}))
    await cache.start()
    try:
        async def load(i: int) -> bytes:
            return b"value %d" % i

        for _ in range(2):
            values = await asyncio.gather(*[cache.get_or_load("address", f"k{i}", lambda i=i: load(i))
                                            for i in range(60)])
            assert values == [b"value %d" % i for i in range(60)]
        assert (cache.misses, cache.hits, cache.errors) == (60, 60, 0)
    finally:
        await cache.stop()
