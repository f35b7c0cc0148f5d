"""Resident memory of a worker at a steady rate over a million distinct senders: it must flatten.

    .venv/bin/python benchmarks/memory.py [--minutes 30] [--rate 2500] [--addresses 1000000]
                                          [--bound 200000] [--short] [--json benchmarks/results/memory.json]

Needs the local stack (`make up`). The full run takes 30 minutes (plus about a
minute to start); `--short` runs 4 minutes, which is enough to pass the bound
at the default rate (200k distinct senders after 80 s at 2,500 tx/s).

One worker (memory store, 4 partitions) with `ADDRESS_STATE_MAX_SIZE=--bound`
is fed generated transactions at a fixed rate, the sender cycling through
`--addresses` distinct addresses (transaction i comes from address i mod N),
so the profile table would grow without limit if the bound did not hold. Every
few seconds the worker's VmRSS (/proc/<pid>/status; psutil is not needed), its
`address_profiles` gauge and its consumed count are sampled.

Verdict: after the profile table reaches the bound (and a settling period of
a fifth of the remaining run), RSS must not keep growing: the median of the
last three samples at most 5% (or 25 MB) above the median of the first three
settled samples, and the least-squares slope over the settled samples is
printed in MB per minute.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from common import MACHINE, arguments, fresh_deployment, pace, rss_mb, write_result
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator
from tests.support import KAFKA, WorkerProcess

TEMPLATES = 20_000
START_TIME = 1_700_000_000


def message(templates: list[dict], i: int, addresses: int, rate: float) -> tuple[bytes, bytes]:
    tx = dict(templates[i % len(templates)])
    sender = "0x%040x" % (0x10_0000_0000 + i % addresses)
    tx["from"] = sender
    tx["hash"] = "0x%064x" % i
    tx["blockTimestamp"] = hex(START_TIME + int(i / rate))
    tx.pop("label", None)
    return sender.encode(), orjson.dumps(tx)


async def feed_and_sample(env, worker: WorkerProcess, opts) -> list[dict]:
    from aiokafka import AIOKafkaProducer

    templates = TrafficGenerator(GeneratorConfig(seed=7, n_addresses=100_000)).take(TEMPLATES)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=20)
    await producer.start()
    samples: list[dict] = []
    started = time.monotonic()
    duration = opts.minutes * 60
    sent = 0

    async def sample_forever():
        while True:
            try:
                m = await asyncio.to_thread(worker.metrics)
            except OSError:
                m = {}
            row = {"t_s": round(time.monotonic() - started, 1), "rss_mb": round(rss_mb(worker.proc.pid), 1),
                   "address_profiles": m.get("address_profiles", 0.0),
                   "consumed": m.get("transactions_consumed_total", 0.0), "sent": sent}
            samples.append(row)
            print(f"  t={row['t_s']:7.1f}s  RSS {row['rss_mb']:7.1f} MB  profiles {row['address_profiles']:>9,.0f}  "
                  f"consumed {row['consumed']:>10,.0f}  sent {sent:>10,}", flush=True)
            await asyncio.sleep(opts.sample_seconds)

    sampler = asyncio.create_task(sample_forever())
    try:
        i = 0
        while time.monotonic() - started < duration:
            key, value = message(templates, i, opts.addresses, opts.rate)
            await producer.send(env["KAFKA_INPUT_TOPIC"], value, key=key)
            i += 1
            sent = i
            if i % 100 == 0:
                await pace(i, opts.rate, started)
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}; see {worker.log_path}")
        await producer.flush()
    finally:
        sampler.cancel()
        await producer.stop()
    return samples


def verdict(samples: list[dict], bound: int) -> dict:
    at_bound = next((s["t_s"] for s in samples if s["address_profiles"] >= 0.95 * bound), None)
    if at_bound is None:
        return {"reached_bound_at_s": None, "flattened": None, "note": "the run ended before the bound was reached"}
    end = samples[-1]["t_s"]
    settle = at_bound + (end - at_bound) / 5
    settled = [s for s in samples if s["t_s"] >= settle]
    if len(settled) < 6:
        return {"reached_bound_at_s": at_bound, "flattened": None, "note": "too few samples after the bound"}
    base = statistics.median(s["rss_mb"] for s in settled[:3])
    final = statistics.median(s["rss_mb"] for s in settled[-3:])
    ts = [s["t_s"] / 60 for s in settled]
    rs = [s["rss_mb"] for s in settled]
    mt, mr = statistics.fmean(ts), statistics.fmean(rs)
    slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rs)) / sum((t - mt) ** 2 for t in ts)
    growth = final - base
    return {
        "reached_bound_at_s": at_bound, "settled_from_s": round(settle, 1),
        "rss_settled_mb": base, "rss_final_mb": final, "growth_mb": round(growth, 1),
        "slope_mb_per_min": round(slope, 2), "max_profiles": max(s["address_profiles"] for s in samples),
        "flattened": growth <= max(0.05 * base, 25.0),
    }


def main() -> int:
    parser = arguments("memory", short="4 minutes, a sample every 5 s")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=2500.0)
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--bound", type=int, default=200_000)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    opts = parser.parse_args()
    if opts.short:
        opts.minutes, opts.sample_seconds = 4.0, 5.0

    env = fresh_deployment(address_state_max_size=opts.bound)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    worker = WorkerProcess(env, log_dir, "memory").start()
    try:
        worker.wait_ready(timeout=120)
        idle_rss = rss_mb(worker.proc.pid)
        print(f"worker ready, RSS {idle_rss:.0f} MB; feeding {opts.rate:,.0f} tx/s for {opts.minutes:g} min "
              f"over {opts.addresses:,} senders, bound {opts.bound:,}", flush=True)
        samples = asyncio.run(feed_and_sample(env, worker, opts))
    finally:
        worker.stop()
    result = verdict(samples, opts.bound)
    lag = samples[-1]["sent"] - samples[-1]["consumed"]
    print(f"reached the bound at {result.get('reached_bound_at_s')} s; RSS settled {result.get('rss_settled_mb')} MB, "
          f"final {result.get('rss_final_mb')} MB, growth {result.get('growth_mb')} MB, "
          f"slope {result.get('slope_mb_per_min')} MB/min; flattened: {result.get('flattened')}; "
          f"consumer lag at the end {lag:,.0f}")
    out = {"machine": MACHINE, "minutes": opts.minutes, "rate_tx_per_s": opts.rate,
           "addresses": opts.addresses, "bound": opts.bound, "idle_rss_mb": idle_rss, **result,
           "samples": samples, "log": str(worker.log_path)}
    write_result(opts.json, out)
    return 0 if result.get("flattened") is not False else 1


if __name__ == "__main__":
    sys.exit(main())
