"""Backtesting: replay a file through the worker's own hot path and measure it.

    anomaly-stream backtest PATH [--label-field NAME] [--report OUT.json]
                                 [--plot OUT.png] [--partitions N] [--batch-size N]
                                 [--features col1,col2,...] [--scale online|none]
    python -m anomaly_stream.tools.backtest --export-shuttle OUT.csv   (tools.shuttle)

JSONL mode (the default): one transaction per line in the documented schema,
read in file order. Each line goes to the partition Kafka's default
partitioner would give its sender key (murmur2, as the Java client and
aiokafka's DefaultPartitioner), and each partition's lines are scored in
batches by `detector.process_batch` (the function the worker runs) with
one `PartitionModel` per partition and the sender profiles kept as their
changelog bytes, exactly as the worker stores them. Lines that fail
validation are the worker's dead letters and are counted as such.

CSV numeric mode (`--features`): the named columns go straight to one
`PartitionModel`, scaled into [0, 1] by a running min/max (`--scale online`,
as River's own half-space-tree examples do) or taken as already in [0, 1]
(`--scale none`). This checks the model itself, e.g. on River's bundled
Shuttle data (`--export-shuttle`).

The report always has the flag rate over all traffic (for unlabelled real
traffic, the number to watch). With a label field (truthy = anomalous) it has
ROC-AUC, PR-AUC (average precision), precision, recall and the false-positive
rate on normal traffic at the operating flags, recall at the score cuts that
let 1% and 0.1% of normal traffic through, and per label value the recall at
each of those (metrics: `evaluation`). `--plot` draws ROC curves per label,
precision-recall and score distributions (`plots.detection`).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from ..detect.detector import Record, process_batch
from ..detect.features import AddressProfile
from ..detect.model import ModelConfig, PartitionModel
from .evaluation import FPR_POINTS, NORMAL, evaluate
from .shuttle import export_shuttle

DEFAULT_BATCH_SIZE = 500


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and aiokafka's DefaultPartitioner) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# -- replay ----------------------------------------------------------------------


@dataclass
class Outcome:
    """Per scored event, in file order within each partition."""

    scores: list[float] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # NORMAL or the label's value
    warm: list[bool] = field(default_factory=list)  # the model was past warm-up
    lines: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # time spent in process_batch / score_learn
    partitions: int = 1


def _label_name(value) -> str:
    if not value:
        return NORMAL
    return value if isinstance(value, str) else "anomalous"


def replay_jsonl(
    lines: Iterable[bytes],
    config: ModelConfig,
    partitions: int = 4,
    batch_size: int = DEFAULT_BATCH_SIZE,
    label_field: str | None = None,
) -> Outcome:
    """Score every line as the worker would: per-partition batches through process_batch."""
    out = Outcome(partitions=partitions)
    models = [PartitionModel(config, p) for p in range(partitions)]
    stores: list[dict[str, bytes]] = [{} for _ in range(partitions)]
    pending: list[list[tuple[Record, str]]] = [[] for _ in range(partitions)]
    offsets = [0] * partitions
    fallback_time = time.time()
    dead = out.dead_letters

    def flush(p: int) -> None:
        batch = pending[p]
        if not batch:
            return
        pending[p] = []
        store = stores[p]
        model = models[p]
        warm = model.warm  # flags are only possible when the batch started warm

        def lookup(sender: str, _get=store.get, _load=AddressProfile.from_bytes):
            raw = _get(sender)
            return None if raw is None else _load(raw)

        records = [r for r, _ in batch]
        started = time.perf_counter()
        result = process_batch(model, records, lookup, p, require_key=False)
        out.seconds += time.perf_counter() - started
        for profile_sender, profile in result.profiles.items():
            store[profile_sender] = profile.to_bytes()
        bad = {d.record.offset for d in result.dead_letters}
        for d in result.dead_letters:
            dead[d.reason] = dead.get(d.reason, 0) + 1
        hit = {a["source"]["offset"] for a in result.anomalies}
        scores = iter(result.scores)
        for record, label in batch:
            if record.offset in bad:
                continue
            out.scores.append(next(scores))
            out.flagged.append(record.offset in hit)
            out.labels.append(label)
            out.warm.append(warm)

    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        out.lines += 1
        key = None
        label = NORMAL
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            sender = obj.get("from")
            if isinstance(sender, str):
                key = sender.encode()
            if label_field is not None:
                label = _label_name(obj.get(label_field))
            ts = obj.get("blockTimestamp")
            if isinstance(ts, str) and ts[:2] == "0x":
                try:
                    fallback_time = float(int(ts, 16))
                except ValueError:
                    pass
            elif isinstance(ts, int):
                fallback_time = float(ts)
        # A keyless message goes to partition 0 here (Kafka would pick one at random).
        p = kafka_partition(key, partitions) if key is not None else 0
        pending[p].append((Record(offsets[p], key, raw, fallback_time), label))
        offsets[p] += 1
        if len(pending[p]) >= batch_size:
            flush(p)
    for p in range(partitions):
        flush(p)
    return out


def replay_csv(
    rows: Iterable[dict[str, str]],
    columns: Sequence[str],
    config: ModelConfig,
    label_field: str | None = None,
    scale: str = "online",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Outcome:
    """Feed numeric columns straight to one PartitionModel (score, then learn)."""
    out = Outcome(partitions=1)
    model = PartitionModel(config, 0)
    lo = {c: math.inf for c in columns}
    hi = {c: -math.inf for c in columns}
    threshold = model.threshold
    in_batch = 0
    for row in rows:
        out.lines += 1
        try:
            values = [float(row[c]) for c in columns]
        except (KeyError, TypeError, ValueError):
            out.dead_letters["bad_row"] = out.dead_letters.get("bad_row", 0) + 1
            continue
        started = time.perf_counter()
        x = {}
        for c, v in zip(columns, values):
            if scale == "online":
                # River's MinMaxScaler: update the running range, then scale into it.
                if v < lo[c]:
                    lo[c] = v
                if v > hi[c]:
                    hi[c] = v
                span = hi[c] - lo[c]
                v = (v - lo[c]) / span if span > 0 else 0.0
            x[c] = 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)
        warm = model.warm
        score = model.score_learn(x)
        in_batch += 1
        if in_batch >= batch_size:
            model.end_batch()
            threshold = model.threshold
            in_batch = 0
        out.seconds += time.perf_counter() - started
        out.scores.append(score)
        out.flagged.append(score > threshold)
        out.labels.append(_label_name(_truthy(row.get(label_field))) if label_field else NORMAL)
        out.warm.append(warm)
    return out


def _truthy(value):
    """CSV cells are strings: '0', 'false', '' and 'none' are not anomalous."""
    if value is None:
        return None
    text = value.strip()
    if text.lower() in ("", "0", "0.0", "false", "none", "null", "normal"):
        return None
    return "anomalous" if text.lower() in ("1", "1.0", "true") else text


# -- report ----------------------------------------------------------------------


def report(outcome: Outcome, labelled: bool, warm_only: bool = False) -> dict:
    """The replay's counts and cost, and `evaluation.evaluate` over its scores.

    `warm_only`: metrics only over events scored after the partition's warm-up.
    """
    scores = np.asarray(outcome.scores, dtype=float)
    flagged = np.asarray(outcome.flagged, dtype=bool)
    labels = np.asarray(outcome.labels, dtype=object)
    if warm_only:
        keep = np.asarray(outcome.warm, dtype=bool)
        scores, flagged, labels = scores[keep], flagged[keep], labels[keep]
    metrics = evaluate(scores, flagged, labels, labelled=labelled)
    result: dict = {
        "n": metrics.pop("n"),
        "lines": outcome.lines,
        "dead_letters": sum(outcome.dead_letters.values()),
        "dead_letter_reasons": dict(sorted(outcome.dead_letters.items())),
        "flagged": metrics.pop("flagged"),
        "flag_rate": metrics.pop("flag_rate"),
        "partitions": outcome.partitions,
        "warm_only": warm_only,
        "tx_per_s": round(len(outcome.scores) / outcome.seconds, 1) if outcome.seconds else None,
        "us_per_tx": round(1e6 * outcome.seconds / len(outcome.scores), 2) if outcome.scores else None,
    }
    result.update(metrics)
    return result


# -- command -------------------------------------------------------------------


def _config(settings) -> ModelConfig:
    return ModelConfig.from_settings(settings) if settings is not None else ModelConfig()


def main(argv: Sequence[str] | None = None, settings=None) -> int:
    """`anomaly-stream backtest ...`; returns the exit code.

    `settings` (a `Settings`) gives the model configuration the worker would
    use; without it the `ModelConfig` defaults apply.
    """
    parser = argparse.ArgumentParser(prog="anomaly-stream backtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="JSONL transactions, or CSV with --features")
    parser.add_argument("--label-field", help="field whose truthy value marks an anomaly")
    parser.add_argument("--report", help="write the report as JSON here")
    parser.add_argument("--plot", help="write a PNG of ROC curves per label, precision-recall and score "
                                       "distributions here")
    parser.add_argument("--partitions", type=int, default=None,
                        help="input partitions to emulate (default: KAFKA_INPUT_PARTITIONS, else 8)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="records per partition batch")
    parser.add_argument("--features", help="CSV numeric mode: comma-separated columns fed to the model")
    parser.add_argument("--scale", choices=("online", "none"), default="online",
                        help="CSV mode: running min/max scaling (default) or columns already in [0, 1]")
    parser.add_argument("--limit", type=int, default=None, help="only the first N lines/rows")
    parser.add_argument("--warm-only", action="store_true", help="metrics only over events scored after warm-up")
    parser.add_argument("--export-shuttle", metavar="OUT.csv", help="write River's Shuttle data as CSV and exit")
    opts = parser.parse_args(list(argv) if argv is not None else None)

    if opts.export_shuttle:
        n = export_shuttle(opts.export_shuttle, opts.limit)
        print(f"wrote {n} rows to {opts.export_shuttle}")
        return 0
    if not opts.path:
        parser.error("PATH is required")
    if opts.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    config = _config(settings)
    partitions = opts.partitions or (getattr(settings, "kafka_input_partitions", None) or 8)
    if partitions < 1:
        parser.error("--partitions must be >= 1")
    started = time.perf_counter()
    if opts.features:
        columns = [c.strip() for c in opts.features.split(",") if c.strip()]
        with open(opts.path, newline="") as f:
            rows = csv.DictReader(f)
            if opts.limit:
                rows = (r for i, r in zip(range(opts.limit), rows))
            outcome = replay_csv(rows, columns, config, opts.label_field, opts.scale, opts.batch_size)
    else:
        with open(opts.path, "rb") as f:
            lines = f if not opts.limit else (line for _, line in zip(range(opts.limit), f))
            outcome = replay_jsonl(lines, config, partitions, opts.batch_size, opts.label_field)
    summary = report(outcome, labelled=opts.label_field is not None, warm_only=opts.warm_only)
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    if opts.report:
        Path(opts.report).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    if opts.plot:
        from . import plots  # matplotlib only when a plot is asked for

        plots.detection(opts.plot, outcome, warm_only=opts.warm_only)
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    def num(value, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"n={summary['n']} flagged={summary['flagged']} ({summary['flag_rate']:.3%}) "
        f"dead_letters={summary['dead_letters']} tx/s={summary['tx_per_s']} us/tx={summary['us_per_tx']}"
    ]
    if summary.get("roc_auc") is not None:
        lines.append(
            f"roc_auc={summary['roc_auc']:.4f} pr_auc={summary['pr_auc']:.4f} "
            f"precision={summary['precision']} recall={summary['recall']} "
            f"fpr={summary['false_positive_rate']}"
        )
        lines.append("  ".join(
            f"recall at {key} FPR={num(summary.get(f'recall_at_{key}_fpr'))} "
            f"(cut {num(summary.get(f'score_cut_at_{key}_fpr'), '.4f')})"
            for key, _ in FPR_POINTS
        ))
        heads = "".join(f"{'@' + key:>9}" for key, _ in FPR_POINTS)
        lines.append(f"{'label':<26}{'n':>7}{'recall':>9}{heads}{'auc':>8}")
        for name, row in summary.get("per_label", {}).items():
            at = "".join(f"{num(row.get(f'recall_at_{key}_fpr')):>9}" for key, _ in FPR_POINTS)
            lines.append(f"{name:<26}{row['n']:>7}{num(row['recall']):>9}{at}{num(row['roc_auc_vs_normal']):>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
