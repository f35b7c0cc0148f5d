"""The agent loop: a batch is acknowledged only once handled; an unexpected error exits unacknowledged."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from anomaly_stream.detect.detector import Record
from anomaly_stream.stream import agents


class Batches:
    def __init__(self, n: int):
        self.batches = [SimpleNamespace(partition=p, records=[Record(p, b"k", b"{}", 0.0)]) for p in range(n)]
        self.acked: list[int] = []
        self.vouched: list[int] = []
        self.current_event = SimpleNamespace(ack=lambda: self.acked.append(self._current), message=self)

    def vouch(self, message):
        assert message is self
        self.vouched.append(self._current)

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        for batch in self.batches:
            self._current = batch.partition
            yield batch


async def test_every_handled_batch_is_acknowledged_under_the_lock():
    batches, lock = Batches(3), asyncio.Lock()
    seen = []

    async def handle(partition, records):
        assert lock.locked()
        seen.append(partition)

    await agents.handled(batches, lock, handle, batches.vouch)
    assert seen == batches.vouched == batches.acked == [0, 1, 2]


async def test_an_unexpected_error_exits_without_acknowledging(monkeypatch):
    batches = Batches(3)
    exits = []

    def fake_exit(status):
        exits.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(agents.os, "_exit", fake_exit)

    async def handle(partition, records):
        if partition == 1:
            raise RuntimeError("producer gone")

    with pytest.raises(SystemExit):
        await agents.handled(batches, asyncio.Lock(), handle, batches.vouch)
    assert exits == [agents.EXIT_UNHANDLED]
    assert batches.acked == batches.vouched == [0], "the failed batch and those after it stay unacknowledged"
