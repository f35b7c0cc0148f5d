"""The exactly_once adapter over Faust's per-partition transactions (anomaly_stream.stream.transactions)."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from anomaly_stream.stream.transactions import RebalanceSafeTransactions

INPUT, CHANGELOG, LEADER = "tx", "app-profiles-changelog", "app-__assignor-__leader"
GROUPS = {INPUT: 1, CHANGELOG: 1, LEADER: 0}


class TxnState:
    def __init__(self, open_: bool):
        self.open = open_

    def is_in_transaction(self) -> bool:
        return self.open


class FakeProducer:
    """What the adapter uses of Faust's aiokafka Producer: its per-id producers and their verbs."""

    def __init__(self, open_ids=(), ready_ids=()):
        self._transaction_producers = {t: SimpleNamespace(_txn_manager=TxnState(True)) for t in open_ids}
        self._transaction_producers.update({t: SimpleNamespace(_txn_manager=TxnState(False)) for t in ready_ids})
        self.calls: list[tuple[str, str]] = []

    async def flush(self):
        self.calls.append(("flush", ""))

    async def commit_transaction(self, tid):
        self.calls.append(("commit", tid))
        self._transaction_producers[tid]._txn_manager.open = False

    async def stop_transaction(self, tid):
        self.calls.append(("stop", tid))
        self._transaction_producers.pop(tid, None)

    async def maybe_begin_transaction(self, tid):
        self.calls.append(("begin", tid))
        self._transaction_producers.setdefault(tid, SimpleNamespace(_txn_manager=TxnState(False)))
        self._transaction_producers[tid]._txn_manager.open = True


class FakeConsumer:
    def __init__(self, producer):
        self.producer = producer

    async def force_commit(self, start_new_transaction=True):
        self.producer.calls.append(("offsets", str(start_new_transaction)))


def manager(producer, standbys=()) -> RebalanceSafeTransactions:
    assignor = SimpleNamespace(group_for_topic=GROUPS.__getitem__, is_standby=lambda tp: tp in standbys)
    app = SimpleNamespace(conf=SimpleNamespace(id="app"), assignor=assignor)
    return RebalanceSafeTransactions(SimpleNamespace(app=app), consumer=FakeConsumer(producer), producer=producer)


def tps(topic, *partitions):
    return {TP(topic, p) for p in partitions}


async def test_revocation_commits_offsets_first_then_ends_every_open_transaction():
    producer = FakeProducer(open_ids=["app-1-0", "app-1-2"], ready_ids=["app-1-1"])
    await manager(producer).on_partitions_revoked(tps(INPUT, 0, 1, 2))
    assert producer.calls == [("flush", ""), ("offsets", "False"), ("commit", "app-1-0"), ("commit", "app-1-2")]


async def test_revoked_partitions_stop_their_producers_even_when_now_standbys():
    # Faust's manager skipped these: the old owner is a standby of the input topic too.
    producer = FakeProducer(ready_ids=["app-1-0", "app-1-1", "app-1-2", "app-1-3", "app-0-0"])
    revoked = tps(INPUT, 0, 1) | tps(CHANGELOG, 0, 1)
    assigned = tps(INPUT, 2, 3) | tps(CHANGELOG, 2, 3) | tps(LEADER, 0)
    await manager(producer, standbys=revoked).on_rebalance(assigned, revoked, set())
    assert [c for c in producer.calls if c[0] == "stop"] == [("stop", "app-1-0"), ("stop", "app-1-1")]
    assert set(producer._transaction_producers) == {"app-0-0", "app-1-2", "app-1-3"}


async def test_a_rebalance_begins_only_where_no_transaction_is_open():
    producer = FakeProducer(open_ids=["app-1-2"], ready_ids=["app-1-3"])
    assigned = tps(INPUT, 0, 2, 3)
    await manager(producer).on_rebalance(assigned, set(), tps(INPUT, 0))
    assert producer.calls == [("begin", "app-1-0"), ("begin", "app-1-3")]
    assert all(p._txn_manager.is_in_transaction() for p in producer._transaction_producers.values())
