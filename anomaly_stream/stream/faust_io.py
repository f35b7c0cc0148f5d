"""The worker's `Sink` and `Store` over a Faust app: its producer and its tables.

Shared by the detector's app (`app.py`) and the notifier's (`notify/app.py`).
"""

from __future__ import annotations

from typing import Any

from .worker import Store


class FaustSink:
    """The worker's output through the Faust producer.

    With exactly_once a send joins the transaction of the input partition it
    came from, so it becomes visible to read_committed subscribers exactly
    when the offsets it came from are committed. (Faust's own `topic.send`
    only finds a transaction for topics this worker consumes: anomalies and
    dead letters would go out at once and repeat after a crash.)
    `source_partition=None` sends outside any transaction: for state that
    matches offsets Faust has already committed (revocation, shutdown).
    With at_least_once Faust flushes the producer before every commit.
    """

    def __init__(self, app: App):
        self.app = app

    def _transactional_id(self, source_partition):
        app = self.app
        if app.in_transaction and source_partition is not None:
            group = app.assignor.group_for_topic(app.settings.kafka_input_topic)
            return f"{app.conf.id}-{group}-{source_partition}"
        return None

    async def send(self, topic, key, value, *, source_partition, partition=None, headers=None) -> None:
        await self.app.producer.send(topic, key, value, partition, None, headers,
                                     transactional_id=self._transactional_id(source_partition))

    async def send_many(self, topic, messages, *, source_partition) -> None:
        """`send` of each (key, value, partition), in order: the same producer calls, one transaction lookup."""
        transactional_id = self._transactional_id(source_partition)
        send = self.app.producer.send
        for key, value, partition in messages:
            await send(topic, key, value, partition, None, None, transactional_id=transactional_id)


class TableStore(Store):
    """A Faust table seen as a `Store`; its data is read late, since Faust creates it lazily."""

    def __init__(self, table: Any):
        self.table = table

    @property
    def data(self):
        return self.table.data

    @property
    def changelog(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def encode_key(self, key: Any) -> bytes:
        raw, _ = self.table.changelog_topic.prepare_key(key, self.table.key_serializer)
        return raw
