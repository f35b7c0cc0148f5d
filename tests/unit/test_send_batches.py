"""`faust_io.send_batches`: a batch's records reach each partition in order, in as few record batches as fit."""

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError
from faust.exceptions import ProducerSendError

from anomaly_stream.stream.faust_io import send_batches


class Builder:
    def __init__(self, capacity: int):
        self.capacity, self.records, self.closed = capacity, [], False

    def append(self, *, key, value, timestamp):
        if self.closed or len(self.records) == self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self):
        self.closed = True


class Producer:
    """aiokafka's batch API as send_batches uses it; `sent` in hand-over order."""

    def __init__(self, capacity: int, fail: bool = False):
        self.capacity, self.fail, self.sent = capacity, fail, []

    def create_batch(self):
        return Builder(self.capacity)

    async def send_batch(self, batch, topic, *, partition):
        if self.fail:
            raise KafkaTimeoutError()
        self.sent.append((topic, partition, batch.closed, batch.records))


def test_records_go_per_partition_in_order_and_a_full_batch_is_handed_over_before_the_next():
    producer = Producer(capacity=2)
    messages = [(b"k%d" % i, b"v%d" % i, i % 2) for i in range(5)]
    asyncio.run(send_batches(producer, "t", messages))
    assert producer.sent == [
        ("t", 0, True, [(b"k0", b"v0"), (b"k2", b"v2")]),  # full at k4: handed over first
        ("t", 0, True, [(b"k4", b"v4")]),
        ("t", 1, True, [(b"k1", b"v1"), (b"k3", b"v3")]),
    ]


def test_nothing_to_send_sends_nothing():
    producer = Producer(capacity=2)
    asyncio.run(send_batches(producer, "t", []))
    assert producer.sent == []


def test_a_kafka_error_is_faust_s_send_error():
    with pytest.raises(ProducerSendError):
        asyncio.run(send_batches(Producer(capacity=2, fail=True), "t", [(b"k", b"v", 0)]))
