"""A compacted topic held whole, and kept current, by every replica: the watch-lists, the verdicts.

Faust's GlobalTable would be the natural fit, but a GlobalTable's changes do
not reliably reach the other replicas (faust-streaming#283, open; an
externally written changelog also skips the replica holding it active,
robinhood/faust#541), and a watch-list that one replica misses is a hole
an attacker can route through. So each replica reads the topic itself: its
own consumer, no consumer group, from the beginning, then follows it. A
record whose key or value does not validate is counted and ignored (nothing
read here is ever executed; a value is JSON, see `detect.watchlist` and
`detect.feedback`).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge

log = structlog.get_logger(__name__)


class Table(Protocol):
    """What a replicated topic's records go into."""

    def apply(self, key: bytes, value: bytes | None) -> bool: ...  # False: refused (invalid)

    def __len__(self) -> int: ...


class RawTable:
    """Raw values by key, each validated on arrival (the watch-lists)."""

    def __init__(self, valid: Callable[[bytes, bytes], bool]):
        self.valid = valid
        self.data: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self.data)

    def apply(self, key: bytes, value: bytes | None) -> bool:
        if value is None:
            self.data.pop(key, None)
        elif self.valid(key, value):
            self.data[key] = value
        else:
            return False
        return True


class ReplicatedTopic:
    def __init__(self, bootstrap_servers: str, topic: str, table: Table, updates: Counter, entries: Gauge,
                 client_options: dict | None = None):
        self.bootstrap_servers = bootstrap_servers
        self.client_options = client_options or {}  # stream.kafka.client_options: TLS, SASL
        self.topic = topic
        self.table = table
        self.updates = updates  # labelled by result: applied, rejected
        self.entries = entries
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or not self.table.apply(key, value):
            self.updates.labels("rejected").inc()
            return
        self.updates.labels("applied").inc()
        self.entries.set(len(self.table))

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
