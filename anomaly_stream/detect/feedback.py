"""Analysts' verdicts on anomalies, and what the detector does with them.

`POST /api/v1/anomalies/{tx_hash}/feedback` writes one record to the
feedback topic (compacted, keyed by the tx hash: a later verdict on the same
transaction replaces the earlier one). Every replica follows the topic
(`stream.replica`) into a `Verdicts`, which answers two questions:

- `benign(address)`: an address whose anomaly was marked `false_positive`
  is not flagged by the model again for `FEEDBACK_BENIGN_SECONDS` from the
  verdict (rules, such as a watch-list hit, still fire: an analyst's "this
  exchange is fine" must not hide it being sanctioned tomorrow);
- `counts()` / `precision()`: confirmed / (confirmed + false_positive) over
  the verdicts of the last `FEEDBACK_TTL_SECONDS`.

A record is JSON (never executed), validated on arrival; a bad one is
counted and ignored. Memory is bounded by `FEEDBACK_MAX_ENTRIES` (the oldest
verdict goes first) and by the TTL, which is also the topic's retention, so
the bound holds after a restart re-reads the topic.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import orjson

from .schema import ADDRESS, TX_HASH

VERDICTS = ("confirmed", "false_positive")
MAX_NOTE = 1000  # characters
MAX_BODY = 4096  # bytes of a request body
MAX_ADDRESSES = 4  # one tx is flagged from at most two perspectives; room to spare


class FeedbackError(ValueError):
    """A request the API answers with 400."""


class Verdict(NamedTuple):
    verdict: str
    note: str
    addresses: tuple[str, ...]  # the flagged addresses of the transaction
    at: float  # wall-clock seconds when it was given


def parse_request(body: bytes) -> tuple[str, str]:
    """The verdict and note of a request body `{"verdict": ..., "note": ...}`."""
    if len(body) > MAX_BODY:
        raise FeedbackError(f"the body must be at most {MAX_BODY} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FeedbackError("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise FeedbackError("the body must be a JSON object")
    unknown = set(data) - {"verdict", "note"}
    if unknown:
        raise FeedbackError(f"unknown field {sorted(unknown)[0]!r}: only verdict and note")
    verdict, note = data.get("verdict"), data.get("note", "")
    if verdict not in VERDICTS:
        raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise FeedbackError(f"note must be a string of at most {MAX_NOTE} characters")
    return verdict, note


def encode(verdict: str, note: str, addresses: list[str], at: float) -> bytes:
    return orjson.dumps({"verdict": verdict, "note": note, "addresses": sorted(set(addresses)), "at": at})


def decode(key: bytes, value: bytes) -> Verdict | None:
    """The record's verdict, or None if anything about it is off."""
    try:
        if not TX_HASH.fullmatch(key.decode("ascii")):
            return None
        data = orjson.loads(value)
        verdict, note, addresses, at = data["verdict"], data["note"], data["addresses"], data["at"]
    except (UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if (verdict not in VERDICTS or not isinstance(note, str) or len(note) > MAX_NOTE
            or not isinstance(addresses, list) or not 0 < len(addresses) <= MAX_ADDRESSES
            or not all(isinstance(a, str) and ADDRESS.fullmatch(a) for a in addresses)
            or not isinstance(at, (int, float)) or isinstance(at, bool) or not 0 <= at < 1e11):
        return None
    return Verdict(verdict, note, tuple(a.lower() for a in addresses), float(at))


class Verdicts:
    """The verdicts this replica holds, by tx hash, with the benign addresses they imply."""

    def __init__(self, ttl_seconds: float, benign_seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.time):
        self.ttl = ttl_seconds
        self.benign_seconds = benign_seconds
        self.max_entries = max_entries
        self.clock = clock
        self.data: dict[bytes, Verdict] = {}  # insertion order = arrival order: the oldest first
        self._benign: dict[str, set[bytes]] = {}  # address -> keys of false_positive verdicts naming it

    def __len__(self) -> int:
        return len(self.data)

    def apply(self, key: bytes, value: bytes | None) -> bool:
        """One topic record (None: a tombstone); False if it does not validate."""
        verdict = None if value is None else decode(key, value)
        if value is not None and verdict is None:
            return False
        self._drop(key)
        if verdict is not None and verdict.at >= self.clock() - self.ttl:
            self.data[key] = verdict
            if verdict.verdict == "false_positive":
                for address in verdict.addresses:
                    self._benign.setdefault(address, set()).add(key)
            while len(self.data) > self.max_entries:
                self._drop(next(iter(self.data)))
        return True

    def _drop(self, key: bytes) -> None:
        old = self.data.pop(key, None)
        if old is not None and old.verdict == "false_positive":
            for address in old.addresses:
                keys = self._benign.get(address)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._benign[address]

    def benign(self, address: str) -> bool:
        """Marked a false positive less than `benign_seconds` ago."""
        keys = self._benign.get(address)
        if not keys:
            return False
        since = self.clock() - self.benign_seconds
        return any(self.data[k].at >= since for k in keys)

    def counts(self) -> dict[str, int]:
        since = self.clock() - self.ttl
        counts = dict.fromkeys(VERDICTS, 0)
        for verdict in self.data.values():
            if verdict.at >= since:
                counts[verdict.verdict] += 1
        return counts

    def precision(self) -> float | None:
        """confirmed / (confirmed + false_positive); None before any verdict."""
        counts = self.counts()
        total = sum(counts.values())
        return counts["confirmed"] / total if total else None


def nothing_benign(address: str) -> bool:
    return False
