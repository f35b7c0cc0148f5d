"""Query API throughput and latency with the Redis read-through cache on and off.

    .venv/bin/python benchmarks/serving.py [--short] [--count 20000] [--zipf 1.1 [1.3 ...]]
                                           [--seconds 30] [--concurrency 32] [--anomaly-share 0.2]
                                           [--list-share 0.05] [--json benchmarks/results/serving.json]

Needs the local stack (`make up`). For each mode (cache ON: REDIS_URL on the
stack's Redis; cache OFF: REDIS_URL on a closed port, so the cache gives up on
Redis for its 2 s cool-down after every failed call) a fresh deployment of ONE
worker (4 partitions, its own topics) is fed the same generated transactions
(`TrafficGenerator`, seed 42) and left to drain them, so that it holds many
sender profiles and a buffer of anomalies. Then an asyncio aiohttp client with
bounded concurrency hits the query views for a fixed time with a Zipf(s) key
mix: known senders ranked by activity (rank k drawn with weight 1/k**s) on
/api/v1/addresses/{address}, a share of /api/v1/anomalies/{tx_hash} over the
buffered anomalies (newest first, same Zipf), and a small share of uncached
/api/v1/anomalies listings. Every run uses a fresh REDIS_KEY_PREFIX, so nothing
left in Redis by an earlier run pre-fills the cache: the measured window starts
cold. The hit rate is the worker's own count (redis_cache_requests_total{result}
deltas over the window, and over its second half, when the TTL has cycled).

The client and the worker share one 2-core machine, so the client's own CPU
use caps what is measured; both processes' CPU time is reported.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import sys
import tempfile
import time
from bisect import bisect
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Callable

import orjson

from common import PARTITIONS, arguments, backlog_deployment, generated, percentile, write_result
from anomaly_stream.settings import Settings
from tests.support import REDIS_URL, WorkerProcess, unique

CLOSED_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once
MACHINE = f"{os.cpu_count()} cores; client and worker on the same machine, loopback Kafka and Redis (make up)"
HIT = "redis_cache_requests_total{result=hit}"
MISS = "redis_cache_requests_total{result=miss}"
ERRORS = "redis_cache_errors_total"


def zipf_sampler(n: int, s: float, rng: random.Random):
    """Index in [0, n) with P(k) proportional to 1/(k+1)**s."""
    cumulative = list(accumulate(1.0 / (k + 1) ** s for k in range(n)))
    total = cumulative[-1]
    return lambda: min(n - 1, bisect(cumulative, rng.random() * total))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cache_counts(worker: WorkerProcess) -> dict[str, float]:
    m = worker.metrics()
    return {"hit": m.get(HIT, 0.0), "miss": m.get(MISS, 0.0),
            "errors": sum(v for k, v in m.items() if k.startswith(ERRORS + "{"))}


def hit_rate(before: dict, after: dict) -> float | None:
    hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
    return hits / (hits + misses) if hits + misses else None


def start_worker(messages, redis_url: str, log_dir: Path, name: str) -> tuple[WorkerProcess, dict]:
    """A fresh one-worker deployment that has drained `messages`."""
    env = backlog_deployment(messages, redis_url=redis_url, redis_key_prefix=unique("bench-serving"))
    worker = WorkerProcess(env, log_dir, name).start()
    worker.wait_ready(120)
    worker.wait_metric("transactions_consumed_total", len(messages), timeout=300)
    # Profiles and anomalies are in the tables once consumed; give the last batch a moment.
    time.sleep(1.0)
    return worker, env


async def clear_prefix(redis_url: str, prefix: str) -> int:
    """Delete this run's own cache keys (and nothing else), so the next exponent starts cold."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


def buffered_anomalies(worker: WorkerProcess) -> list[str]:
    """Hashes of every buffered anomaly, newest first (paginated listing, not cached)."""
    hashes, cursor = [], None
    while True:
        path = "/api/v1/anomalies?limit=500" + (f"&cursor={cursor}" if cursor else "")
        status, body = worker.get(path, timeout=30)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        page = orjson.loads(body)
        hashes.extend(d["tx_hash"] for d in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return hashes


def request_mix(addresses: list[str], anomalies: list[str], s: float, anomaly_share: float, list_share: float,
                rng: random.Random) -> Callable[[], tuple[str, str]]:
    """Draws (route kind, path): listings, anomalies by hash and addresses, each key by Zipf(s)."""
    pick_address = zipf_sampler(len(addresses), s, rng)
    pick_anomaly = zipf_sampler(len(anomalies), s, rng) if anomalies else None

    def next_path() -> tuple[str, str]:
        u = rng.random()
        if u < list_share:
            return "list", "/api/v1/anomalies?limit=20"
        if pick_anomaly and u < list_share + anomaly_share:
            return "anomaly", f"/api/v1/anomalies/{anomalies[pick_anomaly()]}"
        return "address", f"/api/v1/addresses/{addresses[pick_address()]}"

    return next_path


@dataclass
class Load:
    """What the simulated users saw."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"address": [], "anomaly": [], "list": []})
    distinct: set[str] = field(default_factory=set)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)


async def send_requests(base: str, next_path: Callable[[], tuple[str, str]], deadline: float,
                        concurrency: int, load: Load) -> None:
    """`concurrency` users, each sending one request after the other until `deadline` (monotonic)."""
    import aiohttp

    async def user(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            kind, path = next_path()
            if kind != "list":
                load.distinct.add(path)
            t0 = time.perf_counter()
            try:
                async with session.get(base + path) as resp:
                    await resp.read()
                    load.statuses[resp.status] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                load.errors[type(exc).__name__] += 1
                continue
            load.latencies[kind].append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(user(session) for _ in range(concurrency)))


async def counts_after(worker: WorkerProcess, seconds: float) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return await asyncio.to_thread(cache_counts, worker)


async def drive(worker: WorkerProcess, addresses: list[str], anomalies: list[str], s: float,
                seconds: float, concurrency: int, anomaly_share: float, list_share: float,
                seed: int) -> dict:
    next_path = request_mix(addresses, anomalies, s, anomaly_share, list_share, random.Random(seed))
    load = Load()
    started = time.monotonic()
    before = await asyncio.to_thread(cache_counts, worker)
    worker_cpu0, client_cpu0 = cpu_seconds(worker.proc.pid), client_cpu_seconds()
    halfway = asyncio.create_task(counts_after(worker, seconds / 2))
    await send_requests(worker.url(""), next_path, started + seconds, concurrency, load)
    half = await halfway
    elapsed = time.monotonic() - started
    cpu = {"worker": cpu_seconds(worker.proc.pid) - worker_cpu0, "client": client_cpu_seconds() - client_cpu0}
    after = await asyncio.to_thread(cache_counts, worker)
    return summary(load, elapsed, cpu, before, half, after)


def summary(load: Load, elapsed: float, cpu: dict[str, float], before: dict, half: dict, after: dict) -> dict:
    every = [x for v in load.latencies.values() for x in v]
    return {
        "requests": len(every),
        "requests_per_s": len(every) / elapsed,
        "p50_ms": 1000 * percentile(every, 0.5),
        "p99_ms": 1000 * percentile(every, 0.99),
        "by_route": {k: {"requests": len(v), "p50_ms": 1000 * percentile(v, 0.5),
                         "p99_ms": 1000 * percentile(v, 0.99)} for k, v in load.latencies.items() if v},
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "client_errors": dict(load.errors),
        "cache_hit_rate": hit_rate(before, after),
        "cache_hit_rate_second_half": hit_rate(half, after),
        "distinct_keys_requested": len(load.distinct),
        "cache_lookups": after["hit"] + after["miss"] - before["hit"] - before["miss"],
        "redis_errors": after["errors"] - before["errors"],
        "seconds": elapsed,
        "load_average_1m_after": os.getloadavg()[0],
        "cpu_share": {"worker": cpu["worker"] / elapsed, "client": cpu["client"] / elapsed},
    }


def options():
    parser = arguments("serving", short="10 s per mode")
    parser.add_argument("--count", type=int, default=20_000, help="generated transactions fed to each worker")
    parser.add_argument("--zipf", type=float, nargs="+", default=[1.1], help="Zipf exponent(s) s of the key mix")
    parser.add_argument("--seconds", type=float, default=30.0, help="load time per mode and exponent")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--anomaly-share", type=float, default=0.2, help="share of /api/v1/anomalies/{tx_hash}")
    parser.add_argument("--list-share", type=float, default=0.05, help="share of uncached /api/v1/anomalies")
    opts = parser.parse_args()
    if opts.short:
        opts.seconds = 10.0
    return opts


def run_mode(mode: str, redis_url: str, messages, addresses: list[str], opts, log_dir: Path) -> list[dict]:
    """One fresh worker with the cache on or off, loaded once per Zipf exponent."""
    runs = []
    worker, env = start_worker(messages, redis_url, log_dir, f"serving-cache-{mode}")
    try:
        health = orjson.loads(worker.get("/health")[1])
        anomalies = buffered_anomalies(worker)
        print(f"cache {mode.upper()}: worker reports {health['address_profiles']:,} profiles, "
              f"{len(anomalies)} buffered anomalies (REDIS_URL={redis_url}, "
              f"prefix {env['REDIS_KEY_PREFIX']})", flush=True)
        for s in opts.zipf:
            if mode == "on":
                asyncio.run(clear_prefix(redis_url, env["REDIS_KEY_PREFIX"]))
            result = asyncio.run(drive(worker, addresses, anomalies, s, opts.seconds, opts.concurrency,
                                       opts.anomaly_share, opts.list_share, seed=7))
            result.update({"cache": mode, "zipf_s": s, "redis_url": redis_url,
                           "redis_key_prefix": env["REDIS_KEY_PREFIX"],
                           "profiles": health["address_profiles"], "anomalies": len(anomalies)})
            runs.append(result)
            hr = result["cache_hit_rate"]
            print(f"  s={s}: {result['requests_per_s']:,.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
                  f"p99 {result['p99_ms']:.1f} ms, hit rate {'-' if hr is None else f'{hr:.1%}'}, "
                  f"{result['distinct_keys_requested']:,} distinct keys, statuses {result['statuses']}, "
                  f"redis errors {result['redis_errors']:.0f}, load avg {result['load_average_1m_after']:.1f}",
                  flush=True)
    finally:
        worker.stop()
    return runs


def print_table(runs: list[dict]) -> None:
    print()
    print(f"{'cache':<6}{'zipf s':>7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'hit rate':>10}{'2nd half':>10}"
          f"{'worker cpu':>12}{'client cpu':>12}")
    for r in runs:
        fmt = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
        print(f"{r['cache']:<6}{r['zipf_s']:>7}{r['requests_per_s']:>9,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{fmt(r['cache_hit_rate']):>10}{fmt(r['cache_hit_rate_second_half']):>10}"
              f"{r['cpu_share']['worker']:>12.0%}{r['cpu_share']['client']:>12.0%}")
    on = [r for r in runs if r["cache"] == "on" and r["cache_hit_rate"] is not None]
    if on:
        best = max(r["cache_hit_rate"] for r in on)
        reached = ", ".join(f"s={r['zipf_s']}: {r['cache_hit_rate']:.1%}" for r in on)
        print(f"cache hit rate reached: {reached} (seed project promised 40%+: {'met' if best >= 0.4 else 'NOT met'})")


def main() -> int:
    opts = options()
    txs, messages = generated(opts.count)
    activity = Counter(tx["from"].lower() for tx in txs)
    addresses = [a for a, _ in activity.most_common()]  # rank 1 = busiest sender
    log_dir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    load_before = os.getloadavg()[0]
    print(f"{opts.count:,} generated transactions, {len(addresses):,} distinct senders; "
          f"{opts.concurrency} concurrent requests, {opts.seconds:.0f} s per mode; worker logs in {log_dir}")
    print(f"NOTE: client and worker share this {os.cpu_count()}-core machine; "
          f"the client's CPU is part of what limits requests/s.", flush=True)

    ttl = Settings.from_env().redis_cache_ttl_seconds  # the workers inherit this environment
    modes = {"on": REDIS_URL, "off": CLOSED_REDIS_URL}
    runs = [run for mode, redis_url in modes.items()
            for run in run_mode(mode, redis_url, messages, addresses, opts, log_dir)]
    print_table(runs)
    print(f"({MACHINE}; TTL {ttl:.0f} s; 1-min load average {load_before:.1f} before the runs: "
          f"other processes on the machine skew these figures)")

    result = {"machine": MACHINE, "count": opts.count, "partitions": PARTITIONS, "workers": 1,
              "senders": len(addresses), "concurrency": opts.concurrency, "seconds_per_run": opts.seconds,
              "mix": {"address": 1 - opts.anomaly_share - opts.list_share, "anomaly": opts.anomaly_share,
                      "list": opts.list_share},
              "redis_cache_ttl_seconds": ttl,
              "load_average_1m_before": load_before, "runs": runs}
    write_result(opts.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
