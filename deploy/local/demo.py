"""`make demo`: the detector on the local stack, end to end, in about a minute.

Starts one worker, streams generated traffic (with labelled attack scenarios)
into the input topic, prints every anomaly as it arrives on the anomalies
topic, then a summary: what was consumed, scored, dead-lettered and flagged,
per scenario. The worker's dashboard (printed URL) is up while it runs and, in
a terminal, until Enter is pressed. Needs the stack from `make up`.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator  # noqa: E402
from anomaly_stream.settings import Settings  # noqa: E402
from anomaly_stream.stream.topics import ensure_topics  # noqa: E402
from tests.support import KAFKA, WorkerProcess, deployment_env  # noqa: E402

COUNT, RATE = 60_000, 3_000  # transactions, per second


async def stream_and_watch(env: dict[str, str], worker: WorkerProcess) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    txs = TrafficGenerator(GeneratorConfig(seed=7)).take(COUNT)
    labels = {tx["hash"]: tx["label"] for tx in txs}
    flagged = collections.Counter()
    consumer = AIOKafkaConsumer(env["KAFKA_ANOMALIES_TOPIC"], bootstrap_servers=KAFKA,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=10)
    await consumer.start()
    await producer.start()

    async def watch():
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    a = orjson.loads(record.value)
                    label = labels.get(a["tx_hash"]) or "normal traffic"
                    flagged[label] += 1
                    why = ", ".join(f"{e['feature']}={e['value']:g} (typical {e['typical']:g})"
                                    for e in a["explanation"][:2])
                    rules = ",".join(r["rule"] for r in a["reasons"])
                    print(f"ANOMALY {a['tx_hash'][:14]}.. {a['perspective']} {a['address'][:12]}.. "
                          f"score {a['score']:.3f} > {a['threshold']:.3f}  [{label}]  {a['severity']} "
                          f"{rules}: {why}", flush=True)

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    for i, tx in enumerate(txs):
        await producer.send(env["KAFKA_INPUT_TOPIC"], orjson.dumps(tx), key=tx["from"].encode())
        if i % 100 == 0 and (ahead := i / RATE - (time.monotonic() - started)) > 0:
            await asyncio.sleep(ahead)
    await producer.flush()
    await asyncio.to_thread(worker.wait_metric, "transactions_consumed_total", COUNT, 120)
    await asyncio.sleep(2)
    watcher.cancel()
    await producer.stop()
    await consumer.stop()

    m = worker.metrics()
    sent = collections.Counter(tx["label"] or "normal traffic" for tx in txs)
    dead = sum(v for k, v in m.items() if k.startswith("transactions_dead_lettered_total{"))
    print(f"\nsent {COUNT} transactions at {RATE}/s; the worker consumed {m['transactions_consumed_total']:.0f}, "
          f"scored {m['transactions_processed_total']:.0f}, dead-lettered {dead:.0f}, "
          f"published {m['anomalies_published_total']:.0f} anomalies")
    print(f"{'traffic':28s} {'sent':>7s} {'flagged':>8s}")
    for label, n in sent.most_common():
        print(f"{label:28s} {n:7d} {flagged[label]:8d}")


def main() -> int:
    env = deployment_env(log_level="warning")
    asyncio.run(ensure_topics(Settings.from_env(env)))
    worker = WorkerProcess(env, Path(tempfile.mkdtemp(prefix="demo-"))).start()
    try:
        worker.wait_ready()
        print(f"worker ready on {worker.url('/health/ready')} (metrics at {worker.url('/api/metrics')}); "
              f"streaming {COUNT} generated transactions into {env['KAFKA_INPUT_TOPIC']}", flush=True)
        print(f"dashboard: {worker.url('/dashboard')}", flush=True)
        asyncio.run(stream_and_watch(env, worker))
        if sys.stdin.isatty():  # someone is watching: keep the dashboard up until they are done
            try:
                input(f"\nthe dashboard stays at {worker.url('/dashboard')}; press Enter to stop the worker ")
            except (EOFError, KeyboardInterrupt):
                pass
    finally:
        worker.stop()
    print(f"worker log: {worker.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
