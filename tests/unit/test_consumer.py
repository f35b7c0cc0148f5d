"""The batch consumer's bookkeeping (ReadOffsets) and its decision per fetched slice (decide)."""

from faust.types import TP

from anomaly_stream.stream.consumer import DELIVER, REWIND, SEEK_BACK, SKIP, ReadOffsets, Step, decide

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


# -- decide: what a fetched slice of one partition becomes --------------------

def test_the_first_fetch_after_an_assignment_waits_for_faust_to_seek():
    assert decide(False, None, [0, 1, 2], None, 1) == Step(REWIND)


def test_no_committed_offset_delivers_everything():
    assert decide(True, None, [5, 6, 7], None, 1) == Step(DELIVER, 0, 5)


def test_records_already_delivered_are_dropped():
    assert decide(True, 103, [100, 101, 102, 103, 104], None, 1) == Step(DELIVER, 3, 103)
    assert decide(True, 110, [100, 101], None, 1) == Step(SKIP)


def test_a_transaction_marker_is_acknowledged_with_the_batch():
    # expected 50, the batch starts at 51: offset 50 was a commit marker.
    assert decide(True, 50, [51, 52], None, 1) == Step(DELIVER, 0, 50)


def test_a_stale_fetch_after_a_seek_is_read_again_not_acknowledged():
    assert decide(True, 50, [80, 81], None, 1) == Step(SEEK_BACK, 0)


def test_an_aborted_transactions_hole_is_delivered_once_it_shows_again():
    first = decide(True, 50, [80, 81], None, 1)
    assert first.action == SEEK_BACK
    again = decide(True, 50, [80, 81], (50, 80), 1)
    assert again == Step(DELIVER, 0, 50), "the hole is acknowledged with the batch"
    other = decide(True, 50, [90], (50, 80), 1)
    assert other.action == SEEK_BACK, "a different hole is a new suspect"
