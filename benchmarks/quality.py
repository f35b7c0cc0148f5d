"""Detection quality per generated scenario, and the hot path's cost per transaction.

    .venv/bin/python benchmarks/quality.py [--count 200000] [--seed 42] [--partitions 4]
                                           [--batch-size 500] [--json OUT.json]

Generates a fixed labelled stream with `TrafficGenerator` (cached as JSONL
under /tmp), replays it through `anomaly_stream.backtest.replay_jsonl` (which
runs `detector.process_batch`, the worker's hot path) with the default
`ModelConfig`, and prints per scenario: recall at the operating threshold
(target flag rate 0.5%), ROC-AUC of that scenario against normal traffic,
and the false-positive rate on normal traffic. Metrics exclude each
partition's warm-up (no flag can be raised there). `us/tx` is the time
inside process_batch divided by the transactions it scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly_stream.backtest import replay_jsonl, report  # noqa: E402
from anomaly_stream.generate import SCENARIOS, GeneratorConfig, TrafficGenerator  # noqa: E402
from anomaly_stream.model import ModelConfig  # noqa: E402


def stream_file(count: int, seed: int) -> Path:
    path = Path(f"/tmp/anomaly_stream_quality_{seed}_{count}.jsonl")
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            for tx in TrafficGenerator(GeneratorConfig(seed=seed)).take(count):
                out.write(orjson.dumps(tx) + b"\n")
        tmp.rename(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--target-flag-rate", type=float, default=ModelConfig().target_flag_rate,
                        help="the operating threshold's target flag rate (setting TARGET_FLAG_RATE)")
    parser.add_argument("--n-trees", type=int, default=ModelConfig().n_trees, help="setting MODEL_N_TREES")
    parser.add_argument("--json")
    opts = parser.parse_args()
    path = stream_file(opts.count, opts.seed)
    with open(path, "rb") as f:
        outcome = replay_jsonl(f, ModelConfig(target_flag_rate=opts.target_flag_rate, n_trees=opts.n_trees), opts.partitions, opts.batch_size, label_field="label")
    summary = report(outcome, labelled=True, warm_only=True)
    warm = np.asarray(outcome.warm, dtype=bool)
    scores = np.asarray(outcome.scores)[warm]
    labels = np.asarray(outcome.labels, dtype=object)[warm]
    normal = labels == "normal"
    # Threshold-free view: one global score cut leaving 1% of normal traffic above it.
    cut = float(np.quantile(scores[normal], 0.99))
    print(f"stream: {path} ({opts.count} tx, seed {opts.seed}, {opts.partitions} partitions, "
          f"batch {opts.batch_size}, {opts.n_trees} trees); metrics after warm-up: n={summary['n']}")
    print(f"overall: roc_auc={summary['roc_auc']} pr_auc={summary['pr_auc']} precision={summary['precision']} "
          f"recall={summary['recall']} flag_rate={summary['flag_rate']:.4f} "
          f"fpr_normal={summary['false_positive_rate']}")
    print(f"cost: {summary['us_per_tx']} us/tx in process_batch ({summary['tx_per_s']} tx/s)")
    print()
    print(f"target flag rate {opts.target_flag_rate}: FPR on normal traffic "
          f"{summary['false_positive_rate']:.4f}; score cut at 1% FPR: {cut:.3f}")
    print("| scenario | n | recall at operating threshold | recall at 1% FPR | ROC-AUC vs normal |")
    print("|---|---:|---:|---:|---:|")
    for name in SCENARIOS:
        row = summary["per_label"].get(name)
        if row:
            at_cut = float((scores[labels == name] > cut).mean())
            row["recall_at_1pct_fpr"] = round(at_cut, 4)
            print(f"| {name} | {row['n']} | {row['recall']:.3f} | {at_cut:.3f} | {row['roc_auc_vs_normal']:.3f} |")
    print(f"| normal traffic | {int(normal.sum())} | FPR {summary['false_positive_rate']:.4f} | FPR 0.0100 | |")
    if opts.json:
        Path(opts.json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
