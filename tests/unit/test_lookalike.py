"""Look-alike detection against the real data the thresholds were chosen on (figures in lookalike.py)."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from anomaly_stream.detect.lookalike import PREFIX, SUFFIX, find_lookalike, looks_alike, shared_affixes

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRANSFERS = DATA / "labels" / "poison-hunter" / "phishing_transfers_sample.csv"
TRAFFIC_2017 = DATA / "traffic" / "mainnet-2017-ethereum-etl" / "transactions.csv.gz"
BLOCKS_2024 = DATA / "traffic" / "mainnet-2024-rpc-blocks"
HISTORY = 16


A = "0x" + "ab" + "0" * 34 + "cdef"


def _transfers() -> list[tuple[str, str]]:
    with TRANSFERS.open(newline="") as f:
        # (look-alike, the victim's real counterparty it imitates)
        return [(row["attacker"], row["similar_norm"]) for row in csv.DictReader(f)]


def _traffic_2017() -> list[tuple[str, str, int]]:
    with gzip.open(TRAFFIC_2017, "rt", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (int(r["block_number"]), int(r["transaction_index"])))
    return [(r["from_address"], r["to_address"], int(r["value"])) for r in rows]


def _traffic_2024() -> list[tuple[str, str, int]]:
    txs = []
    for path in sorted(BLOCKS_2024.glob("*.json.gz")):
        with gzip.open(path, "rb") as f:
            txs += json.load(f)
    txs.sort(key=lambda t: (int(t["blockNumber"], 16), int(t["transactionIndex"], 16)))
    return [(t["from"], t.get("to") or "", int(t["value"], 16)) for t in txs]


def _replay(txs, prefix, suffix, both_directions=False):
    """(new-counterparty events, hits): each address's HISTORY most recent distinct counterparties."""
    history: dict[str, list[str]] = {}
    new, hits = 0, []

    def see(owner, counterparty, tx):
        nonlocal new
        seen = history.setdefault(owner, [])
        if counterparty in seen:
            seen.remove(counterparty)
        else:
            if seen:
                new += 1
                imitated = find_lookalike(counterparty, seen, prefix, suffix)
                if imitated is not None:
                    hits.append((owner, counterparty, imitated, tx))
            if len(seen) == HISTORY:
                seen.pop(0)
        seen.append(counterparty)

    for tx in txs:
        sender, recipient = tx[0].lower(), tx[1].lower()
        if not recipient or sender == recipient:  # contract creations, self-sends
            continue
        see(sender, recipient, tx)
        if both_directions:
            see(recipient, sender, tx)
    return new, hits


# --- real poisoning transfers -------------------------------------------------

def test_real_poisoning_transfers_caught_at_the_measured_recall():
    transfers = _transfers()
    assert len(transfers) == 150
    caught = sum(find_lookalike(fake, [real]) == real for fake, real in transfers)
    assert caught == 139  # 0.927; lookalike.py's table, (p, s) = (2, 4)


def test_recall_table_and_matched_characters():
    pairs = [shared_affixes(fake, real) for fake, real in _transfers()]
    table = {(p, s): sum(lead >= p and trail >= s for lead, trail in pairs) for p in (0, 1, 2, 3) for s in (3, 4, 5)}
    assert table == {(0, 3): 149, (0, 4): 148, (0, 5): 111, (1, 3): 143, (1, 4): 142, (1, 5): 105,
                     (2, 3): 140, (2, 4): 139, (2, 5): 102, (3, 3): 105, (3, 4): 105, (3, 5): 68}
    totals = Counter(lead + trail for lead, trail in pairs)
    assert totals == {3: 1, 5: 1, 7: 23, 8: 59, 9: 38, 10: 1, 13: 4, 14: 15, 15: 7, 16: 1}


def test_the_imitated_counterparty_is_found_among_all_real_ones():
    transfers = _transfers()
    everyone = sorted({real for _, real in transfers})
    # Among all 128 real counterparties the same 139 are caught, and the match is the imitated one
    # except for 3 transfers to one victim (0x3b475a4a...) whose real counterparties 0xa0999fa0...,
    # 0xa0973724... and 0xa09ded4f... all read a09...0057e: the fake resembles them equally or more.
    found = [find_lookalike(fake, everyone) for fake, _ in transfers]
    assert sum(f is not None for f in found) == 139
    wrong = [(f, real) for f, (_, real) in zip(found, transfers) if f is not None and f != real]
    assert len(wrong) == 3
    assert all(looks_alike(f, real, 3, 5) for f, real in wrong)


# --- honest traffic -----------------------------------------------------------

def test_no_false_match_in_2017_traffic():
    txs = _traffic_2017()
    new, hits = _replay(txs, PREFIX, SUFFIX)
    assert new == 10_930
    assert hits == []
    # The replay does find resemblance where chance predicts it (151,410 comparisons x 16^-(p+s)),
    # so the zero above is the thresholds' doing.
    assert len(_replay(txs, 0, 2)[1]) == 590
    assert len(_replay(txs, 1, 3)[1]) == 2


def test_2024_lookalikes_are_the_four_real_zero_value_poisonings():
    _, outgoing = _replay(_traffic_2024(), PREFIX, SUFFIX)
    assert outgoing == []
    _, hits = _replay(_traffic_2024(), PREFIX, SUFFIX, both_directions=True)
    assert sorted(fake for _, fake, _, _ in hits) == [
        "0x25a22eaffd54eeec099916f40f0c94406d07e170",
        "0x327961b989bd759030a9f644b97020cb9d34748f",
        "0x994489d1c5252c202619dc3a82f187ad57268289",
        "0x995d9729d90597ca3c714b4c5d075d418ca2867f",
    ]
    for victim, fake, real, (sender, recipient, value) in hits:
        # The look-alike sent nothing to an address that had paid the real one.
        assert (sender.lower(), recipient.lower(), value) == (fake, victim, 0)
        assert shared_affixes(fake, real)[0] == 4 and shared_affixes(fake, real)[1] >= 6


# --- unit cases ----------------------------------------------------------------

def test_identical_address_is_not_a_lookalike():
    assert not looks_alike(A, A)
    assert not looks_alike(A, A.upper().replace("0X", "0x"))
    assert find_lookalike(A, [A]) is None


def test_shared_prefix_and_suffix():
    fake = "0x" + "ab" + "9" * 34 + "cdef"
    assert shared_affixes(A, fake) == (2, 4)
    assert looks_alike(A, fake)
    assert not looks_alike(A, fake, prefix=3)
    assert not looks_alike(A, fake, suffix=5)
    assert not looks_alike(A, "0x" + "ab" + "9" * 34 + "cdee")  # last character differs
    assert not looks_alike(A, "0x" + "ac" + "9" * 34 + "cdef")  # second character differs


def test_case_insensitive_and_0x_optional():
    fake = "0x" + "AB" + "9" * 34 + "CDEF"
    assert looks_alike(A.upper().replace("0X", "0x"), fake)
    assert looks_alike(A[2:], fake)
    assert find_lookalike(fake, ["0x" + "1" * 40, A]) == A


def test_candidate_in_history_is_still_compared_with_the_others():
    fake = "0x" + "ab" + "9" * 34 + "cdef"
    assert find_lookalike(fake, [fake, A]) == A


def test_closest_of_several_lookalikes_is_returned():
    fake = "0x" + "ab" + "9" * 34 + "cdef"
    closer = "0x" + "ab9" + "0" * 33 + "cdef"
    assert find_lookalike(fake, [A, closer]) == closer


@pytest.mark.parametrize("junk", ["", "0x", "0x12", "0xab", "ab", "0x" + "g" * 40, "0x" + "a" * 41, None, 42])
def test_short_or_invalid_strings_do_not_crash(junk):
    assert not looks_alike(junk, A)
    assert not looks_alike(A, junk)
    assert shared_affixes(junk, junk) == (0, 0)
    assert find_lookalike(junk, [A, junk]) is None
    assert find_lookalike(A, [junk]) is None


def test_thresholds_must_match_something():
    with pytest.raises(ValueError):
        looks_alike(A, A, prefix=0, suffix=0)
    with pytest.raises(ValueError):
        find_lookalike(A, [], prefix=-1)


def test_digest_keeps_look_alikes_that_share_six_leading_and_trailing_characters():
    # 27 of Poison-Hunter's 150 real look-alikes share 6+ leading and 6+ trailing
    # characters with their target: a first-and-last-6 digest made them one.
    from anomaly_stream.detect.lookalike import DIGEST_LENGTH, digest, imitated
    real = "0x06a2cf" + "ad" * 13 + "a57400"[:6]
    fake = "0x06a2cf" + "11" * 13 + "a57400"[:6]
    assert len(digest(real)) == DIGEST_LENGTH and digest(real) != digest(fake)
    assert imitated(digest(fake), (digest(real),)) == digest(real)
    assert imitated(digest(real), (digest(real),)) is None


def test_suffix_alone_resemblance():
    # Nine of the 11 real transfers missed at (2, 4) share 0-1 leading but 7 trailing characters.
    from anomaly_stream.detect.lookalike import digest, imitated
    real = "0x" + "ab" * 17 + "123456"
    fake = "0x" + "cd" * 17 + "123456"
    other = "0x" + "cd" * 17 + "023456"
    assert imitated(digest(fake), (digest(real),)) == digest(real)
    assert imitated(digest(other), (digest(real),)) is None
