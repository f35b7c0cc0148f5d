"""The hot path: one batch of one partition's raw messages in, decisions out.

Plain functions over plain data, shared by the worker, the backtest and the
benchmarks. The caller owns I/O: it supplies the sender profiles it has
(`lookup`) and persists what comes back (`BatchResult.profiles`), publishes
anomalies and dead letters. Every input message ends up in exactly one of
`processed`, `dead_letters` or `rekeyed`, so the counts always add up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

import orjson

from .features import AddressProfile, compact, extract
from .model import PartitionModel
from .schema import WEI_PER_ETH, WEI_PER_GWEI, InvalidTransaction, Tx, decode

ANOMALY_SCHEMA = "anomaly_stream.anomaly/v1"
# The dead-letter reason for a valid transaction the features or model failed on.
PROCESSING_ERROR = "processing_error"


class Record(NamedTuple):
    """One consumed message: what the batch consumer hands over, or a line of a file."""

    offset: int
    key: bytes | None
    value: bytes
    timestamp: float  # seconds; the fallback event time when a tx has no blockTimestamp


class DeadLetter(NamedTuple):
    record: Record
    reason: str
    detail: str


@dataclass
class BatchResult:
    processed: int = 0
    anomalies: list[dict] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rekeyed: list[tuple[str, Record]] = field(default_factory=list)  # (sender, record)
    profiles: dict[str, AddressProfile] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    latest_event_time: float = 0.0


def process_batch(
    model: PartitionModel,
    records: Iterable[Record],
    lookup: Callable[[str], AddressProfile | None],
    partition: int,
    require_key: bool = True,
    clock: Callable[[], float] = time.time,
) -> BatchResult:
    """Score then learn every transaction of the batch, in order.

    With `require_key`, a message whose key is not its lower-case sender is
    not scored here: it belongs to another partition's state, and the caller
    re-publishes it under the right key (`rekeyed`).
    """
    result = BatchResult()
    profiles = result.profiles
    scores = result.scores
    threshold = model.threshold
    score_learn = model.score_learn
    market = model.market
    for record in records:
        try:
            tx = decode(record.value)
        except InvalidTransaction as exc:
            result.dead_letters.append(DeadLetter(record, exc.reason, exc.detail))
            continue
        sender = tx.sender
        if require_key and (record.key is None or record.key.decode("ascii", "replace") != sender):
            result.rekeyed.append((sender, record))
            continue
        profile = profiles.get(sender)
        if profile is None:
            profile = lookup(sender)
        now = tx.block_timestamp or record.timestamp
        try:
            x, profile = extract(tx, profile, now, market)
            score = score_learn(x)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one message, not the worker
            result.dead_letters.append(DeadLetter(record, PROCESSING_ERROR, repr(exc)[:200]))
            continue
        profile.partition = partition
        profiles[sender] = profile
        scores.append(score)
        if now > result.latest_event_time:
            result.latest_event_time = now
        if score > threshold:
            profile.anomalies += 1
            result.anomalies.append(anomaly_document(tx, record, partition, score, threshold, model.explain(x), clock()))
    result.processed = len(scores)
    model.end_batch()
    return result


def anomaly_document(tx: Tx, record: Record, partition: int, score: float, threshold: float,
                     explanation: list[dict], detected_at: float) -> dict:
    """The message subscribers of the anomalies topic receive (schema v1, see README)."""
    return {
        "schema": ANOMALY_SCHEMA,
        "tx_hash": tx.hash,
        "address": tx.sender,
        "to": tx.to,
        "value_wei": str(tx.value_wei),
        "value_eth": tx.value_wei / WEI_PER_ETH,
        "gas_price_gwei": tx.gas_price_wei / WEI_PER_GWEI,
        "block_number": tx.block_number,
        "event_time": tx.block_timestamp or record.timestamp,
        "detected_at": detected_at,
        "score": round(score, 6),
        "threshold": round(threshold, 6),
        "explanation": explanation,
        "source": {"partition": partition, "offset": record.offset, "timestamp": record.timestamp},
    }


def encode(document: dict) -> bytes:
    return compact(orjson.dumps(document))  # kept in the anomaly buffer
