"""End-to-end throughput with one and two workers, and latency at 25/50/90% of the peak.

    .venv/bin/python benchmarks/scaling.py [--count 200000] [--short]
                                           [--json benchmarks/results/scaling.json]

Needs the local stack (`make up`). In one run, on the same generated stream
(4 partitions), each worker figure next to the bare loop measured just before it:
1. bare loop (`common.bare_loop`): the worker's own code (both perspectives) without Kafka, the compute floor;
2. one worker draining a backlog (`common.worker_throughput`);
3. two workers draining the same backlog in a fresh deployment: both start,
   the group settles on 2+2 partitions, both are paused (SIGSTOP, with a 60 s
   session) while the backlog is produced, then resumed, so the figure is
   neither a rebalance nor the producer; throughput is from the first to the
   last consumed message over both workers' counters;
4. produce-to-anomaly latency with one worker fed at 25%, 50% and 90% of the
   one-worker peak (`common.latency_run`).
Scaling efficiency = two-worker throughput / (2 x one-worker throughput). On
a 2-core machine that also runs the broker and the producer, expect far below 1.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

from common import (
    MACHINE, PARTITIONS, arguments, bare_loop, consumed, drain_rate, fresh_deployment, generated, latency_run,
    percentile, worker_throughput, write_result,
)
from tests.support import WorkerProcess, produce

SHARES = (0.25, 0.5, 0.9)


def two_worker_throughput(messages, log_dir: Path) -> float:
    # A session long enough to survive the pause while the backlog is produced.
    env = fresh_deployment(kafka_session_timeout_seconds=60, kafka_heartbeat_interval_seconds=3)
    pair = [WorkerProcess(env, log_dir, f"scaling{i}").start() for i in range(2)]
    try:
        for w in pair:
            w.wait_ready(timeout=120)
        base = settle(pair, env, messages[:200], log_dir)
        # A backlog, as for one worker: both workers are stopped (SIGSTOP) while it
        # is produced, so the figure measures draining, not the producer.
        for w in pair:
            w.proc.send_signal(signal.SIGSTOP)
        try:
            asyncio.run(produce(env["KAFKA_INPUT_TOPIC"], messages))
        finally:
            for w in pair:
                w.proc.send_signal(signal.SIGCONT)
        return drain_rate(lambda: sum(consumed(w) for w in pair), base, base + len(messages),
                          f"two workers did not drain the backlog; see {log_dir}")
    finally:
        for w in pair:
            w.stop()


def settle(pair: list[WorkerProcess], env: dict[str, str], probes, log_dir: Path) -> float:
    """A probe message per partition reaches both workers; returns what they consumed together."""
    asyncio.run(produce(env["KAFKA_INPUT_TOPIC"], probes))
    deadline = time.monotonic() + 120
    while not all(consumed(w) > 0 for w in pair) or sum(consumed(w) for w in pair) < len(probes):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the two workers never shared the partitions; see {log_dir}")
        time.sleep(0.2)
    return sum(consumed(w) for w in pair)


def main() -> int:
    parser = arguments("scaling", short="100k messages, 10 s latency runs")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    opts = parser.parse_args()
    if opts.short:
        opts.count, opts.latency_seconds = 100_000, 10.0

    _, messages = generated(opts.count)
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
        # latency_run waits for rate x seconds messages: never ask for more than the stream has.
        seconds = min(opts.latency_seconds, 0.95 * len(messages) / rate)
        lat = latency_run(messages, rate, seconds, log_dir)
        row = {"share_of_peak": share, "rate_tx_per_s": rate, "seconds": seconds, "anomalies": len(lat),
               "p50_ms": 1000 * percentile(lat, 0.5), "p99_ms": 1000 * percentile(lat, 0.99)}
        latency.append(row)
        print(f"latency at {share:.0%} of peak ({rate:,.0f} tx/s): {len(lat)} anomalies, "
              f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms", flush=True)

    result = {
        "machine": f"{MACHINE}; broker, producer and workers share the cores",
        "count": opts.count, "partitions": PARTITIONS,
        "one_worker": {"tx_per_s": one, "bare_tx_per_s": bare1, "ratio": one / bare1},
        "two_workers": {"tx_per_s": two, "bare_tx_per_s": bare2, "ratio": two / bare2,
                        "speedup": two / one, "scaling_efficiency": efficiency},
        "latency": latency,
    }
    write_result(opts.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
