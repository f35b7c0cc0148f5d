"""The `anomaly-stream` command: the only entry point.

    anomaly-stream worker [faust worker options]   run a detector replica
    anomaly-stream generate --count N [--rate R] [--output FILE]
                                                   synthetic traffic to Kafka or a JSONL file
    anomaly-stream ingest [--from-block N]         follow an Ethereum node into Kafka
    anomaly-stream notify [faust worker options]   deliver alerts from the anomalies topic (NOTIFY_CONFIG)
    anomaly-stream backtest PATH [--label-field F] [--report OUT.json] [--plot OUT.png]
                                                   score a JSONL (or CSV) file offline
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson

from .logs import setup_logging
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    settings = Settings.from_env()
    # The worker logs through Faust's handlers; the ingester has none of its own.
    setup_logging(settings.log_level, settings.log_format, handler=command == "ingest")
    if command == "worker":
        return run_worker(settings, rest)
    if command == "notify":
        return run_notify(settings, rest)
    if command == "generate":
        return run_generate(settings, rest)
    if command == "backtest":
        from .tools.backtest import main as backtest_main

        return backtest_main(rest, settings)
    if command == "ingest":
        from .chain.ingest import main as ingest_main

        return ingest_main(settings, rest)
    if command == "watchlist":
        from .tools.watchlists import main as watchlist_main

        return watchlist_main(settings, rest)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


def run_worker(settings: Settings, faust_args: list[str]) -> int:
    import mode.loop

    mode.loop.use("uvloop")  # measured: Faust's per-batch overhead drops by about a third
    from .stream.app import app
    from .stream.worker import collect_less

    collect_less()
    return run_faust(app, settings, faust_args)


def run_notify(settings: Settings, faust_args: list[str]) -> int:
    from .notify import config
    from .notify.app import create_app

    try:
        notify_config = config.load(settings.notify_config)
    except config.ConfigError as exc:
        print(f"anomaly-stream notify: {exc}", file=sys.stderr)
        return 2
    return run_faust(create_app(settings, notify_config), settings, faust_args)


def run_faust(app, settings: Settings, faust_args: list[str]) -> int:
    # At warn or above, Faust's terminal spinner sets the root logger to DEBUG and
    # every produced message builds log records (a sixth of the worker's time);
    # at info or below it does not. setup_logging bounds Faust's own loggers.
    faust_level = "debug" if settings.log_level == "debug" else "info"
    sys.argv = ["anomaly-stream", "worker", "-l", faust_level, *faust_args]
    app.main()
    return 0


def run_generate(settings: Settings, args: list[str]) -> int:
    from .tools.generate import GeneratorConfig, TrafficGenerator

    parser = argparse.ArgumentParser(prog="anomaly-stream generate")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s; 0 sends as fast as possible")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="kafka", help="'kafka' (the input topic) or a JSONL path")
    opts = parser.parse_args(args)
    txs = TrafficGenerator(GeneratorConfig(seed=opts.seed))
    if opts.output != "kafka":
        with open(opts.output, "wb") as out:
            for tx in txs.take(opts.count):
                out.write(orjson.dumps(tx) + b"\n")
        print(f"wrote {opts.count} transactions to {opts.output}")
        return 0
    sent = asyncio.run(produce(settings, txs.take(opts.count), opts.rate))
    print(f"sent {sent} transactions to {settings.kafka_input_topic}")
    return 0


async def produce(settings: Settings, txs, rate: float) -> int:
    """Send transactions keyed by sender, as every producer to the input topic should."""
    from aiokafka import AIOKafkaProducer

    from .stream.kafka import client_options
    from .stream.topics import ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=20, max_batch_size=256 * 1024,
        **client_options(settings),
    )
    await producer.start()
    started, sent = time.monotonic(), 0
    try:
        for tx in txs:
            await producer.send(settings.kafka_input_topic, orjson.dumps(tx), key=tx["from"].encode())
            sent += 1
            if rate and sent % 100 == 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


if __name__ == "__main__":
    sys.exit(main())
