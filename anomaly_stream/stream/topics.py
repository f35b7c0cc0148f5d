"""The topics the worker reads and writes, made to exist before anything subscribes.

Faust does not create a source topic, and a producer that gets there first
makes the broker auto-create it with the broker's default partition count.
Per-address state is partition-local, so a wrong partition count silently
splits state: `ensure_topics` creates missing topics with the configured
count and refuses to start on a mismatch.

`create_topic` is the one place a topic is created (the ingester's compacted
checkpoint topic goes through it too), on an admin client from `admin_client`.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from ..settings import Settings
from .kafka import client_options


class TopicMismatch(RuntimeError):
    pass


def topic_names(settings: Settings) -> list[str]:
    return [settings.kafka_input_topic, settings.kafka_anomalies_topic, settings.dlq_topic, settings.edges_topic]


@asynccontextmanager
async def admin_client(bootstrap_servers: str, **options: Any) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client; `options` are `kafka.client_options` (TLS, SASL)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **options)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topic(admin: AIOKafkaAdminClient, name: str, partitions: int, replication: int,
                       configs: dict[str, str] | None = None) -> bool:
    """Create one topic; False when it exists already (another replica or process created it first).

    aiokafka answers a refused creation with an error code in the response
    rather than an exception: any code other than "already exists" is raised.
    """
    try:
        response = await admin.create_topics([NewTopic(name, partitions, replication, topic_configs=configs or {})])
    except TopicAlreadyExistsError:
        return False
    for _topic, code, *message in response.topic_errors:
        error = for_code(code)
        if error is TopicAlreadyExistsError:
            return False
        if code:
            raise error(f"creating topic {name}: {message[0] if message else code}")
    return True


async def ensure_topics(settings: Settings) -> None:
    async with admin_client(settings.kafka_bootstrap_servers, **client_options(settings)) as admin:
        present = await _create_missing(admin, topic_names(settings), settings)
        # One partition: a small list every replica holds whole (app.py), compacted:
        # the latest value of each address is its lists; the same for the verdicts,
        # whose retention is their TTL (detect.feedback). Only when missing: a client
        # without the Create ACL (the ingester) gets a refusal even for a topic that exists.
        replicated = {
            settings.kafka_watchlist_topic: {"cleanup.policy": "compact"},
            settings.kafka_feedback_topic: {"cleanup.policy": "compact,delete",
                                            "retention.ms": str(int(settings.feedback_ttl_seconds * 1000))},
        }
        for name, configs in replicated.items():
            if name not in present:
                await create_topic(admin, name, 1, settings.kafka_topic_replication_factor, configs)
        await _check_partitions(admin, settings.kafka_input_topic, settings.kafka_input_partitions)


async def ensure_notify_topics(settings: Settings) -> None:
    """The notifier's: the anomalies topic it reads (with the worker's partition count) and its dead letters.

    Its dedup table's changelog is co-partitioned with the anomalies topic, so
    a mismatch refuses to start, as the worker does for its input.
    """
    async with admin_client(settings.kafka_bootstrap_servers, **client_options(settings)) as admin:
        await _create_missing(admin, [settings.kafka_anomalies_topic, settings.notify_dlq_topic], settings)
        await _check_partitions(admin, settings.kafka_anomalies_topic, settings.kafka_input_partitions)


async def _create_missing(admin: AIOKafkaAdminClient, names: list[str], settings: Settings) -> list[str]:
    """Create those of `names` that are missing; the topics that were present."""
    # list_topics first: a metadata request naming a missing topic makes a
    # broker with auto-creation on create it with its default partition count.
    present = await admin.list_topics()
    for name in names:
        if name not in present:
            await create_topic(admin, name, settings.kafka_input_partitions, settings.kafka_topic_replication_factor)
    return present


async def _check_partitions(admin: AIOKafkaAdminClient, topic: str, expected: int) -> None:
    found = await _partition_count(admin, topic)
    if found != expected:
        raise TopicMismatch(f"topic {topic} has {found} partitions but KAFKA_INPUT_PARTITIONS is {expected}")


async def _partition_count(admin: AIOKafkaAdminClient, topic: str, timeout: float = 30.0) -> int:
    """Partitions of a topic, waiting out the moment after creation when metadata shows none."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        [described] = await admin.describe_topics([topic])
        found = len(described["partitions"])
        if (found and not described["error_code"]) or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.2)
