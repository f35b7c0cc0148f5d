"""`anomaly-stream watchlist`: put addresses on a watch-list, take them off, look one up.

    anomaly-stream watchlist load FILE --list NAME [--format auto|ofac|forta|scamsniffer|poison-hunter|plain]
    anomaly-stream watchlist remove --list NAME [ADDRESS ...]     # the whole list without addresses
    anomaly-stream watchlist show ADDRESS

The lists live in the compacted `KAFKA_WATCHLIST_TOPIC` (one partition,
keyed by address; the value names every list the address is on, see
`detect.watchlist`). The command reads the topic to its end, computes each
address's new value and writes only what changed; every worker follows the
topic (`stream.replica`) and applies it from its next batch. A transaction
whose sender, recipient, spender or token recipient is listed is an anomaly
whatever its score.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..detect import watchlist
from ..settings import Settings
from ..stream.kafka import client_options
from ..stream.topics import ensure_topics


async def read_all(settings: Settings) -> dict[bytes, bytes]:
    """The topic's current value per address (a compacted topic read to its end)."""
    tp = TopicPartition(settings.kafka_watchlist_topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                **client_options(settings))
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        current: dict[bytes, bytes] = {}
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for record in records:
                    if record.value is None:
                        current.pop(record.key, None)
                    else:
                        current[record.key] = record.value
        return current
    finally:
        await consumer.stop()


async def write(settings: Settings, changes: dict[bytes, bytes | None]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=True, linger_ms=20, **client_options(settings))
    await producer.start()
    try:
        for key, value in changes.items():
            await producer.send(settings.kafka_watchlist_topic, value, key=key, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def load_changes(current: dict[bytes, bytes], entries: Sequence[watchlist.Entry], now: int) -> dict:
    changes = {}
    for entry in entries:
        key = watchlist.encode_key(entry.address)
        value = watchlist.merge(changes.get(key, current.get(key)), entry, now)
        if value != current.get(key):
            changes[key] = value
    return changes


def remove_changes(current: dict[bytes, bytes], list_name: str, addresses: Sequence[str]) -> dict:
    keys = [watchlist.encode_key(a) for a in addresses] if addresses else list(current)
    changes = {}
    for key in keys:
        if key in current and list_name in watchlist.decode_value(current[key]):
            changes[key] = watchlist.remove(current[key], list_name)
    return changes


async def run(settings: Settings, opts: argparse.Namespace) -> int:
    await ensure_topics(settings)
    current = await read_all(settings)
    if opts.action == "show":
        key = watchlist.encode_key(opts.address)
        for entry in watchlist.entries(opts.address, current.get(key)):
            print(f"{entry.address}\t{entry.list}\t{entry.label}")
        return 0
    if opts.action == "load":
        parsed = watchlist.parse_with_stats(opts.file, opts.list, opts.format)
        changes = load_changes(current, parsed.entries, int(time.time()))
        summary = f"{len(parsed.entries)} addresses read ({parsed.skipped} lines skipped)"
    else:
        changes = remove_changes(current, opts.list, opts.addresses)
        summary = f"{len(changes)} addresses taken off {opts.list!r}"
    await write(settings, changes)
    print(f"{summary}; {len(changes)} written to {settings.kafka_watchlist_topic}")
    return 0


def main(settings: Settings, argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="anomaly-stream watchlist", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True)
    load = actions.add_parser("load", help="add a list file's addresses to a list")
    load.add_argument("file")
    load.add_argument("--list", required=True)
    load.add_argument("--format", default="auto", choices=watchlist.FORMATS)
    remove = actions.add_parser("remove", help="take addresses (default: all) off a list")
    remove.add_argument("--list", required=True)
    remove.add_argument("addresses", nargs="*")
    show = actions.add_parser("show", help="the lists an address is on")
    show.add_argument("address")
    opts = parser.parse_args(argv)
    try:
        return asyncio.run(run(settings, opts))
    except (ValueError, OSError) as exc:
        print(f"watchlist: {exc}", file=sys.stderr)
        return 2
