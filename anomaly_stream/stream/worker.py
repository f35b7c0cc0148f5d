"""One worker's runtime: what a batch of one partition does, end to end.

The agents (`agents.py`) are thin: they take the batch lock, call
`Worker.handle`, acknowledge. Everything a batch causes is here, in the
order it happens:

1. `detector.process_batch` scores and learns the batch (pure, no I/O);
2. dead letters and re-keyed messages go out;
3. each touched sender's profile is written once, to the table and its
   changelog (`state.write_through`);
4. anomalies are enriched, buffered, published, and their cached address
   views dropped;
5. the partition's model is checkpointed when due.

All output goes through a `Sink`: `FaustSink` in the worker (the Faust
producer, joining the source partition's transaction under exactly_once),
`MemorySink` in tests and the backtest, which run this same code without
Kafka. Tables are seen as `Store`s: their data and the name of their
changelog, so a dict is a table in tests.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, MutableMapping, NamedTuple, Protocol, Sequence

import orjson
import structlog
from faust.windows import TumblingWindow

from .. import metrics
from ..detect.detector import (PROCESSING_ERROR, Benign, BatchResult, Listed, Record, encode, nothing_listed,
                               process_batch, process_edges)
from ..detect.feedback import nothing_benign
from ..detect.features import PERSPECTIVE_FEATURES, RECEIVER, SENDER, AddressProfile
from ..detect.model import CheckpointError, ModelConfig, PartitionModel
from .state import TableBound, delete_through, write_through

log = structlog.get_logger(__name__)


class Sink(Protocol):
    """Where a worker's messages go. `source_partition` is the input partition they came from
    (their transaction under exactly_once); None for output matching offsets already committed.

    `send_many(topic, messages, source_partition=...)` is `send` of each
    (key, value, partition) in order, without headers: one await per batch
    of records instead of one per record (the profiles, edges and changelog
    writes of a batch)."""

    async def send(self, topic: str, key: bytes | None, value: bytes | None, *,
                   source_partition: int | None, partition: int | None = None,
                   headers: dict[str, bytes] | None = None) -> None: ...

    async def send_many(self, topic: str, messages: Sequence[tuple[bytes | None, bytes | None, int | None]], *,
                        source_partition: int | None) -> None: ...


# The collector's defaults (a collection every 700 net allocations, a full one
# over every tracked object after ten of the next generation) cost a tenth of
# the hot path: gc.callbacks over benchmarks/common.bare_worker measured 1.2-1.6 s
# of collections in 10-15 s, two thirds of it full collections walking the
# million objects the imports built (Faust, River, scipy). Start-up's objects
# live as long as the process; the hot path's garbage is young.
GC_THRESHOLDS = (10_000, 20, 10)


def collect_less() -> None:
    """Collect garbage less often in a process that runs the hot path; call once its imports are done.

    Moves what exists now out of the collector's sight (`gc.freeze`) and
    raises the youngest generation's threshold: 0.2-0.3 s of collections
    instead of 1.2-1.6 s in the measurement above. Cyclic garbage then lives
    up to 10,000 allocations longer (a few MB at most).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# Written profiles kept decoded (`Worker.lookup`); past this many, forgotten at once
# (about 1 KB each).
WRITTEN_PROFILES = 50_000

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = [struct.Struct("<%dI" % n).unpack_from for n in range(64)]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's, aiokafka's `partitioner.murmur2`), equal for every input.

    Reads the 4-byte words with one struct call instead of byte by byte:
    about 4x aiokafka's pure-Python loop for a 42-byte address key.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    n4 = length >> 2
    words = _WORDS[n4](data) if n4 < 64 else struct.unpack_from("<%dI" % n4, data)
    for k in words:
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        tail = length & ~3
        if extra >= 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


_PARTITIONS: dict[int, dict[bytes, int]] = {}  # partition count -> key -> partition
_PARTITION_CACHE = 1 << 18  # keys remembered per partition count (addresses repeat: routers, exchanges)


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and aiokafka's DefaultPartitioner) gives a key; memoised."""
    cache = _PARTITIONS.get(partitions)
    if cache is None:
        cache = _PARTITIONS[partitions] = {}
    p = cache.get(key)
    if p is None:
        if len(cache) >= _PARTITION_CACHE:
            cache.clear()
        p = cache[key] = (murmur2(key) & 0x7FFFFFFF) % partitions
    return p


@dataclass
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    headers: dict[str, bytes] | None


@dataclass
class MemorySink:
    """Keeps what was sent (`keep=False`: only counts it, for long replays)."""

    keep: bool = True
    messages: list[Message] = field(default_factory=list)
    sent: int = 0

    async def send(self, topic, key, value, *, source_partition, partition=None, headers=None) -> None:
        self.sent += 1
        if self.keep:
            self.messages.append(Message(topic, key, value, partition, headers))

    async def send_many(self, topic, messages, *, source_partition) -> None:
        self.sent += len(messages)
        if self.keep:
            self.messages.extend([Message(topic, key, value, partition, None) for key, value, partition in messages])

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]


@dataclass
class Store:
    """A changelogged table as the worker uses it: the data, and how its changelog is written.

    A dict in tests and the backtest; `faust_io.TableStore` over a Faust table in the worker.
    """

    data: MutableMapping[Any, bytes]
    changelog: str

    def encode_key(self, key: Any) -> bytes:
        return key


@dataclass
class Topics:
    transactions: str
    anomalies: str
    dlq: str
    edges: str  # keyed by the receiving address, co-partitioned with transactions


@dataclass
class Stores:
    profiles: Store  # sender address (bytes) -> AddressProfile bytes
    checkpoints: Store  # b"<partition>" -> model checkpoint
    anomaly_buffer: Store  # (tx hash, window) -> anomaly document bytes


class Cache(Protocol):
    async def invalidate(self, kind: str, idents: list[str]) -> None: ...


class Enricher(Protocol):
    async def enrich(self, documents: list[dict]) -> None: ...


class Worker:
    """Models, state bounds, watermarks and the batch lock of one worker process."""

    def __init__(self, settings, topics: Topics, stores: Stores, sink: Sink,
                 cache: Cache | None = None, enricher: Enricher | None = None,
                 clock: Callable[[], float] = time.time, listed: Listed = nothing_listed,
                 benign: Benign = nothing_benign):
        self.settings = settings
        self.topics = topics
        self.stores = stores
        self.sink = sink
        self.cache = cache
        self.enricher = enricher
        self.clock = clock
        self.listed = listed  # the watch-lists (stream.replica in the worker)
        self.benign = benign  # addresses analysts marked false positives (detect.feedback)
        self.config = ModelConfig.from_settings(settings)
        # One model per (perspective, partition), checkpointed under checkpoint_key.
        self.models: dict[tuple[str, int], PartitionModel] = {}
        self.saved_at: dict[tuple[str, int], float] = {}  # when each model was last checkpointed
        self.saved_seen: dict[tuple[str, int], int] = {}
        self.flagged: collections.Counter[tuple[str, int]] = collections.Counter()  # anomalies since start
        self.profiles_bound = TableBound(
            stores.profiles, settings.address_state_ttl_seconds,
            settings.address_state_max_per_partition, _locate_profile)
        ttl = settings.anomaly_buffer_ttl_seconds
        self.buffer_bound = TableBound(
            stores.anomaly_buffer, ttl, settings.anomaly_buffer_max_per_partition, _locate_anomaly)
        # The buffer is a windowed table (app.py); its keys carry the window of detection time.
        self.buffer_window = TumblingWindow(buffer_window_seconds(settings), expires=ttl)
        self.watermarks: dict[int, float] = {}  # newest event time seen per partition
        self.indexed: frozenset[int] | None = None  # the partitions the bounds were rebuilt for
        # Held for a whole batch; the consumer commits exactly_once transactions only
        # while nobody holds it (consumer.BatchingConsumer._commit_tps).
        self.batch_lock = asyncio.Lock()
        self.closing = False  # set at shutdown, after the models' last checkpoint (agents.on_shutdown)
        self.last_progress = time.monotonic()
        self.gauges: dict[tuple[str, int], _ModelGauges] = {}
        # Profiles as last written, with the bytes written (`lookup`): decoding a
        # profile was 6-8% of the hot path, and active addresses come back soon.
        self.written: dict[bytes, tuple[bytes, AddressProfile]] = {}

    # -- a batch --

    def lookup(self, sender: str) -> AddressProfile | None:
        """The stored profile; the object written with it while the table still holds those very bytes."""
        key = sender.encode()
        raw = self.stores.profiles.data.get(key)
        if raw is None:
            return None
        written = self.written.get(key)
        if written is not None and written[0] is raw:
            return written[1]
        return AddressProfile.from_bytes(raw)

    def _batch(self, process: Callable[..., BatchResult], *args) -> BatchResult:
        """`process(*args)`, forgetting the written profiles if it may have changed one it did not return.

        A batch changes the profiles `lookup` gives it in place, and returns
        them to be written, except those of messages it dead-letters for a
        processing error (and all of them if it raises): those objects may
        differ from their stored bytes now.
        """
        try:
            result = process(*args)
        except BaseException:
            self.written.clear()
            raise
        if any(dead.reason == PROCESSING_ERROR for dead in result.dead_letters):
            self.written.clear()
        return result

    async def handle(self, partition: int, records: Sequence[Record], require_key: bool = True) -> BatchResult:
        """A batch of the transactions topic: scored as the senders' acts; edges go to the receivers."""
        started = time.perf_counter()
        model = self.model(partition)
        result = self._batch(process_batch, model, records, self.lookup, partition, require_key, self.clock,
                             self.listed, self.benign, self.partition_of)
        if result.edges:
            n = self.settings.kafka_input_partitions
            messages = []
            for edge in result.edges:
                key = edge.receiver.encode()
                messages.append((key, edge.to_bytes(), kafka_partition(key, n)))
            await self.sink.send_many(self.topics.edges, messages, source_partition=partition)
        await self._finish(SENDER, partition, records, result, started)
        return result

    async def handle_edges(self, partition: int, records: Sequence[Record]) -> BatchResult:
        """A batch of the edges topic: scored as events of the receiving addresses."""
        started = time.perf_counter()
        model = self.model(partition, RECEIVER)
        result = self._batch(process_edges, model, records, self.lookup, partition, self.clock, self.listed,
                             self.benign)
        await self._finish(RECEIVER, partition, records, result, started)
        return result

    def partition_of(self, key: bytes) -> int:
        """The partition the Java client and aiokafka give a key: what co-partitioning relies on."""
        return kafka_partition(key, self.settings.kafka_input_partitions)

    async def _finish(self, perspective: str, partition: int, records: Sequence[Record],
                      result: BatchResult, started: float) -> None:
        await self._dead_letter(partition, result)
        topic = self.topics.transactions if perspective == SENDER else self.topics.edges
        if result.rekeyed:
            # To the partition the key hashes to, explicitly: whatever partitioner the producer has.
            await self.sink.send_many(topic, [(key.encode(), record.value, self.partition_of(key.encode()))
                                              for key, record in result.rekeyed], source_partition=partition)
        await self._write_profiles(partition, result)
        if result.anomalies:
            await self._publish_anomalies(partition, result.anomalies)
            self.flagged[perspective, partition] += len(result.anomalies)
        now = self.clock()
        self.watermarks[partition] = max(self.watermarks.get(partition, 0.0), result.latest_event_time)
        key = (perspective, partition)
        if self.closing:
            # A batch after the shutdown checkpoint (Faust stops waiting for streams
            # at shutdown): what it taught the model goes out too, after Faust's
            # last commit, so outside any transaction.
            await self.checkpoint(key, now, in_transaction=False)
        elif self.checkpoint_due(key, now):
            await self.checkpoint(key, now)
        self.last_progress = time.monotonic()
        key = (perspective, partition)
        gauges = self.gauges.get(key)
        if gauges is None:
            gauges = self.gauges[key] = _ModelGauges.of(perspective, partition)
        _count(perspective, len(records), result, self.models[key], time.perf_counter() - started, gauges)

    async def _dead_letter(self, partition: int, result: BatchResult) -> None:
        for dead in result.dead_letters:
            await self.sink.send(self.topics.dlq, dead.record.key, dead.record.value,
                                 source_partition=partition, partition=partition, headers={
                                     "dlq-reason": dead.reason.encode(),
                                     "dlq-detail": dead.detail.encode(),
                                     "dlq-source-topic": self.topics.transactions.encode(),
                                     "dlq-source-partition": b"%d" % partition,
                                     "dlq-source-offset": b"%d" % dead.record.offset,
                                 })
            metrics.TRANSACTIONS_DEAD_LETTERED.labels(dead.reason).inc()

    async def _write_profiles(self, partition: int, result: BatchResult) -> None:
        touch = self.profiles_bound.touch
        remember = self.written
        if len(remember) > WRITTEN_PROFILES:
            remember.clear()
        written = []
        for sender, profile in result.profiles.items():
            key = sender.encode()
            value = profile.to_bytes()
            written.append((key, value))
            remember[key] = (value, profile)
            touch(partition, key, profile.last_seen)
        if not written:
            return
        await write_through(self.sink, self.stores.profiles, partition, written)
        await self._trim("profiles", self.profiles_bound, self.stores.profiles, partition)

    async def _trim(self, table: str, bound: TableBound, store: Store, partition: int) -> None:
        """The size bound at write time; the TTL waits for the sweep."""
        evicted = bound.trim(partition)
        if evicted:
            metrics.STATE_EXPIRED.labels(table).inc(len(evicted))
            await delete_through(self.sink, store, evicted)

    async def _publish_anomalies(self, partition: int, anomalies: list[dict]) -> None:
        if self.enricher is not None:
            await self.enricher.enrich(anomalies)
        else:
            for document in anomalies:
                document["onchain"] = None
        window = self.buffer_window.ranges(self.clock())[-1]
        items = []
        for document in anomalies:
            value = encode(document)
            # A transaction flagged from both sides is two anomalies, one entry each; on the
            # receiving side one per address it reached (a transferFrom's recipient and owner).
            suffix = "" if document["perspective"] == SENDER else f":{document['perspective']}:{document['address']}"
            key = (document["tx_hash"] + suffix, window)
            items.append((key, value))
            self.buffer_bound.touch(partition, key, document["detected_at"])
        await write_through(self.sink, self.stores.anomaly_buffer, partition, items)
        await self._trim("anomaly_buffer", self.buffer_bound, self.stores.anomaly_buffer, partition)
        await self.sink.send_many(
            self.topics.anomalies,
            [(document["address"].encode(), value, partition) for (_, value), document in zip(items, anomalies)],
            source_partition=partition)
        for document in anomalies:
            log.info("anomaly_flagged", tx=document["tx_hash"], address=document["address"],
                     score=document["score"], threshold=document["threshold"])
        if self.cache is not None:
            # Cached address views would hide the new anomalies until their TTL ran
            # out. Bounded by REDIS_TIMEOUT_SECONDS, and skipped while Redis is down.
            await self.cache.invalidate("address", [d["address"] for d in anomalies])

    # -- models --

    def model(self, partition: int, perspective: str = SENDER) -> PartitionModel:
        key = (perspective, partition)
        model = self.models.get(key)
        if model is None:
            features = PERSPECTIVE_FEATURES[perspective]
            raw = self.stores.checkpoints.data.get(checkpoint_key(key))
            model = None
            if raw is not None:
                try:
                    model = PartitionModel.from_bytes(raw, self.config, partition, features=features)
                    log.info("model_restored", perspective=perspective, partition=partition,
                             seen=model.seen, threshold=model.threshold)
                except CheckpointError as exc:
                    # Forged, corrupt or unsigned: never trusted, never fatal.
                    metrics.MODEL_CHECKPOINTS_REJECTED.labels(exc.reason).inc()
                    log.warning("model_checkpoint_rejected", perspective=perspective, partition=partition,
                                reason=exc.reason)
            if model is None:
                model = PartitionModel(self.config, partition, features=features)
                log.info("model_created", perspective=perspective, partition=partition)
            self.models[key] = model
            self.saved_at[key] = self.clock()
            self.saved_seen[key] = model.seen
        return model

    def checkpoint_due(self, key: tuple[str, int], now: float) -> bool:
        return (now - self.saved_at.get(key, now) >= self.settings.model_checkpoint_interval_seconds
                and self.models[key].seen != self.saved_seen.get(key))

    async def checkpoint(self, key: tuple[str, int], now: float, in_transaction: bool = True) -> None:
        """Write a model to the table and its changelog partition.

        In the partition's transaction (exactly_once) unless Faust has already
        committed everything the model learned from (`release`).
        """
        partition = key[1]
        raw_key, value = checkpoint_key(key), self.models[key].to_bytes()
        self.stores.checkpoints.data[raw_key] = value
        await self.sink.send(self.stores.checkpoints.changelog, raw_key, value,
                             source_partition=partition if in_transaction else None, partition=partition)
        self.saved_at[key] = now
        self.saved_seen[key] = self.models[key].seen

    async def release(self, partitions: set[int]) -> None:
        """Checkpoint and drop the models of partitions this worker no longer owns.

        Called after Faust has finished and committed every delivered batch
        (and, with exactly_once, ended the transactions), so the checkpoint
        goes out on its own, consistent with the committed offsets.
        """
        now = self.clock()
        for key in [k for k in self.models if k[1] in partitions]:
            await self.checkpoint(key, now, in_transaction=False)
            del self.models[key]
            self.saved_at.pop(key, None)
            self.saved_seen.pop(key, None)
        self.indexed = None  # the next sweep rebuilds the bounds for what is left

    # -- bounds --

    async def sweep(self, owned: frozenset[int]) -> None:
        """Expire old profiles and anomalies; after an assignment change, first re-learn what is there."""
        if self.indexed != owned:
            for bound in (self.profiles_bound, self.buffer_bound):
                bound.rebuild(set(owned))
            for partition in owned:
                self.watermarks[partition] = max(self.watermarks.get(partition, 0.0),
                                                 self.profiles_bound.newest(partition))
            self.indexed = owned
            metrics.STATE_REBUILDS.inc()
            log.info("state_bounds_rebuilt", partitions=sorted(owned),
                     profiles=len(self.profiles_bound), anomalies=len(self.buffer_bound))
        now = self.clock()
        expired_profiles = self.profiles_bound.sweep(lambda p: self.watermarks.get(p, 0.0))
        expired_anomalies = self.buffer_bound.sweep(lambda p: now)
        # Sizes taken before the awaits below let batches add to the tables.
        metrics.ADDRESS_PROFILES.set(len(self.profiles_bound))
        metrics.ANOMALY_BUFFER_SIZE.set(len(self.buffer_bound))
        metrics.STATE_EXPIRED.labels("profiles").inc(len(expired_profiles))
        metrics.STATE_EXPIRED.labels("anomaly_buffer").inc(len(expired_anomalies))
        await delete_through(self.sink, self.stores.profiles, expired_profiles)
        await delete_through(self.sink, self.stores.anomaly_buffer, expired_anomalies)
        # A partition whose traffic stopped still gets its last batches checkpointed.
        for key in list(self.models):
            if self.checkpoint_due(key, now):
                await self.checkpoint(key, now)
            metrics.MODEL_CHECKPOINT_AGE.labels(*key).set(now - self.saved_at[key])

    def stalled(self, lag: int, now: float | None = None) -> bool:
        """Liveness: records are waiting and no batch finished within the bound."""
        now = time.monotonic() if now is None else now
        return lag > 0 and now - self.last_progress > self.settings.liveness_stall_seconds


def checkpoint_key(key: tuple[str, int]) -> bytes:
    perspective, partition = key
    # The sender model keeps the key it had before there were two perspectives.
    return b"%d" % partition if perspective == SENDER else b"%s:%d" % (perspective.encode(), partition)


class _ModelGauges(NamedTuple):
    """The labelled metrics of one model: a `labels()` lookup costs more than the update itself."""

    threshold: Any
    drift: Any
    seen: Any
    observe_score: Callable[[float], None]

    @classmethod
    def of(cls, perspective: str, partition: int) -> _ModelGauges:
        return cls(metrics.MODEL_THRESHOLD.labels(perspective, partition),
                   metrics.MODEL_THRESHOLD_DRIFT.labels(perspective, partition),
                   metrics.MODEL_EVENTS_SEEN.labels(perspective, partition),
                   metrics.ANOMALY_SCORE.labels(perspective).observe)


def _count(perspective: str, n: int, result: BatchResult, model: PartitionModel, seconds: float,
           gauges: _ModelGauges) -> None:
    # Counters only when there is something to add: each inc takes a lock.
    if perspective == SENDER:
        metrics.TRANSACTIONS_CONSUMED.inc(n)
        metrics.TRANSACTIONS_PROCESSED.inc(result.processed)
        if result.rekeyed:
            metrics.TRANSACTIONS_REKEYED.inc(len(result.rekeyed))
    else:
        metrics.EDGES_PROCESSED.inc(result.processed)
    if result.anomalies:
        metrics.ANOMALIES_PUBLISHED.inc(len(result.anomalies))
    if result.suppressed:
        metrics.ANOMALIES_SUPPRESSED.labels(perspective).inc(result.suppressed)
    metrics.BATCH_SIZE.observe(n)
    metrics.BATCH_SECONDS.observe(seconds)
    gauges.threshold.set(model.threshold)
    gauges.drift.set(model.drift)
    gauges.seen.set(model.seen)
    observe = gauges.observe_score
    for score in result.scores[::16]:
        observe(score)


def _locate_profile(key: bytes, value: bytes) -> tuple[int, float]:
    profile = AddressProfile.from_bytes(value)
    return profile.partition, profile.last_seen


def buffer_window_seconds(settings) -> float:
    return max(settings.anomaly_buffer_ttl_seconds / 12, 1.0)


def _locate_anomaly(key: Any, value: bytes) -> tuple[int, float]:
    document = orjson.loads(value)
    return document["source"]["partition"], document["detected_at"]
