"""ReadOffsets: the bookkeeping that decides which fetched records a batch delivers."""

from faust.types import TP

from anomaly_stream.stream.consumer import ReadOffsets

TP0 = TP("transactions", 0)


def test_a_newly_assigned_partition_is_not_positioned_until_faust_seeks_it():
    offsets = ReadOffsets()
    assert not offsets.positioned(TP0)
    assert offsets.expected(TP0) is None
    assert not offsets.positioned(TP0), "reading must not create an entry"
    offsets.update({TP0: None})  # perform_seek: the group has no committed offset
    assert offsets.positioned(TP0)
    assert offsets.expected(TP0) is None


def test_a_seek_names_the_next_offset_and_a_delivery_the_last_one():
    offsets = ReadOffsets()
    offsets[TP0] = 100
    assert offsets.expected(TP0) == 100
    offsets.delivered(TP0, 149)
    assert offsets.expected(TP0) == 150
    offsets.update({TP0: 120})  # a seek after a delivery: next offset again
    assert offsets.expected(TP0) == 120


def test_revocation_forgets_the_position():
    offsets = ReadOffsets()
    offsets.delivered(TP0, 7)
    offsets.pop(TP0, None)
    assert not offsets.positioned(TP0)
    offsets[TP0] = 7
    assert offsets.expected(TP0) == 7
