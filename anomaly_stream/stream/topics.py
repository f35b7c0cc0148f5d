"""The topics the worker reads and writes, made to exist before anything subscribes.

Faust does not create a source topic, and a producer that gets there first
makes the broker auto-create it with the broker's default partition count.
Per-address state is partition-local, so a wrong partition count silently
splits state: `ensure_topics` creates missing topics with the configured
count and refuses to start on a mismatch.
"""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ..settings import Settings


class TopicMismatch(RuntimeError):
    pass


def topic_names(settings: Settings) -> list[str]:
    return [settings.kafka_input_topic, settings.kafka_anomalies_topic, settings.dlq_topic]


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        wanted = topic_names(settings)
        # list_topics first: a metadata request naming a missing topic makes a
        # broker with auto-creation on create it with its default partition count.
        present = await admin.list_topics()
        missing = [name for name in wanted if name not in present]
        if missing:
            try:
                await admin.create_topics([
                    NewTopic(name, settings.kafka_input_partitions, settings.kafka_topic_replication_factor)
                    for name in missing
                ])
            except TopicAlreadyExistsError:
                pass  # another replica created it first
        found = await _partition_count(admin, settings.kafka_input_topic)
        if found != settings.kafka_input_partitions:
            raise TopicMismatch(
                f"topic {settings.kafka_input_topic} has {found} partitions but "
                f"KAFKA_INPUT_PARTITIONS is {settings.kafka_input_partitions}")
    finally:
        await admin.close()


async def _partition_count(admin: AIOKafkaAdminClient, topic: str, timeout: float = 30.0) -> int:
    """Partitions of a topic, waiting out the moment after creation when metadata shows none."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        [described] = await admin.describe_topics([topic])
        found = len(described["partitions"])
        if (found and not described["error_code"]) or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.2)
