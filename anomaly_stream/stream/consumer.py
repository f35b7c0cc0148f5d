"""A Faust consumer that hands an agent one event per fetched partition batch.

Stock Faust delivers every Kafka message as its own event: a few tasks,
futures and loop turns each, about 100 us, which caps any agent near 10k
messages/s before it does any work (../shared/FIELD-NOTES.md). For the topics
named in `batch_topics`, this consumer instead delivers each partition's
slice of a fetch as a single event whose value is a `RecordBatch`. Every
other topic (changelogs, the agents Faust runs itself) keeps the stock path.

Offsets stay exact: the batch event carries the offset of its last record,
and the offsets before it are registered as a gap, which Faust's commit logic
treats as acknowledged only once that last offset is acknowledged, i.e. once
the agent has finished the whole batch. A crash mid-batch re-delivers it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, NamedTuple, Sequence

import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service

from ..detect.detector import Record
from .transactions import RebalanceSafeTransactions

log = structlog.get_logger(__name__)


class RecordBatch(NamedTuple):
    """The value of a batch event: one partition's consecutive records."""

    partition: int
    records: list[Record]


class ReadOffsets(defaultdict):
    """Faust's per-partition read offsets, knowing which of its two meanings holds.

    After a seek (Faust's own writes: assignment, revocation, perform_seek) an
    entry is the next offset to read; after `delivered`, the last offset
    delivered. `expected` turns either into the next offset to deliver. A
    partition without an entry has not been positioned since its assignment.
    """

    def __init__(self) -> None:
        super().__init__(lambda: None)
        self._delivered: set[TP] = set()
        self._moves: defaultdict[TP, int] = defaultdict(int)

    def delivered(self, tp: TP, offset: int) -> None:
        super().__setitem__(tp, offset)
        self._delivered.add(tp)

    def moves(self, tp: TP) -> int:
        """How often Faust has set or removed the position (a seek, a revocation).

        A delivery waits on the agent's queue; if the position moved meanwhile,
        recording the delivery would overwrite the new position with an old one:
        a revocation's removal with "delivered up to here" (given the partition
        again, the worker would drop the fetch from the committed offset up to
        there as already read), or recovery's seek to the committed offset with
        the end of a batch fetched before it (the records in between would be
        dropped the same way).
        """
        return self._moves[tp]

    def positioned(self, tp: TP) -> bool:
        # perform_seek writes an entry (None when the group has no committed
        # offset) for every assigned partition; revocation removes it.
        return tp in self

    def expected(self, tp: TP) -> int | None:
        read = self.get(tp)
        if read is None:
            return None
        return read + 1 if tp in self._delivered else read

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        self._delivered.discard(tp)
        self._moves[tp] += 1
        super().__setitem__(tp, offset)

    def __delitem__(self, tp: TP) -> None:
        self._delivered.discard(tp)
        self._moves[tp] += 1
        super().__delitem__(tp)

    def pop(self, tp: TP, *default: Any) -> Any:
        self._delivered.discard(tp)
        self._moves[tp] += 1
        return super().pop(tp, *default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for tp, offset in dict(*args, **kwargs).items():
            self[tp] = offset


DELIVER, SKIP, REWIND, SEEK_BACK = "deliver", "skip", "rewind", "seek_back"


class Step(NamedTuple):
    action: str  # one of DELIVER, SKIP, REWIND, SEEK_BACK
    first: int = 0  # index of the first record to deliver (DELIVER) or that starts the hole (SEEK_BACK)
    gap_from: int = 0  # DELIVER: offsets from here to the last record's are acknowledged with it


def decide(positioned: bool, expected: int | None, offsets: Sequence[int],
           known_hole: tuple[int, int] | None, max_hole: int) -> Step:
    """What to do with one partition's fetched records (their `offsets`, ascending).

    - Not positioned (no seek since the assignment, or the rebalance not over):
      Faust resumes the stream partitions before it seeks them to the
      committed offsets, and resumes the flow after, which empties the
      agents' queues (mode's FlowControlEvent.resume clears every queue made
      with clear_on_resume, as streams' are). A batch fetched in between was
      either taken by the agent, scored, and read again after the seek (the
      exactly_once duplicates of 3 in 11 scale-in runs, 0.1-0.7 s apart), or
      still queued and silently dropped: REWIND the fetch position and wait
      for the seek.
    - Records before `expected` were delivered already (a re-fetch): dropped;
      nothing left is a SKIP.
    - A start past `expected` by more than `max_hole` (a transaction marker)
      is either a fetch from before a seek or a rebalance (acknowledging the
      hole would commit offsets nobody scored) or a real hole (an aborted
      transaction's records under read_committed): SEEK_BACK and read again;
      a real hole comes back the same (`known_hole`) and is delivered then.
    - Otherwise DELIVER, acknowledging the earlier offsets and the hole with
      the last record. `expected` None (no committed offset yet) takes all.
    """
    if not positioned:
        return Step(REWIND)
    first = 0
    if expected is not None:
        while first < len(offsets) and offsets[first] < expected:
            first += 1
    if first == len(offsets):
        return Step(SKIP)
    hole = 0 if expected is None else offsets[first] - expected
    if hole > max_hole and known_hole != (expected, offsets[first]):
        return Step(SEEK_BACK, first)
    return Step(DELIVER, first, offsets[first] - hole)


class BatchingConsumer(faust_aiokafka.Consumer):
    # Offsets a batch may start past the expected one and be acknowledged with it
    # at once: a transaction marker. Larger holes must show up twice (see below).
    max_hole: int = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = ReadOffsets()
        self._holes: dict[TP, tuple[int, int]] = {}
        self._handled: set = set()  # batch messages the agent has handled, until their ack
        settings = self.app.settings
        # The notifier's app names its own (the anomalies topic); the detector's batches these two.
        self.batch_topics = frozenset(getattr(self.app, "batch_topics", None)
                                      or {settings.kafka_input_topic, settings.edges_topic})

    def handled(self, message: Any) -> None:
        """The agent has handled this batch: its acknowledgement may commit the batch's offsets."""
        self._handled.add(message)

    def ack(self, message: Any) -> bool:
        if message.topic in self.batch_topics and message not in self._handled:
            # Faust's stream acknowledges an event it skips without yielding it:
            # one taken while the flow is suspended or from an older generation
            # (faust/streams.py, "ack the filtered out message"). For a batch
            # that acknowledges every offset of it, unread. It can happen: a put
            # into a full agent queue outlives the suspension that cancelled the
            # delivery (the conductor puts in a task of its own), lands after
            # flow_control.clear(), and is skipped; the final commit of a
            # stopping worker then passes over it. (A Kafka 4 scale-in lost 122
            # records once; this or `ReadOffsets.moves` is the suspect.)
            log.info("batch_skipped_unacknowledged", topic=message.topic, partition=message.partition,
                     offset=message.offset)
            gaps = self._gap.get(message.tp)
            if gaps is not None and message.generation_id == self.app.consumer_generation_id:
                # Its other offsets must not pass as acknowledged with a later batch either.
                gaps.chop(message.value.records[0].offset, message.offset)
            return False
        self._handled.discard(message)
        return super().ack(message)

    async def _commit_tps(self, tps: Any, start_new_transaction: bool) -> bool:
        if self.in_transaction:
            # Between batches only: the transaction then holds exactly the sends
            # of the batches whose offsets it commits (agents.detect, worker.Worker.batch_lock).
            # The partitions are listed inside the lock: a partition's input and
            # edges batches share one transactional id, so a list taken before a
            # batch of the other topic finished committed its output without its offset.
            async with self.app.worker.batch_lock:
                return await self._commit_acked(start_new_transaction)
        return await super()._commit_tps(tps, start_new_transaction)

    async def _commit_acked(self, start_new_transaction: bool) -> bool:
        return await super()._commit_tps(list(self._filter_tps_with_pending_acks()), start_new_transaction)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.in_transaction:
            # Faust forgets the revoked partitions' acknowledgements (in an eager
            # rebalance, all of them) before it commits: acknowledged batches'
            # output would go out without their offsets, and be produced again by
            # whoever reads the partition next. Commit them first. No batch can
            # finish between this commit and Faust's forgetting: the lock is
            # released without yielding to the waiting agent.
            async with self.app.worker.batch_lock:
                await self._commit_acked(start_new_transaction=True)
        for tp in revoked:
            self._holes.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        if self.in_transaction:
            # Table writes wait in Faust's send buffer. At-least-once commits flush
            # it first; exactly_once commits did not, so a batch's table writes could
            # land in the next transaction (lost if that one aborts).
            await self.app.producer.buffer.flush()
        return await super()._commit_offsets(offsets, start_new_transaction)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Service) -> None:  # pragma: no cover - exercised through Kafka
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                # Before any await: records fetched under an older assignment must
                # never be delivered under a newer one.
                generation = self.app.consumer_generation_id
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    await self.perform_seek()
                    continue
                for tp, tp_records in records.items():
                    if self.app.consumer_generation_id != generation or not self.flow_active:
                        break  # a rebalance started: the next fetch starts from committed offsets
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if tp.topic in self.batch_topics:
                        await self._deliver_batch(tp, tp_records, callback)
                    else:
                        await self._deliver_each(tp, tp_records, callback)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _deliver_batch(self, tp: TP, tp_records: list[Any], callback) -> None:
        expected = self._read_offset.expected(tp)
        # Faust ends the rebalance (app.rebalancing) only after it has sought and resumed the flow.
        positioned = self._read_offset.positioned(tp) and not self.app.rebalancing
        step = decide(positioned, expected, [r.offset for r in tp_records], self._holes.get(tp), self.max_hole)
        if step.action == REWIND:
            await self._seek(tp, tp_records[0].offset)
            return
        if step.action == SEEK_BACK:
            self.log.warning("Batch for %r starts at %r, expected %r: seeking back",
                             tp, tp_records[step.first].offset, expected)
            self._holes[tp] = (expected, tp_records[step.first].offset)
            await self.seek(tp, expected)
            return
        if step.action == SKIP:
            return
        self._holes.pop(tp, None)
        moves = self._read_offset.moves(tp)
        fresh = tp_records[step.first:]
        last = fresh[-1]
        if last.offset > step.gap_from:
            await self._add_gap(tp, step.gap_from, last.offset - 1)
        batch = RecordBatch(tp.partition, [
            Record(r.offset, r.key, r.value, r.timestamp / 1000.0) for r in fresh
        ])
        message = self._to_message(tp, last)
        message.key = None
        message.value = batch
        await self.wait_first(callback(message), self.suspend_flow.wait())
        if self._read_offset.moves(tp) == moves:
            self._read_offset.delivered(tp, last.offset)

    async def _deliver_each(self, tp: TP, tp_records: list[Any], callback) -> None:
        """Faust's own per-message path, for every topic that is not batched."""
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        for record in tp_records:
            offset = record.offset
            last_read = self._read_offset[tp]
            if last_read is not None and offset < last_read:
                continue
            if last_read and offset - last_read > 1 and acks_enabled:
                await self._add_gap(tp, last_read + 1, offset)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()
            moves = self._read_offset.moves(tp)
            await self.wait_first(callback(self._to_message(tp, record)), self.suspend_flow.wait())
            if self._read_offset.moves(tp) != moves:
                return  # sought or revoked meanwhile: the new position stands
            self._read_offset[tp] = offset


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        """Faust's consumer, fetching batches of KAFKA_FETCH_MIN_BYTES or KAFKA_FETCH_MAX_WAIT_MS.

        Faust asks the broker for any data at once (aiokafka's fetch_min_bytes
        of 1): a live worker then handles small batches, whose fixed costs
        (the event, the profile writes and sends per batch) cap it below what
        it drains from a backlog, and past that cap the input queues without
        bound. Measured (one worker, 4 partitions, generated traffic, fed live):
        with Faust's fetch, p99 produce-to-anomaly 35-109 ms at 5,000 tx/s
        and queueing (12 s after 30 s) at 6,000; waiting up to 25 ms for 256
        KiB (~580 messages), p99 60-77 ms at 6,000 and 7,500 tx/s. Faust does
        not expose either setting; the consumer reads them when it starts.
        """
        consumer = super()._create_worker_consumer(transport)
        settings = self.app.settings
        consumer._fetch_min_bytes = settings.kafka_fetch_min_bytes
        consumer._fetch_max_wait_ms = settings.kafka_fetch_max_wait_ms
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> dict[TP, int]:
        # Faust asks `last_stable_offset` under exactly_once, which is None until
        # the partition's first fetch: recovery then sees highwater -1, skips the
        # changelogs and starts with empty tables (cold models). A ListOffsets
        # request honours read_committed, so end_offsets is the stable offset.
        return await self._ensure_consumer().end_offsets(partitions)


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
    TransactionManager = RebalanceSafeTransactions
