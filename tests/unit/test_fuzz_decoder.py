"""Poison input through the worker's hot path: `detector.process_batch`, fuzzed with hypothesis.

tests/unit/test_schema.py fuzzes `schema.decode` alone. Here whole batches of
mixed messages (valid, mutated, arbitrary bytes, wrong or missing keys) go
through `process_batch` with a real model and profile store, as the agent runs
it: no exception escapes, and every message ends up in exactly one of
processed, dead-lettered (with a known reason) or re-keyed.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_stream.detect.detector import PROCESSING_ERROR, Record, process_batch
from anomaly_stream.detect.features import AddressProfile
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator
from anomaly_stream.detect.model import ModelConfig, PartitionModel
from anomaly_stream.detect.schema import REASONS

from .test_schema import FIELDS, base_tx, json_values, raw

VALID = TrafficGenerator(GeneratorConfig(seed=5)).take(200)
FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

keys = st.none() | st.binary(max_size=44) | st.sampled_from([b"0x" + b"ab" * 20, b"0X" + b"AB" * 20, b"\xff\xfe"])
valid_tx = st.sampled_from(VALID)
mutated_tx = st.builds(lambda tx, changes: {**tx, **changes}, valid_tx,
                       st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3))
dropped_tx = st.builds(lambda tx, drop: {k: v for k, v in tx.items() if k not in drop}, valid_tx,
                       st.sets(st.sampled_from(FIELDS), max_size=3))
replaced_base = st.builds(lambda changes: base_tx(**changes), st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))


@st.composite
def messages(draw) -> tuple[bytes | None, bytes]:
    kind = draw(st.sampled_from(["valid", "mutated", "dropped", "replaced", "bytes", "json", "truncated"]))
    if kind == "bytes":
        return draw(keys), draw(st.binary(max_size=300))
    if kind == "json":
        return draw(keys), raw(draw(json_values))
    obj = draw({"valid": valid_tx, "mutated": mutated_tx, "dropped": dropped_tx, "replaced": replaced_base}.get(
        kind, valid_tx))
    payload = raw(obj)
    if kind == "truncated":
        payload = payload[: draw(st.integers(0, len(payload)))]
    sender = obj.get("from") if isinstance(obj, dict) else None
    # Mostly keyed by sender as producers should; sometimes by anything else.
    if isinstance(sender, str) and draw(st.booleans()):
        key = sender.lower().encode("utf-8", "surrogatepass")
    else:
        key = draw(keys)
    return key, payload


def run_batch(model: PartitionModel, batch: list[tuple[bytes | None, bytes]], store: dict[bytes, bytes],
              timestamps: list[float]):
    records = [Record(offset, key, value, ts) for offset, ((key, value), ts) in enumerate(zip(batch, timestamps))]

    def lookup(sender: str) -> AddressProfile | None:
        got = store.get(sender.encode())
        return None if got is None else AddressProfile.from_bytes(got)

    result = process_batch(model, records, lookup, partition=1)
    for sender, profile in result.profiles.items():
        store[sender.encode()] = profile.to_bytes()
    return records, result


def assert_accounted(records: list[Record], result) -> None:
    dead = [d.record.offset for d in result.dead_letters]
    rekeyed = [r.offset for _, r in result.rekeyed]
    assert result.processed == len(result.scores)
    assert result.processed + len(dead) + len(rekeyed) == len(records)
    assert len(set(dead) | set(rekeyed)) == len(dead) + len(rekeyed), "a message counted twice"
    for d in result.dead_letters:
        assert d.reason in REASONS or d.reason == PROCESSING_ERROR, d
        assert d.reason != PROCESSING_ERROR, f"a valid transaction failed in features/model: {d.detail}"
    for sender, record in result.rekeyed:
        assert record.key is None or record.key.decode("ascii", "replace") != sender
    for document in result.anomalies:
        orjson.dumps(document)  # publishable


timestamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@FUZZ
@given(st.lists(messages(), min_size=1, max_size=60), st.data())
def test_every_message_is_processed_dead_lettered_or_rekeyed(batch, data):
    model = PartitionModel(ModelConfig(warmup_events=5, window_size=10), partition=1)
    store: dict[bytes, bytes] = {}
    ts = data.draw(st.lists(timestamps, min_size=len(batch), max_size=len(batch)))
    records, result = run_batch(model, batch, store, ts)
    assert_accounted(records, result)


@FUZZ
@given(st.lists(st.lists(messages(), min_size=1, max_size=30), min_size=2, max_size=4))
def test_poison_does_not_disturb_later_batches(batches):
    """State written by one fuzzed batch (profiles, model) is read back by the next without error."""
    model = PartitionModel(ModelConfig(warmup_events=5, window_size=10), partition=1)
    store: dict[bytes, bytes] = {}
    for batch in batches:
        records, result = run_batch(model, batch, store, [1_700_000_000.0] * len(batch))
        assert_accounted(records, result)
    model = PartitionModel.from_bytes(model.to_bytes())  # the checkpoint still round-trips
    clean = [(tx["from"].encode(), orjson.dumps(tx)) for tx in VALID[:20]]
    records, result = run_batch(model, clean, store, [1_700_000_000.0] * len(clean))
    assert result.processed == len(clean)
