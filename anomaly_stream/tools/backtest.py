"""Backtesting: replay a file through the worker's own hot path and measure it.

    anomaly-stream backtest PATH [--label-field NAME] [--report OUT.json]
                                 [--plot OUT.png] [--partitions N] [--batch-size N]
                                 [--features col1,col2,...] [--scale online|none]
    python -m anomaly_stream.tools.backtest --export-shuttle OUT.csv   (tools.shuttle)

Transactions mode (the default): a file or folder in any format
`tools.readers` knows (the project's JSONL, ethereum-etl CSV and JSON
exports, raw JSON-RPC blocks or transaction arrays, trace block files;
gzip too), in chain order. Each transaction goes to the partition Kafka's
default partitioner would give its sender key (murmur2, as the Java client
and aiokafka's DefaultPartitioner), and each partition's transactions are
handed in batches to the worker's own `Worker.handle`, whose edges go to
`Worker.handle_edges` in their partitions (`replay`): the same code, models,
profiles and rules as the worker, with an in-memory sink. Messages that fail
validation are the worker's dead letters and are counted as such.
`--watchlist FILE:NAME` applies a list as `anomaly-stream watchlist load`
would; `--scores OUT.csv` writes every score with its threshold;
`--trace-balances` stands in for the ingester's `ownerTokenBalance`, which
exports lack, with the file's own ledger (`readers.with_trace_balances`).

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
import asyncio
import csv
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import orjson

from ..detect.detector import Record, nothing_listed
from ..detect.features import RECEIVER, SENDER
from ..detect.model import ModelConfig, PartitionModel
from ..stream.worker import Store, Stores, Topics, Worker, collect_less, kafka_partition
from ..detect import flows, watchlist
from ..settings import Settings
from .evaluation import FPR_POINTS, NORMAL, evaluate
from .readers import iter_records, read_transactions, with_trace_balances
from .shuttle import export_shuttle

DEFAULT_BATCH_SIZE = 500
# A batch holds at most this much event time (`replay`): a live worker fetches
# each partition within seconds, so state written by one partition's batch is
# there for the next batch of another. 3 s is about the worker's own produce-to-
# anomaly p99 at half its peak rate (README, "Performance": 1.4-4.7 s between
# runs), how late an edge can reach the receiving side; at 30 s a peel chain's
# hop 12-36 s after the one before found its relay's funding not yet there
# (generated peel chains, report seeds: 0.57 -> 0.77 of the hops and peels at
# 3 s). Real 2017 flags:
# 0.740% at 30 s, 0.735% at 3 s. The cost is smaller batches on dense traffic:
# time in the worker's code, medians of 3, 2024 blocks 20.6k -> 17.4k tx/s,
# generated 17.1k -> 14.6k, MEV blocks and 2017 unchanged.
BATCH_SECONDS = 3.0


# -- replay ----------------------------------------------------------------------


@dataclass
class Outcome:
    """Per scored event, in file order within each partition."""

    scores: list[float] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # NORMAL or the label's value
    warm: list[bool] = field(default_factory=list)  # past warm-up: sender model warm, receivers' rules judging
    lines: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # time spent in the worker's handle / score_learn
    partitions: int = 1
    hashes: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)  # (hash, partition, perspective, score, threshold)
    reasons: dict[str, int] = field(default_factory=dict)  # anomalies by reason
    anomalies: list[dict] = field(default_factory=list)


def _label_name(value) -> str:
    if not value:
        return NORMAL
    return value if isinstance(value, str) else "anomalous"


class ReplaySink:
    """The worker's output in a replay: anomalies kept, edges routed to their partitions, the rest counted."""

    def __init__(self, worker_topics, partitions: int):
        self.topics = worker_topics
        self.edges: list[list[Record]] = [[] for _ in range(partitions)]
        self.anomalies: list[dict] = []
        self.sent = 0

    async def send(self, topic, key, value, *, source_partition, partition=None, headers=None) -> None:
        await self.send_many(topic, ((key, value, partition),), source_partition=source_partition)

    async def send_many(self, topic, messages, *, source_partition) -> None:
        self.sent += len(messages)
        if topic == self.topics.edges:
            edges = self.edges
            for key, value, partition in messages:
                queue = edges[partition]
                queue.append(Record(len(queue), key, value, 0.0))
        elif topic == self.topics.anomalies:
            self.anomalies.extend([orjson.loads(value) for _, value, _ in messages])


def _event_time(obj: dict, first_block: list, fallback: float) -> float:
    """The block time; for files without one (JSON-RPC blocks), 12 s slots from the first block."""
    ts = obj.get("blockTimestamp")
    if isinstance(ts, str) and ts[:2] == "0x":
        try:
            return float(int(ts, 16))
        except ValueError:
            return fallback
    if isinstance(ts, int):
        return float(ts)
    block = obj.get("blockNumber")
    if isinstance(block, str) and block[:2] == "0x":
        try:
            number = int(block, 16)
        except ValueError:
            return fallback
        if not first_block:
            first_block.append((number, fallback))
        start, base = first_block[0]
        return base + 12.0 * (number - start)
    return fallback


def replay(
    lines: Iterable[bytes],
    settings,
    partitions: int = 4,
    batch_size: int = DEFAULT_BATCH_SIZE,
    label_field: str | None = None,
    listed=None,
    batch_seconds: float = BATCH_SECONDS,
) -> Outcome:
    """Score every line with the worker's own code (`worker.Worker`), partitioned as Kafka would.

    Each partition's transactions are handed to `Worker.handle` in batches of
    at most `batch_size` records or `batch_seconds` of event time (a live
    worker fetches every partition within seconds: a batch spanning hours of
    a quiet trace would see a victim's payment after the poisoning that
    follows it); the edges a batch emits go to `Worker.handle_edges` right
    after, in their own partitions, as the receive agent would see them. A
    transaction is flagged when either perspective flags it; its score for
    the ROC is its largest margin over the threshold in force (1 + margin for
    a rule hit, so rules rank above any model score).
    """
    return asyncio.run(_replay(lines, settings, partitions, batch_size, label_field, listed, batch_seconds))


async def _replay(lines, settings, partitions, batch_size, label_field, listed, batch_seconds) -> Outcome:
    run = _Replay(settings, partitions, batch_size, batch_seconds, label_field, listed)
    for raw in lines:
        await run.add(raw)
    return await run.finish()


class _Replay:
    """One replay's worker, its pending per-partition batches and what was scored."""

    def __init__(self, settings, partitions, batch_size, batch_seconds, label_field, listed):
        settings = settings.replace(kafka_input_partitions=partitions,
                                    model_checkpoint_interval_seconds=1e12)  # no checkpoints in a replay
        topics = Topics("transactions", "anomalies", "transactions-dlq", "transactions-edges")
        self.sink = ReplaySink(topics, partitions)
        stores = Stores(Store({}, "profiles"), Store({}, "checkpoints"), Store({}, "buffer"))
        self.worker = Worker(settings, topics, stores, self.sink, listed=listed or nothing_listed)
        # Every model up front, as a worker does on assignment: building River's trees
        # (tens of ms each) is set-up, not the per-transaction cost measured below.
        for p in range(partitions):
            self.worker.model(p)
            self.worker.model(p, RECEIVER)
        self.partitions, self.batch_size, self.batch_seconds = partitions, batch_size, batch_seconds
        self.label_field = label_field
        self.out = Outcome(partitions=partitions)
        self.pending: list[list[Record]] = [[] for _ in range(partitions)]
        self.offsets = [0] * partitions
        self.labels: dict[str, str] = {}
        self.order: list[str] = []
        self.warm: dict[str, bool] = {}
        self.margin: dict[str, float] = {}
        self.first_block: list = []
        self.fallback = time.time()
        self.due = math.inf  # event time at which the oldest pending batch is flushed

    async def add(self, raw: bytes) -> None:
        raw = raw.strip()
        if not raw:
            return
        self.out.lines += 1
        key, label, t = None, NORMAL, self.fallback
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            sender = obj.get("from")
            if isinstance(sender, str):
                key = sender.lower().encode()
            if self.label_field is not None:
                label = _label_name(obj.get(self.label_field))
            t = self.fallback = _event_time(obj, self.first_block, self.fallback)
            if isinstance(obj.get("hash"), str):
                self.labels[obj["hash"].lower()] = label
        if t >= self.due:
            await self._flush_older_than(t - self.batch_seconds)
        # A keyless message goes to partition 0 here (Kafka would pick one at random).
        p = kafka_partition(key, self.partitions) if key is not None else 0
        if not self.pending[p]:
            self.due = min(self.due, t + self.batch_seconds)
        self.pending[p].append(Record(self.offsets[p], key, raw, t))
        self.offsets[p] += 1
        if len(self.pending[p]) >= self.batch_size:
            await self._flush(p)

    async def _flush_older_than(self, cutoff: float) -> None:
        for p, batch in enumerate(self.pending):
            if batch and batch[0].timestamp <= cutoff:
                await self._flush(p)
        self.due = min((b[0].timestamp + self.batch_seconds for b in self.pending if b), default=math.inf)

    async def _flush(self, p: int) -> None:
        batch, self.pending[p] = self.pending[p], []
        if not batch:
            return
        worker, out = self.worker, self.out
        started = time.perf_counter()
        result = await worker.handle(p, batch, require_key=False)
        edge_results = []
        for q in range(self.partitions):
            edges, self.sink.edges[q] = self.sink.edges[q], []
            if edges:
                edge_results.append((q, await worker.handle_edges(q, edges)))
        out.seconds += time.perf_counter() - started
        for d in result.dead_letters:
            out.dead_letters[d.reason] = out.dead_letters.get(d.reason, 0) + 1
        margin = self.margin
        for h, score, threshold in zip(result.hashes, result.scores, result.thresholds):
            self.order.append(h)
            self.warm[h] = threshold < 1.0  # 1.0: judged while the model was cold
            margin[h] = max(margin.get(h, -1.0), score - threshold)
            out.rows.append((h, p, SENDER, score, threshold))
        for q, edge_result in edge_results:
            # Still warming up while the receiving side's flow rules wait (flows.judged).
            judged = flows.judged(worker.model(q, RECEIVER), edge_result.latest_event_time)
            for h, score, threshold in zip(edge_result.hashes, edge_result.scores, edge_result.thresholds):
                if not judged:
                    self.warm[h] = False
                margin[h] = max(margin.get(h, -1.0), score - threshold)
                out.rows.append((h, q, RECEIVER, score, threshold))

    async def finish(self) -> Outcome:
        for p in range(self.partitions):
            await self._flush(p)
        out, margin, anomalies = self.out, self.margin, self.sink.anomalies
        flagged = {d["tx_hash"] for d in anomalies}
        for d in anomalies:
            if any(r["rule"] != "model" for r in d["reasons"]):
                margin[d["tx_hash"]] = max(margin.get(d["tx_hash"], -1.0), 1.0 + d["score"] - d["threshold"])
            for reason in d["reasons"]:
                key = reason["rule"] if reason["rule"] != "model" else f"model:{reason['perspective']}"
                out.reasons[key] = out.reasons.get(key, 0) + 1
        for h in self.order:
            out.hashes.append(h)
            out.scores.append(margin[h])
            out.flagged.append(h in flagged)
            out.labels.append(self.labels.get(h, NORMAL))
            out.warm.append(self.warm[h])
        out.anomalies = anomalies
        return out


def replay_csv(
    rows: Iterable[dict[str, str]],
    columns: Sequence[str],
    config: ModelConfig,
    label_field: str | None = None,
    scale: str = "online",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Outcome:
    """Feed numeric columns straight to one PartitionModel, in batches (score, then learn)."""
    out = Outcome(partitions=1)
    model = PartitionModel(config, 0, features=tuple(columns))
    lo = np.full(len(columns), np.inf)
    hi = np.full(len(columns), -np.inf)
    batch: list[list[float]] = []

    def flush() -> None:
        if not batch:
            return
        started = time.perf_counter()
        X = np.asarray(batch, dtype=np.float64)
        if scale == "online":
            # River's MinMaxScaler, row by row: update the running range, then scale into it.
            for row in X:
                np.minimum(lo, row, out=lo)
                np.maximum(hi, row, out=hi)
                span = hi - lo
                row[:] = np.where(span > 0, (row - lo) / np.where(span > 0, span, 1.0), 0.0)
        X = np.clip(X, 0.0, 1.0)
        scores, thresholds = model.score_batch(X)
        model.end_batch()
        out.seconds += time.perf_counter() - started
        out.scores.extend(scores.tolist())
        out.flagged.extend((scores > thresholds).tolist())
        out.warm.extend((thresholds < 1.0).tolist())
        batch.clear()

    for row in rows:
        out.lines += 1
        try:
            values = [float(row[c]) for c in columns]
        except (KeyError, TypeError, ValueError):
            out.dead_letters["bad_row"] = out.dead_letters.get("bad_row", 0) + 1
            continue
        batch.append(values)
        out.labels.append(_label_name(_truthy(row.get(label_field))) if label_field else NORMAL)
        if len(batch) >= batch_size:
            flush()
    flush()
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


def load_watchlists(specs: Sequence[str]):
    """`--watchlist FILE:NAME` options as the detector's `listed` lookup."""
    lists: dict[str, dict[str, str]] = {}
    for spec in specs:
        path, _, name = spec.rpartition(":")
        if not path or not name:
            raise SystemExit(f"--watchlist takes FILE:NAME, got {spec!r}")
        for entry in watchlist.parse(path, name):
            lists.setdefault(entry.address, {})[name] = entry.label
    return lists.get if lists else None


def write_scores(path: str, outcome: Outcome) -> None:
    flagged = {h for h, f in zip(outcome.hashes, outcome.flagged) if f}
    label = dict(zip(outcome.hashes, outcome.labels))
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(("hash", "partition", "perspective", "score", "threshold", "flagged", "label"))
        for h, p, perspective, score, threshold in outcome.rows:
            # flagged: the transaction was an anomaly, by either perspective or a rule.
            out.writerow((h, p, perspective, f"{score:.6f}", f"{threshold:.6f}", int(h in flagged),
                          label.get(h, NORMAL)))


def _config(settings) -> ModelConfig:
    return ModelConfig.from_settings(settings) if settings is not None else ModelConfig()


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-stream backtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="transactions: a file or folder in any format of `readers` "
                                                "(JSONL, ethereum-etl CSV/JSON, JSON-RPC blocks, trace blocks; "
                                                "gzip too), or CSV with --features")
    parser.add_argument("--format", default="auto", help="force the input format (see tools.readers)")
    parser.add_argument("--scores", metavar="OUT.csv", help="one row per scored transaction and perspective: "
                                                            "hash, partition, perspective, score, threshold, "
                                                            "flagged, label")
    parser.add_argument("--watchlist", action="append", default=[], metavar="FILE:NAME",
                        help="apply a watch-list file as list NAME (repeatable)")
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
    parser.add_argument("--trace-balances", action="store_true",
                        help="give token transfers the ownerTokenBalance the file's own ledger shows, as "
                             "the ingester would read it from a node (readers.with_trace_balances)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N lines/rows")
    parser.add_argument("--warm-only", action="store_true", help="metrics only over events scored after warm-up")
    parser.add_argument("--export-shuttle", metavar="OUT.csv", help="write River's Shuttle data as CSV and exit")
    return parser


def run(opts: argparse.Namespace, settings, partitions: int) -> Outcome:
    """The replay the options ask for: numeric CSV columns, or transactions through the worker."""
    if opts.features:
        columns = [c.strip() for c in opts.features.split(",") if c.strip()]
        with open(opts.path, newline="") as f:
            rows = csv.DictReader(f)
            if opts.limit:
                rows = (r for i, r in zip(range(opts.limit), rows))
            return replay_csv(rows, columns, _config(settings), opts.label_field, opts.scale, opts.batch_size)
    if opts.trace_balances:
        lines = map(orjson.dumps, with_trace_balances(read_transactions(opts.path, opts.format)))
    else:
        lines = iter_records(opts.path, opts.format)
    if opts.limit:
        lines = (line for _, line in zip(range(opts.limit), lines))
    outcome = replay(lines, settings or Settings(), partitions, opts.batch_size, opts.label_field,
                     load_watchlists(opts.watchlist))
    if opts.scores:
        write_scores(opts.scores, outcome)
    return outcome


def main(argv: Sequence[str] | None = None, settings=None) -> int:
    """`anomaly-stream backtest ...`; returns the exit code.

    `settings` (a `Settings`) gives the configuration the worker would use;
    without it the defaults apply.
    """
    parser = arguments()
    opts = parser.parse_args(list(argv) if argv is not None else None)
    if opts.export_shuttle:
        n = export_shuttle(opts.export_shuttle, opts.limit)
        print(f"wrote {n} rows to {opts.export_shuttle}")
        return 0
    if not opts.path:
        parser.error("PATH is required")
    if opts.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    partitions = opts.partitions or (getattr(settings, "kafka_input_partitions", None) or 8)
    if partitions < 1:
        parser.error("--partitions must be >= 1")
    collect_less()  # as the worker does
    started = time.perf_counter()
    outcome = run(opts, settings, partitions)
    summary = report(outcome, labelled=opts.label_field is not None, warm_only=opts.warm_only)
    summary["anomalies_by_reason"] = dict(sorted(outcome.reasons.items()))
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
