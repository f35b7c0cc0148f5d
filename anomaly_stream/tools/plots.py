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
    colours = {name: _colour(i) for i, name in enumerate(label_names)}
    n, n_normal, n_anom = len(scores), int(normal.sum()), int(anomalous.sum())

    compare = bool(n_anom and n_normal)  # ROC and PR need both; otherwise only the scores are drawn
    if compare:
        fig = _figure(DETECTION_SIZE)
        grid = fig.add_gridspec(2, 2, height_ratios=(1.0, 0.9))
        ax_roc, ax_pr = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
        ax_hist = fig.add_subplot(grid[1, :])
    else:
        fig = _figure(SCORES_ONLY_SIZE)
        ax_hist = fig.add_subplot()
    flag_rate = float(flagged.mean()) if flagged is not None and n else None
    what = f"{n_anom:,} labelled ({len(label_names)} labels)" if n_anom else "no labels"
    fig.suptitle(title or (
        f"Backtest: {n:,} events, {what}" + (f", flag rate {flag_rate:.2%}" if flag_rate is not None else "")
    ), fontsize=13)
    # Without labels every event counts as normal: a cut "at 1% FPR" passes 1% of all traffic.
    cut_text = "FPR" if n_anom else "of traffic"

    op_fpr = None
    if flagged is not None and n_normal:
        op_fpr = float(flagged[normal].mean())
    cuts = {key: score_cut_at_fpr(scores[normal], rate) for key, rate in FPR_POINTS} if n_normal else {}

    if compare:
        # ROC per label against normal traffic, log-scaled false-positive rate.
        ax_roc.set_title("ROC per label vs normal traffic")
        ax_roc.set_xlabel("false-positive rate on normal traffic (log scale)")
        ax_roc.set_ylabel("recall (true-positive rate)")
        # One decade holding a single false positive, and at least down to 0.1%.
        x_min = max(min(10.0 ** math.floor(math.log10(1.0 / n_normal)), 1e-3), 1e-6)
        curves = [(name, names == name, colours[name], 1.6) for name in label_names]
        if len(label_names) > 1:
            curves.append(("all labelled", anomalous, ALL_COLOUR, 2.4))
        for name, mine, colour, width in curves:
            both = mine | normal
            fpr, tpr = roc_curve(mine[both], scores[both])
            auc = roc_auc(mine[both], scores[both])
            ax_roc.plot(np.maximum(fpr, x_min), tpr, color=colour, linewidth=width, label=f"{name}  {auc:.3f}")
            if op_fpr is not None:
                recall = float(flagged[mine].mean())
                ax_roc.plot(max(op_fpr, x_min), recall, marker="o", markersize=7, color=colour,
                            markeredgecolor="black", linestyle="none", zorder=5)
        for (key, rate), style in zip(FPR_POINTS, CUT_STYLES):
            if rate >= x_min:
                ax_roc.axvline(rate, color="#666666", linestyle=style, linewidth=1)
        ax_roc.set_xscale("log")
        ax_roc.xaxis.set_major_formatter(FuncFormatter(_percent))
        ax_roc.set_xlim(x_min, 1.0)
        ax_roc.set_ylim(0.0, 1.02)
        handles, texts = ax_roc.get_legend_handles_labels()
        if op_fpr is not None:
            handles.append(Line2D([], [], marker="o", color="white", markeredgecolor="black", markersize=7,
                                  linestyle="none"))
            texts.append(f"operating point (FPR {op_fpr:.2%})")
        ax_roc.legend(handles, texts, loc="lower right", fontsize=7.5, title="AUC vs normal", title_fontsize=8,
                      handlelength=1.5, labelspacing=0.3, framealpha=0.7)
        ax_roc.grid(True, which="major", alpha=0.3)

        # Precision-recall, all labelled traffic against normal traffic.
        ax_pr.set_title("Precision-recall: all labelled vs normal")
        ax_pr.set_xlabel("recall")
        ax_pr.set_ylabel("precision")
        y = anomalous
        recall, precision = pr_curve(y, scores)
        ax_pr.plot(np.r_[0.0, recall], np.r_[precision[0], precision], color=ALL_COLOUR, linewidth=2,
                   drawstyle="steps-pre", label=f"all labelled (AP {pr_auc(y, scores):.3f})")
        ax_pr.axhline(n_anom / n, color="#bbbbbb", linestyle="--", linewidth=1,
                      label=f"prevalence ({n_anom / n:.2%})")
        if flagged is not None and flagged.any():
            tp = int((flagged & y).sum())
            op_recall, op_precision = tp / n_anom, tp / int(flagged.sum())
            ax_pr.plot(op_recall, op_precision, marker="o", markersize=8, color="white", markeredgecolor="black",
                       linestyle="none", zorder=5,
                       label=f"operating point (P {op_precision:.2f}, R {op_recall:.2f})")
        for (key, rate), style in zip(FPR_POINTS, CUT_MARKERS):
            cut = cuts.get(key)
            if cut is None or math.isnan(cut):
                continue
            above = scores > cut
            if above.any():
                ax_pr.plot(float((above & y).sum()) / n_anom, float((above & y).sum()) / int(above.sum()),
                           marker=style, markersize=7, color="#666666", linestyle="none", zorder=4,
                           label=f"at {rate:.1%} FPR (cut {cut:.3f})")
        ax_pr.set_xlim(0.0, 1.02)
        ax_pr.set_ylim(0.0, 1.05)
        ax_pr.legend(loc="lower left", fontsize=8, framealpha=0.9)
        ax_pr.grid(True, alpha=0.3)

    # Score distributions per label, log counts, with the cuts.
    ax_hist.set_title("Score distributions per label" if n_anom else "Score distribution")
    ax_hist.set_xlabel("anomaly score")
    ax_hist.set_ylabel("events per bin (log scale)")
    if n:
        lo, hi = float(scores.min()), float(scores.max())
        if threshold is not None and math.isfinite(threshold):
            lo, hi = min(lo, threshold), max(hi, threshold)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 101)
        if n_normal:
            ax_hist.hist(scores[normal], bins=bins, histtype="stepfilled", color=NORMAL_COLOUR, alpha=0.45,
                         label=f"{NORMAL if n_anom else 'all traffic, unlabelled'} ({n_normal:,})")
        for name in label_names:
            mine = scores[names == name]
            ax_hist.hist(mine, bins=bins, histtype="step", linewidth=1.6, color=colours[name],
                         label=f"{name} ({len(mine):,})")
        ax_hist.set_yscale("log")
        _, y_top = ax_hist.get_ylim()
        ax_hist.set_ylim(0.7, y_top * 8)  # headroom for the cut labels
        top = ax_hist.get_xaxis_transform()  # x in data, y in axes fractions
        for (key, rate), style in zip(FPR_POINTS, CUT_STYLES):
            cut = cuts.get(key)
            if cut is not None and math.isfinite(cut):
                ax_hist.axvline(cut, color="#666666", linestyle=style, linewidth=1.2,
                                label=f"cut at {rate:.1%} {cut_text}: {cut:.3f}")
                ax_hist.text(cut, 0.98, f"{rate:.1%} {cut_text} ", transform=top, rotation=90, ha="right", va="top",
                             fontsize=8, color="#444444")
        if threshold is not None and math.isfinite(threshold):
            text = f"{threshold_text}: {threshold:.3f}"
            if flagged is not None:
                text += f"\noperating point: flags {flag_rate:.2%} of traffic"
                if n_anom and op_fpr is not None:
                    text += f",\nFPR {op_fpr:.2%} on normal, recall {float(flagged[anomalous].mean()):.2f}"
            ax_hist.axvline(threshold, color="black", linestyle="--", linewidth=1.8, label=text)
            ax_hist.text(threshold, 0.98, "threshold ", transform=top, rotation=90, ha="right", va="top",
                         fontsize=8)
        ax_hist.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, framealpha=0.9)
        ax_hist.grid(True, axis="y", alpha=0.3)
    else:
        _empty(ax_hist, "no scored events")
    return _save(fig, path)


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
