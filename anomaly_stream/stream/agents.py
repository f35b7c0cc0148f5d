"""The agents: the detector over the input topic, and the state bounds timer.

An agent body reads as the pipeline; the work is in `detector.process_batch`.
Each event is one partition's batch (see `consumer`), so the agent writes
each touched sender's profile once per batch. A batch is acknowledged once
its sends and table writes have been handed to the producer; Faust flushes
the producer before every offset commit (or, with exactly_once, commits them
in one transaction, between batches), so an offset is never committed ahead
of what its message produced.
"""

from __future__ import annotations

import time

import structlog

from .. import metrics
from ..detect.detector import process_batch, encode
from ..detect.features import AddressProfile
from ..detect.model import ModelConfig, PartitionModel
from .state import delete_through, write_through

log = structlog.get_logger(__name__)


class PartitionModels:
    """This worker's models, one per owned input partition, checkpointed to a table."""

    def __init__(self, app, config: ModelConfig, checkpoints, interval_seconds: float):
        self.app = app
        self.config = config
        self.checkpoints = checkpoints
        self.interval = interval_seconds
        self.models: dict[int, PartitionModel] = {}
        self.saved_at: dict[int, float] = {}
        self.saved_seen: dict[int, int] = {}

    def get(self, partition: int) -> PartitionModel:
        model = self.models.get(partition)
        if model is None:
            raw = self.checkpoints.get(b"%d" % partition)
            if raw is None:
                model = PartitionModel(self.config, partition)
                log.info("model_created", partition=partition)
            else:
                model = PartitionModel.from_bytes(raw, self.config)
                log.info("model_restored", partition=partition, seen=model.seen, threshold=model.threshold)
            self.models[partition] = model
            self.saved_at[partition] = time.time()
            self.saved_seen[partition] = model.seen
        return model

    def checkpoint_due(self, partition: int, now: float) -> bool:
        return (now - self.saved_at.get(partition, now) >= self.interval
                and self.models[partition].seen != self.saved_seen.get(partition))

    async def checkpoint(self, partition: int, now: float, in_transaction: bool = True) -> None:
        """Write the model to the table and its changelog partition.

        In the partition's transaction (exactly_once) unless Faust has already
        committed everything the model learned from (`release`).
        """
        key, value = b"%d" % partition, self.models[partition].to_bytes()
        self.checkpoints.data[key] = value
        await self.app.publish(self.checkpoints.changelog_topic, key, value,
                               source_partition=partition if in_transaction else None, partition=partition)
        self.saved_at[partition] = now
        self.saved_seen[partition] = self.models[partition].seen

    async def release(self, partitions: set[int]) -> None:
        """Checkpoint and drop the models of partitions this worker no longer owns.

        Called after Faust has finished and committed every delivered batch
        (and, with exactly_once, ended the transactions), so the checkpoint
        goes out on its own, consistent with the committed offsets.
        """
        now = time.time()
        for partition in partitions & self.models.keys():
            await self.checkpoint(partition, now, in_transaction=False)
            del self.models[partition]
            self.saved_at.pop(partition, None)
            self.saved_seen.pop(partition, None)


def register(app, settings, topics, tables, cache, enricher) -> None:
    models = PartitionModels(
        app, ModelConfig.from_settings(settings), tables.checkpoints,
        settings.model_checkpoint_interval_seconds,
    )
    watermarks: dict[int, float] = {}  # latest event time seen per partition
    indexed: dict[str, frozenset[int] | None] = {"partitions": None}
    input_topic = settings.kafka_input_topic
    app.models = models

    def lookup(sender: str) -> AddressProfile | None:
        raw = tables.profiles.get(sender.encode())
        return None if raw is None else AddressProfile.from_bytes(raw)

    async def handle(batch) -> None:
        started = time.perf_counter()
        partition = batch.partition
        model = models.get(partition)
        result = process_batch(model, batch.records, lookup, partition)

        for dead in result.dead_letters:
            await app.publish(
                topics.dlq, dead.record.key, dead.record.value,
                source_partition=partition, partition=partition, headers={
                    "dlq-reason": dead.reason.encode(),
                    "dlq-detail": dead.detail.encode(),
                    "dlq-source-topic": input_topic.encode(),
                    "dlq-source-partition": b"%d" % partition,
                    "dlq-source-offset": b"%d" % dead.record.offset,
                },
            )
            metrics.TRANSACTIONS_DEAD_LETTERED.labels(dead.reason).inc()
        for sender, record in result.rekeyed:
            await app.publish(topics.transactions, sender.encode(), record.value, source_partition=partition)

        touch = tables.profiles_bound.touch
        written = []
        for sender, profile in result.profiles.items():
            key = sender.encode()
            written.append((key, profile.to_bytes()))
            touch(partition, key, profile.last_seen)
        await write_through(app, tables.profiles, partition, written)

        if result.anomalies:
            await enricher.enrich(result.anomalies)
            window = tables.anomaly_buffer.window.ranges(time.time())[-1]
            for document in result.anomalies:
                value = encode(document)
                key = (document["tx_hash"], window)
                tables.anomaly_buffer[key] = value
                tables.buffer_bound.touch(partition, key, document["detected_at"])
                await app.publish(topics.anomalies, document["address"].encode(), value,
                                  source_partition=partition, partition=partition)
                log.info("anomaly_flagged", tx=document["tx_hash"], address=document["address"],
                         score=document["score"], threshold=document["threshold"])
            # Cached address views would hide the new anomalies until their TTL ran
            # out. Bounded by REDIS_TIMEOUT_SECONDS, and skipped while Redis is down.
            await cache.invalidate("address", [d["address"] for d in result.anomalies])

        now = time.time()
        watermarks[partition] = max(watermarks.get(partition, 0.0), result.latest_event_time)
        if models.checkpoint_due(partition, now):
            await models.checkpoint(partition, now)

        n = len(batch.records)
        metrics.TRANSACTIONS_CONSUMED.inc(n)
        metrics.TRANSACTIONS_PROCESSED.inc(result.processed)
        metrics.TRANSACTIONS_REKEYED.inc(len(result.rekeyed))
        metrics.ANOMALIES_PUBLISHED.inc(len(result.anomalies))
        metrics.BATCH_SIZE.observe(n)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.MODEL_THRESHOLD.labels(partition).set(model.threshold)
        metrics.MODEL_EVENTS_SEEN.labels(partition).set(model.seen)
        for score in result.scores[::16]:
            metrics.ANOMALY_SCORE.observe(score)

    @app.agent(topics.transactions, name="detect")
    async def detect(batches):
        async for batch in batches:
            # With exactly_once, Faust commits the open transaction on a timer: a
            # commit in the middle of a batch would make its anomalies visible with
            # only the previous offsets, and a crash would then repeat them. The
            # consumer commits only while no batch holds this lock, and the batch is
            # acknowledged before it lets go.
            async with app.batch_lock:
                await handle(batch)
                batches.current_event.ack()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        await models.release({tp.partition for tp in revoked if tp.topic == input_topic})
        indexed["partitions"] = None
        # The next owner recovers the checkpoint from the changelog: it must be there.
        await app.producer.flush()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender, **kwargs) -> None:
        # Faust skips the revocation callbacks when the worker itself stops: checkpoint
        # here, before its producer's final flush, so a clean scale-in loses no learning.
        await models.release(set(models.models))

    @app.timer(settings.state_sweep_interval_seconds)
    async def enforce_bounds() -> None:
        """Expire old profiles and anomalies; after a recovery, first re-learn what is there."""
        if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():
            return
        owned = frozenset(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == input_topic)
        if indexed["partitions"] != owned:
            for bound in (tables.profiles_bound, tables.buffer_bound):
                bound.rebuild(set(owned))
            for partition in owned:
                watermarks[partition] = max(watermarks.get(partition, 0.0), tables.profiles_bound.newest(partition))
            indexed["partitions"] = owned
            metrics.STATE_REBUILDS.inc()
            log.info("state_bounds_rebuilt", partitions=sorted(owned),
                     profiles=len(tables.profiles_bound), anomalies=len(tables.buffer_bound))
        now = time.time()
        expired = tables.profiles_bound.sweep(lambda p: watermarks.get(p, 0.0))
        await delete_through(app, tables.profiles, expired)
        metrics.STATE_EXPIRED.labels("profiles").inc(len(expired))
        expired = tables.buffer_bound.sweep(lambda p: now)
        await delete_through(app, tables.anomaly_buffer, expired)
        metrics.STATE_EXPIRED.labels("anomaly_buffer").inc(len(expired))
        metrics.ADDRESS_PROFILES.set(len(tables.profiles_bound))
        metrics.ANOMALY_BUFFER_SIZE.set(len(tables.buffer_bound))
        # A partition whose traffic stopped still gets its last batches checkpointed.
        for partition in list(models.models):
            if models.checkpoint_due(partition, now):
                await models.checkpoint(partition, now)
            metrics.MODEL_CHECKPOINT_AGE.labels(partition).set(now - models.saved_at[partition])
