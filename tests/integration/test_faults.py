"""Faults under load, against the real broker: nothing is lost.

Every test feeds a stream at a steady rate from a background thread while the
fault happens, then checks the books: the consumer group's committed offsets
reach the end of the input topic, every consumed message was scored (none of
this traffic is invalid, so nothing is dead-lettered or re-keyed), injected
outliers that any warm model flags are on the anomalies topic, and
duplicates stay inside the at-least-once window.

Not here: Redis down and back (issue 6). When this file was written the Redis
cache did not exist; it has since arrived with the serving work, and
tests/integration/test_views.py::test_redis_outage_and_recovery faults it.

The broker-restart test restarts the shared local broker for ~20 s: any other
test or benchmark using the stack at that moment sees the outage too.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import subprocess
import sys
import threading
import time

import orjson
import pytest

from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

from ..support import KAFKA, REPO, consume_all, deployment_env, keyed, run, wait_until
from .test_detector import stream_with_outliers

pytestmark = pytest.mark.integration

PARTITIONS = 4


# -- helpers ------------------------------------------------------------------


class SteadyProducer(threading.Thread):
    """Sends (key, value) pairs at a fixed rate from its own event loop, riding out broker outages.

    A send that fails is sent again, so the topic may hold a message twice after
    a broker restart: the tests count what is on the topic (end offsets), not
    what was sent.
    """

    def __init__(self, topic: str, messages: list[tuple[bytes, bytes]], rate: float):
        super().__init__(daemon=True)
        self.topic, self.messages, self.rate = topic, messages, rate
        self.sent = 0
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    async def _send(self, producer, key: bytes, value: bytes):
        while True:
            try:
                return await producer.send(self.topic, value, key=key)
            except Exception:  # noqa: BLE001 - broker away: wait and retry
                self.retries += 1
                await asyncio.sleep(0.5)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=5, request_timeout_ms=15_000)
        await producer.start()
        pending = []
        try:
            started = time.monotonic()
            for i, (key, value) in enumerate(self.messages):
                pending.append((await self._send(producer, key, value), key, value))
                self.sent = i + 1
                if i % 50 == 0:
                    ahead = i / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                    pending = await self._settle(producer, pending, block=False)
            while pending:
                pending = await self._settle(producer, pending, block=True)
        finally:
            await producer.stop()

    async def _settle(self, producer, pending, block: bool):
        left = []
        for fut, key, value in pending:
            if not block and not fut.done():
                left.append((fut, key, value))
                continue
            try:
                await fut
            except Exception:  # noqa: BLE001 - delivery failed: send it again
                self.retries += 1
                left.append((await self._send(producer, key, value), key, value))
        return left

    def finish(self, timeout: float = 180) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"producer still running after {timeout}s ({self.sent} sent)"
        assert self.error is None, f"producer failed: {self.error!r}"


async def _end_offsets(topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _committed(group: str, topic: str) -> dict[int, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    found = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    return {p: max(found.get(p, 0), 0) for p in range(PARTITIONS)}


def prepare(env: dict[str, str]) -> dict[str, str]:
    """Create the deployment's topics before any worker starts, the way the worker would.

    Retried: right after CreateTopics the broker's metadata can still list the new
    topic with 0 partitions, and ensure_topics then raises TopicMismatch (seen here
    on a loaded machine; reported to the owner of topics.py).
    """
    from anomaly_stream.settings import Settings
    from anomaly_stream.stream.topics import TopicMismatch, ensure_topics

    for attempt in range(20):
        try:
            run(ensure_topics(Settings.from_env(env)))
            return env
        except TopicMismatch:
            time.sleep(0.25)
    raise AssertionError("topics never showed their partitions")


def end_offsets(topic: str) -> dict[int, int]:
    return run(_end_offsets(topic))


def committed(env: dict[str, str]) -> dict[int, int]:
    return run(_committed(env["APP_ID"], env["KAFKA_INPUT_TOPIC"]))


def stable_committed(env: dict[str, str], quiet: float = 2.0) -> dict[int, int]:
    previous = committed(env)
    while True:
        time.sleep(quiet)
        current = committed(env)
        if current == previous:
            return current
        previous = current


def wait_all_committed(env: dict[str, str], timeout: float = 90) -> dict[int, int]:
    ends = end_offsets(env["KAFKA_INPUT_TOPIC"])
    wait_until(lambda: committed(env) == ends, timeout, f"committed offsets to reach {ends}")
    return ends


def counter(worker, name: str) -> float:
    return worker.metrics().get(name, 0.0)


def per_partition(worker, name: str, perspective: str = "sender") -> dict[int, float]:
    prefix, suffix = f"{name}{{partition=", f",perspective={perspective}}}"
    return {int(k[len(prefix):-len(suffix)]): v for k, v in worker.metrics().items()
            if k.startswith(prefix) and k.endswith(suffix)}


def stopped_total(worker, name: str) -> int:
    """A total from the worker's `worker_stopped` log line (0 if it never logged one)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", worker.log_path.read_text(errors="replace"))  # console colours
    found = re.findall(rf"worker_stopped\b.*?\b{name}=(\d+)", text)
    return int(found[-1]) if found else 0


def dead_lettered(worker) -> float:
    return sum(v for k, v in worker.metrics().items() if k.startswith("transactions_dead_lettered_total"))


def assert_books_balance(worker) -> dict[str, float]:
    """This traffic is all valid and keyed by sender: consumed = scored, nothing else."""
    m = worker.metrics()
    consumed, processed = m["transactions_consumed_total"], m["transactions_processed_total"]
    assert processed == consumed, m
    assert dead_lettered(worker) == 0
    assert m.get("transactions_rekeyed_total", 0) == 0
    return m


def anomalies(env: dict[str, str]) -> list[dict]:
    """The sender perspective's anomalies: their `source` offsets are input offsets, which these
    tests account for. (Receiver anomalies carry edges-topic offsets; the edges are produced in
    the same batches, and under exactly_once in the same transactions.)"""
    docs = [orjson.loads(r.value) for r in run(consume_all(env["KAFKA_ANOMALIES_TOPIC"], timeout=90))]
    return [d for d in docs if d["perspective"] == "sender"]


def anomaly_gaps(docs: list[dict], ends: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Per partition, the longest stretch of input offsets with no anomaly flagged: (from, to)."""
    gaps = {}
    for p, end in ends.items():
        offsets = sorted({d["source"]["offset"] for d in docs if d["source"]["partition"] == p})
        bounds = [0, *offsets, end]
        gaps[p] = max(zip(bounds, bounds[1:]), key=lambda ab: ab[1] - ab[0])
    return gaps


class Prober(threading.Thread):
    """Polls every live worker's views throughout a test: liveness, readiness, metrics."""

    def __init__(self):
        super().__init__(daemon=True)
        self.workers: list = []
        self.live: collections.Counter = collections.Counter()
        self.ready: collections.Counter = collections.Counter()
        self.buffer_sizes: list[float] = []
        self.failures: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for worker in list(self.workers):
                try:
                    status, _ = worker.get("/health/live", timeout=3)
                    self.live[status] += 1
                    if status != 200:
                        self.failures.append(f"{worker.port} live {status}")
                    self.ready[worker.get("/health/ready", timeout=3)[0]] += 1
                    self.buffer_sizes.append(worker.metrics().get("anomaly_buffer_size", 0.0))
                except OSError as exc:
                    if worker in self.workers:
                        self.failures.append(f"{worker.port} {exc!r}")
            time.sleep(0.3)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


# -- SIGKILL ----------------------------------------------------------------------


@pytest.mark.parametrize("guarantee", [
    "at_least_once",
    "exactly_once",
])
def test_sigkill_mid_stream_loses_nothing(workers, guarantee):
    env = prepare(deployment_env(processing_guarantee=guarantee, model_checkpoint_interval_seconds=1))
    topic = env["KAFKA_INPUT_TOPIC"]
    txs, outliers = stream_with_outliers(16_000, 16)
    first = workers(env, "first")
    first.wait_ready()
    producer = SteadyProducer(topic, keyed(txs), rate=2_000)
    producer.start()
    first.wait_metric("transactions_processed_total", 6_000, timeout=60)
    killed_at = time.time()
    first.kill()  # SIGKILL: no revocation, no final commit, no final checkpoint
    # A commit (or, with exactly_once, an EndTxn) the worker sent just before it
    # died still completes on the broker: wait for the committed offsets to settle.
    at_kill = committed(env)
    at_restart = stable_committed(env)
    assert sum(at_restart.values()) > 0, "the first worker committed nothing before the kill"

    second = workers(env, "second")
    second.wait_ready()
    producer.finish()
    ends = wait_all_committed(env)
    assert sum(ends.values()) == len(txs)  # no broker fault: the producer never re-sent
    # The restarted worker reads from the committed offsets to the end: with the
    # first worker's work up to those offsets, every offset at least once.
    expected = sum(ends.values()) - sum(at_restart.values())
    second.wait_metric("transactions_consumed_total", expected, timeout=30)
    time.sleep(1.5)
    m = assert_books_balance(second)
    reread = m["transactions_consumed_total"]

    docs = anomalies(env)
    flagged = collections.Counter(d["tx_hash"] for d in docs)
    duplicated = {h for h, n in flagged.items() if n > 1}
    # The restarted worker's anomalies below the committed position: messages it
    # read again although the group had committed them.
    below = [(d["source"]["partition"], d["source"]["offset"]) for d in docs
             if d["detected_at"] > killed_at and d["source"]["offset"] < at_restart[d["source"]["partition"]]]
    seen = per_partition(second, "model_events_seen")
    summary = (f"{guarantee}: models after restart {seen}; {guarantee}: {len(txs)} in; committed at kill {at_kill}, settled {at_restart}; end {ends}; "
               f"restarted worker consumed {reread:.0f} (end - committed = {expected}); anomalies {len(docs)}, "
               f"distinct {len(flagged)}, duplicated {len(duplicated)}, re-flagged below the committed "
               f"offset {below[:5]}; duplicates: "
               + "; ".join(f"{d['tx_hash'][:10]} p{d['source']['partition']}@{d['source']['offset']} "
                           f"detected {d['detected_at'] - killed_at:+.2f}s from the kill"
                           for d in docs if d["tx_hash"] in duplicated))
    print(summary)
    # The models came back from their checkpoints: a cold model would have seen
    # only what the restarted worker read.
    for p in range(PARTITIONS):
        assert seen.get(p, 0) > ends[p] - at_restart[p], f"partition {p}: model restarted cold; {summary}"
    # Anomalies that must exist: the injected outliers, held to test_detector's standard
    # (the adaptive model may let a repeat of a near-identical outlier through).
    missing = outliers - flagged.keys()
    assert len(missing) <= len(outliers) // 10, (
        f"{len(missing)} of {len(outliers)} injected outliers never reached the anomalies topic; {summary}")
    # The restarted worker reads every offset from the committed position on, once.
    assert reread == expected, summary
    # A duplicate is allowed only for a message of a batch after the last commit.
    assert not below, summary
    if guarantee == "exactly_once":
        # Anomalies join the transaction that commits their input offsets: what the
        # killed worker published after its last commit was aborted with it.
        assert not duplicated, summary


def test_sigkill_during_a_rebalance_loses_and_repeats_nothing(workers):
    """exactly_once: the old owner dies while the group rebalances, in the middle of handing over."""
    ttl, max_size = 60, 8
    env = prepare(deployment_env(processing_guarantee="exactly_once", model_checkpoint_interval_seconds=1,
                                 anomaly_buffer_ttl_seconds=ttl, anomaly_buffer_max_size=max_size,
                                 target_flag_rate=0.02, model_warmup_events=300))
    topic = env["KAFKA_INPUT_TOPIC"]
    txs = TrafficGenerator(GeneratorConfig(seed=41)).take(20_000)  # 20 s of traffic: the kill lands mid-stream
    first = workers(env, "first")
    first.wait_ready()
    producer = SteadyProducer(topic, keyed(txs), rate=1_000)
    producer.start()
    prober = Prober()
    try:
        first.wait_metric("transactions_consumed_total", 3_000, timeout=60)
        second = workers(env, "second")

        def rebalancing() -> bool:
            status, body = first.get("/health/ready", timeout=3)
            return status == 503 and b"rebalancing" in body

        wait_until(rebalancing, 60, "the first worker to see the rebalance", interval=0.05)
        first.kill()  # SIGKILL mid-rebalance: open transactions, a half-finished hand-over
        killed_at = stable_committed(env)  # an EndTxn sent before the kill still completes
        second.wait_ready()
        prober.workers.append(second)
        prober.start()
        producer.finish()
        ends = wait_all_committed(env)
        assert sum(ends.values()) == len(txs)
        second.wait_metric("transactions_consumed_total", sum(ends.values()) - sum(killed_at.values()), timeout=30)
        m = assert_books_balance(second)
        docs = anomalies(env)
    finally:
        prober.stop()
    duplicated = {h for h, n in collections.Counter(d["tx_hash"] for d in docs).items() if n > 1}
    print(f"sigkill mid-rebalance: committed at the kill {killed_at}, end {ends}; the survivor consumed "
          f"{m['transactions_consumed_total']:.0f}; {len(docs)} sender anomalies, {len(duplicated)} duplicated; "
          f"max buffer {max(prober.buffer_sizes, default=0):.0f} <= {max_size}")
    assert second.proc.poll() is None, "the surviving worker exited"
    assert not duplicated, sorted((d["source"]["partition"], d["source"]["offset"]) for d in docs
                                  if d["tx_hash"] in duplicated)
    assert max(prober.buffer_sizes, default=0) <= max_size
    assert set(prober.live) == {200} and not prober.failures, (prober.live, prober.failures[:5])
    # Every input offset has an owner: the group's offsets reached the end, and what the
    # killed worker had not committed the survivor read (books balanced above).
    assert sum(killed_at.values()) < len(txs), "the kill came after the end of the stream"


# -- broker restart -------------------------------------------------------------


def test_broker_restart_under_load(workers):
    # NOTE: this restarts the shared local broker for ~15-35 s: any other test or
    # benchmark using the stack at the same time sees the outage too.
    # The test's own clients log every failed reconnect while the broker is away.
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        _broker_restart_under_load(workers)
    finally:
        aiokafka_log.setLevel(level)


def _broker_restart_under_load(workers):
    env = prepare(deployment_env())
    topic = env["KAFKA_INPUT_TOPIC"]
    txs, outliers = stream_with_outliers(16_000, 16)
    worker = workers(env)
    worker.wait_ready()
    pid = worker.proc.pid
    producer = SteadyProducer(topic, keyed(txs), rate=1_000)
    producer.start()
    worker.wait_metric("transactions_consumed_total", 3_000, timeout=60)
    before = counter(worker, "transactions_consumed_total")
    started = time.monotonic()
    subprocess.run([sys.executable, str(REPO / "deploy" / "local" / "stack.py"), "restart-kafka"],
                   check=True, timeout=180, capture_output=True)
    outage = time.monotonic() - started

    producer.finish(timeout=240)
    ends = wait_all_committed(env, timeout=120)
    assert worker.proc.poll() is None and worker.proc.pid == pid, "the worker died; see its log"
    total = sum(ends.values())
    assert total >= len(txs)
    worker.wait_metric("transactions_consumed_total", total, timeout=30)
    m = assert_books_balance(worker)
    assert m["transactions_consumed_total"] > before

    docs = anomalies(env)
    flagged = collections.Counter(d["tx_hash"] for d in docs)
    assert not outliers - flagged.keys(), f"outliers lost: {len(outliers - flagged.keys())}"
    print(f"broker restart took {outage:.1f}s; {total} on the topic ({total - len(txs)} re-sent by the "
          f"producer, {producer.retries} retries), consumed {m['transactions_consumed_total']:.0f}, "
          f"anomalies {len(docs)}, duplicated {sum(1 for n in flagged.values() if n > 1)}")


# -- scale 1 -> 2 -> 1 -------------------------------------------------------------


@pytest.mark.parametrize("guarantee", [
    "at_least_once",
    "exactly_once",
])
def test_scale_out_and_in_under_load(workers, guarantee):
    ttl, max_size = 20, 8  # 4 partitions: at most 2 buffered anomalies per partition
    env = prepare(deployment_env(
        processing_guarantee=guarantee,
        anomaly_buffer_ttl_seconds=ttl, anomaly_buffer_max_size=max_size, target_flag_rate=0.02,
        model_warmup_events=300, model_checkpoint_interval_seconds=1,
    ))
    topic = env["KAFKA_INPUT_TOPIC"]
    txs = TrafficGenerator(GeneratorConfig(seed=31)).take(20_000)
    prober = Prober()
    started = time.time()
    first = workers(env, "first")
    first.wait_ready()
    prober.workers.append(first)
    prober.start()
    producer = SteadyProducer(topic, keyed(txs), rate=1_000)
    producer.start()
    try:
        first.wait_metric("transactions_consumed_total", 4_000, timeout=60)

        # Scale out: the partitions split and their models and buffers move.
        scaled_out = time.time()
        second = workers(env, "second")
        second.wait_ready()
        prober.workers.append(second)  # probed from when it first answers
        # The first value of a moved partition's model on its new owner, taken as soon
        # as it appears (after one or two batches): a cold model would show a batch's worth.
        arrived: dict[int, float] = {}

        def both_own_partitions() -> bool:
            for p, seen in per_partition(second, "model_events_seen").items():
                arrived.setdefault(p, seen)
            return (bool(arrived) and counter(second, "state_bounds_rebuilds_total") >= 1
                    and counter(first, "state_bounds_rebuilds_total") >= 2)

        wait_until(both_own_partitions, 60, "both workers own partitions", interval=0.1)
        wait_until(lambda: producer.sent >= 12_000, 60, "more traffic while scaled out")
        moved = per_partition(second, "model_events_seen")
        left_behind = per_partition(first, "model_events_seen")  # frozen at revocation for moved partitions
        assert moved, "no partition moved to the second worker"
        assert set(moved) != set(range(PARTITIONS)), "the first worker kept nothing"
        print(f"scale out: models on arrival {arrived}, on the first worker at revocation {left_behind}")
        for p in moved:
            # Warm: at least what the first worker had learned by its previous periodic
            # checkpoint (1 s, about 250 events per partition here) minus nothing else.
            assert arrived.get(p, moved[p]) >= left_behind[p] - 400, (
                f"partition {p}: model arrived cold ({arrived.get(p)} vs {left_behind[p]} at revocation)")
        # Scale in: a clean stop hands everything back to the first worker. Its
        # counter is read until its web server goes away (the last value counts).
        prober.workers.remove(second)
        second_consumed = counter(second, "transactions_consumed_total")
        second_seen = per_partition(second, "model_events_seen")
        scaled_in = time.time()
        second.proc.terminate()
        exit_by = time.monotonic() + 60
        while second.proc.poll() is None:
            assert time.monotonic() < exit_by, "the second worker did not exit within 60 s of SIGTERM"
            try:
                second_consumed = max(second_consumed, counter(second, "transactions_consumed_total"))
                second_seen = per_partition(second, "model_events_seen")
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        second.stop()
        assert second.proc.returncode == 0, f"second worker exit {second.proc.returncode}"
        # Its last batches may run after its web server stopped answering: its own last word.
        second_consumed = max(second_consumed, stopped_total(second, "transactions_consumed"))
        producer.finish()
        ends = wait_all_committed(env)
        assert sum(ends.values()) == len(txs)
        docs = anomalies(env)
        try:
            # 60 s: the worker with both perspectives drains ~4k tx/s on these 2 cores (README).
            wait_until(lambda: counter(first, "transactions_consumed_total") + second_consumed >= len(txs),
                       60, "counts to add up")
        finally:
            m = assert_books_balance(first)
            # A partition the second worker read to the end is not read again by the first
            # (exactly_once commits it all): its model's last count is the second's.
            final_seen = {p: max(seen, second_seen.get(p, 0))
                          for p, seen in per_partition(first, "model_events_seen").items()}
            print(f"scale 1-2-1: end offsets {ends}; consumed first {m['transactions_consumed_total']:.0f} + "
                  f"second {second_consumed:.0f} for {len(txs)}; on the second worker {moved}, left behind on "
                  f"the first {left_behind}; final models on the first {final_seen}; longest runs of offsets "
                  f"without an anomaly (2% flag rate: > 600 is a sign of skipped input) {anomaly_gaps(docs, ends)}")
        # The models moved out and back without losing what they learned: every
        # partition's model has learned at least every message of its partition.
        unlearned = {p: ends[p] - final_seen.get(p, 0) for p in range(PARTITIONS) if final_seen.get(p, 0) < ends[p]}
        duplicated = {h for h, n in collections.Counter(d["tx_hash"] for d in docs).items() if n > 1}
        copies = sorted((d["source"]["partition"], d["source"]["offset"], round(d["detected_at"] - started, 2))
                        for d in docs if d["tx_hash"] in duplicated)
        print(f"scale 1-2-1 ({guarantee}): {len(docs)} sender anomalies, {len(duplicated)} duplicated; "
              f"scaled out at {scaled_out - started:.1f} s, in at {scaled_in - started:.1f} s; "
              f"duplicates (partition, offset, detected at s): {copies[:20]}")
        if guarantee == "exactly_once":
            # Work a worker did on a partition it then lost, after its last commit, was aborted with it.
            assert not duplicated, copies

        # TTL expiry keeps working after two rebalances (detection time).
        wait_until(lambda: counter(first, "anomaly_buffer_size") == 0, ttl + 20, "TTL expiry of the buffer")
    finally:
        prober.stop()
    assert m["anomalies_published_total"] > 4 * max_size, "the test needs far more anomalies than the bound"
    assert not prober.failures, prober.failures[:5]
    assert set(prober.live) == {200}, prober.live
    assert set(prober.ready) <= {200, 503}, prober.ready
    assert first.get("/health/ready")[0] == 200
    assert max(prober.buffer_sizes) <= max_size, max(prober.buffer_sizes)
    print(f"scale 1-2-1: moved partitions {sorted(moved)}; probes live {dict(prober.live)}, "
          f"ready {dict(prober.ready)}; max buffer {max(prober.buffer_sizes):.0f} <= {max_size}")
    # Models move with their partitions, checkpointed on revocation and on shutdown.
    # A hand-over can still lose what was learned in the last checkpoint interval
    # (a known gap, seen in about one run in three); a cold restart would lose
    # thousands per partition.
    per_interval = 1_000 / PARTITIONS * 1  # stream rate per partition x checkpoint interval
    assert all(n <= 2 * per_interval for n in unlearned.values()), \
        f"events never learned by the final model: {unlearned} (end offsets {ends}, final models {final_seen})"
