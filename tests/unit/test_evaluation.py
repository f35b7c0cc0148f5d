"""Tests for the metrics (anomaly_stream.tools.evaluation): hand-computed answers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from anomaly_stream.tools.evaluation import (
    NORMAL,
    equivalent_threshold,
    evaluate,
    pr_auc,
    pr_curve,
    recall_at_fpr,
    roc_auc,
    roc_curve,
    score_cut_at_fpr,
)

# -- ROC / PR ------------------------------------------------------------------------


def test_roc_auc_of_perfectly_separated_scores_is_one():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_roc_auc_counts_ties_as_half():
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # Pairs (pos, neg): 0.9>0.5, 0.9>0.1, 0.5=0.5 (a half), 0.5>0.1: 3.5 of 4.
    assert roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)


def test_roc_and_pr_auc_by_hand():
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.8, 0.3, 0.1]
    # Positive-negative pairs ranked right: (0.9>0.8), (0.9>0.1), (0.3>0.1) of 4.
    assert roc_auc(labels, scores) == pytest.approx(0.75)
    # Precision 1 at the first positive, 2/3 at the second, each half the recall.
    assert pr_auc(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    fpr, tpr = roc_curve(labels, scores)
    assert list(fpr) == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert list(tpr) == [0.0, 0.5, 0.5, 1.0, 1.0]
    recall, precision = pr_curve(labels, scores)
    assert list(recall) == [0.5, 0.5, 1.0, 1.0]
    assert list(precision) == pytest.approx([1.0, 0.5, 2 / 3, 0.5])


def test_metrics_match_brute_force_on_random_data():
    rng = random.Random(3)
    labels = [rng.random() < 0.2 for _ in range(300)]
    scores = [round(rng.random(), 2) for _ in range(300)]  # rounding makes ties
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    brute = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert roc_auc(labels, scores) == pytest.approx(brute)
    assert 0.0 < pr_auc(labels, scores) <= 1.0


def test_metrics_without_both_classes_are_nan():
    assert math.isnan(roc_auc([0, 0], [0.1, 0.2]))
    assert math.isnan(pr_auc([0, 0], [0.1, 0.2]))


# -- recall at a fixed false-positive rate -----------------------------------------------

NORMAL_SCORES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
POSITIVES = [0.95, 0.85, 0.5, 0.05]


def case(normal=NORMAL_SCORES, positives=POSITIVES):
    return [False] * len(normal) + [True] * len(positives), list(normal) + list(positives)


def test_recall_at_fpr_by_hand():
    labels, scores = case()
    # 10% of 10 normal events: one may pass, so the cut is the second highest (0.9).
    assert recall_at_fpr(labels, scores, 0.1) == (0.25, 0.9)
    assert recall_at_fpr(labels, scores, 0.2) == (0.5, 0.8)
    assert recall_at_fpr(labels, scores, 0.25) == (0.5, 0.8)  # 2.5 false positives: still 2
    # Below one false positive: the cut is the highest normal score, nothing ties above it.
    assert recall_at_fpr(labels, scores, 0.01) == (0.0, 1.0)
    assert recall_at_fpr(labels, scores, 0.0) == (0.0, 1.0)
    # Everything through.
    recall, cut = recall_at_fpr(labels, scores, 1.0)
    assert recall == 1.0 and cut == -math.inf


def test_recall_at_fpr_with_ties_never_exceeds_the_rate():
    # Four normal scores tied at 0.5: at 20% (one allowed) none of them may pass.
    labels, scores = case(normal=[0.5, 0.5, 0.5, 0.5, 0.1], positives=[0.5, 0.6])
    recall, cut = recall_at_fpr(labels, scores, 0.2)
    assert cut == 0.5
    assert recall == 0.5  # the positive tied at the cut is not above it
    # 80%: four may pass, so all the tied ones do.
    assert recall_at_fpr(labels, scores, 0.8) == (1.0, 0.1)
    # All tied: nothing can be told apart, so at any rate below 1 nothing passes.
    assert recall_at_fpr([0, 0, 1], [0.3, 0.3, 0.3], 0.5) == (0.0, 0.3)


def test_recall_at_fpr_floor_is_robust_to_float_error():
    # 0.29 * 100 is 28.999999999999996: still 29 false positives allowed.
    normal = list(range(100))
    assert score_cut_at_fpr(normal, 0.29) == 70.0
    assert score_cut_at_fpr([], 0.01) != score_cut_at_fpr([], 0.01)  # nan


def test_recall_at_fpr_per_label_value():
    names = [NORMAL] * 10 + ["drain", "drain", "dust", "dust"]
    _, scores = case()
    by_label, cut = recall_at_fpr(names, scores, 0.2)
    assert cut == 0.8
    assert by_label == {"drain": 1.0, "dust": 0.0}
    by_label, cut = recall_at_fpr(np.asarray(names, dtype=object), scores, 0.1)
    assert (by_label, cut) == ({"drain": 0.5, "dust": 0.0}, 0.9)


def test_recall_at_fpr_without_a_class_is_nan():
    recall, cut = recall_at_fpr([False, False], [0.1, 0.2], 0.5)
    assert math.isnan(recall) and cut == 0.1
    recall, cut = recall_at_fpr([True, True], [0.1, 0.2], 0.5)
    assert math.isnan(recall) and math.isnan(cut)


def test_recall_at_fpr_matches_brute_force_on_random_data():
    rng = random.Random(5)
    labels = [rng.random() < 0.3 for _ in range(400)]
    scores = [round(rng.random(), 1) for _ in range(400)]  # heavy ties
    normal = [s for s, y in zip(scores, labels) if not y]
    pos = [s for s, y in zip(scores, labels) if y]
    for rate in (0.001, 0.01, 0.05, 0.1, 0.33, 0.5):
        recall, cut = recall_at_fpr(labels, scores, rate)
        # The lowest normal score as a cut that keeps the realised rate within the target.
        ok = [c for c in set(normal) if sum(n > c for n in normal) <= rate * len(normal)]
        assert cut == min(ok)
        assert recall == pytest.approx(sum(p > cut for p in pos) / len(pos))


def test_equivalent_threshold_has_the_flags_rate():
    scores = [0.1, 0.9, 0.5, 0.7, 0.3]
    assert equivalent_threshold(scores, [0, 1, 0, 1, 0]) == 0.5  # two above 0.5
    assert equivalent_threshold(scores, [0, 0, 0, 0, 0]) is None
    assert equivalent_threshold(scores, [1, 1, 1, 1, 1]) == 0.1


# -- the report's metrics ------------------------------------------------------------------


def test_evaluate_by_hand():
    names = [NORMAL] * 10 + ["drain", "drain", "dust", "dust"]
    _, scores = case()
    flagged = [s > 0.88 for s in scores]  # normal 0.9, 1.0; drain 0.95
    result = evaluate(scores, flagged, names)
    assert result["n"] == 14 and result["flagged"] == 3
    assert result["flag_rate"] == pytest.approx(3 / 14)
    assert result["n_anomalous"] == 4
    assert result["precision"] == pytest.approx(1 / 3, abs=1e-6)
    assert result["recall"] == 0.25
    assert result["false_positive_rate"] == 0.2
    # 1% and 0.1% of 10 normal events: no false positive, so the cut is the top normal score.
    assert result["score_cut_at_1pct_fpr"] == 1.0 and result["score_cut_at_0.1pct_fpr"] == 1.0
    assert result["recall_at_1pct_fpr"] == 0.0 and result["recall_at_0.1pct_fpr"] == 0.0
    assert result["flag_rate_at_1pct_fpr"] == 0.0
    drain = result["per_label"]["drain"]
    # 0.95 beats 9 of the 10 normal scores and 0.85 beats 8: 17 of 20 pairs.
    assert drain == {"n": 2, "flagged": 1, "recall": 0.5, "roc_auc_vs_normal": 0.85,
                     "recall_at_1pct_fpr": 0.0, "recall_at_0.1pct_fpr": 0.0}
    assert set(result["per_label"]) == {"drain", "dust"}


def test_evaluate_recall_at_fpr_on_a_larger_stream():
    rng = np.random.default_rng(0)
    normal = rng.uniform(0.0, 0.8, 10_000)
    attack = rng.uniform(0.7, 1.0, 200)
    scores = np.r_[normal, attack]
    names = np.r_[[NORMAL] * len(normal), ["attack"] * len(attack)].astype(object)
    result = evaluate(scores, scores > 0.95, names)
    cut = result["score_cut_at_1pct_fpr"]
    assert (normal > cut).sum() == 100  # exactly 1% of 10k (no ties in uniform floats)
    assert result["recall_at_1pct_fpr"] == pytest.approx((attack > cut).mean(), abs=1e-6)
    assert result["per_label"]["attack"]["recall_at_1pct_fpr"] == result["recall_at_1pct_fpr"]
    assert result["flag_rate_at_1pct_fpr"] == pytest.approx((scores > cut).mean(), abs=1e-6)
    assert (normal > result["score_cut_at_0.1pct_fpr"]).sum() == 10


def test_evaluate_without_labels_has_the_flag_rate_only():
    result = evaluate([0.1, 0.9, 0.5, 0.7], [0, 1, 0, 1], [NORMAL] * 4, labelled=False)
    assert result == {"n": 4, "flagged": 2, "flag_rate": 0.5,
                      "roc_auc": None, "pr_auc": None, "precision": None, "recall": None}
    assert evaluate([], [], [])["flag_rate"] == 0.0
