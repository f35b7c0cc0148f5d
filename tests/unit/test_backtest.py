"""Tests for the backtest (anomaly_stream.tools.backtest): replay, the report, the CLI and the Shuttle bar.

The metrics themselves are tested in test_evaluation.py, the figures in test_plots.py.
"""

from __future__ import annotations

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from anomaly_stream.tools import backtest, shuttle
from anomaly_stream.settings import Settings
from anomaly_stream.tools.backtest import kafka_partition
from anomaly_stream.tools.generate import SCENARIOS, GeneratorConfig, TrafficGenerator

# What benchmarks/quality.py and users read, and the fixed-FPR view.
REPORT_KEYS = {"n", "lines", "flagged", "flag_rate", "roc_auc", "pr_auc", "precision", "recall", "tx_per_s",
               "us_per_tx", "n_anomalous", "false_positive_rate", "per_label",
               "recall_at_1pct_fpr", "recall_at_0.1pct_fpr", "score_cut_at_1pct_fpr", "score_cut_at_0.1pct_fpr",
               "flag_rate_at_1pct_fpr", "flag_rate_at_0.1pct_fpr"}
PER_LABEL_KEYS = {"n", "flagged", "recall", "roc_auc_vs_normal", "recall_at_1pct_fpr", "recall_at_0.1pct_fpr"}


# -- partitioning ------------------------------------------------------------------------


def test_partitioning_matches_aiokafka_default_partitioner():
    partitioner = DefaultPartitioner()
    for i in range(200):
        key = f"0x{i:040x}".encode()
        assert kafka_partition(key, 8) == partitioner(key, list(range(8)), list(range(8)))


# -- replay through process_batch ---------------------------------------------------------


def write_jsonl(path, objs, extra_lines=()):
    with open(path, "wb") as out:
        for obj in objs:
            out.write(orjson.dumps(obj) + b"\n")
        for line in extra_lines:
            out.write(line + b"\n")


def test_tiny_file_before_warm_up_has_known_answers(tmp_path):
    """Within the first window every score is 0 (margin -1), so: AUC 0.5, PR-AUC = prevalence, no flags."""
    txs = TrafficGenerator(GeneratorConfig(seed=1, scenario_rates={})).take(40)
    for tx in txs[::4]:
        tx["label"] = "test_attack"
    path = tmp_path / "tiny.jsonl"
    write_jsonl(path, txs, extra_lines=[b"{not json", b'{"from": "0x12"}', b"[1, 2]"])
    out = tmp_path / "report.json"
    assert backtest.main([str(path), "--label-field", "label", "--report", str(out), "--partitions", "2"]) == 0
    report = orjson.loads(out.read_bytes())
    assert REPORT_KEYS <= set(report)
    assert report["n"] == 40
    assert report["lines"] == 43
    assert report["dead_letters"] == 3
    assert report["dead_letter_reasons"] == {"bad_address": 1, "malformed_json": 1, "not_an_object": 1}
    assert report["flagged"] == 0
    assert report["roc_auc"] == 0.5
    assert report["pr_auc"] == pytest.approx(10 / 40)
    assert report["recall"] == 0.0
    assert report["precision"] is None  # nothing flagged
    assert report["per_label"]["test_attack"]["n"] == 10
    # All scores 0 under the warm-up threshold 1.0: every margin is -1, nothing is above the cut.
    assert report["score_cut_at_1pct_fpr"] == -1.0
    assert report["recall_at_1pct_fpr"] == 0.0
    assert report["per_label"]["test_attack"]["recall_at_0.1pct_fpr"] == 0.0


def test_generator_labels_flow_through_and_plot_is_a_png(tmp_path):
    rates = {name: 0.004 for name in SCENARIOS}
    txs = TrafficGenerator(GeneratorConfig(seed=7, scenario_rates=rates)).take(6_000)
    path = tmp_path / "gen.jsonl"
    write_jsonl(path, txs)
    out, png = tmp_path / "report.json", tmp_path / "plot.png"
    code = backtest.main([str(path), "--label-field", "label", "--report", str(out), "--plot", str(png),
                          "--partitions", "2", "--batch-size", "200"])
    assert code == 0
    report = orjson.loads(out.read_bytes())
    assert REPORT_KEYS <= set(report)
    assert report["n"] == 6_000 and report["dead_letters"] == 0
    labelled = {tx["label"] for tx in txs if tx["label"]}
    assert set(report["per_label"]) == labelled
    assert sum(row["n"] for row in report["per_label"].values()) == report["n_anomalous"]
    assert report["flagged"] > 0
    assert report["roc_auc"] > 0.6
    assert report["tx_per_s"] > 0
    for row in report["per_label"].values():
        assert PER_LABEL_KEYS <= set(row)
    # Recall can only grow as the allowed false-positive rate does.
    assert report["recall_at_0.1pct_fpr"] <= report["recall_at_1pct_fpr"]
    assert report["score_cut_at_0.1pct_fpr"] >= report["score_cut_at_1pct_fpr"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_labels_keeps_the_flag_rate():
    outcome = backtest.Outcome(scores=[0.1, 0.9, 0.5, 0.95], flagged=[False, True, False, True],
                               labels=[backtest.NORMAL] * 4, warm=[False, True, True, True], lines=5,
                               dead_letters={"malformed_json": 1}, seconds=0.5, partitions=2)
    summary = backtest.report(outcome, labelled=False)
    assert summary["n"] == 4 and summary["lines"] == 5 and summary["dead_letters"] == 1
    assert summary["flagged"] == 2 and summary["flag_rate"] == 0.5
    assert summary["roc_auc"] is None and summary["recall"] is None and "per_label" not in summary
    assert summary["tx_per_s"] == 8.0 and summary["partitions"] == 2
    warm = backtest.report(outcome, labelled=False, warm_only=True)
    assert warm["n"] == 3 and warm["flag_rate"] == pytest.approx(2 / 3, abs=1e-9)
    assert "n=4 flagged=2" in backtest.format_summary(summary)


def test_format_summary_lists_recall_at_fixed_fpr():
    outcome = backtest.Outcome(scores=[0.1, 0.2, 0.3, 0.9, 0.8], flagged=[False, False, False, True, False],
                               labels=[backtest.NORMAL] * 3 + ["drain", "dust"], warm=[True] * 5, lines=5)
    text = backtest.format_summary(backtest.report(outcome, labelled=True))
    assert "recall at 1pct FPR=1.000" in text
    assert "@0.1pct" in text
    assert "drain" in text and "dust" in text


def test_replay_scores_every_valid_line_once_in_partition_order():
    txs = TrafficGenerator(GeneratorConfig(seed=2)).take(1_500)
    lines = [orjson.dumps(tx) for tx in txs]
    outcome = backtest.replay(lines, Settings(model_warmup_events=300), partitions=3, batch_size=100)
    assert len(outcome.scores) == len(outcome.flagged) == len(outcome.labels) == 1_500
    assert sum(outcome.flagged) > 0  # past warm-up the threshold flags some
    # The model flags only after warm-up (threshold 1.0 before); rules (look-alikes in the
    # generated poisoning) may fire at once, exactly as the worker would raise them.
    assert outcome.anomalies
    assert all(d["threshold"] < 1.0 or all(r["rule"] != "model" for r in d["reasons"]) for d in outcome.anomalies)


# -- the model on River's Shuttle data ----------------------------------------------------


def test_default_model_reaches_090_roc_auc_on_shuttle(tmp_path):
    csv_path = tmp_path / "shuttle.csv"
    assert shuttle.export_shuttle(csv_path, limit=10_000) == 10_000
    out = tmp_path / "shuttle.json"
    features = ",".join(f"f{i}" for i in range(1, 10))
    assert backtest.main([str(csv_path), "--features", features, "--label-field", "anomaly",
                          "--report", str(out)]) == 0
    report = orjson.loads(out.read_bytes())
    assert report["n"] == 10_000
    assert report["n_anomalous"] == 712
    # River documents 0.9007 for HST learning every row; ours does not learn what it
    # flags (protection), which measured 0.899 here.
    assert report["roc_auc"] >= 0.89


def test_export_shuttle_entry_points(tmp_path, capsys):
    via_backtest, via_shuttle = tmp_path / "a.csv", tmp_path / "b.csv"
    assert backtest.main(["--export-shuttle", str(via_backtest), "--limit", "5"]) == 0
    assert shuttle.main([str(via_shuttle), "--limit", "5"]) == 0
    assert "wrote 5 rows" in capsys.readouterr().out
    rows = via_backtest.read_text().splitlines()
    assert rows[0] == "f1,f2,f3,f4,f5,f6,f7,f8,f9,anomaly" and len(rows) == 6
    assert via_shuttle.read_text() == via_backtest.read_text()
