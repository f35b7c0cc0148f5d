"""The one Faust App: topics, tables and where everything registers.

`faust -A anomaly_stream.stream.app worker` and `anomaly-stream worker` both run the
module-level `app`, built from the environment (see `settings`). Tests and
benchmarks start real worker processes with their own environment.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from . import agents
from ..serve import views
from ..serve.cache import Cache
from .consumer import BatchingTransport
from ..chain.enrich import Enricher
from ..detect.features import AddressProfile
from ..settings import Settings
from .state import TableBound
from .topics import ensure_topics


class App(faust.App):
    """A Faust App whose consumer hands the input topic to agents in batches."""

    settings: Settings
    batch_lock: asyncio.Lock  # held by the agent for a whole batch (see agents.detect)

    def _new_transport(self):
        return BatchingTransport(self.conf.broker_consumer, self)

    async def on_first_start(self) -> None:
        # Before the consumer subscribes: see topics.py.
        await ensure_topics(self.settings)
        await super().on_first_start()

    async def publish(self, topic: Any, key: bytes | None, value: bytes | None, *,
                      source_partition: int | None, partition: int | None = None,
                      headers: dict[str, bytes] | None = None) -> None:
        """Send a message produced while processing `source_partition`.

        With exactly_once the send joins that partition's transaction, so it
        becomes visible to read_committed subscribers exactly when the input
        offsets it came from are committed. (Faust's own `topic.send` only
        finds a transaction for topics this worker consumes: anomalies and
        dead letters would go out at once and repeat after a crash.)
        `source_partition=None` sends outside any transaction: for state that
        matches offsets Faust has already committed (revocation, shutdown).
        With at_least_once Faust flushes the producer before every commit.
        """
        transactional_id = None
        if self.in_transaction and source_partition is not None:
            group = self.assignor.group_for_topic(self.settings.kafka_input_topic)
            transactional_id = f"{self.conf.id}-{group}-{source_partition}"
        await self.producer.send(topic.get_topic_name(), key, value, partition, None, headers,
                                 transactional_id=transactional_id)


@dataclass
class Topics:
    transactions: Any
    anomalies: Any
    dlq: Any


@dataclass
class Tables:
    profiles: Any  # sender address (bytes) -> AddressProfile bytes
    checkpoints: Any  # b"<partition>" -> pickled PartitionModel
    anomaly_buffer: Any  # (tx hash, window) -> anomaly document bytes; windowed, TTL-bounded
    profiles_bound: TableBound
    buffer_bound: TableBound


def create_app(settings: Settings) -> App:
    app = App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store=settings.table_store,
        datadir=settings.data_dir,
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.kafka_input_partitions,
        topic_replication_factor=settings.kafka_topic_replication_factor,
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_seconds,
        broker_rebalance_timeout=settings.kafka_session_timeout_seconds,
        broker_commit_interval=settings.commit_interval_seconds,
        broker_max_poll_records=settings.kafka_max_poll_records,
        producer_linger=settings.kafka_producer_linger_ms / 1000.0,
        # A model checkpoint is one message of a few hundred KiB.
        producer_max_request_size=8 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        # Faust's own window sweep is replaced by TableBound (see state.py).
        table_cleanup_interval=3600.0,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        autodiscover=False,
    )
    app.settings = settings
    app.batch_lock = asyncio.Lock()
    partitions = settings.kafka_input_partitions
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": partitions}
    topics = Topics(
        transactions=app.topic(settings.kafka_input_topic, **raw),
        anomalies=app.topic(settings.kafka_anomalies_topic, **raw),
        dlq=app.topic(settings.dlq_topic, **raw),
    )
    app.transport.Consumer.batch_topics = frozenset({settings.kafka_input_topic})

    # bytes keys and values make Faust use its raw codec: table keys hash to the
    # same partitions as the input topic's keys, which table routing relies on.
    raw = {"key_type": bytes, "value_type": bytes, "partitions": partitions}
    profiles = app.Table("profiles", **raw)
    checkpoints = app.Table("model-checkpoints", **raw)
    ttl = settings.anomaly_buffer_ttl_seconds
    anomaly_buffer = app.Table(
        "anomaly-buffer", partitions=partitions, value_type=bytes,
    ).tumbling(max(ttl / 12, 1.0), expires=ttl).table
    tables = Tables(
        profiles=profiles,
        checkpoints=checkpoints,
        anomaly_buffer=anomaly_buffer,
        profiles_bound=TableBound(
            profiles, settings.address_state_ttl_seconds,
            settings.address_state_max_per_partition, _locate_profile,
        ),
        buffer_bound=TableBound(
            anomaly_buffer, ttl, settings.anomaly_buffer_max_per_partition, _locate_anomaly,
        ),
    )
    cache = Cache(settings)
    agents.register(app, settings, topics, tables, cache, Enricher(settings, cache))
    views.register(app, settings, tables, cache)
    return app


def _locate_profile(key: bytes, value: bytes) -> tuple[int, float]:
    profile = AddressProfile.from_bytes(value)
    return profile.partition, profile.last_seen


def _locate_anomaly(key: Any, value: bytes) -> tuple[int, float]:
    document = orjson.loads(value)
    return document["source"]["partition"], document["detected_at"]


app = create_app(Settings.from_env())
