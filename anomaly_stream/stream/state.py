"""Size and TTL bounds for changelogged tables that keep working after restarts.

Faust expires windows with a wall-clock sweep that never sees windows
restored from a changelog, and deletes expired windows without writing a
tombstone, so they come back at the next recovery (../shared/FIELD-NOTES.md).
`TableBound` replaces that: it keeps, per partition, the table's keys in the
order of their last write, rebuilds that order from the table itself after
every recovery, and deletes what is too old or over the size bound with a
tombstone in the changelog (`sweep`, then `delete_through`), so the bound holds in memory, in Kafka and after
any number of restarts and rebalances.

Every value of a bounded table says which partition it belongs to and when it
was last written (`locate`), so a rebuild needs nothing but the table.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable

Locate = Callable[[Any, Any], tuple[int, float]]


class TableBound:
    def __init__(self, table: Any, ttl_seconds: float, max_per_partition: int, locate: Locate):
        self.table = table  # anything with `.data`, the store that recovery fills (read late: Faust creates it lazily)
        self.ttl = ttl_seconds
        self.max_per_partition = max_per_partition
        self.locate = locate
        self.index: dict[int, OrderedDict[Any, float]] = {}

    def newest(self, partition: int) -> float:
        keys = self.index.get(partition)
        return next(reversed(keys.values())) if keys else 0.0

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.index.values())

    def touch(self, partition: int, key: Any, t: float) -> None:
        keys = self.index.get(partition)
        if keys is None:
            keys = self.index[partition] = OrderedDict()
        keys[key] = t
        keys.move_to_end(key)

    def rebuild(self, partitions: set[int]) -> None:
        """Re-read the order of keys from the table, for the partitions we now own.

        Keys of other partitions are dropped from memory without a tombstone:
        they are not ours to delete any more (the memory store keeps keys
        written live after their partition has moved away).
        """
        found: dict[int, list[tuple[float, Any]]] = {p: [] for p in partitions}
        stale = []
        # One synchronous pass (about 2 s for a million keys): a write landing
        # halfway through a pass that yields would be missing from the index.
        for key, value in list(self.table.data.items()):
            partition, t = self.locate(key, value)
            if partition in found:
                found[partition].append((t, key))
            else:
                stale.append(key)
        for key in stale:
            self.table.data.pop(key, None)
        self.index = {}
        for partition, entries in found.items():
            entries.sort(key=lambda e: e[0])
            self.index[partition] = OrderedDict((key, t) for t, key in entries)

    def trim(self, partition: int) -> list[tuple[int, Any]]:
        """Delete a partition's oldest keys over the size bound, right after a write.

        The sweep alone let the table hold everything written between two
        sweeps (a fresh-clone run saw twice the bound); the caller writes the
        tombstones of what is returned (`delete_through`) after the values.
        """
        keys = self.index.get(partition)
        evicted = []
        while keys and len(keys) > self.max_per_partition:
            key, _ = keys.popitem(last=False)
            self.table.data.pop(key, None)
            evicted.append((partition, key))
        return evicted

    def sweep(self, now: Callable[[int], float]) -> list[tuple[int, Any]]:
        """Delete keys past the TTL or over the size bound, oldest first.

        Returns the evicted (partition, key) pairs: the caller writes their
        tombstones (`delete_through`).
        """
        evicted = []
        for partition, keys in self.index.items():
            cutoff = now(partition) - self.ttl
            while keys:
                key, t = next(iter(keys.items()))
                if t >= cutoff and len(keys) <= self.max_per_partition:
                    break
                del keys[key]
                self.table.data.pop(key, None)
                evicted.append((partition, key))
        return evicted


async def write_through(sink: Any, store: Any, partition: int, items: Iterable[tuple[Any, bytes]]) -> None:
    """Set keys of a table and write them to its changelog.

    The same records `table[key] = value` would write, for a tenth of the
    cost: Faust's path builds a FutureMessage per key and hands it through a
    100-slot buffer that stalls the stream when full (../shared/FIELD-NOTES.md
    measures ~70 us against ~7 us for a direct send). Under exactly_once each
    record joins the transaction of `partition` (`worker.FaustSink`).
    """
    items = list(items)
    # Store everything before the first await: a TableBound rebuild running
    # between two sends must find every key its caller has just indexed.
    store.data.update(items)
    if not items:
        return
    encode_key = store.encode_key
    # One awaited `send_many` per batch: the sink hands each partition's records over as one record batch.
    await sink.send_many(store.changelog, [(encode_key(key), value, partition) for key, value in items],
                         source_partition=partition)


async def delete_through(sink: Any, store: Any, evicted: Iterable[tuple[int, Any]]) -> None:
    """Write a tombstone to the changelog for each evicted (partition, key).

    Awaited sends, like `write_through`: Faust's `send_changelog` queues a
    FutureMessage per key with no back-pressure, so memory grows with any
    backlog (a worker slowed by tracemalloc held 790k of them, ~450 MB, in
    benchmarks/memory.py).
    """
    for partition, key in evicted:
        if key in store.data:
            continue  # written again while an earlier send yielded: alive, keep it
        await sink.send(store.changelog, store.encode_key(key), None,
                        source_partition=partition, partition=partition)
