"""Detection quality per generated scenario, and the hot path's cost per transaction.

    .venv/bin/python benchmarks/quality.py [--count 200000] [--seed 42] [--partitions 4]
                                           [--batch-size 500] [--n-trees N] [--height N] [--model-seed N]
                                           [--target-flag-rates 0.005,0.01,0.015] [--json OUT.json]

Generates a fixed labelled stream with `TrafficGenerator` (cached as JSONL
under /tmp), replays it through `anomaly_stream.tools.backtest.replay_jsonl` (which
runs `detector.process_batch`, the worker's hot path) with the default
`ModelConfig` (or the trees / seed given), and prints per scenario: recall
at 1% false positives (one global score cut leaving 1% of normal traffic
above it: threshold-free), ROC-AUC of that scenario against normal traffic,
and, for each target flag rate (setting TARGET_FLAG_RATE), the recall at the
operating threshold the worker would use, with that operating point's flag
rate and false-positive rate on normal traffic. Scores do not depend on the
target flag rate, so each rate is one more replay of the same stream; their
`us/tx` (time inside process_batch divided by the transactions it scored)
are printed with their median. Metrics exclude each partition's warm-up (no
flag can be raised there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly_stream.tools.backtest import replay, report  # noqa: E402
from anomaly_stream.tools.generate import SCENARIOS, GeneratorConfig, TrafficGenerator  # noqa: E402
from anomaly_stream.detect.model import ModelConfig  # noqa: E402


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
    parser.add_argument("--seed", type=int, default=42, help="the generator's seed")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500)
    default = ModelConfig()
    parser.add_argument("--target-flag-rates", default="0.005,0.01,0.015,0.02",
                        help="comma-separated operating points to report (setting TARGET_FLAG_RATE)")
    parser.add_argument("--n-trees", type=int, default=default.n_trees, help="setting MODEL_N_TREES")
    parser.add_argument("--height", type=int, default=default.height, help="setting MODEL_HEIGHT")
    parser.add_argument("--model-seed", type=int, default=default.seed, help="setting MODEL_SEED")
    parser.add_argument("--json")
    opts = parser.parse_args()
    # The default model's own operating point is always among them.
    rates = sorted({float(r) for r in opts.target_flag_rates.split(",") if r.strip()} | {default.target_flag_rate})
    path = stream_file(opts.count, opts.seed)
    summaries = {}
    costs = []
    scores = labels = None
    for rate in rates:
        config = ModelConfig(target_flag_rate=rate, n_trees=opts.n_trees, height=opts.height, seed=opts.model_seed)
        with open(path, "rb") as f:
            outcome = replay_jsonl(f, config, opts.partitions, opts.batch_size, label_field="label")
        summary = report(outcome, labelled=True, warm_only=True)
        summaries[rate] = summary
        costs.append(summary["us_per_tx"])
        if scores is None:
            warm = np.asarray(outcome.warm, dtype=bool)
            scores = np.asarray(outcome.scores)[warm]
            labels = np.asarray(outcome.labels, dtype=object)[warm]
    normal = labels == "normal"
    # Threshold-free view: one global score cut leaving 1% of normal traffic above it.
    cut = float(np.quantile(scores[normal], 0.99))
    first = summaries[rates[0]]
    print(f"stream: {path} ({opts.count} tx, seed {opts.seed}, {opts.partitions} partitions, "
          f"batch {opts.batch_size}, {opts.n_trees} trees of height {opts.height}, model seed {opts.model_seed}); "
          f"metrics after warm-up: n={first['n']}, labelled {first['n_anomalous']}")
    print(f"overall: roc_auc={first['roc_auc']} pr_auc={first['pr_auc']}")
    print(f"cost: {' '.join(f'{c:.2f}' for c in costs)} us/tx in process_batch; "
          f"median {float(np.median(costs)):.2f} us/tx ({1e6 / float(np.median(costs)):.0f} tx/s)")
    print()
    for rate, s in summaries.items():
        print(f"target flag rate {rate}: flag rate {s['flag_rate']:.4f}, FPR on normal traffic "
              f"{s['false_positive_rate']:.4f}, precision {s['precision']:.3f}, recall {s['recall']:.3f}")
    print(f"score cut at 1% FPR: {cut:.3f}")
    print()
    head = " | ".join(f"recall @ rate {r}" for r in rates)
    print(f"| scenario | n | recall at 1% FPR | ROC-AUC vs normal | {head} |")
    print("|---|---:|---:|---:|" + "---:|" * len(rates))
    for name in SCENARIOS:
        row = first["per_label"].get(name)
        if not row:
            continue
        at_cut = float((scores[labels == name] > cut).mean())
        for s in summaries.values():
            s["per_label"][name]["recall_at_1pct_fpr"] = round(at_cut, 4)
        ops = " | ".join(f"{summaries[r]['per_label'][name]['recall']:.3f}" for r in rates)
        print(f"| {name} | {row['n']} | {at_cut:.3f} | {row['roc_auc_vs_normal']:.4f} | {ops} |")
    fprs = " | ".join(f"FPR {summaries[r]['false_positive_rate']:.4f}" for r in rates)
    print(f"| normal traffic | {int(normal.sum())} | FPR 0.0100 | | {fprs} |")
    if opts.json:
        out = {"score_cut_at_1pct_fpr": cut, "us_per_tx": costs,
               "by_target_flag_rate": {str(r): s for r, s in summaries.items()}}
        Path(opts.json).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
