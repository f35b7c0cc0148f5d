"""Agent tier: the worker's own code driven without Kafka (an in-memory sink, dicts as tables)."""

from __future__ import annotations

import orjson
import pytest

from anomaly_stream.detect.detector import Record
from anomaly_stream.detect.features import AddressProfile
from anomaly_stream.settings import Settings
from anomaly_stream.stream.worker import MemorySink, Store, Stores, Topics, Worker
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

TOPICS = Topics("tx", "anomalies", "tx-dlq", "tx-edges")


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_worker(clock=None, **overrides) -> tuple[Worker, MemorySink]:
    settings = Settings.from_env({}, **{"kafka_input_partitions": 1, "model_warmup_events": 300,
                                        "target_flag_rate": 0.05, **overrides})
    stores = Stores(Store({}, "profiles-changelog"), Store({}, "checkpoints-changelog"),
                    Store({}, "buffer-changelog"))
    sink = MemorySink()
    return Worker(settings, TOPICS, stores, sink, clock=clock or Clock()), sink


@pytest.fixture(scope="module")
def txs() -> list[dict]:
    return TrafficGenerator(GeneratorConfig(seed=5)).take(1500)


def records(txs, start=0) -> list[Record]:
    return [Record(start + i, tx["from"].encode(), orjson.dumps(tx), 1.0) for i, tx in enumerate(txs)]


async def test_a_dead_letter_carries_its_reason_and_source():
    worker, sink = make_worker()
    await worker.handle(0, [Record(7, b"k", b"{not json", 1.0)])
    [dead] = sink.on("tx-dlq")
    assert dead.key == b"k" and dead.value == b"{not json" and dead.partition == 0
    assert dead.headers["dlq-reason"] == b"malformed_json"
    assert dead.headers["dlq-source-topic"] == b"tx"
    assert dead.headers["dlq-source-partition"] == b"0" and dead.headers["dlq-source-offset"] == b"7"
    assert not worker.stores.profiles.data


async def test_a_miskeyed_message_is_republished_under_its_sender(txs):
    worker, sink = make_worker()
    tx = txs[0]
    await worker.handle(0, [Record(0, b"someone-else", orjson.dumps(tx), 1.0)])
    [rekeyed] = sink.on("tx")
    assert rekeyed.key == tx["from"].encode() and rekeyed.partition == 0
    assert not worker.stores.profiles.data, "not scored where it landed"


async def test_a_message_in_another_partition_than_its_key_hashes_to_moves_there(txs):
    """A producer partitioning by CRC32 (librdkafka's default) puts a sender where its state is not."""
    from anomaly_stream.stream.worker import kafka_partition

    worker, sink = make_worker(kafka_input_partitions=4)
    tx = txs[0]
    key = tx["from"].encode()
    home = kafka_partition(key, 4)
    await worker.handle((home + 1) % 4, [Record(0, key, orjson.dumps(tx), 1.0)])
    [moved] = sink.on("tx")
    assert (moved.key, moved.partition) == (key, home) and not worker.stores.profiles.data
    result = await worker.handle(home, [Record(1, key, orjson.dumps(tx), 1.0)])
    assert result.processed == 1 and not result.rekeyed


async def test_profiles_reach_the_table_before_their_changelog_and_once_per_batch(txs):
    worker, sink = make_worker()
    batch = records(txs[:200])
    await worker.handle(0, batch)
    changelog = sink.on("profiles-changelog")
    senders = {tx["from"] for tx in txs[:200]}
    assert sorted(m.key for m in changelog) == sorted(s.encode() for s in senders)
    for message in changelog:
        assert worker.stores.profiles.data[message.key] == message.value
        assert AddressProfile.from_bytes(message.value).partition == 0


async def test_anomalies_are_buffered_published_and_indexed(txs):
    worker, sink = make_worker()
    first = await worker.handle(0, records(txs[:1000]))  # warms the model part way
    second = await worker.handle(0, records(txs[1000:], 1000))
    anomalies = first.anomalies + second.anomalies
    assert second.anomalies, "the generated attacks must flag something"
    published = sink.on("anomalies")
    assert [orjson.loads(m.value)["tx_hash"] for m in published] == [d["tx_hash"] for d in anomalies]
    assert all(m.key == orjson.loads(m.value)["address"].encode() for m in published)
    assert len(worker.stores.anomaly_buffer.data) == len(published) == len(worker.buffer_bound)
    assert all(orjson.loads(m.value)["onchain"] is None for m in published)


async def test_the_buffer_holds_its_size_bound_between_sweeps_with_tombstones(txs):
    worker, sink = make_worker(anomaly_buffer_max_size=3, target_flag_rate=0.2)
    for start in range(0, 1500, 300):
        await worker.handle(0, records(txs[start:start + 300], start))
        assert len(worker.stores.anomaly_buffer.data) <= 3 and len(worker.buffer_bound) <= 3
    written = sink.on("buffer-changelog")
    kept = {m.key for m in written if m.value is not None} - {m.key for m in written if m.value is None}
    assert len(sink.on("anomalies")) > 3, "the test needs more anomalies than the bound"
    assert len(kept) == 3  # the changelog, compacted, restores what the table holds


async def test_checkpoints_follow_the_interval_and_release_drops_the_model(txs):
    clock = Clock()
    worker, sink = make_worker(clock, model_checkpoint_interval_seconds=30.0)
    await worker.handle(0, records(txs[:100]))
    assert not sink.on("checkpoints-changelog"), "not due yet"
    clock.t += 31
    await worker.handle(0, records(txs[100:200], 100))
    assert len(sink.on("checkpoints-changelog")) == 1
    clock.t += 31
    await worker.sweep(frozenset({0}))
    assert len(sink.on("checkpoints-changelog")) == 1, "nothing learned since: no checkpoint"
    await worker.release({0})
    assert len(sink.on("checkpoints-changelog")) == 2 and not worker.models
    restored = worker.model(0)
    assert restored.seen == 200, "the next owner resumes from the checkpoint"


async def test_a_batch_after_the_shutdown_checkpoint_is_checkpointed_too(txs):
    worker, sink = make_worker(model_checkpoint_interval_seconds=3600)
    await worker.handle(0, records(txs[:300]))
    worker.closing = True
    await worker.release({0})
    await worker.handle(0, records(txs[300:400], 300))
    last = sink.on("checkpoints-changelog")[-1]
    assert worker.stores.checkpoints.data[last.key] == last.value
    assert worker.saved_seen[("sender", 0)] == worker.models["sender", 0].seen == 400


async def test_a_forged_or_corrupt_checkpoint_starts_a_fresh_model_and_is_counted(txs):
    from anomaly_stream.metrics import MODEL_CHECKPOINTS_REJECTED
    from anomaly_stream.stream.worker import checkpoint_key

    def rejected(reason: str) -> float:
        return MODEL_CHECKPOINTS_REJECTED.labels(reason)._value.get()

    signed, unsigned = [], []
    for key, out in (("the-key", signed), ("", unsigned)):
        maker, _ = make_worker(model_checkpoint_key=key)
        await maker.handle(0, records(txs[:300]))
        out.append(maker.model(0).to_bytes())
    good, plain = signed[0], unsigned[0]
    cases = [("the-key", good[:-1] + bytes([good[-1] ^ 1]), "forged"),  # tampered
             ("the-key", plain, "forged"),  # unsigned where a key is required
             ("", good, "forged"),  # signed, and no key to verify it
             ("", b"\x80\x04\x95cos\nsystem\n", "unsupported"),  # a pickle
             ("", plain[: len(plain) // 2], "corrupt")]
    for key, raw, reason in cases:
        worker, _ = make_worker(model_checkpoint_key=key)
        worker.stores.checkpoints.data[checkpoint_key(("sender", 0))] = raw
        before = rejected(reason)
        result = await worker.handle(0, records(txs[300:400], 300))
        assert result.processed == 100 and worker.model(0).seen == 100, f"{reason}: a fresh model scored them"
        assert rejected(reason) == before + 1, reason
    worker, _ = make_worker(model_checkpoint_key="the-key")
    worker.stores.checkpoints.data[checkpoint_key(("sender", 0))] = good
    assert worker.model(0).seen == 300, "the genuine one is restored"


async def test_a_sweep_expires_by_event_time_with_tombstones(txs):
    worker, sink = make_worker(address_state_ttl_seconds=60.0)
    old = [dict(tx, blockTimestamp=1_600_000_000) for tx in txs[:50]]
    await worker.handle(0, records(old))
    fresh = dict(txs[60], blockTimestamp=1_600_000_000 + 3600)
    await worker.handle(0, records([fresh], 50))
    await worker.sweep(frozenset({0}))
    tombstones = [m for m in sink.on("profiles-changelog") if m.value is None]
    assert {m.key for m in tombstones} == {tx["from"].encode() for tx in old} - {fresh["from"].encode()}
    assert set(worker.stores.profiles.data) == {fresh["from"].encode()}


async def test_a_rebalance_rebuilds_the_bounds_from_the_tables(txs):
    worker, _ = make_worker()
    await worker.handle(0, records(txs[:100]))
    n = len(worker.profiles_bound)
    worker.profiles_bound.index.clear()
    await worker.release({0})
    await worker.sweep(frozenset({0}))
    assert len(worker.profiles_bound) == n


def test_liveness_means_progress():
    worker, _ = make_worker(liveness_stall_seconds=10.0)
    now = worker.last_progress
    assert not worker.stalled(lag=0, now=now + 1000), "idle with nothing to read is alive"
    assert not worker.stalled(lag=5, now=now + 5)
    assert worker.stalled(lag=5, now=now + 11)


async def test_release_checkpoints_both_perspectives_of_the_partitions_named(txs):
    worker, sink = make_worker()
    await worker.handle(0, records(txs[:200]))
    worker.model(0, "receiver")
    assert set(worker.models) == {("sender", 0), ("receiver", 0)}
    await worker.release({1})
    assert worker.models, "another partition's release keeps these"
    await worker.release({0})
    assert not worker.models
    assert {m.key for m in sink.on("checkpoints-changelog")} == {b"0", b"receiver:0"}
