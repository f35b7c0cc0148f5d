"""Analysts' verdicts: request parsing, record validation, the benign window, precision, the bounds."""

from __future__ import annotations

import orjson
import pytest

from anomaly_stream.detect.feedback import FeedbackError, Verdicts, decode, encode, parse_request

A, B = "0x" + "aa" * 20, "0x" + "bb" * 20
H1, H2, H3 = ("0x" + c * 64 for c in "123")


class Clock:
    t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("body, error", [
    (b"{not json", "JSON object"), (b"[1]", "JSON object"), (b'{"verdict": "maybe"}', "verdict must be"),
    (b"{}", "verdict must be"), (b'{"verdict": "confirmed", "note": 5}', "note must be"),
    (orjson.dumps({"verdict": "confirmed", "note": "x" * 1001}), "note must be"),
    (b'{"verdict": "confirmed", "admin": true}', "unknown field 'admin'"),
    (b" " * 5000, "at most 4096 bytes"),
])
def test_a_bad_request_names_what_is_wrong(body, error):
    with pytest.raises(FeedbackError, match=error):
        parse_request(body)


def test_a_good_request():
    assert parse_request(b'{"verdict": "false_positive", "note": "our hot wallet"}') == (
        "false_positive", "our hot wallet")
    assert parse_request(b'{"verdict": "confirmed"}') == ("confirmed", "")


@pytest.mark.parametrize("key, value", [
    (b"not-a-hash", encode("confirmed", "", [A], 1.0)),
    (H1.encode(), b"\x80\x04pickle"),
    (H1.encode(), orjson.dumps({"verdict": "confirmed", "note": "", "addresses": [], "at": 1.0})),
    (H1.encode(), orjson.dumps({"verdict": "confirmed", "note": "", "addresses": ["0xzz"], "at": 1.0})),
    (H1.encode(), orjson.dumps({"verdict": "confirmed", "note": "", "addresses": [A], "at": True})),
    (H1.encode(), orjson.dumps({"verdict": "wipe", "note": "", "addresses": [A], "at": 1.0})),
    (H1.encode(), orjson.dumps({"verdict": "confirmed", "note": "", "addresses": [A] * 5, "at": 1.0})),
])
def test_a_forged_record_is_refused(key, value):
    assert decode(key, value) is None
    verdicts = Verdicts(100.0, 10.0, 10)
    assert verdicts.apply(key, value) is False and len(verdicts) == 0


def test_benign_for_its_window_and_a_later_verdict_replaces_it():
    clock = Clock()
    verdicts = Verdicts(ttl_seconds=1000.0, benign_seconds=100.0, max_entries=10, clock=clock)
    assert verdicts.apply(H1.encode(), encode("false_positive", "", [A], clock.t))
    assert verdicts.benign(A) and not verdicts.benign(B)
    clock.t += 101
    assert not verdicts.benign(A), "the benign window ended"
    assert verdicts.apply(H2.encode(), encode("false_positive", "", [A, B], clock.t))
    assert verdicts.benign(A) and verdicts.benign(B)
    assert verdicts.apply(H2.encode(), encode("confirmed", "it was a drain", [A, B], clock.t))
    assert not verdicts.benign(B), "confirmed on second thoughts"
    assert verdicts.apply(H2.encode(), None) and len(verdicts) == 1, "a tombstone removes it"


def test_precision_counts_the_verdicts_of_the_ttl():
    clock = Clock()
    verdicts = Verdicts(ttl_seconds=1000.0, benign_seconds=100.0, max_entries=10, clock=clock)
    assert verdicts.precision() is None
    verdicts.apply(H1.encode(), encode("confirmed", "", [A], clock.t))
    verdicts.apply(H2.encode(), encode("confirmed", "", [A], clock.t))
    verdicts.apply(H3.encode(), encode("false_positive", "", [B], clock.t + 500))
    assert verdicts.counts() == {"confirmed": 2, "false_positive": 1}
    assert verdicts.precision() == pytest.approx(2 / 3)
    clock.t += 1001
    assert verdicts.counts() == {"confirmed": 0, "false_positive": 1}
    stale = encode("confirmed", "", [A], clock.t - 2000)
    assert verdicts.apply(b"0x" + b"4" * 64, stale) and len(verdicts) == 3, "re-read after a restart: not kept"


def test_the_oldest_verdict_goes_first_past_the_size_bound():
    clock = Clock()
    verdicts = Verdicts(ttl_seconds=1000.0, benign_seconds=100.0, max_entries=2, clock=clock)
    verdicts.apply(H1.encode(), encode("false_positive", "", [A], clock.t))
    verdicts.apply(H2.encode(), encode("confirmed", "", [B], clock.t))
    verdicts.apply(H3.encode(), encode("confirmed", "", [B], clock.t))
    assert len(verdicts) == 2 and H1.encode() not in verdicts.data
    assert not verdicts.benign(A), "its benign mark went with it"

