"""Recovery: time from worker start to ready with 100k and 1M sender profiles in the changelog.

    .venv/bin/python benchmarks/recovery.py [--sizes 100000,1000000] [--stores memory,rocksdb] [--short]
                                            [--json benchmarks/results/recovery.json]

Needs the local stack (`make up`). For each size, a fresh deployment whose
`<APP_ID>-profiles-changelog` is filled directly with the worker's own
records (key = lower-case sender address bytes, value =
`AddressProfile(...).to_bytes()`, written to the partition Kafka's murmur2
gives the key, as the worker's table would), then for each store:
- memory: a worker starts and rebuilds the table from the changelog;
- rocksdb, cold: a worker with an empty DATA_DIR rebuilds the same way;
- rocksdb, warm: the same worker restarted (SIGTERM, then start) on its
  DATA_DIR, so only what the local store lacks is read.
Figures: seconds from process start to /health/ready = 200, then to the
`address_profiles` gauge reaching the size (the bound's index rebuilt), and the
worker's resident memory once it holds the state.
`rocksdb://` needs `rocksdict` (faust-streaming[rocksdict]); without it that
store is reported as skipped.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from common import MACHINE, PARTITIONS, arguments, fresh_deployment, rss_mb, write_result
from anomaly_stream.detect.features import AddressProfile
from anomaly_stream.detect.lookalike import digest
from anomaly_stream.stream.topics import admin_client, create_topic
from anomaly_stream.tools.backtest import kafka_partition
from tests.support import KAFKA, WorkerProcess

EVENT_TIME = 1_700_000_000.0


def profile_record(i: int, rng: random.Random) -> tuple[bytes, bytes, int]:
    key = ("0x%040x" % rng.getrandbits(160)).encode()
    partition = kafka_partition(key, PARTITIONS)
    t = EVENT_TIME + i * 0.01
    profile = AddressProfile(
        first_seen=t - rng.uniform(0, 86_400), last_seen=t, n_tx=rng.randint(1, 50),
        tx_per_hour=rng.random(), value_mean=rng.uniform(0, 12), value_var=rng.random(),
        fan_out=rng.random(), counterparties=tuple(digest("0x%040x" % rng.getrandbits(160))
                                                   for _ in range(rng.randint(0, 8))),
        anomalies=0, partition=partition, burst=rng.random(),
    )
    return key, profile.to_bytes(), partition


async def fill_changelog(topic: str, n: int) -> float:
    from aiokafka import AIOKafkaProducer

    async with admin_client(KAFKA) as admin:  # as Faust creates a changelog: compacted, a partition per input one
        await create_topic(admin, topic, PARTITIONS, 1, configs={"cleanup.policy": "compact"})
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=50, max_batch_size=1 << 20)
    await producer.start()
    rng = random.Random(n)
    started = time.monotonic()
    try:
        pending = []
        for i in range(n):
            key, value, partition = profile_record(i, rng)
            pending.append(await producer.send(topic, value, key=key, partition=partition))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


def start_and_time(env: dict[str, str], n: int, log_dir: Path, name: str) -> tuple[WorkerProcess, dict]:
    started = time.monotonic()
    worker = WorkerProcess(env, log_dir, name).start()
    worker.wait_ready(timeout=1800)
    ready = time.monotonic() - started
    worker.wait_metric("address_profiles", n, timeout=600)
    indexed = time.monotonic() - started
    return worker, {"ready_s": ready, "indexed_s": indexed, "rss_mb": rss_mb(worker.proc.pid)}


def main() -> int:
    parser = arguments("recovery", short="100k profiles only")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--stores", default="memory,rocksdb")
    opts = parser.parse_args()
    sizes = [100_000] if opts.short else [int(s) for s in opts.sizes.split(",")]
    stores = opts.stores.split(",")
    if "rocksdb" in stores:
        try:
            import rocksdict  # noqa: F401
        except ImportError:
            print("rocksdb: skipped, rocksdict is not installed (pip install -e '.[rocksdb]')")
            stores.remove("rocksdb")
    log_dir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    rows = []
    for n in sizes:
        # A bound above n: nothing is evicted, recovery alone is measured.
        env = fresh_deployment(address_state_max_size=4 * n)
        fill = asyncio.run(fill_changelog(f"{env['APP_ID']}-profiles-changelog", n))
        print(f"{n:,} profiles written to the changelog in {fill:.1f} s", flush=True)
        for store in stores:
            variants = ["cold"] if store == "memory" else ["cold", "warm"]
            run_env = dict(env, TABLE_STORE=f"{store}://", DATA_DIR=f"{env['DATA_DIR']}-{store}")
            worker = None
            for variant in variants:
                if worker is not None:
                    worker.stop()
                worker, row = start_and_time(run_env, n, log_dir, f"{store}-{variant}-{n}")
                row = {"profiles": n, "store": store, "variant": variant, **row}
                rows.append(row)
                print(f"{n:>9,} profiles  {store:<7} {variant:<4}  ready {row['ready_s']:6.1f} s  "
                      f"indexed {row['indexed_s']:6.1f} s  RSS {row['rss_mb']:6.0f} MB", flush=True)
            worker.stop()
    result = {"machine": MACHINE, "partitions": PARTITIONS, "runs": rows,
              "logs": str(log_dir)}
    write_result(opts.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
