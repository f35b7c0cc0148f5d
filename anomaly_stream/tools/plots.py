"""PNG figures for the backtest and the benchmarks (matplotlib, Agg, no pyplot).

    detection(path, outcome_or_arrays, threshold=None, *, warm_only=False, title=None)
                                               ROC per label, precision-recall, score histograms
    bars(path, title, ylabel, {name: value})
    lines(path, title, xlabel, ylabel, {name: (xs, ys)})
    cdf(path, title, xlabel, {name: samples})  empirical CDFs on a log x axis (latencies)

Figures are built with the object API (`matplotlib.figure.Figure` on a
`FigureCanvasAgg`), so nothing here touches pyplot's global state or needs a
display. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from .evaluation import FPR_POINTS, NORMAL, equivalent_threshold, pr_auc, pr_curve, roc_auc, roc_curve, score_cut_at_fpr

DPI = 110
SIZE = (9.0, 5.0)
DETECTION_SIZE = (12.0, 8.5)
SCORES_ONLY_SIZE = (12.0, 5.0)  # detection() without labelled (or without normal) events
NORMAL_COLOUR = "#8c8c8c"
ALL_COLOUR = "black"
CUT_STYLES = (":", "-.")  # the 1% and 0.1% FPR cuts
CUT_MARKERS = ("s", "^")
# tab10 without its grey (kept for normal traffic).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def _figure(size: tuple[float, float] = SIZE) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# -- detection -------------------------------------------------------------------


def _unpack(data, warm_only: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(scores, label names, flagged or None) from an Outcome-like object or a tuple.

    An object with `scores` and `labels` (and optionally `flagged`, `warm`:
    the backtest's `Outcome`), or a tuple `(labels, scores)` /
    `(labels, scores, flagged)` in the metric functions' argument order.
    Boolean labels become "anomalous" / `NORMAL`.
    """
    warm = None
    if hasattr(data, "scores") and hasattr(data, "labels"):
        labels, scores = data.labels, data.scores
        flagged = getattr(data, "flagged", None)
        warm = getattr(data, "warm", None)
    else:
        labels, scores, *rest = data
        flagged = rest[0] if rest else None
    s = np.asarray(scores, dtype=float)
    raw = np.asarray(labels)
    if raw.dtype.kind in "US" or (raw.dtype.kind == "O" and all(isinstance(v, str) for v in raw.tolist())):
        names = raw.astype(object)
    else:
        names = np.where(raw.astype(bool), "anomalous", NORMAL).astype(object)
    f = None if flagged is None or not len(flagged) else np.asarray(flagged, dtype=bool)
    if warm_only and warm is not None and len(warm):
        keep = np.asarray(warm, dtype=bool)
        s, names = s[keep], names[keep]
        f = None if f is None else f[keep]
    return s, names, f


@dataclass
class _Panels:
    """What the detection panels share: scores and labels, flags, threshold, cuts, operating point."""

    scores: np.ndarray
    names: np.ndarray
    flagged: np.ndarray | None
    threshold: float | None
    threshold_text: str
    normal: np.ndarray
    anomalous: np.ndarray
    label_names: list[str]
    colours: dict[str, str]
    n: int
    n_normal: int
    n_anom: int
    flag_rate: float | None  # share of all events flagged
    op_fpr: float | None  # share of normal events flagged
    cuts: dict  # FPR_POINTS key -> score cut on normal traffic

    @property
    def cut_text(self) -> str:
        # Without labels every event counts as normal: a cut "at 1% FPR" passes 1% of all traffic.
        return "FPR" if self.n_anom else "of traffic"


def _panels(data, threshold: float | None, warm_only: bool) -> _Panels:
    scores, names, flagged = _unpack(data, warm_only)
    if threshold is None and flagged is not None:
        threshold = equivalent_threshold(scores, flagged)
        threshold_text = "operating threshold (same flag rate)"
    else:
        threshold_text = "threshold"
    if flagged is None and threshold is not None:
        flagged = scores > threshold
    normal = names == NORMAL
    anomalous = ~normal
    label_names = sorted(set(names[anomalous].tolist()))
    n, n_normal, n_anom = len(scores), int(normal.sum()), int(anomalous.sum())
    return _Panels(
        scores, names, flagged, threshold, threshold_text, normal, anomalous, label_names,
        colours={name: _colour(i) for i, name in enumerate(label_names)},
        n=n, n_normal=n_normal, n_anom=n_anom,
        flag_rate=float(flagged.mean()) if flagged is not None and n else None,
        op_fpr=float(flagged[normal].mean()) if flagged is not None and n_normal else None,
        cuts={key: score_cut_at_fpr(scores[normal], rate) for key, rate in FPR_POINTS} if n_normal else {},
    )


def detection(path: str | Path, data, threshold: float | None = None, *, warm_only: bool = False,
              title: str | None = None) -> Path:
    """ROC curves per label (log FPR), precision-recall, score histograms per label (log counts).

    `data`: the backtest's `Outcome` (or anything with `scores`, `labels` and
    optionally `flagged`, `warm`), or `(labels, scores[, flagged])`.
    `threshold`: the score cut to draw; without it, and with flags, the
    global cut with the same flag rate as the flags (`equivalent_threshold`:
    the worker's own threshold adapts per partition and batch). The operating
    point (false-positive rate on normal traffic, recall per label; recall
    and precision overall) is the flags' when given, else the threshold's.
    The 1% and 0.1% FPR cuts are drawn as dotted lines. Without both labelled
    and normal events only the score distribution is drawn (a smaller figure).
    """
    v = _panels(data, threshold, warm_only)
    compare = bool(v.n_anom and v.n_normal)  # ROC and PR need both; otherwise only the scores are drawn
    if compare:
        fig = _figure(DETECTION_SIZE)
        grid = fig.add_gridspec(2, 2, height_ratios=(1.0, 0.9))
        ax_roc, ax_pr = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
        ax_hist = fig.add_subplot(grid[1, :])
    else:
        fig = _figure(SCORES_ONLY_SIZE)
        ax_hist = fig.add_subplot()
    fig.suptitle(title or _detection_title(v), fontsize=13)
    if compare:
        _roc_panel(ax_roc, v)
        _pr_panel(ax_pr, v)
    _hist_panel(ax_hist, v)
    return _save(fig, path)


def _detection_title(v: _Panels) -> str:
    what = f"{v.n_anom:,} labelled ({len(v.label_names)} labels)" if v.n_anom else "no labels"
    rate = f", flag rate {v.flag_rate:.2%}" if v.flag_rate is not None else ""
    return f"Backtest: {v.n:,} events, {what}{rate}"


def _axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _roc_panel(ax, v: _Panels) -> None:
    """ROC per label against normal traffic, log-scaled false-positive rate, operating points marked."""
    _axes(ax, "ROC per label vs normal traffic", "false-positive rate on normal traffic (log scale)",
          "recall (true-positive rate)")
    # One decade holding a single false positive, and at least down to 0.1%.
    x_min = max(min(10.0 ** math.floor(math.log10(1.0 / v.n_normal)), 1e-3), 1e-6)
    curves = [(name, v.names == name, v.colours[name], 1.6) for name in v.label_names]
    if len(v.label_names) > 1:
        curves.append(("all labelled", v.anomalous, ALL_COLOUR, 2.4))
    for name, mine, colour, width in curves:
        both = mine | v.normal
        fpr, tpr = roc_curve(mine[both], v.scores[both])
        auc = roc_auc(mine[both], v.scores[both])
        ax.plot(np.maximum(fpr, x_min), tpr, color=colour, linewidth=width, label=f"{name}  {auc:.3f}")
        if v.op_fpr is not None:
            recall = float(v.flagged[mine].mean())
            ax.plot(max(v.op_fpr, x_min), recall, marker="o", markersize=7, color=colour,
                    markeredgecolor="black", linestyle="none", zorder=5)
    for (key, rate), style in zip(FPR_POINTS, CUT_STYLES):
        if rate >= x_min:
            ax.axvline(rate, color="#666666", linestyle=style, linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    ax.set_xlim(x_min, 1.0)
    ax.set_ylim(0.0, 1.02)
    handles, texts = ax.get_legend_handles_labels()
    if v.op_fpr is not None:  # one legend entry for the per-label operating points
        handles.append(Line2D([], [], marker="o", color="white", markeredgecolor="black", markersize=7,
                              linestyle="none"))
        texts.append(f"operating point (FPR {v.op_fpr:.2%})")
    ax.legend(handles, texts, loc="lower right", fontsize=7.5, title="AUC vs normal", title_fontsize=8,
              handlelength=1.5, labelspacing=0.3, framealpha=0.7)
    ax.grid(True, which="major", alpha=0.3)


def _pr_panel(ax, v: _Panels) -> None:
    """Precision-recall of all labelled traffic against normal traffic, the operating point and the FPR cuts."""
    _axes(ax, "Precision-recall: all labelled vs normal", "recall", "precision")
    y, scores, flagged = v.anomalous, v.scores, v.flagged
    recall, precision = pr_curve(y, scores)
    ax.plot(np.r_[0.0, recall], np.r_[precision[0], precision], color=ALL_COLOUR, linewidth=2,
            drawstyle="steps-pre", label=f"all labelled (AP {pr_auc(y, scores):.3f})")
    ax.axhline(v.n_anom / v.n, color="#bbbbbb", linestyle="--", linewidth=1,
               label=f"prevalence ({v.n_anom / v.n:.2%})")
    if flagged is not None and flagged.any():
        tp = int((flagged & y).sum())
        op_recall, op_precision = tp / v.n_anom, tp / int(flagged.sum())
        ax.plot(op_recall, op_precision, marker="o", markersize=8, color="white", markeredgecolor="black",
                linestyle="none", zorder=5, label=f"operating point (P {op_precision:.2f}, R {op_recall:.2f})")
    for (key, rate), style in zip(FPR_POINTS, CUT_MARKERS):
        cut = v.cuts.get(key)
        if cut is None or math.isnan(cut):
            continue
        above = scores > cut
        if above.any():
            ax.plot(float((above & y).sum()) / v.n_anom, float((above & y).sum()) / int(above.sum()),
                    marker=style, markersize=7, color="#666666", linestyle="none", zorder=4,
                    label=f"at {rate:.1%} FPR (cut {cut:.3f})")
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.05)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.grid(True, alpha=0.3)


def _hist_panel(ax, v: _Panels) -> None:
    """Score distributions per label (log counts), with the FPR cuts and the threshold."""
    _axes(ax, "Score distributions per label" if v.n_anom else "Score distribution", "anomaly score",
          "events per bin (log scale)")
    if not v.n:
        _empty(ax, "no scored events")
        return
    bins = _score_bins(v)
    if v.n_normal:
        ax.hist(v.scores[v.normal], bins=bins, histtype="stepfilled", color=NORMAL_COLOUR, alpha=0.45,
                label=f"{NORMAL if v.n_anom else 'all traffic, unlabelled'} ({v.n_normal:,})")
    for name in v.label_names:
        mine = v.scores[v.names == name]
        ax.hist(mine, bins=bins, histtype="step", linewidth=1.6, color=v.colours[name],
                label=f"{name} ({len(mine):,})")
    ax.set_yscale("log")
    _, y_top = ax.get_ylim()
    ax.set_ylim(0.7, y_top * 8)  # headroom for the cut labels
    top = ax.get_xaxis_transform()  # x in data, y in axes fractions
    for (key, rate), style in zip(FPR_POINTS, CUT_STYLES):
        cut = v.cuts.get(key)
        if cut is not None and math.isfinite(cut):
            ax.axvline(cut, color="#666666", linestyle=style, linewidth=1.2,
                       label=f"cut at {rate:.1%} {v.cut_text}: {cut:.3f}")
            ax.text(cut, 0.98, f"{rate:.1%} {v.cut_text} ", transform=top, rotation=90, ha="right", va="top",
                    fontsize=8, color="#444444")
    if v.threshold is not None and math.isfinite(v.threshold):
        ax.axvline(v.threshold, color="black", linestyle="--", linewidth=1.8, label=_threshold_text(v))
        ax.text(v.threshold, 0.98, "threshold ", transform=top, rotation=90, ha="right", va="top", fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, framealpha=0.9)
    ax.grid(True, axis="y", alpha=0.3)


def _score_bins(v: _Panels) -> np.ndarray:
    """100 bins over the scores' range, widened to take in the threshold."""
    lo, hi = float(v.scores.min()), float(v.scores.max())
    if v.threshold is not None and math.isfinite(v.threshold):
        lo, hi = min(lo, v.threshold), max(hi, v.threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, 101)


def _threshold_text(v: _Panels) -> str:
    """The threshold line's legend entry: its value and, with flags, the operating point."""
    text = f"{v.threshold_text}: {v.threshold:.3f}"
    if v.flagged is not None:
        text += f"\noperating point: flags {v.flag_rate:.2%} of traffic"
        if v.n_anom and v.op_fpr is not None:
            text += f",\nFPR {v.op_fpr:.2%} on normal, recall {float(v.flagged[v.anomalous].mean()):.2f}"
    return text


def _num(value: float) -> str:
    """26,400 / 141 / 12.4 / 0.0123: whole numbers from 100 up, three significant digits below."""
    value = float(value)
    if abs(value) >= 100 or value == 0:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _percent(x: float, _pos=None) -> str:
    return f"{x * 100:.10g}%"


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


# -- generic helpers for the benchmarks -----------------------------------------------


def bars(path: str | Path, title: str, ylabel: str, values: Mapping[str, float], *, fmt: str | None = None,
         log: bool = False) -> Path:
    """One bar per name, its value written on top (`fmt`, e.g. "{:.1%}"; default: thousands separated)."""
    fig = _figure()
    ax = fig.add_subplot()
    names = [str(k) for k in values]
    heights = [float(v) for v in values.values()]
    drawn = ax.bar(names, heights, color=[_colour(i) for i in range(len(names))])
    ax.bar_label(drawn, labels=[fmt.format(h) if fmt else _num(h) for h in heights], padding=2, fontsize=9)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(heights + [0.0]) * 1.12 or 1.0)
    if len(names) > 4 or max((len(n) for n in names), default=0) > 12:
        ax.tick_params(axis="x", labelrotation=25)
        for text in ax.get_xticklabels():
            text.set_horizontalalignment("right")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def lines(path: str | Path, title: str, xlabel: str, ylabel: str,
          series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
          logx: bool = False, logy: bool = False) -> Path:
    """One line (with markers) per name through its (xs, ys)."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(list(xs), list(ys), marker="o", markersize=4, linewidth=1.6, color=_colour(i), label=str(name))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if series:
        ax.legend(fontsize=9)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def cdf(path: str | Path, title: str, xlabel: str, samples: Mapping[str, Sequence[float]]) -> Path:
    """Empirical CDF per name on a log x axis; p50 and p99 in the legend.

    Non-positive samples count towards the CDF but cannot be drawn on a log
    axis, so a curve then starts at their share.
    """
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for i, (name, values) in enumerate(samples.items()):
        s = np.sort(np.asarray(list(values), dtype=float))
        s = s[np.isfinite(s)]
        if not len(s):
            continue
        share = np.arange(1, len(s) + 1) / len(s)
        p50, p99 = np.quantile(s, 0.5), np.quantile(s, 0.99)
        positive = s > 0
        if not positive.any():
            continue
        ax.step(s[positive], share[positive], where="post", linewidth=1.8, color=_colour(i),
                label=f"{name} (n {len(s):,}, p50 {_num(p50)}, p99 {_num(p99)})")
        drawn = True
    for q in (0.5, 0.99):
        ax.axhline(q, color="#999999", linestyle=":", linewidth=1)
    if drawn:
        ax.set_xscale("log")
        ax.legend(loc="lower right", fontsize=9)
    ax.set_ylim(0.0, 1.01)
    ax.set_title(title)
    ax.set_xlabel(f"{xlabel} (log scale)")
    ax.set_ylabel("share of samples <= x")
    ax.grid(True, which="both", alpha=0.25)
    return _save(fig, path)
