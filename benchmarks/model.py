"""The model's hot path alone: River's HalfSpaceTrees vs `CompiledHST.score_learn`, same events, same scores.

    .venv/bin/python benchmarks/model.py [--count 100000] [--repeats 5] [--single-count 10000]
                                         [--data uniform skewed] [--short]
                                         [--json benchmarks/results/model.json]

No Kafka, no services, one core. The default model (`ModelConfig`: 20 trees
of height 6, window 250, seed 42) sees `--count` events of each data set:
`uniform` (independent uniform features) and `skewed` (rows shaped like the
detector's features: mostly 0, a skewed tail, some 0/1 indicators, 1%
outliers; synthetic, so that this file does not follow every change of
`features.py`), as many columns as `FEATURE_NAMES`. Per repeat and data set:

1. River: `score_one` then `learn_one` per event (dicts built beforehand);
2. `CompiledHST.score_learn` from a fresh model, in batches of 100, 500 and
   5000 over the same events, and in batches of 1 (the per-call overhead)
   over the first `--single-count` of them (its events/s does not depend on
   the count; 100k single calls would double the run);
3. the whole `PartitionModel`: `score_learn(X)` then `end_batch()` per batch
   of 500 (protection: flagged rows are not learned; histogram, sample,
   threshold), against the old per-event path on River: per event
   `score_one`, `learn_one` unless flagged, the histogram bin and every
   8th event into the sample, with the batch's threshold taken from the
   PartitionModel run.

Every compiled run's scores are checked equal (==) to River's of the same
repeat, and the ratio to River is computed within the repeat; medians over
`--repeats` are printed and written. The checkpoint sizes of the trained
model are measured too: `CompiledHST.to_bytes` (with and without an HMAC
key) against a pickle of River's trained `HalfSpaceTrees`, with the encode
and decode times, and `PartitionModel.to_bytes` (trees, histogram, a full
explanation sample, fee market).

Each data set takes about a minute at the defaults on the 2-core machine
(River is most of it), so `--data` runs one at a time; results of data sets
already in `--json` and not run now are kept (each data set's ratios come
from its own run). `--short`: 20k events, 2 repeats, 5k single calls.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import sys
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np
import river
from river.anomaly import HalfSpaceTrees

from common import write_result  # first: it puts the repository root on sys.path
from anomaly_stream.detect.features import FEATURE_NAMES
from anomaly_stream.detect.hst import CompiledHST
from anomaly_stream.detect.model import BINS, SAMPLE_EVERY, SAMPLE_SIZE, ModelConfig, PartitionModel

BATCHES = (1, 100, 500, 5000)
CONFIG = ModelConfig()
SHAPE = {"n_trees": CONFIG.n_trees, "height": CONFIG.height,
         "window_size": CONFIG.window_size, "seed": CONFIG.seed}


PARTITION_BATCH = 500


def uniform(count: int) -> np.ndarray:
    return np.random.default_rng(42).random((count, len(FEATURE_NAMES)))


def skewed(count: int) -> np.ndarray:
    """Rows shaped like the detector's features (the generator of tests/unit/test_model.py), 1% outliers."""
    rng = np.random.default_rng(42)
    X = np.zeros((count, len(FEATURE_NAMES)))
    rates = (0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.3, 0.15)
    for j in range(X.shape[1]):
        on = rng.random(count) < rates[j % len(rates)]
        X[on, j] = 1.0 if j % 4 == 3 else rng.beta(1.5, 6, int(on.sum()))
    outliers = rng.random(count) < 0.01
    X[outliers] = rng.random((int(outliers.sum()), X.shape[1]))
    return X


DATASETS = {"uniform": uniform, "skewed": skewed}


def river_run(X: np.ndarray) -> tuple[float, np.ndarray, HalfSpaceTrees]:
    events = [dict(zip(FEATURE_NAMES, row)) for row in X.tolist()]
    hst = HalfSpaceTrees(**SHAPE)
    scores = []
    started = time.perf_counter()
    for x in events:
        scores.append(hst.score_one(x))
        hst.learn_one(x)
    seconds = time.perf_counter() - started
    return seconds, np.array(scores, dtype=np.float64), hst


def compiled_run(X: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    model = CompiledHST.new(features=FEATURE_NAMES, **SHAPE)
    out = []
    started = time.perf_counter()
    for at in range(0, len(X), batch):
        out.append(model.score_learn(X[at: at + batch]))
    seconds = time.perf_counter() - started
    return seconds, np.concatenate(out)


def checkpoint_sizes(hst: HalfSpaceTrees) -> dict:
    model = CompiledHST.from_river(hst, FEATURE_NAMES)
    key = b"\x07" * 32

    def timed(fn, n=20):
        started = time.perf_counter()
        for _ in range(n):
            value = fn()
        return value, 1e3 * (time.perf_counter() - started) / n

    plain, plain_ms = timed(model.to_bytes)
    signed, signed_ms = timed(lambda: model.to_bytes(key))
    _, decode_ms = timed(lambda: CompiledHST.from_bytes(signed, key))
    pickled, pickle_ms = timed(lambda: pickle.dumps(hst, protocol=pickle.HIGHEST_PROTOCOL))
    _, unpickle_ms = timed(lambda: pickle.loads(pickled))  # noqa: S301 - our own bytes
    assert CompiledHST.from_bytes(signed, key).to_bytes() == plain
    return {
        "compiled_bytes": len(plain), "compiled_hmac_bytes": len(signed),
        "river_pickle_bytes": len(pickled), "ratio_pickle_over_compiled": len(pickled) / len(plain),
        "compiled_encode_ms": plain_ms, "compiled_hmac_encode_ms": signed_ms,
        "compiled_hmac_decode_ms": decode_ms, "pickle_dumps_ms": pickle_ms, "pickle_loads_ms": unpickle_ms,
    }


def partition_run(X: np.ndarray) -> tuple[float, np.ndarray, list[float], PartitionModel]:
    """The whole PartitionModel: score_learn then end_batch per batch; the thresholds in force per batch."""
    model = PartitionModel(CONFIG)
    out, thresholds = [], []
    started = time.perf_counter()
    for at in range(0, len(X), PARTITION_BATCH):
        thresholds.append(model.threshold)
        out.append(model.score_learn(X[at: at + PARTITION_BATCH]))
        model.end_batch()
    seconds = time.perf_counter() - started
    return seconds, np.concatenate(out), thresholds, model


def river_partition_run(X: np.ndarray, thresholds: list[float]) -> tuple[float, np.ndarray]:
    """The old per-event path on River, protected as the new one: skip learning a flagged event."""
    events = [dict(zip(FEATURE_NAMES, row)) for row in X.tolist()]
    hst = HalfSpaceTrees(**SHAPE)
    hist = [0.0] * BINS
    sample: deque = deque(maxlen=SAMPLE_SIZE)
    scores = []
    seen = 0
    started = time.perf_counter()
    for b, threshold in enumerate(thresholds):
        for x in events[b * PARTITION_BATCH: (b + 1) * PARTITION_BATCH]:
            score = hst.score_one(x)
            if score <= threshold:
                hst.learn_one(x)
            seen += 1
            hist[min(int(score * BINS), BINS - 1)] += 1.0
            if not seen % SAMPLE_EVERY:
                sample.append(x)
            scores.append(score)
    seconds = time.perf_counter() - started
    return seconds, np.array(scores, dtype=np.float64)


def partition_bench(name: str, X: np.ndarray) -> dict:
    seconds, scores, thresholds, model = partition_run(X)
    river_s, expected = river_partition_run(X, thresholds)
    if not np.array_equal(scores, expected):
        raise AssertionError(f"{name}: PartitionModel scores differ from the River loop's")
    flagged = int(np.sum(scores > np.repeat(thresholds, PARTITION_BATCH)[: len(scores)]))
    keyed = PartitionModel.from_bytes(model.to_bytes(), CONFIG)
    keyed.config = replace(CONFIG, checkpoint_key=b"\x07" * 32)
    return {"batch": PARTITION_BATCH, "ev_per_s": len(X) / seconds,
            "ms_per_batch": 1e3 * seconds / -(-len(X) // PARTITION_BATCH),
            "river_per_event_ev_per_s": len(X) / river_s,
            "river_per_event_ms_per_batch": 1e3 * river_s / -(-len(X) // PARTITION_BATCH),
            "ratio": river_s / seconds, "flagged_not_learned": flagged, "learned": model.learned,
            "checkpoint_bytes": len(model.to_bytes()), "checkpoint_hmac_bytes": len(keyed.to_bytes())}


def bench(name: str, X: np.ndarray, repeats: int, single_count: int) -> dict:
    runs = []
    hst = None
    for repeat in range(repeats):
        river_s, expected, hst = river_run(X)
        row = {"river_ev_per_s": len(X) / river_s}
        for batch in BATCHES:
            events = X[:single_count] if batch == 1 else X
            seconds, scores = compiled_run(events, batch)
            if not np.array_equal(scores, expected[: len(events)]):
                raise AssertionError(f"{name}, batch {batch}: scores differ from River's "
                                     f"(max abs diff {np.max(np.abs(scores - expected[:len(events)]))})")
            row[f"batch_{batch}_ev_per_s"] = len(events) / seconds
            row[f"batch_{batch}_ratio"] = row[f"batch_{batch}_ev_per_s"] / row["river_ev_per_s"]
        runs.append(row)
        print(f"{name} repeat {repeat + 1}: River {row['river_ev_per_s']:,.0f} ev/s; "
              + ", ".join(f"batch {b} {row[f'batch_{b}_ev_per_s']:,.0f} ({row[f'batch_{b}_ratio']:.2f}x)"
                          for b in BATCHES), flush=True)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{name} median: River {median['river_ev_per_s']:,.0f} ev/s; "
          + ", ".join(f"batch {b} {median[f'batch_{b}_ev_per_s']:,.0f} ev/s ({median[f'batch_{b}_ratio']:.2f}x)"
                      for b in BATCHES))
    partition = [partition_bench(name, X) for _ in range(repeats)]
    part = {k: statistics.median(r[k] for r in partition) for k in partition[0]}
    print(f"{name} PartitionModel.score_learn + end_batch, batches of {PARTITION_BATCH}: "
          f"{part['ev_per_s']:,.0f} ev/s ({part['ms_per_batch']:.2f} ms a batch) vs the per-event River path "
          f"{part['river_per_event_ev_per_s']:,.0f} ev/s ({part['river_per_event_ms_per_batch']:.1f} ms): "
          f"{part['ratio']:.1f}x; {part['flagged_not_learned']:,.0f} flagged rows not learned; "
          f"checkpoint {part['checkpoint_bytes']:,.0f} B ({part['checkpoint_hmac_bytes']:,.0f} B with HMAC)")
    return {"events": len(X), "single_call_events": min(single_count, len(X)),
            "scores_identical": True, "runs": runs, "median": median, "checkpoint": checkpoint_sizes(hst),
            "partition_model": {"runs": partition, "median": part}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--single-count", type=int, default=10_000, help="events for the batch-1 timing")
    parser.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=["uniform", "skewed"])
    parser.add_argument("--short", action="store_true", help="20k events, 2 repeats, 5k single calls")
    parser.add_argument("--json", default="benchmarks/results/model.json")
    opts = parser.parse_args()
    if opts.short:
        opts.count, opts.repeats, opts.single_count = 20_000, 2, 5_000

    result = {
        "machine": "2 cores (shared), one process, no Kafka",
        "python": platform.python_version(), "river": river.__version__, "numpy": np.__version__,
        "model": SHAPE, "features": list(FEATURE_NAMES), "batches": list(BATCHES),
        "count": opts.count, "repeats": opts.repeats, "datasets": {},
    }
    previous = Path(opts.json)
    if previous.exists():
        try:
            old = json.loads(previous.read_text())
        except ValueError:
            old = {}
        if all(old.get(k) == result[k] for k in ("model", "count", "repeats", "river", "features")):
            result["datasets"].update({k: v for k, v in old.get("datasets", {}).items() if k not in opts.data})
    for name in opts.data:
        started = time.perf_counter()
        X = DATASETS[name](opts.count)
        print(f"{name}: {len(X):,} events ({time.perf_counter() - started:.1f} s to make)", flush=True)
        result["datasets"][name] = bench(name, X, opts.repeats, opts.single_count)
        size = result["datasets"][name]["checkpoint"]
        print(f"{name} checkpoint after {len(X):,} events: CompiledHST.to_bytes {size['compiled_bytes']:,} B "
              f"({size['compiled_hmac_bytes']:,} B with HMAC), pickle of River's model "
              f"{size['river_pickle_bytes']:,} B ({size['ratio_pickle_over_compiled']:.1f}x)")
    write_result(opts.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
