"""Tests for the per-partition detector (anomaly_stream.detect.model)."""

from __future__ import annotations

import pickle
import random

import pytest

from anomaly_stream.detect.features import FEATURE_NAMES, unscale
from anomaly_stream.detect.model import CHECKPOINT_VERSION, ModelConfig, PartitionModel
from anomaly_stream.settings import Settings

BATCH = 100


def stationary(seed: int, n: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [
        {name: min(1.0, max(0.0, rng.gauss(0.5, 0.12))) for name in FEATURE_NAMES}
        for _ in range(n)
    ]


def feed(model: PartitionModel, xs, batch: int = BATCH) -> list[tuple[float, float]]:
    """(score, threshold in force) per event, with end_batch every `batch` events."""
    out = []
    for i, x in enumerate(xs, 1):
        out.append((model.score_learn(x), model.threshold))
        if not i % batch:
            model.end_batch()
    return out


@pytest.fixture(scope="module")
def long_run():
    config = ModelConfig(warmup_events=1_000)
    model = PartitionModel(config)
    results = feed(model, stationary(1, 23_000))
    return config, model, results


def test_no_flags_during_warmup():
    model = PartitionModel(ModelConfig(warmup_events=600, window_size=250))
    results = feed(model, stationary(2, 599), batch=50)
    model.end_batch()
    assert model.threshold == 1.0
    assert all(threshold == 1.0 for _, threshold in results)
    assert not any(score > threshold for score, threshold in results)
    assert not model.warm
    model.score_learn(stationary(3, 1)[0])
    assert model.warm
    model.end_batch()
    assert model.threshold < 1.0


def test_warmup_lasts_at_least_one_window():
    model = PartitionModel(ModelConfig(warmup_events=10, window_size=250))
    feed(model, stationary(4, 249), batch=10)
    assert not model.warm and model.threshold == 1.0
    feed(model, stationary(5, 1), batch=1)
    assert model.warm and model.threshold < 1.0


def test_scores_are_in_unit_interval(long_run):
    _, _, results = long_run
    assert all(0.0 <= score <= 1.0 for score, _ in results)


def test_flag_rate_after_warmup_is_near_target(long_run):
    config, model, results = long_run
    after = results[3_000:]
    flagged = sum(score > threshold for score, threshold in after) / len(after)
    assert 0.5 * config.target_flag_rate <= flagged <= 2 * config.target_flag_rate
    assert 0.0 < model.threshold < 1.0


def test_threshold_changes_only_at_batch_end(long_run):
    _, _, results = long_run
    thresholds = [threshold for _, threshold in results]
    for i in range(len(thresholds)):
        if i % BATCH:
            assert thresholds[i] == thresholds[i - 1]


def test_end_batch_without_events_changes_nothing():
    model = PartitionModel(ModelConfig(warmup_events=300))
    feed(model, stationary(6, 350), batch=50)
    hist, threshold = list(model.hist), model.threshold
    model.end_batch()
    assert model.hist == hist and model.threshold == threshold


@pytest.mark.parametrize("floor", [0.9, 0.99])
def test_score_floor_is_respected(floor):
    model = PartitionModel(ModelConfig(warmup_events=300, score_floor=floor))
    results = feed(model, stationary(7, 3_000))
    assert all(threshold >= floor for _, threshold in results)
    assert model.threshold >= floor


def test_higher_target_rate_gives_lower_threshold():
    xs = stationary(8, 4_000)
    low = PartitionModel(ModelConfig(warmup_events=500, target_flag_rate=0.001))
    high = PartitionModel(ModelConfig(warmup_events=500, target_flag_rate=0.1))
    feed(low, xs)
    feed(high, xs)
    assert high.threshold < low.threshold


def test_partitions_get_different_trees():
    xs = stationary(9, 400)
    a, b = PartitionModel(ModelConfig(), 0), PartitionModel(ModelConfig(), 1)
    assert [s for s, _ in feed(a, xs)] != [s for s, _ in feed(b, xs)]


def test_same_partition_and_seed_is_deterministic():
    xs = stationary(10, 400)
    a, b = PartitionModel(ModelConfig(), 3), PartitionModel(ModelConfig(), 3)
    assert feed(a, xs) == feed(b, xs)


def test_checkpoint_round_trip_gives_identical_scores():
    model = PartitionModel(ModelConfig(warmup_events=500), partition=2)
    feed(model, stationary(11, 1_550))  # ends mid-batch on purpose
    restored = PartitionModel.from_bytes(model.to_bytes())
    assert restored.seen == model.seen
    assert restored.threshold == model.threshold
    assert restored.hist == model.hist
    assert restored.config == model.config
    xs = stationary(12, 1_000)
    assert feed(restored, xs) == feed(model, xs)
    assert restored.threshold == model.threshold
    assert restored.explain(xs[0]) == model.explain(xs[0])


def test_checkpoint_carries_the_fee_market():
    model = PartitionModel(ModelConfig(warmup_events=300), partition=1)
    for price in (10.0, 30.0, 20.0):
        model.market.add(price)
    restored = PartitionModel.from_bytes(model.to_bytes())
    assert restored.market.median() == 20.0
    assert restored.market.ring == [10.0, 30.0, 20.0]
    assert restored.features == FEATURE_NAMES
    assert restored.partition == 1


def trained(config: ModelConfig, partition: int = 2) -> PartitionModel:
    model = PartitionModel(config, partition)
    feed(model, stationary(16, 1_200))
    return model


def test_checkpoint_of_another_feature_set_starts_over():
    model = trained(ModelConfig(warmup_events=500))
    model.features = ("value_eth", "gas_price_gwei")  # as if written by an older release
    restored = PartitionModel.from_bytes(model.to_bytes())
    assert restored.seen == 0 and not restored.warm and restored.threshold == 1.0
    assert restored.features == FEATURE_NAMES
    assert restored.hst.seed == model.hst.seed  # same partition, same trees to grow
    assert restored.config == model.config


def test_version_1_checkpoint_starts_over_with_its_partition():
    model = trained(ModelConfig(warmup_events=500), partition=3)
    state = dict(model.__dict__)
    for key in ("market", "features", "partition"):
        del state[key]
    restored = PartitionModel.from_bytes(pickle.dumps((1, state)))
    assert restored.seen == 0 and restored.threshold == 1.0
    assert restored.partition == 3 and restored.hst.seed == model.config.seed + 3


def test_restore_with_a_new_config():
    model = trained(ModelConfig(warmup_events=500, target_flag_rate=0.01))
    raw = model.to_bytes()
    # Threshold settings apply to the restored trees as they are.
    same_trees = PartitionModel.from_bytes(raw, ModelConfig(warmup_events=500, target_flag_rate=0.05))
    assert same_trees.seen == model.seen and same_trees.config.target_flag_rate == 0.05
    xs = stationary(17, 300)
    assert [s for s, _ in feed(same_trees, xs)] == [s for s, _ in feed(model, xs)]
    # Another tree shape cannot reuse the trained trees: it starts over.
    more_trees = PartitionModel.from_bytes(raw, ModelConfig(warmup_events=500, n_trees=model.config.n_trees + 5))
    assert more_trees.seen == 0 and len(more_trees.hst.trees) == 0
    assert more_trees.config.n_trees == model.config.n_trees + 5


def test_unknown_checkpoint_version_is_refused():
    raw = pickle.dumps((CHECKPOINT_VERSION + 1, {}))
    with pytest.raises(ValueError, match="version"):
        PartitionModel.from_bytes(raw)


def test_explain_without_sample_is_empty():
    model = PartitionModel(ModelConfig())
    assert model.explain({name: 0.5 for name in FEATURE_NAMES}) == []


@pytest.mark.parametrize("feature, extreme", [("value_eth", 1.0), ("fee_premium_gwei", 0.0), ("burst", 1.0)])
def test_explain_puts_the_most_deviant_feature_first(feature, extreme):
    model = PartitionModel(ModelConfig(warmup_events=300))
    feed(model, stationary(13, 2_000))
    x = {name: 0.5 for name in FEATURE_NAMES}
    x[feature] = extreme
    x["contract_creation"] = 0.7  # a second, smaller deviation
    rows = model.explain(x, top=3)
    assert len(rows) == 3
    assert set(rows[0]) == {"feature", "value", "typical", "deviation"}
    assert rows[0]["feature"] == feature
    assert rows[1]["feature"] == "contract_creation"
    assert (rows[0]["deviation"] > 0) == (extreme > 0.5)
    assert abs(rows[0]["deviation"]) > abs(rows[1]["deviation"]) > abs(rows[2]["deviation"])
    assert rows[0]["value"] == pytest.approx(unscale(feature, extreme), rel=1e-3)
    assert unscale(feature, 0.45) <= rows[0]["typical"] <= unscale(feature, 0.55)


def test_explain_top_limits_rows():
    model = PartitionModel(ModelConfig(warmup_events=300))
    feed(model, stationary(14, 500))
    x = stationary(15, 1)[0]
    assert len(model.explain(x, top=1)) == 1
    assert len(model.explain(x, top=len(FEATURE_NAMES) + 5)) == len(FEATURE_NAMES)


def test_config_from_settings():
    s = Settings(model_n_trees=5, model_height=6, model_window_size=100, model_seed=7,
                 model_warmup_events=50, target_flag_rate=0.01, score_floor=0.3)
    c = ModelConfig.from_settings(s)
    assert (c.n_trees, c.height, c.window_size, c.seed, c.warmup_events, c.target_flag_rate, c.score_floor) == (
        5, 6, 100, 7, 50, 0.01, 0.3)
