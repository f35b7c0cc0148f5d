"""End-to-end throughput with one and two workers, and latency at 25/50/90% of the peak.

    .venv/bin/python benchmarks/scaling.py [--count 200000] [--short]
                                           [--json benchmarks/results/scaling.json]

Needs the local stack (`make up`). In one run, on the same generated stream
(4 partitions), each worker figure next to the bare loop measured just before it:
1. bare loop (`throughput.bare_loop`): `process_batch` alone, the compute floor;
2. one worker draining a backlog (`throughput.worker_throughput`);
3. two workers draining the same backlog in a fresh deployment: both start,
   the group settles on 2+2 partitions, and only then is the backlog produced,
   so the figure is not a rebalance measurement; throughput is from the
   first to the last consumed message over both workers' counters;
4. produce-to-anomaly latency with one worker fed at 25%, 50% and 90% of the
   one-worker peak (`throughput.latency_run`).
Scaling efficiency = two-worker throughput / (2 x one-worker throughput). On
a 2-core machine that also runs the broker and the producer, expect far below 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import PARTITIONS, bare_loop, latency_run, percentile, worker_throughput  # noqa: E402

from anomaly_stream.generate import GeneratorConfig, TrafficGenerator  # noqa: E402
from anomaly_stream.settings import Settings  # noqa: E402
from anomaly_stream.topics import ensure_topics  # noqa: E402
from tests.support import WorkerProcess, deployment_env, produce  # noqa: E402

SHARES = (0.25, 0.5, 0.9)


def consumed(worker: WorkerProcess) -> float:
    try:
        return worker.metrics().get("transactions_consumed_total", 0.0)
    except OSError:
        return 0.0


def two_worker_throughput(messages, log_dir: Path) -> float:
    env = deployment_env(kafka_input_partitions=PARTITIONS, log_level="warning")
    asyncio.run(ensure_topics(Settings.from_env(env)))
    pair = [WorkerProcess(env, log_dir, f"scaling{i}").start() for i in range(2)]
    try:
        for w in pair:
            w.wait_ready(timeout=120)
        # Settle: a probe message per partition reaches both workers, then ready again.
        probes = messages[:200]
        asyncio.run(produce(env["KAFKA_INPUT_TOPIC"], probes))
        deadline = time.monotonic() + 120
        while not all(consumed(w) > 0 for w in pair) or sum(consumed(w) for w in pair) < len(probes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the two workers never shared the partitions; see {log_dir}")
            time.sleep(0.2)
        base = sum(consumed(w) for w in pair)
        total = base + len(messages)
        asyncio.run(produce(env["KAFKA_INPUT_TOPIC"], messages))
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            now_consumed = sum(consumed(w) for w in pair)
            now = time.monotonic()
            if first is None and now_consumed > base:
                first = (now, now_consumed)
            if now_consumed >= total:
                return (now_consumed - first[1]) / (now - first[0])
            time.sleep(0.1)
        raise TimeoutError(f"two workers did not drain the backlog; see {log_dir}")
    finally:
        for w in pair:
            w.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--short", action="store_true", help="100k messages, 10 s latency runs")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--json", default="benchmarks/results/scaling.json")
    opts = parser.parse_args()
    if opts.short:
        opts.count, opts.latency_seconds = 100_000, 10.0

    txs = TrafficGenerator(GeneratorConfig(seed=42)).take(opts.count)
    messages = [(tx["from"].encode(), orjson.dumps(tx)) for tx in txs]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-scaling-"))

    bare1 = bare_loop(messages)
    one = worker_throughput(messages, log_dir)
    print(f"one worker:  {one:>9,.0f} tx/s   bare loop {bare1:,.0f} tx/s   ratio {one / bare1:.2f}", flush=True)
    bare2 = bare_loop(messages)
    two = two_worker_throughput(messages, log_dir)
    efficiency = two / (2 * one)
    print(f"two workers: {two:>9,.0f} tx/s   bare loop {bare2:,.0f} tx/s   ratio {two / bare2:.2f}   "
          f"speed-up {two / one:.2f}, scaling efficiency {efficiency:.2f}", flush=True)

    latency = []
    for share in SHARES:
        rate = share * one
        lat = asyncio.run(latency_run(messages, rate, opts.latency_seconds, log_dir))
        row = {"share_of_peak": share, "rate_tx_per_s": rate, "anomalies": len(lat),
               "p50_ms": 1000 * percentile(lat, 0.5), "p99_ms": 1000 * percentile(lat, 0.99)}
        latency.append(row)
        print(f"latency at {share:.0%} of peak ({rate:,.0f} tx/s): {len(lat)} anomalies, "
              f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms", flush=True)

    result = {
        "machine": "2 cores, loopback Apache Kafka (make up); broker, producer and workers share the cores",
        "count": opts.count, "partitions": PARTITIONS,
        "one_worker": {"tx_per_s": one, "bare_tx_per_s": bare1, "ratio": one / bare1},
        "two_workers": {"tx_per_s": two, "bare_tx_per_s": bare2, "ratio": two / bare2,
                        "speedup": two / one, "scaling_efficiency": efficiency},
        "latency": latency,
    }
    Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
