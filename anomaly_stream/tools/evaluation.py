"""Detection metrics over scored events: ROC/PR, recall at a fixed false-positive rate, the report.

Plain functions over arrays (no replay, no model): `labels` are either
booleans (truthy = anomalous) or, where a function says so, one label name
per event with `NORMAL` for unlabelled traffic; `scores` are the model's
scores; an event is flagged when its score is strictly above a cut.

`evaluate` is the metric part of the backtest report: counts and flag rate
over all traffic, and with labels ROC-AUC, PR-AUC (average precision),
precision, recall and false-positive rate at the operating flags, recall at
the score cuts that let 1% and 0.1% of normal traffic through, and the same
per label value.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NORMAL = "normal"
# The fixed false-positive rates of the report: (key fragment, rate).
FPR_POINTS: tuple[tuple[str, float], ...] = (("1pct", 0.01), ("0.1pct", 0.001))

ArrayLike = Sequence | np.ndarray


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
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


def pr_auc(labels: ArrayLike, scores: ArrayLike) -> float:
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


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates from (0, 0) to (1, 1)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    tps, fps = _curve_points(y, s)
    n_pos, n_neg = max(int(y.sum()), 1), max(len(y) - int(y.sum()), 1)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def pr_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at each distinct threshold, highest threshold first."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if not len(y):
        return np.zeros(0), np.zeros(0)
    tps, fps = _curve_points(y, s)
    return tps / max(int(y.sum()), 1), tps / (tps + fps)


def score_cut_at_fpr(normal_scores: ArrayLike, fpr: float) -> float:
    """The lowest cut with at most `fpr` of `normal_scores` strictly above it.

    The cut is one of the normal scores: with k = floor(fpr x n) false
    positives allowed, it is the (k+1)-th highest. Normal scores tied at the
    cut are not above it, so ties make the realised rate lower, never higher.
    With fpr >= 1 everything passes (-inf); without normal scores, nan.
    """
    s = np.sort(np.asarray(normal_scores, dtype=float))[::-1]
    n = len(s)
    if n == 0:
        return float("nan")
    k = int(math.floor(fpr * n + 1e-9))  # 1e-9: 0.29 * 100 is 28.999...
    if k >= n:
        return float("-inf")
    return float(s[max(k, 0)])


def recall_at_fpr(labels: ArrayLike, scores: ArrayLike, fpr: float) -> tuple[float | dict[str, float], float]:
    """Recall at the score cut that lets `fpr` of normal traffic through: (recall, cut).

    `labels` booleans (truthy = anomalous): recall is the share of anomalous
    events scored strictly above the cut. `labels` label names (`NORMAL` for
    unlabelled): the cut comes from the `NORMAL` events and recall is a dict,
    label value -> share of that label's events above the cut (the overall
    recall is `recall_at_fpr(labels != NORMAL, scores, fpr)`). The cut is
    `score_cut_at_fpr` of the normal scores; nan where there is no normal (or
    no anomalous) event.
    """
    s = np.asarray(scores, dtype=float)
    raw = np.asarray(labels)
    if raw.dtype.kind in "US" or (raw.dtype.kind == "O" and all(isinstance(v, str) for v in raw.tolist())):
        names = raw.astype(object)
        normal = names == NORMAL
        cut = score_cut_at_fpr(s[normal], fpr)
        by_label = {}
        for name in sorted(set(names[~normal].tolist())):
            mine = s[names == name]
            by_label[name] = float((mine > cut).mean()) if not math.isnan(cut) else float("nan")
        return by_label, cut
    y = raw.astype(bool)
    cut = score_cut_at_fpr(s[~y], fpr)
    if not y.any() or math.isnan(cut):
        return float("nan"), cut
    return float((s[y] > cut).mean()), cut


def equivalent_threshold(scores: ArrayLike, flagged: ArrayLike) -> float | None:
    """One score cut flagging the same share of events as `flagged` does.

    The worker's threshold adapts per partition and per batch, so no single
    number is *the* threshold over a replay; this is the global cut with the
    same flag rate (the highest unflagged-by-it score), for drawing and
    comparing. None when nothing was flagged.
    """
    s = np.asarray(scores, dtype=float)
    f = np.asarray(flagged, dtype=bool)
    k = int(f.sum())
    if k == 0 or not len(s):
        return None
    if k >= len(s):
        return float(s.min())
    return float(np.sort(s)[::-1][k])


def clean(value, digits: int | None = 6) -> float | None:
    """JSON-friendly: nan and +-inf become None, floats round to `digits` places (None: exact)."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return None
    return value if digits is None else round(value, digits)


def _rate(num: float, den: float) -> float:
    return num / den if den else float("nan")


def evaluate(scores: ArrayLike, flagged: ArrayLike, labels: ArrayLike, labelled: bool = True) -> dict:
    """The metric part of the backtest report (see the module docstring).

    `labels`: one label name per event, `NORMAL` for unlabelled traffic.
    Keys always present: n, flagged, flag_rate (over all traffic), roc_auc,
    pr_auc, precision, recall (None without labels). With labels also:
    n_anomalous, false_positive_rate, and per fixed FPR ("1pct", "0.1pct")
    recall_at_<p>_fpr, score_cut_at_<p>_fpr, flag_rate_at_<p>_fpr (all
    traffic above that cut); per_label[name]: n, flagged, recall (at the
    operating flags), roc_auc_vs_normal, recall_at_<p>_fpr.
    """
    s = np.asarray(scores, dtype=float)
    f = np.asarray(flagged, dtype=bool)
    names = np.asarray(labels, dtype=object)
    n = len(s)
    result: dict = {
        "n": n,
        "flagged": int(f.sum()),
        "flag_rate": float(f.mean()) if n else 0.0,
        "roc_auc": None, "pr_auc": None, "precision": None, "recall": None,
    }
    if not labelled or not n:
        return result
    y = names != NORMAL
    normal = ~y
    tp = int((f & y).sum())
    fp = int((f & normal).sum())
    result.update(
        n_anomalous=int(y.sum()),
        roc_auc=clean(roc_auc(y, s)),
        pr_auc=clean(pr_auc(y, s)),
        precision=clean(_rate(tp, tp + fp)),
        recall=clean(_rate(tp, y.sum())),
        false_positive_rate=clean(_rate(fp, normal.sum())),
    )
    at_fpr: dict[str, dict[str, float]] = {}
    for key, rate in FPR_POINTS:
        overall, cut = recall_at_fpr(y, s, rate)
        at_fpr[key], _ = recall_at_fpr(names, s, rate)
        result[f"recall_at_{key}_fpr"] = clean(overall)
        result[f"score_cut_at_{key}_fpr"] = clean(cut, None)  # exact: a rounded cut lets more through
        result[f"flag_rate_at_{key}_fpr"] = clean(float((s > cut).mean()) if not math.isnan(cut) else None)
    per_label = {}
    has_normal = bool(normal.any())
    for name in sorted(set(names[y].tolist())):
        mine = names == name
        both = mine | normal
        row = {
            "n": int(mine.sum()),
            "flagged": int((f & mine).sum()),
            "recall": clean(float((f & mine).sum()) / mine.sum()),
            "roc_auc_vs_normal": clean(roc_auc(mine[both], s[both])) if has_normal else None,
        }
        for key, _ in FPR_POINTS:
            row[f"recall_at_{key}_fpr"] = clean(at_fpr[key].get(name))
        per_label[name] = row
    result["per_label"] = per_label
    return result
