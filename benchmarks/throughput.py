"""End-to-end throughput and produce-to-anomaly latency through the real broker.

    .venv/bin/python benchmarks/throughput.py [--count 200000] [--runs 3] [--short]
                                              [--json benchmarks/results/throughput.json]

Needs the local stack (`make up`). In one run, on the same generated stream:
1. bare loop: `detector.process_batch` over the stream partitioned as Kafka
   would, no Kafka, no Faust: the compute floor;
2. one worker process: the stream is produced first (a backlog), then a
   worker starts and drains it; throughput is measured from its first to its
   last consumed message (metrics polled every 100 ms);
3. latency: a fresh worker fed at a fixed share of the measured peak; each
   anomaly's latency is its record timestamp on the anomalies topic minus the
   timestamp of the input message it came from.
Medians over --runs; the ratio worker/bare is computed within the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly_stream.tools.backtest import kafka_partition  # noqa: E402
from anomaly_stream.detect.detector import Record, process_batch  # noqa: E402
from anomaly_stream.detect.features import AddressProfile  # noqa: E402
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator  # noqa: E402
from anomaly_stream.detect.model import ModelConfig, PartitionModel  # noqa: E402
from anomaly_stream.settings import Settings  # noqa: E402
from anomaly_stream.stream.topics import ensure_topics  # noqa: E402
from tests.support import KAFKA, WorkerProcess, deployment_env, produce  # noqa: E402

PARTITIONS = 4
BATCH = 1000


def bare_loop(messages: list[tuple[bytes, bytes]]) -> float:
    """Transactions/s of the hot path alone, profiles kept as bytes like the worker's table."""
    by_partition: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}
    for offset, (key, value) in enumerate(messages):
        by_partition[kafka_partition(key, PARTITIONS)].append(Record(offset, key, value, time.time()))
    store: dict[bytes, bytes] = {}

    def lookup(sender: str) -> AddressProfile | None:
        raw = store.get(sender.encode())
        return None if raw is None else AddressProfile.from_bytes(raw)

    models = {p: PartitionModel(ModelConfig(), p) for p in range(PARTITIONS)}
    started = time.perf_counter()
    # Interleave partitions batch by batch, as a worker owning all of them sees them.
    cursors = dict.fromkeys(by_partition, 0)
    while cursors:
        for p in list(cursors):
            records = by_partition[p][cursors[p]: cursors[p] + BATCH]
            if not records:
                del cursors[p]
                continue
            cursors[p] += BATCH
            result = process_batch(models[p], records, lookup, p)
            for sender, profile in result.profiles.items():
                store[sender.encode()] = profile.to_bytes()
    return len(messages) / (time.perf_counter() - started)


def worker_throughput(messages, log_dir: Path) -> float:
    env = deployment_env(kafka_input_partitions=PARTITIONS, log_level="warning")
    asyncio.run(ensure_topics(Settings.from_env(env)))
    asyncio.run(produce(env["KAFKA_INPUT_TOPIC"], messages))
    worker = WorkerProcess(env, log_dir, "throughput").start()
    try:
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                consumed = worker.metrics().get("transactions_consumed_total", 0.0)
            except OSError:
                consumed = 0.0
            now = time.monotonic()
            if consumed and first is None:
                first = (now, consumed)
            if consumed >= len(messages):
                return (consumed - first[1]) / (now - first[0])
            time.sleep(0.1)
        raise TimeoutError(f"worker did not drain the backlog; see {worker.log_path}")
    finally:
        worker.stop()


async def latency_run(messages, rate: float, seconds: float, log_dir: Path) -> list[float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    env = deployment_env(kafka_input_partitions=PARTITIONS, log_level="warning")
    await ensure_topics(Settings.from_env(env))
    worker = WorkerProcess(env, log_dir, "latency").start()
    await asyncio.to_thread(worker.wait_ready)
    consumer = AIOKafkaConsumer(env["KAFKA_ANOMALIES_TOPIC"], bootstrap_servers=KAFKA,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=5)
    await consumer.start()
    await producer.start()
    latencies: list[float] = []

    async def collect():
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    latencies.append(r.timestamp / 1000.0 - orjson.loads(r.value)["source"]["timestamp"])

    collector = asyncio.create_task(collect())
    try:
        n = min(int(rate * seconds), len(messages))
        started = time.monotonic()
        for i, (key, value) in enumerate(messages[:n]):
            await producer.send(env["KAFKA_INPUT_TOPIC"], value, key=key)
            if i % 50 == 0:
                ahead = i / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
        await asyncio.to_thread(worker.wait_metric, "transactions_consumed_total", n, 120)
        await asyncio.sleep(2)
    finally:
        collector.cancel()
        await consumer.stop()
        await producer.stop()
        worker.stop()
    return latencies


def write_result(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--short", action="store_true", help="100k messages, one run")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--json", default="benchmarks/results/throughput.json")
    opts = parser.parse_args()
    if opts.short:
        opts.count, opts.runs, opts.latency_seconds = 100_000, 1, 10.0

    txs = TrafficGenerator(GeneratorConfig(seed=42)).take(opts.count)
    messages = [(tx["from"].encode(), orjson.dumps(tx)) for tx in txs]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    rows = []
    for run in range(opts.runs):
        bare = bare_loop(messages)
        worker = worker_throughput(messages, log_dir)
        rows.append({"bare_tx_per_s": bare, "worker_tx_per_s": worker, "ratio": worker / bare})
        print(f"run {run + 1}: bare loop {bare:,.0f} tx/s, one worker {worker:,.0f} tx/s, "
              f"ratio {worker / bare:.2f}", flush=True)
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}

    rate = 0.5 * median["worker_tx_per_s"]
    latencies = asyncio.run(latency_run(messages, rate, opts.latency_seconds, log_dir))
    result = {
        "machine": "2 cores, loopback Apache Kafka (make up)",
        "count": opts.count, "partitions": PARTITIONS, "runs": rows, "median": median,
        "latency": {"rate_tx_per_s": rate, "anomalies": len(latencies),
                    "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)},
    }
    print(f"median: bare loop {median['bare_tx_per_s']:,.0f} tx/s, one worker "
          f"{median['worker_tx_per_s']:,.0f} tx/s, ratio {median['ratio']:.2f}")
    print(f"latency at {rate:,.0f} tx/s (50% of peak): {len(latencies)} anomalies, "
          f"p50 {result['latency']['p50_ms']:.0f} ms, p99 {result['latency']['p99_ms']:.0f} ms")
    write_result(opts.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
