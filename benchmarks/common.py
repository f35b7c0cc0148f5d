"""What the benchmarks share: deployments and workers on the local stack, measurements, results.

Every benchmark imports its shared helpers from here, and from no other
benchmark. Run as `python benchmarks/<name>.py`, Python puts this folder on
sys.path, so `import common` works; importing it puts the repository root
there too, for `anomaly_stream` and `tests.support`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from anomaly_stream.settings import Settings  # noqa: E402
from anomaly_stream.stream.topics import TopicMismatch, ensure_topics  # noqa: E402
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator  # noqa: E402
from tests.support import KAFKA, WorkerProcess, deployment_env, keyed, produce  # noqa: E402

PARTITIONS = 4
BATCH = 1000  # records per process_batch call in the bare loop
MACHINE = "2 cores, loopback Apache Kafka (make up)"


# ------------------------------------------------------------------ results

def arguments(name: str, short: str) -> argparse.ArgumentParser:
    """A benchmark's parser with the options every benchmark has: --short and --json."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", action="store_true", help=short)
    parser.add_argument("--json", default=f"benchmarks/results/{name}.json")
    return parser


def write_result(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (psutil is not needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


# ------------------------------------------------------------------ input

# Read where CI reads them; never copied into the repository.
DATA = REPO.parent / "shared" / "data"
# The list the README tells every deployment to load: OFAC's, which names Tornado Cash's pools.
OFAC = DATA / "labels" / "ofac" / "sanctioned_addresses_ETH.txt"


def ofac_listed():
    """The detector's `listed` lookup with OFAC's list loaded, as `anomaly-stream watchlist load` would."""
    from anomaly_stream.tools.backtest import load_watchlists
    return load_watchlists([f"{OFAC}:ofac"])


def generated(count: int, seed: int = 42) -> tuple[list[dict], list[tuple[bytes, bytes]]]:
    """Generated transactions, and the same as (key, value) messages keyed by sender."""
    txs = TrafficGenerator(GeneratorConfig(seed=seed)).take(count)
    return txs, keyed(txs)


async def pace(sent: int, rate: float, started: float) -> None:
    """Sleep as long as `sent` messages since `started` (monotonic) are ahead of `rate` per second."""
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0:
        await asyncio.sleep(ahead)


# ------------------------------------------------------------------ deployments and workers

async def ensure_topics_settled(settings: Settings, attempts: int = 40) -> None:
    """`topics.ensure_topics`, retried while the broker still lists a new topic with 0 partitions.

    Right after CreateTopics the broker's metadata can show the topic without its
    partitions; `ensure_topics` then raises TopicMismatch (reported to the owner).
    """
    for attempt in range(attempts):
        try:
            return await ensure_topics(settings)
        except TopicMismatch:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)


def fresh_deployment(**overrides) -> dict[str, str]:
    """The settings of a new deployment (its own topics, created), 4 partitions, workers logging warnings."""
    env = deployment_env(**{"kafka_input_partitions": PARTITIONS, "log_level": "warning", **overrides})
    asyncio.run(ensure_topics_settled(Settings.from_env(env)))
    return env


def backlog_deployment(messages: list[tuple[bytes, bytes]], **overrides) -> dict[str, str]:
    """A fresh deployment whose input topic already holds `messages`."""
    env = fresh_deployment(**overrides)
    asyncio.run(produce(env["KAFKA_INPUT_TOPIC"], messages))
    return env


def consumed(worker: WorkerProcess) -> float:
    """The worker's consumed count; 0 while its web server does not answer."""
    try:
        return worker.metrics().get("transactions_consumed_total", 0.0)
    except OSError:
        return 0.0


def drain_rate(count: Callable[[], float], base: float, total: float, failure: str, timeout: float = 600) -> float:
    """Messages/s from the first consumed message (count above `base`) to the last (count at `total`).

    `count` is polled every 100 ms; TimeoutError(failure) when `total` is not reached in time.
    """
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now_consumed = count()
        now = time.monotonic()
        if first is None and now_consumed > base:
            first = (now, now_consumed)
        if now_consumed >= total:
            return (now_consumed - first[1]) / (now - first[0])
        time.sleep(0.1)
    raise TimeoutError(failure)


# ------------------------------------------------------------------ measurements

def bare_worker(messages: list[tuple[bytes, bytes]]) -> dict:
    """Worker.handle + handle_edges over a MemorySink: transactions/s (and edges) of both perspectives."""
    from anomaly_stream.detect.detector import Record
    from anomaly_stream.stream.worker import MemorySink, Store, Stores, Topics, Worker, kafka_partition

    settings = Settings().replace(kafka_input_partitions=PARTITIONS)
    topics = Topics("transactions", "anomalies", "transactions-dlq", "transactions-edges")
    sink = MemorySink()
    stores = Stores(Store({}, "profiles-changelog"), Store({}, "checkpoints-changelog"),
                    Store({}, "buffer-changelog"))
    worker = Worker(settings, topics, stores, sink)
    by_partition: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}
    now = time.time()
    for key, value in messages:
        queue = by_partition[kafka_partition(key, PARTITIONS)]
        queue.append(Record(len(queue), key, value, now))
    for p in range(PARTITIONS):  # models are built on assignment, before any batch
        worker.model(p)
        worker.model(p, "receiver")
    edge_offsets = [0] * PARTITIONS
    edges = 0

    async def run() -> None:
        nonlocal edges
        cursors = dict.fromkeys(by_partition, 0)
        while cursors:
            for p in list(cursors):
                records = by_partition[p][cursors[p]: cursors[p] + BATCH]
                if not records:
                    del cursors[p]
                    continue
                cursors[p] += BATCH
                await worker.handle(p, records)
                routed: dict[int, list[Record]] = {}
                for m in sink.messages:
                    if m.topic == topics.edges:
                        routed.setdefault(m.partition, []).append(
                            Record(edge_offsets[m.partition], m.key, m.value, now))
                        edge_offsets[m.partition] += 1
                sink.messages.clear()
                for q, batch in routed.items():
                    edges += len(batch)
                    await worker.handle_edges(q, batch)
                    sink.messages.clear()

    started = time.perf_counter()
    asyncio.run(run())
    seconds = time.perf_counter() - started
    return {"tx_per_s": len(messages) / seconds, "edges": edges, "seconds": seconds}



def bare_loop(messages: list[tuple[bytes, bytes]]) -> float:
    """Transactions/s of the worker's own code alone, no Kafka: the compute floor."""
    return bare_worker(messages)["tx_per_s"]


def worker_throughput(messages: list[tuple[bytes, bytes]], log_dir: Path) -> float:
    """One worker draining `messages` produced before it started: transactions/s."""
    env = backlog_deployment(messages)
    worker = WorkerProcess(env, log_dir, "throughput").start()
    try:
        return drain_rate(lambda: consumed(worker), 0.0, len(messages),
                          f"worker did not drain the backlog; see {worker.log_path}")
    finally:
        worker.stop()


# Seconds of feed before latencies count: a fresh worker starts behind (the feed begins
# as it reports ready, before its first fetch) and catches up at what its capacity leaves
# over. At 7,100 tx/s its p99 was 540-590 ms in the first 4 s, 170-250 ms up to 10 s,
# 64-95 ms after (two-second windows, one worker, 4 partitions).
LATENCY_WARMUP_SECONDS = 10.0


def latency_run(messages: list[tuple[bytes, bytes]], rate: float, seconds: float, log_dir: Path,
                warmup: float = LATENCY_WARMUP_SECONDS) -> list[float]:
    """Produce-to-anomaly latencies (s) of a fresh worker fed `messages` at `rate` for `warmup` + `seconds`,
    of the anomalies of the messages produced after the first `warmup` seconds."""
    env = fresh_deployment()
    worker = WorkerProcess(env, log_dir, "latency").start()
    try:
        worker.wait_ready()
        started, timed = asyncio.run(_feed_and_time_anomalies(env, worker, messages, rate, warmup + seconds))
        return [latency for sent, latency in timed if sent >= started + warmup]
    finally:
        worker.stop()


async def _feed_and_time_anomalies(env, worker: WorkerProcess, messages, rate: float,
                                   seconds: float) -> tuple[float, list[tuple[float, float]]]:
    """When the feed started (Unix time), and (produce time, latency) of each anomaly, in seconds."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(env["KAFKA_ANOMALIES_TOPIC"], bootstrap_servers=KAFKA,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=5)
    await consumer.start()
    await producer.start()
    latencies: list[tuple[float, float]] = []

    async def collect():
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    sent = orjson.loads(r.value)["source"]["timestamp"]
                    latencies.append((sent, r.timestamp / 1000.0 - sent))

    collector = asyncio.create_task(collect())
    try:
        n = min(int(rate * seconds), len(messages))
        wall = time.time()
        started = time.monotonic()
        for i, (key, value) in enumerate(messages[:n]):
            await producer.send(env["KAFKA_INPUT_TOPIC"], value, key=key)
            if i % 50 == 0:
                await pace(i, rate, started)
        await producer.flush()
        await asyncio.to_thread(worker.wait_metric, "transactions_consumed_total", n, 120)
        await asyncio.sleep(2)
    finally:
        collector.cancel()
        await consumer.stop()
        await producer.stop()
    return wall, latencies
