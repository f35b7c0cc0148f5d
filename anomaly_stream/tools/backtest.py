"""Backtesting: replay a file through the worker's own hot path and measure it.

    anomaly-stream backtest PATH [--label-field NAME] [--report OUT.json]
                                 [--plot OUT.png] [--partitions N] [--batch-size N]
                                 [--features col1,col2,...] [--scale online|none]
    python -m anomaly_stream.tools.backtest --export-shuttle OUT.csv

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

With a label field (truthy = anomalous) the report has ROC-AUC, PR-AUC
(average precision), precision and recall at the operating threshold, and per
label value the recall and the false-positive rate on normal traffic.
"""

from __future__ import annotations

import argparse
import csv
import math
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from ..detect.detector import Record, process_batch
from ..detect.features import AddressProfile
from ..detect.model import ModelConfig, PartitionModel

NORMAL = "normal"
DEFAULT_BATCH_SIZE = 500


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and aiokafka's DefaultPartitioner) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# -- metrics -------------------------------------------------------------------


def roc_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic, ties counted half."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(s: np.ndarray) -> np.ndarray:
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Group equal scores; each group gets the mean of the 1-based ranks it spans.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(s), dtype=float)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _curve_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, highest first."""
    order = np.argsort(-s, kind="mergesort")
    y = y[order]
    s = s[order]
    last_of_group = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tps = np.cumsum(y)[last_of_group]
    fps = (last_of_group + 1) - tps
    return tps.astype(float), fps.astype(float)


def pr_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Average precision: sum over thresholds of precision x recall gained."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    tps, fps = _curve_points(y, s)
    precision = tps / (tps + fps)
    recall_gain = np.diff(np.r_[0.0, tps]) / n_pos
    return float((precision * recall_gain).sum())


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates from (0, 0) to (1, 1)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    tps, fps = _curve_points(y, s)
    n_pos, n_neg = max(int(y.sum()), 1), max(len(y) - int(y.sum()), 1)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


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
    scores = np.asarray(outcome.scores, dtype=float)
    flagged = np.asarray(outcome.flagged, dtype=bool)
    labels = np.asarray(outcome.labels, dtype=object)
    if warm_only:
        keep = np.asarray(outcome.warm, dtype=bool)
        scores, flagged, labels = scores[keep], flagged[keep], labels[keep]
    n = len(scores)
    result: dict = {
        "n": n,
        "lines": outcome.lines,
        "dead_letters": sum(outcome.dead_letters.values()),
        "dead_letter_reasons": dict(sorted(outcome.dead_letters.items())),
        "flagged": int(flagged.sum()),
        "flag_rate": float(flagged.mean()) if n else 0.0,
        "partitions": outcome.partitions,
        "warm_only": warm_only,
        "tx_per_s": round(len(outcome.scores) / outcome.seconds, 1) if outcome.seconds else None,
        "us_per_tx": round(1e6 * outcome.seconds / len(outcome.scores), 2) if outcome.scores else None,
        "roc_auc": None, "pr_auc": None, "precision": None, "recall": None,
    }
    if not labelled or not n:
        return result
    y = labels != NORMAL
    normal = ~y
    tp = int((flagged & y).sum())
    fp = int((flagged & normal).sum())
    result.update(
        n_anomalous=int(y.sum()),
        roc_auc=_clean(roc_auc(y, scores)),
        pr_auc=_clean(pr_auc(y, scores)),
        precision=_clean(tp / (tp + fp) if tp + fp else float("nan")),
        recall=_clean(tp / y.sum() if y.sum() else float("nan")),
        false_positive_rate=_clean(fp / normal.sum() if normal.sum() else float("nan")),
    )
    per_label = {}
    normal_scores = scores[normal]
    for name in sorted(set(labels[y].tolist())):
        mine = labels == name
        both = mine | normal
        per_label[name] = {
            "n": int(mine.sum()),
            "flagged": int((flagged & mine).sum()),
            "recall": _clean(float((flagged & mine).sum()) / mine.sum()),
            "roc_auc_vs_normal": _clean(roc_auc(mine[both], scores[both])) if len(normal_scores) else None,
        }
    result["per_label"] = per_label
    return result


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 6)


# -- plot: a dependency-free PNG ---------------------------------------------------------

_COLOURS = {NORMAL: (60, 110, 200), "anomalous": (220, 60, 40)}


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """Write an (h, w, 3) uint8 array as an RGB PNG with zlib and struct only."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    Path(path).write_bytes(png)


def plot(outcome: Outcome, path: str | Path, threshold: float | None = None) -> None:
    """Left: score histograms (log counts) of normal vs anomalous; right: the ROC curve.

    Both panels span [0, 1] on the x axis with grid lines every 0.1. On the
    left, blue is normal traffic and red is labelled traffic (each normalised
    to its own peak, log scale); on the right, the ROC curve in red over the
    grey diagonal.
    """
    size, pad = 400, 30
    img = np.full((size + 2 * pad, 2 * (size + 2 * pad), 3), 255, dtype=np.uint8)
    scores = np.asarray(outcome.scores, dtype=float)
    y = np.asarray(outcome.labels, dtype=object) != NORMAL

    def panel(i: int) -> np.ndarray:
        x0 = i * (size + 2 * pad) + pad
        view = img[pad:pad + size, x0:x0 + size]
        for g in range(11):
            k = min(int(g * size / 10), size - 1)
            view[:, k] = (225, 225, 225)
            view[k, :] = (225, 225, 225)
        view[:, 0] = view[-1, :] = (0, 0, 0)
        return view

    hist_view = panel(0)
    bins = 100
    width = size // bins
    for name, mask, colour in ((NORMAL, ~y, _COLOURS[NORMAL]), ("anomalous", y, _COLOURS["anomalous"])):
        if not mask.any():
            continue
        counts, _ = np.histogram(scores[mask], bins=bins, range=(0.0, 1.0))
        heights = np.log1p(counts) / np.log1p(counts.max())
        for b, h in enumerate(heights):
            top = size - int(h * (size - 1))
            for x in range(b * width, (b + 1) * width):
                hist_view[top:size, x] = (hist_view[top:size, x] * 0.5 + np.array(colour) * 0.5).astype(np.uint8)
    if threshold is not None and 0 <= threshold <= 1:
        hist_view[:, min(int(threshold * size), size - 1)] = (0, 0, 0)

    roc_view = panel(1)
    for k in range(size):
        roc_view[size - 1 - k, k] = (150, 150, 150)
    if y.any() and (~y).any():
        fpr, tpr = roc_curve(y, scores)
        grid = np.linspace(0.0, 1.0, 4 * size)
        curve = np.interp(grid, fpr, tpr)
        for fx, ty in zip(grid, curve):
            px = min(int(fx * (size - 1)), size - 1)
            py = size - 1 - min(int(ty * (size - 1)), size - 1)
            roc_view[max(py - 1, 0):py + 2, max(px - 1, 0):px + 2] = _COLOURS["anomalous"]
    write_png(path, img)


# -- Shuttle -----------------------------------------------------------------------


def export_shuttle(path: str | Path, limit: int | None = None) -> int:
    """Write River's bundled Shuttle data set as CSV: f1..f9 and `anomaly`."""
    from river import datasets

    n = 0
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([f"f{i}" for i in range(1, 10)] + ["anomaly"])
        for x, y in datasets.Shuttle():
            writer.writerow([x[f"f{i}"] for i in range(1, 10)] + [y])
            n += 1
            if limit is not None and n >= limit:
                break
    return n


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
    parser.add_argument("--plot", help="write a PNG of score distributions and the ROC curve here")
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
        plot(outcome, opts.plot)
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
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
        lines.append(f"{'label':<26}{'n':>7}{'recall':>9}{'auc':>8}")
        for name, row in summary.get("per_label", {}).items():
            auc = row["roc_auc_vs_normal"]
            lines.append(f"{name:<26}{row['n']:>7}{row['recall']:>9.3f}{auc if auc is None else f'{auc:.3f}':>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
