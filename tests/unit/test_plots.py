"""Tests for the figures (anomaly_stream.tools.plots): each writes a real, non-blank PNG."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from matplotlib.image import imread

from anomaly_stream.tools import backtest, plots
from anomaly_stream.tools.evaluation import NORMAL
from anomaly_stream.tools.generate import SCENARIOS, GeneratorConfig, TrafficGenerator

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DETECTION = tuple(v * plots.DPI for v in plots.DETECTION_SIZE)
SCORES_ONLY = tuple(v * plots.DPI for v in plots.SCORES_ONLY_SIZE)


def assert_png(path, size=(plots.SIZE[0] * plots.DPI, plots.SIZE[1] * plots.DPI)):
    """A PNG of the expected pixel size, with a drawing on it (not one flat colour)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000  # axes, text and curves; a blank 990x550 PNG is ~5 KB
    image = imread(path)
    height, width = image.shape[:2]
    assert (width, height) == (round(size[0]), round(size[1]))
    rgb = image[..., :3]
    assert rgb.var() > 1e-3
    # Not a white page with a few specks: a fair share of pixels is drawn.
    assert (rgb.min(axis=2) < 0.9).mean() > 0.01
    return image


def synthetic(n_normal=5_000, seed=0):
    rng = np.random.default_rng(seed)
    scores = [rng.beta(2, 6, n_normal)]
    labels = [[NORMAL] * n_normal]
    for i, name in enumerate(("wallet_drain", "dusting", "gas_price_spike")):
        k = 40 + 20 * i
        scores.append(rng.uniform(0.5 + 0.1 * i, 1.0, k))
        labels.append([name] * k)
    scores = np.concatenate(scores)
    labels = np.concatenate(labels).astype(object)
    return backtest.Outcome(scores=scores.tolist(), flagged=(scores > 0.8).tolist(), labels=labels.tolist(),
                            warm=[True] * len(scores), lines=len(scores))


def test_detection_from_an_outcome(tmp_path):
    out = plots.detection(tmp_path / "d.png", synthetic())
    assert out == tmp_path / "d.png"
    assert_png(out, DETECTION)


def test_detection_from_arrays_with_a_threshold(tmp_path):
    outcome = synthetic(seed=1)
    labels = [name != NORMAL for name in outcome.labels]  # boolean labels
    out = plots.detection(tmp_path / "a.png", (labels, outcome.scores), threshold=0.7, title="arrays")
    assert_png(out, DETECTION)


def test_detection_without_labels_draws_the_scores_only(tmp_path):
    rng = np.random.default_rng(2)
    scores = rng.beta(2, 6, 2_000)
    out = plots.detection(tmp_path / "u.png", ([NORMAL] * len(scores), scores, scores > 0.7))
    assert_png(out, SCORES_ONLY)


def test_detection_of_nothing_does_not_fail(tmp_path):
    out = plots.detection(tmp_path / "e.png", ([], []))
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_number_labels():
    assert [plots._num(v) for v in (26_400, 141.4, 12.44, 0.01234, 0)] == ["26,400", "141", "12.4", "0.0123", "0"]


def test_bars(tmp_path):
    out = plots.bars(tmp_path / "b.png", "Throughput", "tx/s",
                     {"bare loop": 26_400, "one worker": 19_800, "two workers": 9_500})
    assert out == tmp_path / "b.png"
    assert_png(out)


def test_lines(tmp_path):
    xs = [1, 2, 4, 8, 16]
    out = plots.lines(tmp_path / "l.png", "RSS over time", "minutes", "MB",
                      {"memory": (xs, [255, 270, 300, 310, 312]), "rocksdb": (xs, [283, 290, 320, 330, 331])},
                      logx=True)
    assert_png(out)


def test_cdf(tmp_path):
    rng = np.random.default_rng(3)
    samples = {"25%": rng.lognormal(2.5, 0.5, 3_000), "50%": rng.lognormal(3.4, 0.7, 3_000),
               "with zeros": np.r_[np.zeros(100), rng.lognormal(3.0, 0.5, 900)]}
    out = plots.cdf(tmp_path / "c.png", "Produce-to-anomaly latency", "ms", samples)
    assert_png(out)


def test_figures_leave_pyplot_alone(tmp_path):
    import sys

    plots.bars(tmp_path / "b.png", "t", "y", {"a": 1.0})
    if "matplotlib.pyplot" in sys.modules:  # another test may have imported it; then no figure is left open
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


@pytest.fixture(scope="module")
def generated_jsonl(tmp_path_factory):
    rates = {name: 0.004 for name in SCENARIOS}
    txs = TrafficGenerator(GeneratorConfig(seed=11, scenario_rates=rates)).take(4_000)
    path = tmp_path_factory.mktemp("plots") / "gen.jsonl"
    with open(path, "wb") as out:
        for tx in txs:
            out.write(orjson.dumps(tx) + b"\n")
    return path


def test_backtest_cli_writes_the_detection_plot(tmp_path, generated_jsonl):
    png = tmp_path / "backtest.png"
    assert backtest.main([str(generated_jsonl), "--label-field", "label", "--plot", str(png),
                          "--partitions", "2", "--batch-size", "200", "--warm-only"]) == 0
    assert_png(png, DETECTION)


def test_backtest_cli_plot_without_labels(tmp_path, generated_jsonl):
    png = tmp_path / "unlabelled.png"
    assert backtest.main([str(generated_jsonl), "--plot", str(png), "--partitions", "2"]) == 0
    assert_png(png, SCORES_ONLY)
