"""Throughput of the hot path, from the model alone to one worker through the real broker, in one run.

    .venv/bin/python benchmarks/throughput.py [--count 200000] [--runs 3] [--short]
                                              [--no-kafka] [--no-latency]
                                              [--json benchmarks/results/throughput.json]
                                              [--plot benchmarks/results/throughput.png]

On the same generated stream (`--count` transactions keyed by sender, 4
partitions as Kafka's partitioner gives them), per run:

1. model alone: River's `HalfSpaceTrees` (`score_one` + `learn_one` per
   event) against `CompiledHST.score_learn` in batches of 500, over the
   same synthetic skewed rows (`--model-count`); the scores are checked
   equal;
2. bare hot path: `Worker.handle` over a `MemorySink`, batches of 1000 per
   partition interleaved as a worker owning all partitions sees them, each
   batch's edges handed to `Worker.handle_edges` in their partitions right
   after (both perspectives, profiles written through, checkpoints when due):
   no Kafka, the floor the others are measured against;
3. plain aiokafka: an `AIOKafkaConsumer` on the input and edges topics of a
   deployment whose input already holds the stream (a backlog), handing each
   `getmany` batch to the same `Worker.handle` / `handle_edges` with a sink
   that produces every record through an `AIOKafkaProducer` (edges,
   changelogs, anomalies; no transactions): the client's ceiling;
4. one worker process (`anomaly-stream worker`, Faust) draining the same
   backlog, from its first to its last consumed message.

(3) and (4) need the local stack (`make up`); skipped with `--no-kafka` or
when the broker does not answer. Ratios are taken within each run, medians
over `--runs`. Then, unless `--no-latency`, produce-to-anomaly latency of a
fresh worker fed at 25%, 50% and 90% of the median worker rate, counted
after its first `common.LATENCY_WARMUP_SECONDS` of feed.
`--short`: 50k messages, one run, 10 s of latency.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (  # first: it puts the repository root on sys.path
    KAFKA, LATENCY_WARMUP_SECONDS, MACHINE, PARTITIONS, arguments, backlog_deployment, generated, latency_run,
    percentile,
    bare_worker, worker_throughput, write_result,
)

import numpy as np  # noqa: E402
import structlog  # noqa: E402

from anomaly_stream.detect.detector import Record  # noqa: E402
from anomaly_stream.settings import Settings  # noqa: E402
from anomaly_stream.stream.faust_io import send_batches  # noqa: E402
from anomaly_stream.stream.worker import MemorySink, Store, Stores, Topics, Worker, collect_less, kafka_partition  # noqa: E402

LATENCY_SHARES = (0.25, 0.5, 0.9)  # of the worker's median backlog rate, its peak
BATCH = 1000  # records per partition batch in the bare path (a getmany gives up to max_poll_records)
MODEL_BATCH = 500


def quiet() -> None:
    """Warnings only, as the workers run here (one log line per anomaly would be measured too)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# ------------------------------------------------------------------ 1. the model alone

def skewed_rows(n: int, d: int, seed: int = 7) -> np.ndarray:
    """Rows shaped like the detector's features: mostly 0, a skewed tail, 1% outliers."""
    rng = np.random.default_rng(seed)
    X = np.where(rng.random((n, d)) < 0.7, 0.0, rng.random((n, d)) ** 3)
    outliers = rng.random(n) < 0.01
    X[outliers] = rng.random((int(outliers.sum()), d)) * 0.5 + 0.5
    return X


def model_alone(n: int) -> dict:
    from river.anomaly import HalfSpaceTrees

    from anomaly_stream.detect.features import FEATURE_NAMES
    from anomaly_stream.detect.hst import CompiledHST
    from anomaly_stream.detect.model import ModelConfig

    config = ModelConfig()
    X = skewed_rows(n, len(FEATURE_NAMES))
    rows = [dict(zip(FEATURE_NAMES, r)) for r in X.tolist()]
    river_hst = HalfSpaceTrees(n_trees=config.n_trees, height=config.height,
                               window_size=config.window_size, seed=config.seed)
    compiled = CompiledHST.from_river(river_hst, FEATURE_NAMES)
    started = time.perf_counter()
    expected = []
    for x in rows:
        expected.append(river_hst.score_one(x))
        river_hst.learn_one(x)
    river_rate = n / (time.perf_counter() - started)
    started = time.perf_counter()
    scores = np.concatenate([compiled.score_learn(X[i: i + MODEL_BATCH]) for i in range(0, n, MODEL_BATCH)])
    compiled_rate = n / (time.perf_counter() - started)
    if scores.tolist() != [float(s) for s in expected]:
        raise AssertionError("CompiledHST scores differ from River's")
    return {"events": n, "river_events_per_s": river_rate, "compiled_events_per_s": compiled_rate,
            "compiled_vs_river": compiled_rate / river_rate}


# ------------------------------------------------------------------ 2. the bare hot path

# `common.bare_worker`: Worker.handle + handle_edges over a MemorySink.


# ------------------------------------------------------------------ 3. a plain aiokafka consumer

class ProducerSink:
    """Every record through one AIOKafkaProducer, batched as FaustSink does (no transactions)."""

    def __init__(self, producer):
        self.producer = producer

    async def send(self, topic, key, value, *, source_partition, partition=None, headers=None) -> None:
        await self.producer.send(topic, value, key=key, partition=partition,
                                 headers=list(headers.items()) if headers else None)

    async def send_many(self, topic, messages, *, source_partition) -> None:
        await send_batches(self.producer, topic, messages)


class EncodedStore(Store):
    """A dict table whose changelog keys are bytes (the anomaly buffer's keys are (hash, window) pairs)."""

    def encode_key(self, key) -> bytes:
        return key if isinstance(key, bytes) else repr(key).encode()


def plain_consumer(messages: list[tuple[bytes, bytes]]) -> float:
    """Transactions/s of a plain aiokafka consumer running the worker's code over a backlog of `messages`."""
    env = backlog_deployment(messages)
    return asyncio.run(_plain(Settings.from_env(env), len(messages)))


async def _plain(settings: Settings, total: int, timeout: float = 600.0) -> float:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from tests.support import create_topic, unique

    changelogs = [f"{settings.app_id}-plain-{name}-changelog" for name in ("profiles", "checkpoints", "buffer")]
    for name in changelogs:
        await create_topic(name, settings.kafka_input_partitions)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=settings.kafka_producer_linger_ms,
                                max_request_size=8 * 1024 * 1024)
    consumer = AIOKafkaConsumer(settings.kafka_input_topic, settings.edges_topic, bootstrap_servers=KAFKA,
                                group_id=unique("plain"), auto_offset_reset="earliest", enable_auto_commit=False,
                                max_poll_records=settings.kafka_max_poll_records)
    await producer.start()
    await consumer.start()
    topics = Topics(settings.kafka_input_topic, settings.kafka_anomalies_topic, settings.dlq_topic,
                    settings.edges_topic)
    stores = Stores(*(EncodedStore({}, name) for name in changelogs))
    worker = Worker(settings, topics, stores, ProducerSink(producer))
    consumed, first, last_commit = 0, None, time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        while consumed < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"plain consumer: {consumed} of {total} consumed")
            batches = await consumer.getmany(timeout_ms=100)
            for tp, raw in batches.items():
                records = [Record(r.offset, r.key, r.value, r.timestamp / 1000.0) for r in raw]
                if tp.topic == settings.kafka_input_topic:
                    if first is None:
                        first = time.monotonic()
                    await worker.handle(tp.partition, records)
                    consumed += len(records)
                else:
                    await worker.handle_edges(tp.partition, records)
            if time.monotonic() - last_commit >= settings.commit_interval_seconds:
                await consumer.commit()
                last_commit = time.monotonic()
        elapsed = time.monotonic() - first
        await producer.flush()
        return total / elapsed
    finally:
        await consumer.stop()
        await producer.stop()


def kafka_up() -> bool:
    host, port = KAFKA.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ run

def main() -> int:
    parser = arguments("throughput", short="50k messages, one run, 10 s of latency")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model-count", type=int, default=20_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--no-kafka", action="store_true", help="model and bare path only")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--plot", default="benchmarks/results/throughput.png")
    opts = parser.parse_args()
    if opts.short:
        opts.count, opts.runs, opts.latency_seconds, opts.model_count = 50_000, 1, 10.0, 10_000
    quiet()
    collect_less()  # the garbage collector as the worker process sets it (bare and plain run here)
    kafka = not opts.no_kafka and kafka_up()
    if not opts.no_kafka and not kafka:
        print(f"no broker at {KAFKA}: the Kafka lines are skipped", flush=True)

    _, messages = generated(opts.count)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    rows = []
    for run in range(opts.runs):
        model = model_alone(opts.model_count)
        bare = bare_worker(messages)
        row = {"river_events_per_s": model["river_events_per_s"],
               "compiled_events_per_s": model["compiled_events_per_s"],
               "compiled_vs_river": model["compiled_vs_river"],
               "bare_tx_per_s": bare["tx_per_s"], "bare_edges": bare["edges"]}
        line = (f"run {run + 1}: model River {model['river_events_per_s']:,.0f} ev/s, compiled "
                f"{model['compiled_events_per_s']:,.0f} ev/s ({model['compiled_vs_river']:.1f}x); "
                f"bare hot path {bare['tx_per_s']:,.0f} tx/s ({bare['edges']:,} edges)")
        if kafka:
            plain = plain_consumer(messages)
            worker = worker_throughput(messages, log_dir)
            row.update({"plain_aiokafka_tx_per_s": plain, "worker_tx_per_s": worker,
                        "plain_vs_bare": plain / bare["tx_per_s"], "worker_vs_bare": worker / bare["tx_per_s"],
                        "worker_vs_plain": worker / plain})
            line += (f"; plain aiokafka {plain:,.0f} tx/s ({row['plain_vs_bare']:.2f} of bare); one worker "
                     f"{worker:,.0f} tx/s ({row['worker_vs_bare']:.2f} of bare, {row['worker_vs_plain']:.2f} of plain)")
        rows.append(row)
        print(line, flush=True)
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result = {"machine": MACHINE, "count": opts.count, "partitions": PARTITIONS, "model_events": opts.model_count,
              "runs": rows, "median": median}
    print("median: " + ", ".join(f"{k} {v:,.2f}" if v < 100 else f"{k} {v:,.0f}" for k, v in median.items()))
    if kafka and not opts.no_latency:
        result["latency"] = []
        for share in LATENCY_SHARES:
            rate = share * median["worker_tx_per_s"]
            # latency_run feeds rate x (warm-up + seconds) messages: never more than the stream has.
            seconds = min(opts.latency_seconds, 0.95 * len(messages) / rate - LATENCY_WARMUP_SECONDS)
            latencies = latency_run(messages, rate, seconds, log_dir)
            row = {"rate_tx_per_s": rate, "share_of_peak": share, "seconds": seconds, "anomalies": len(latencies),
                   "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)}
            result["latency"].append(row)
            print(f"latency at {rate:,.0f} tx/s ({share:.0%} of peak, {seconds:.0f} s after "
                  f"{LATENCY_WARMUP_SECONDS:.0f} s of warm-up): {len(latencies)} anomalies, "
                  f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms", flush=True)
    write_result(opts.json, result)
    if opts.plot:
        from anomaly_stream.tools.plots import bars

        values = {"model: River": median["river_events_per_s"], "model: compiled": median["compiled_events_per_s"],
                  "bare hot path": median["bare_tx_per_s"]}
        if kafka:
            values["plain aiokafka"] = median["plain_aiokafka_tx_per_s"]
            values["one worker"] = median["worker_tx_per_s"]
        print(f"wrote {bars(opts.plot, f'Throughput, {opts.count:,} generated tx, {PARTITIONS} partitions ({MACHINE})', 'events or transactions / s', values, log=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
