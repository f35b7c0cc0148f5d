"""The one cool-down, on its own and as the cache and the enricher use it (no Redis, no node)."""

from __future__ import annotations

import redis.asyncio as redis

from anomaly_stream.chain.enrich import Enricher
from anomaly_stream.cooldown import CoolDown
from anomaly_stream.serve.cache import Cache
from anomaly_stream.settings import Settings


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_closes_calls_for_the_cool_down():
    clock = Clock()
    cool = CoolDown(5.0, clock=clock)
    assert cool.allows()
    assert cool.failed() is True
    clock.now += 4.9
    assert not cool.allows()
    clock.now += 0.2
    assert cool.allows() and cool.allows()  # no probe: every call goes through again


def test_with_probe_one_call_goes_through_after_the_cool_down():
    clock = Clock()
    cool = CoolDown(2.0, probe=True, clock=clock)
    cool.failed()
    clock.now += 2.0
    assert cool.allows()  # the probe
    assert not cool.allows()  # the others wait for it
    assert cool.failed() is False  # the probe failed: the same outage, not logged again
    clock.now += 2.0
    assert cool.allows()
    cool.succeeded()
    assert cool.allows() and cool.allows()


def test_failed_is_true_once_per_outage():
    clock = Clock()
    cool = CoolDown(2.0, clock=clock)
    assert cool.failed() is True
    assert cool.failed() is False  # a call that was in flight
    clock.now += 3.0
    assert cool.failed() is True


class DeadRedis:
    def __init__(self):
        self.calls = 0

    async def get(self, key):
        self.calls += 1
        raise redis.ConnectionError("refused")

    async def set(self, key, value, px=None):
        self.calls += 1
        raise redis.ConnectionError("refused")


async def test_the_cache_probes_once_after_its_cool_down():
    clock = Clock()
    cache = Cache(Settings())
    cache.client = DeadRedis()
    cache.cool_down = CoolDown(2.0, probe=True, clock=clock)

    async def load():
        return b"value"

    assert await cache.get_or_load("k", "a", load) == b"value"
    assert cache.client.calls == 1  # the get failed; the set was not tried
    for _ in range(3):
        assert await cache.get_or_load("k", "a", load) == b"value"
    assert cache.client.calls == 1  # cooling down: the loader answers
    clock.now += 2.0
    assert await cache.get_or_load("k", "a", load) == b"value"
    assert cache.client.calls == 2  # one probe, and not its set
    assert cache.errors == 2


class DeadNodeEnricher(Enricher):
    asked = 0

    async def facts(self, address):
        self.asked += 1
        raise ConnectionError("node down")


async def test_the_enricher_skips_while_cooling_down():
    clock = Clock()
    enricher = DeadNodeEnricher(Settings(enrich_onchain=1), cache=None)
    enricher.cool_down = CoolDown(5.0, clock=clock)
    documents = [{"address": "0x" + "a" * 40, "sender": "0x" + "a" * 40, "to": None, "counterparty": None}]
    await enricher.enrich(documents)
    assert documents[0]["onchain"] is None and enricher.asked == 1
    await enricher.enrich(documents)
    assert enricher.asked == 1  # skipped
    clock.now += 5.0
    await enricher.enrich(documents)
    assert enricher.asked == 2
