"""The batch consumer's bookkeeping (ReadOffsets), its decision per fetched slice (decide),
and what a delivery interrupted by a rebalance leaves behind."""

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from aiokafka.structs import ConsumerRecord
from faust.types import TP, ConsumerMessage
from intervaltree import IntervalTree

from anomaly_stream.detect.detector import Record
from anomaly_stream.stream.consumer import (DELIVER, REWIND, SEEK_BACK, SKIP, BatchingConsumer, ReadOffsets,
                                            RecordBatch, Step, decide)

TP0 = TP("transactions", 0)


def test_a_newly_assigned_partition_is_not_positioned_until_faust_seeks_it():
    offsets = ReadOffsets()
    assert not offsets.positioned(TP0)
    assert offsets.expected(TP0) is None
    assert not offsets.positioned(TP0), "reading must not create an entry"
    offsets.update({TP0: None})  # perform_seek: the group has no committed offset
    assert offsets.positioned(TP0)
    assert offsets.expected(TP0) is None


def test_a_seek_names_the_next_offset_and_a_delivery_the_last_one():
    offsets = ReadOffsets()
    offsets[TP0] = 100
    assert offsets.expected(TP0) == 100
    offsets.delivered(TP0, 149)
    assert offsets.expected(TP0) == 150
    offsets.update({TP0: 120})  # a seek after a delivery: next offset again
    assert offsets.expected(TP0) == 120


def test_revocation_forgets_the_position():
    offsets = ReadOffsets()
    offsets.delivered(TP0, 7)
    offsets.pop(TP0, None)
    assert not offsets.positioned(TP0)
    offsets[TP0] = 7
    assert offsets.expected(TP0) == 7


# -- decide: what a fetched slice of one partition becomes --------------------

def test_the_first_fetch_after_an_assignment_waits_for_faust_to_seek():
    assert decide(False, None, [0, 1, 2], None, 1) == Step(REWIND)


def test_no_committed_offset_delivers_everything():
    assert decide(True, None, [5, 6, 7], None, 1) == Step(DELIVER, 0, 5)


def test_records_already_delivered_are_dropped():
    assert decide(True, 103, [100, 101, 102, 103, 104], None, 1) == Step(DELIVER, 3, 103)
    assert decide(True, 110, [100, 101], None, 1) == Step(SKIP)


def test_a_transaction_marker_is_acknowledged_with_the_batch():
    # expected 50, the batch starts at 51: offset 50 was a commit marker.
    assert decide(True, 50, [51, 52], None, 1) == Step(DELIVER, 0, 50)


def test_a_stale_fetch_after_a_seek_is_read_again_not_acknowledged():
    assert decide(True, 50, [80, 81], None, 1) == Step(SEEK_BACK, 0)


def test_an_aborted_transactions_hole_is_delivered_once_it_shows_again():
    first = decide(True, 50, [80, 81], None, 1)
    assert first.action == SEEK_BACK
    again = decide(True, 50, [80, 81], (50, 80), 1)
    assert again == Step(DELIVER, 0, 50), "the hole is acknowledged with the batch"
    other = decide(True, 50, [90], (50, 80), 1)
    assert other.action == SEEK_BACK, "a different hole is a new suspect"


# -- a delivery that a rebalance interrupts -----------------------------------

def idle_consumer() -> BatchingConsumer:
    """The state `_deliver_batch` reads and writes, without Kafka or Faust's services."""
    consumer = object.__new__(BatchingConsumer)
    consumer.app = SimpleNamespace(consumer_generation_id=1, rebalancing=False)
    consumer._read_offset = ReadOffsets()
    consumer._holes = {}
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer.max_hole = 1
    consumer.suspend_flow = asyncio.Event()

    async def wait_first(*awaitables):
        tasks = [asyncio.ensure_future(a) for a in awaitables]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()

    consumer.wait_first = wait_first
    return consumer


def records(first: int, count: int) -> list[ConsumerRecord]:
    return [ConsumerRecord(TP0.topic, 0, o, 1_700_000_000_000, 0, None, b"{}", None, 0, 2, ())
            for o in range(first, first + count)]


def deliver_during(consumer: BatchingConsumer, rebalance) -> None:
    async def agent_queue_full(message):
        rebalance()  # what Faust does while the delivery waits on the agent's queue
        consumer.suspend_flow.set()
        await asyncio.Event().wait()

    consumer._read_offset[TP0] = 100  # seeked to the committed offset
    asyncio.run(consumer._deliver_batch(TP0, records(100, 122), agent_queue_full))


def test_a_revocation_during_the_hand_over_leaves_no_stale_position():
    consumer = idle_consumer()
    deliver_during(consumer, lambda: consumer._read_offset.pop(TP0, None))
    # The batch used to be recorded as delivered after the revocation removed
    # the partition: given the partition again, the worker would drop the fetch
    # from the committed offset up to 121 as already read (the suspected cause
    # of 122 records lost in a Kafka 4 scale-in).
    assert not consumer._read_offset.positioned(TP0)


def test_a_rebalance_during_the_hand_over_keeps_the_new_seek():
    consumer = idle_consumer()

    def revoke_assign_and_seek():
        consumer._read_offset.pop(TP0, None)
        consumer.app.consumer_generation_id = 2
        consumer._read_offset[TP0] = 100

    deliver_during(consumer, revoke_assign_and_seek)
    assert consumer._read_offset.expected(TP0) == 100


def test_a_seek_during_the_hand_over_keeps_the_new_seek():
    consumer = idle_consumer()
    # Faust's recovery seeks to the committed offset (perform_seek) in the same generation.
    deliver_during(consumer, lambda: consumer._read_offset.update({TP0: 100}))
    assert consumer._read_offset.expected(TP0) == 100


def test_a_finished_hand_over_records_the_delivery():
    consumer = idle_consumer()
    consumer._read_offset[TP0] = 100
    delivered = []

    async def agent(message):
        delivered.append(message.value)

    asyncio.run(consumer._deliver_batch(TP0, records(100, 5), agent))
    assert consumer._read_offset.expected(TP0) == 105
    assert [r.offset for r in delivered[0].records] == [100, 101, 102, 103, 104]


def test_a_batch_fetched_before_the_rebalance_ends_is_rewound_not_delivered():
    consumer = idle_consumer()
    consumer._read_offset[TP0] = 100  # positioned before the rebalance's recovery
    consumer.app.rebalancing = True  # recovery has resumed the stream partitions, not yet the flow
    sought, delivered = [], []

    async def seek(tp, offset):
        sought.append((tp, offset))

    async def agent(message):
        delivered.append(message)

    consumer._seek = seek
    asyncio.run(consumer._deliver_batch(TP0, records(100, 5), agent))
    # Delivered now, the batch is scored and read again after the seek, or
    # dropped from the agent's queue when Faust resumes the flow.
    assert delivered == [] and sought == [(TP0, 100)]
    assert consumer._read_offset.expected(TP0) == 100


# -- only a handled batch's acknowledgement counts ------------------------------

def acking_consumer() -> BatchingConsumer:
    consumer = idle_consumer()
    consumer.batch_topics = frozenset({TP0.topic})
    consumer._handled = set()
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._unacked_messages = set()
    consumer._n_acked = 0
    consumer._waiting_for_ack = None
    consumer.app.topics = SimpleNamespace(acks_enabled_for=lambda topic: True)
    return consumer


def batch_message(consumer: BatchingConsumer, first: int, last: int) -> ConsumerMessage:
    batch = RecordBatch(0, [Record(o, None, b"{}", 0.0) for o in range(first, last + 1)])
    return ConsumerMessage(TP0.topic, 0, last, 0.0, 0, (), None, batch, None, 0, 0, TP0,
                           generation_id=consumer.app.consumer_generation_id)


def test_a_batch_faust_skipped_is_not_acknowledged():
    consumer = acking_consumer()
    asyncio.run(consumer._add_gap(TP0, 100, 120))
    skipped = batch_message(consumer, 100, 121)
    # Faust's stream acks an event it took while the flow was suspended, unread.
    assert consumer.ack(skipped) is False
    assert consumer._acked[TP0] == [], "its offsets must stay uncommitted"
    assert not consumer._gap[TP0], "and not pass as acknowledged with a later batch"
    handled = batch_message(consumer, 100, 121)
    consumer.handled(handled)
    assert consumer.ack(handled) is True
    assert consumer._acked[TP0] == [121] and not consumer._handled


def test_the_worker_consumer_fetches_with_the_configured_size_and_wait():
    """aiokafka reads both when it starts (AIOKafkaConsumer.start builds its Fetcher from them)."""
    from anomaly_stream.settings import Settings
    from anomaly_stream.stream.app import create_app
    from anomaly_stream.stream.consumer import ConsumerThread

    async def built():
        app = create_app(Settings(kafka_fetch_min_bytes=12_345, kafka_fetch_max_wait_ms=7))
        thread = ConsumerThread(app.consumer, loop=asyncio.get_running_loop(), beacon=app.consumer.beacon)
        return thread._create_worker_consumer(app.transport)

    consumer = asyncio.run(built())
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (12_345, 7)
