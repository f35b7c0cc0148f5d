"""A compacted topic held whole, and kept current, by every replica: the watch-lists.

Faust's GlobalTable would be the natural fit, but a GlobalTable's changes do
not reliably reach the other replicas (faust-streaming#283, open; an
externally written changelog also skips the replica holding it active,
robinhood/faust#541), and a watch-list that one replica misses is a hole
an attacker can route through. So each replica reads the topic itself: its
own consumer, no consumer group, from the beginning, then follows it. A
record whose key or value does not validate is counted and ignored (nothing
read here is ever executed; a value is JSON, see `detect.watchlist`).
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from .. import metrics

log = structlog.get_logger(__name__)


class ReplicatedTopic:
    def __init__(self, bootstrap_servers: str, topic: str, valid: Callable[[bytes, bytes], bool]):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.valid = valid
        self.data: dict[bytes, bytes] = {}
        self._task: asyncio.Task | None = None
        self.client_options: dict = {}  # kafka.client_options (TLS, SASL); set by the app

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or (value is not None and not self.valid(key, value)):
            metrics.WATCHLIST_UPDATES.labels("rejected").inc()
            return
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        metrics.WATCHLIST_UPDATES.labels("applied").inc()
        metrics.WATCHLIST_ENTRIES.set(len(self.data))

    async def _follow(self) -> None:
        tp = TopicPartition(self.topic, 0)
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                        **self.client_options)
            try:
                await consumer.start()
                consumer.assign([tp])
                await consumer.seek_to_beginning(tp)
                while True:
                    for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                        for record in records:
                            self.apply(record.key, record.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker went away: read it all again
                log.warning("replicated_topic_lost", topic=self.topic, error=type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()
