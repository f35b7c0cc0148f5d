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

import statistics
import sys
import tempfile
from pathlib import Path

from common import (
    MACHINE, PARTITIONS, arguments, bare_loop, generated, latency_run, percentile, worker_throughput, write_result,
)


def main() -> int:
    parser = arguments("throughput", short="100k messages, one run")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    opts = parser.parse_args()
    if opts.short:
        opts.count, opts.runs, opts.latency_seconds = 100_000, 1, 10.0

    _, messages = generated(opts.count)
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
    latencies = latency_run(messages, rate, opts.latency_seconds, log_dir)
    result = {
        "machine": MACHINE,
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
