"""The notifier's work on one partition's records of the anomalies topic.

For each anomaly: the episode's dedup decision (`alerts.decide`), then, for
an alert, delivery to every sink its rules route it to (concurrently), the
sinks that stayed undeliverable to the notify dead-letter topic, and last
the episode written back to the changelogged dedup table. `handle` returns
when all of it is done; the agent acknowledges the batch only then
(`stream.agents.handled`), so an offset is committed only after its anomaly
was delivered, deduplicated or dead-lettered. A crash in between repeats
deliveries with the same `Idempotency-Key`; it never loses one.

Anomalies of different alert keys are handled concurrently (up to
`CONCURRENCY`), those of one key in order, so one slow sink's retries do not
hold up every other episode of the batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, Callable

import orjson
import structlog

from .. import metrics
from ..detect.detector import Record
from ..stream.state import TableBound, delete_through, write_through
from ..stream.worker import Sink, Store
from .alerts import SUPPRESSED, Episode, alert, body, decide, route
from .config import NotifyConfig
from .delivery import Delivery, Outcome

log = structlog.get_logger(__name__)
CONCURRENCY = 16
MAX_EPISODES_PER_PARTITION = 1_000_000  # the TTL is the bound that matters; this one caps a flood


class Notifier:
    def __init__(self, config: NotifyConfig, sink: Sink, store: Store, delivery: Delivery, *,
                 source_topic: str, dlq_topic: str, clock: Callable[[], float] = time.time):
        self.config = config
        self.sink = sink
        self.store = store
        self.delivery = delivery
        self.source_topic = source_topic
        self.dlq_topic = dlq_topic
        self.clock = clock
        self.bound = TableBound(store, config.dedup.ttl_seconds, MAX_EPISODES_PER_PARTITION, _locate)
        self.indexed: frozenset[int] | None = None
        self.semaphore = asyncio.Semaphore(CONCURRENCY)

    async def handle(self, partition: int, records: list[Record]) -> None:
        episodes: dict[str, list[tuple[Record, dict]]] = defaultdict(list)
        for record in records:
            doc = _anomaly(record.value)
            if doc is None:
                await self._dead_letter(partition, record, record.value, "-", "unreadable_anomaly", 0)
                continue
            episodes[doc["alert_key"]].append((record, doc))
        await asyncio.gather(*(self._episode(partition, items) for items in episodes.values()))

    async def _episode(self, partition: int, items: list[tuple[Record, dict]]) -> None:
        async with self.semaphore:
            for record, doc in items:
                await self._one(partition, record, doc)

    async def _one(self, partition: int, record: Record, doc: dict) -> None:
        key = doc["alert_key"].encode()
        raw = self.store.data.get(key)
        kind, episode = decide(None if raw is None else Episode.decode(raw), partition,
                               float(doc["detected_at"]), self.config.dedup)
        if kind == SUPPRESSED:
            metrics.NOTIFY_DEDUPLICATED.inc()
        else:
            message = alert(doc, kind, episode)
            sinks = [self.config.sinks[name] for name in route(self.config.rules, doc)]
            outcomes: list[Outcome] = await asyncio.gather(*(self.delivery.deliver(s, message) for s in sinks))
            for outcome in outcomes:
                if not outcome.delivered:
                    await self._dead_letter(partition, record, body(message), outcome.sink, outcome.reason,
                                            outcome.attempts)
        await write_through(self.sink, self.store, partition, [(key, episode.encode())])
        self.bound.touch(partition, key, episode.last_seen)

    async def _dead_letter(self, partition: int, record: Record, value: bytes, sink: str, reason: str,
                           attempts: int) -> None:
        await self.sink.send(self.dlq_topic, record.key, value, source_partition=partition, headers={
            "dlq-reason": reason.encode(), "dlq-sink": sink.encode(), "dlq-attempts": b"%d" % attempts,
            "dlq-source-topic": self.source_topic.encode(), "dlq-source-partition": b"%d" % partition,
            "dlq-source-offset": b"%d" % record.offset,
        })
        metrics.NOTIFY_DEAD_LETTERS.labels(sink).inc()

    async def sweep(self, owned: frozenset[int]) -> None:
        """Forget episodes quiet past the TTL (with a tombstone); after an assignment change, re-index first."""
        if self.indexed != owned:
            self.bound.rebuild(set(owned))
            self.indexed = owned
        now = self.clock()
        await delete_through(self.sink, self.store, self.bound.sweep(lambda p: now))


def _anomaly(raw: bytes | None) -> dict | None:
    try:
        doc = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None
    ok = (isinstance(doc, dict) and isinstance(doc.get("alert_key"), str) and doc["alert_key"]
          and isinstance(doc.get("detected_at"), (int, float)))
    return doc if ok else None


def _locate(key: Any, value: bytes) -> tuple[int, float]:
    episode = Episode.decode(value)
    return episode.partition, episode.last_seen
