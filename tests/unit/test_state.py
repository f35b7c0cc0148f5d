"""Tests for size and TTL bounds of changelogged tables (anomaly_stream.stream.state)."""

from __future__ import annotations

import pytest

from anomaly_stream.stream.state import TableBound


class FakeTable:
    """What TableBound uses of a Faust table: its `data`."""

    def __init__(self, data=None):
        self.data = dict(data or {})


def locate(key, value):
    return value  # values in these tests are (partition, last write time)


def bound(table=None, ttl=100.0, size=10) -> TableBound:
    return TableBound(table if table is not None else FakeTable(), ttl, size, locate)


def write(b: TableBound, partition: int, key, t: float) -> None:
    b.table.data[key] = (partition, t)
    b.touch(partition, key, t)


def test_sweep_evicts_past_ttl_oldest_first():
    b = bound(ttl=15)
    for key, t in [("a", 0), ("b", 10), ("c", 20), ("d", 29)]:
        write(b, 0, key, t)
    assert b.sweep(lambda p: 30.0) == [(0, "a"), (0, "b")]
    assert set(b.table.data) == {"c", "d"}
    assert list(b.index[0]) == ["c", "d"]
    assert len(b) == 2
    assert b.sweep(lambda p: 30.0) == []  # nothing more to do


def test_key_exactly_at_the_cutoff_is_kept():
    b = bound(ttl=10)
    write(b, 0, "a", 20)
    assert b.sweep(lambda p: 30.0) == []
    assert b.sweep(lambda p: 30.5) == [(0, "a")]


def test_sweep_enforces_size_per_partition_oldest_first():
    b = bound(ttl=1e9, size=2)
    for i, key in enumerate("abcde"):
        write(b, 0, key, float(i))
    for i, key in enumerate("xy"):
        write(b, 1, key, float(i))
    assert b.sweep(lambda p: 10.0) == [(0, k) for k in "abc"]
    assert set(b.table.data) == {"d", "e", "x", "y"}
    assert len(b) == 4


def test_trim_keeps_the_size_bound_at_write_time_oldest_first():
    b = bound(ttl=1e9, size=2)
    for i, key in enumerate("abcd"):
        write(b, 0, key, float(i))
    write(b, 1, "x", 0.0)
    assert b.trim(0) == [(0, "a"), (0, "b")]
    assert b.trim(1) == [] and b.trim(7) == []
    assert set(b.table.data) == {"c", "d", "x"}
    assert list(b.index[0]) == ["c", "d"]


def test_touch_moves_a_key_to_the_newest_end():
    b = bound(ttl=1e9, size=2)
    write(b, 0, "a", 1)
    write(b, 0, "b", 2)
    write(b, 0, "a", 3)
    write(b, 0, "c", 4)
    assert b.sweep(lambda p: 5.0) == [(0, "b")]
    assert list(b.index[0]) == ["a", "c"]


def test_tombstones_go_to_each_partition_with_its_own_clock():
    b = bound(ttl=10)
    write(b, 0, "a", 0)
    write(b, 3, "b", 0)
    write(b, 3, "c", 95)
    now = {0: 5.0, 3: 100.0}
    assert b.sweep(lambda p: now[p]) == [(3, "b")]
    assert set(b.table.data) == {"a", "c"}


def test_sweep_of_key_already_gone_from_table_still_evicts_it():
    b = bound(ttl=1)
    b.touch(0, "ghost", 0.0)
    assert b.sweep(lambda p: 10.0) == [(0, "ghost")]


def test_newest_and_len():
    b = bound()
    assert b.newest(0) == 0.0 and len(b) == 0
    write(b, 0, "a", 5)
    write(b, 0, "b", 7)
    write(b, 1, "c", 9)
    assert b.newest(0) == 7 and b.newest(1) == 9 and b.newest(2) == 0.0
    assert len(b) == 3


def test_rebuild_recreates_order_from_table_and_drops_unowned():
    table = FakeTable({"a": (0, 30.0), "b": (0, 10.0), "c": (0, 20.0), "d": (1, 5.0), "e": (2, 1.0), "f": (5, 1.0)})
    b = bound(table, ttl=15, size=10)
    b.touch(7, "old", 1.0)  # index entries from before the rebuild are forgotten
    b.rebuild({0, 1, 3})
    assert list(b.index[0]) == ["b", "c", "a"]
    assert list(b.index[1]) == ["d"]
    assert list(b.index[3]) == []
    assert 7 not in b.index
    assert set(table.data) == {"a", "b", "c", "d"}  # e and f belong to partitions we do not own
    assert b.newest(0) == 30.0 and b.newest(1) == 5.0 and b.newest(3) == 0.0
    assert len(b) == 4
    assert b.sweep(lambda p: 30.0) == [(0, "b"), (1, "d")]


def test_rebuild_then_size_sweep_keeps_newest():
    table = FakeTable({f"k{i}": (0, float(100 - i)) for i in range(10)})
    b = bound(table, ttl=1e9, size=3)
    b.rebuild({0})
    assert b.sweep(lambda p: 100.0) == [(0, f"k{i}") for i in range(9, 2, -1)]
    assert set(table.data) == {"k0", "k1", "k2"}


def test_rebuild_on_empty_table():
    b = bound(FakeTable())
    b.rebuild({0, 1})
    assert len(b) == 0 and b.newest(0) == 0.0
    assert b.sweep(lambda p: 1e12) == []


@pytest.mark.parametrize("n", [0, 1, 50])
def test_bound_holds_after_sweep(n):
    b = bound(ttl=1e9, size=5)
    for i in range(n):
        write(b, i % 2, i, float(i))
    evicted = b.sweep(lambda p: float(n))
    assert all(len(keys) <= 5 for keys in b.index.values())
    assert len(b.table.data) == len(b) == min((n + 1) // 2, 5) + min(n // 2, 5)
    assert len(evicted) == n - len(b)


def test_values_kept_in_tables_hold_only_their_own_bytes():
    import tracemalloc

    from anomaly_stream.detect.detector import encode
    from anomaly_stream.detect.features import AddressProfile

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [AddressProfile(first_seen=1.7e9, last_seen=1.7e9 + i, partition=i % 4).to_bytes()
                for i in range(1000)]
        kept += [encode({"tx_hash": "0x%064x" % i, "score": 0.9}) for i in range(1000)]
        per_value = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_value < 300, f"{per_value:.0f} bytes per stored value"
