"""Tests for the per-partition detector (anomaly_stream.detect.model)."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river.anomaly import HalfSpaceTrees

from anomaly_stream.detect import hst as hst_module
from anomaly_stream.detect.features import FEATURE_NAMES, unscale
from anomaly_stream.detect.hst import PREFIX, CompiledHST
from anomaly_stream.detect.model import (
    BINS, CHECKPOINT_VERSION, MAGIC, SAMPLE_EVERY, CheckpointError, ModelConfig, PartitionModel,
)
from anomaly_stream.settings import Settings

D = len(FEATURE_NAMES)
BATCH = 100
KEY = b"model checkpoint key"
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def stationary(seed: int, n: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0.5, 0.12, (n, D)), 0.0, 1.0)


def generated_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows shaped like the detector's features: mostly 0, a skewed tail, some 0/1 indicators."""
    X = np.zeros((n, D))
    rates = (0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.3, 0.15)
    for j in range(D):
        on = rng.random(n) < rates[j % len(rates)]
        X[on, j] = 1.0 if j % 4 == 3 else rng.beta(1.5, 6, int(on.sum()))
    return X


def corner(rng: np.random.Generator, n: int) -> np.ndarray:
    """Outliers at one corner of the feature space (every feature near its top)."""
    return rng.uniform(0.95, 1.0, (n, D))


def feed(model: PartitionModel, X: np.ndarray, batch: int = BATCH, may_learn=None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and the threshold in force per row, with end_batch after every `batch` rows."""
    scores, thresholds = [], []
    for at in range(0, len(X), batch):
        mask = None if may_learn is None else may_learn[at: at + batch]
        part = model.score_learn(X[at: at + batch], mask)
        scores.append(part)
        thresholds.append(np.full(len(part), model.threshold))
        model.end_batch()
    return np.concatenate(scores), np.concatenate(thresholds)


def river(config: ModelConfig, partition: int = 0) -> HalfSpaceTrees:
    return HalfSpaceTrees(n_trees=config.n_trees, height=config.height, window_size=config.window_size,
                          seed=config.seed + partition)


@pytest.fixture(scope="module")
def long_run():
    config = ModelConfig(warmup_events=1_000)
    model = PartitionModel(config)
    scores, thresholds = feed(model, stationary(1, 23_000))
    return config, model, scores, thresholds


# -- warm-up and threshold ----------------------------------------------------------------------


def test_no_flags_during_warmup():
    model = PartitionModel(ModelConfig(warmup_events=600, window_size=250))
    scores, thresholds = feed(model, stationary(2, 599), batch=50)
    model.end_batch()
    assert model.threshold == 1.0 and (thresholds == 1.0).all() and not (scores > thresholds).any()
    assert not model.warm and model.learned == model.seen == 599  # during warm-up every row learns
    assert model.drift == 0.0 and model.quantile is None
    model.score_learn(stationary(3, 1))
    assert model.warm
    model.end_batch()
    assert model.threshold < 1.0


def test_warmup_lasts_at_least_one_learned_window():
    model = PartitionModel(ModelConfig(warmup_events=10, window_size=250))
    feed(model, stationary(4, 249), batch=10)
    assert not model.warm and model.threshold == 1.0
    feed(model, stationary(5, 1), batch=1)
    assert model.warm and model.threshold < 1.0
    # rows vetoed by may_learn are scored, not learned: no window, no warm-up
    vetoed = PartitionModel(ModelConfig(warmup_events=10, window_size=250))
    feed(vetoed, stationary(4, 400), may_learn=np.arange(400) % 2 == 0)
    assert vetoed.seen == 400 and vetoed.learned == 200 and not vetoed.warm


def test_scores_are_in_unit_interval(long_run):
    _, _, scores, _ = long_run
    assert ((0.0 <= scores) & (scores <= 1.0)).all()


def test_flag_rate_after_warmup_is_near_target(long_run):
    config, model, scores, thresholds = long_run
    flagged = float(np.mean(scores[3_000:] > thresholds[3_000:]))
    assert 0.5 * config.target_flag_rate <= flagged <= 2 * config.target_flag_rate
    assert 0.0 < model.threshold < config.max_threshold
    # flagged rows were not learned
    assert model.learned == model.seen - int(np.sum(scores > thresholds))


def test_threshold_changes_only_at_batch_end(long_run):
    _, _, _, thresholds = long_run
    for i in range(1, len(thresholds)):
        if i % BATCH:
            assert thresholds[i] == thresholds[i - 1]


def test_drift_is_small_on_stationary_traffic(long_run):
    _, model, _, _ = long_run
    assert model.quantile is not None and abs(model.drift) < 0.03


def test_end_batch_without_events_changes_nothing():
    model = PartitionModel(ModelConfig(warmup_events=300))
    feed(model, stationary(6, 350), batch=50)
    hist, threshold, drift = model.hist.copy(), model.threshold, model.drift
    model.end_batch()
    assert np.array_equal(model.hist, hist) and model.threshold == threshold and model.drift == drift


@pytest.mark.parametrize("floor", [0.9, 0.99])
def test_score_floor_is_respected_even_above_the_ceiling(floor):
    model = PartitionModel(ModelConfig(warmup_events=300, score_floor=floor))
    _, thresholds = feed(model, stationary(7, 3_000))
    assert (thresholds >= floor).all() and model.threshold >= floor


def test_higher_target_rate_gives_lower_threshold():
    X = stationary(8, 4_000)
    low = PartitionModel(ModelConfig(warmup_events=500, target_flag_rate=0.001))
    high = PartitionModel(ModelConfig(warmup_events=500, target_flag_rate=0.1))
    feed(low, X)
    feed(high, X)
    assert high.threshold < low.threshold


def test_partitions_get_different_trees():
    X = stationary(9, 400)
    a, b = PartitionModel(ModelConfig(), 0), PartitionModel(ModelConfig(), 1)
    assert a.hst.seed == 42 and b.hst.seed == 43
    assert not np.array_equal(feed(a, X)[0], feed(b, X)[0])


def test_same_partition_and_seed_is_deterministic():
    X = stationary(10, 400)
    a, b = PartitionModel(ModelConfig(), 3), PartitionModel(ModelConfig(), 3)
    for got, want in zip(feed(a, X), feed(b, X)):
        assert np.array_equal(got, want)


def test_sample_takes_every_eighth_scored_row():
    model = PartitionModel(ModelConfig())
    X = stationary(11, 100)
    for size in (3, 1, 7, 20, 5, 64):  # 100 rows in uneven batches
        model.score_learn(X[:size])
        X = X[size:]
    rows = np.array(model.sample)
    assert np.array_equal(rows, stationary(11, 100)[SAMPLE_EVERY - 1:: SAMPLE_EVERY])


def test_bad_inputs():
    model = PartitionModel(ModelConfig())
    with pytest.raises(ValueError):
        model.score_learn(np.zeros((3, D + 1)))
    with pytest.raises(ValueError):
        model.score_learn(np.zeros(D))
    with pytest.raises(ValueError):
        model.score_learn(np.full((2, D), np.nan))
    with pytest.raises(ValueError):
        model.score_learn(np.zeros((3, D)), np.ones(2, dtype=bool))
    assert model.score_learn(np.zeros((0, D))).shape == (0,) and model.seen == 0


# -- the batch API is River's loop, skipping flagged and vetoed rows ----------------------------


def test_batch_api_equals_the_river_loop_that_skips_flagged_and_vetoed_rows():
    rng = np.random.default_rng(20)
    n = 30_000
    X = generated_like(rng, n)
    X[rng.random(n) < 0.01] = rng.random((1, D))  # some outliers of all kinds
    may_learn = rng.random(n) < 0.9
    # The flag rate this test was written for (the shipped default is lower): enough flagged rows to skip.
    config, partition = ModelConfig(target_flag_rate=0.02), 2
    model, reference = PartitionModel(config, partition), river(config, partition)
    expected = np.empty(n)
    skipped_by_flag = learned = 0
    thresholds = []
    at = 0
    while at < n:
        size = int(rng.choice([1, 3, 8, 9, 50, 250, 251, 500, 1_500, 5_000]))
        threshold = model.threshold  # in force for this batch (end_batch sets it from the scores)
        thresholds.append(threshold)
        got = model.score_learn(X[at: at + size], may_learn[at: at + size])
        for i in range(at, min(n, at + size)):
            x = dict(zip(FEATURE_NAMES, X[i].tolist()))
            expected[i] = reference.score_one(x)
            if may_learn[i] and expected[i] <= threshold:
                reference.learn_one(x)
                learned += 1
            elif may_learn[i]:
                skipped_by_flag += 1
        assert np.array_equal(got, expected[at: at + size]), f"batch at {at}"
        model.end_batch()
        at += size
    assert model.seen == n and model.learned == learned
    assert learned > 100 * config.window_size  # crossed many pivots
    assert max(thresholds[5:]) < 0.9 and skipped_by_flag > 200  # warm: flagged rows were skipped
    ours = model.hst.to_arrays()
    for name, value in CompiledHST.from_river(reference, FEATURE_NAMES).to_arrays().items():
        assert np.array_equal(ours[name], value) if isinstance(value, np.ndarray) else ours[name] == value


# -- protection, the ceiling and drift under a flood --------------------------------------------


def flood_run(protected: bool, max_threshold: float = 0.98) -> dict:
    """Warm up on generated-like rows, then 3000 corner outliers among 6000 normal rows."""
    rng = np.random.default_rng(30)
    model = PartitionModel(ModelConfig(max_threshold=max_threshold))
    feed(model, generated_like(rng, 8_000), batch=250)
    before = model.threshold
    probe = corner(np.random.default_rng(31), 50)
    vetoed = np.zeros(len(probe), dtype=bool)
    first = model.score_learn(probe, vetoed)  # scored, not learned
    out = {"before": before, "first_scores": first, "thresholds": [], "quantiles": [], "drifts": []}
    for _ in range(30):
        batch = np.concatenate([generated_like(rng, 200), corner(rng, 100)])
        batch = batch[rng.permutation(len(batch))]
        if not protected:
            model.threshold = 1.0  # no protection: every row learns
        model.score_learn(batch)
        model.end_batch()
        out["thresholds"].append(model.threshold)
        out["quantiles"].append(model.quantile)
        out["drifts"].append(model.drift)
    out["after"] = model.threshold
    out["later_scores"] = model.score_learn(corner(np.random.default_rng(32), 50), vetoed)
    out["model"] = model
    return out


@pytest.fixture(scope="module")
def floods():
    return {"protected": flood_run(True), "unprotected": flood_run(False), "no ceiling": flood_run(True, 1.0)}


def test_protection_keeps_a_flood_anomalous(floods):
    protected, unprotected = floods["protected"], floods["unprotected"]
    for run in (protected, unprotected):  # before the flood the corner is an outlier
        assert (run["first_scores"] > run["before"]).all()
    # With protection, the flood was not learned: later outliers at that corner still score above threshold.
    assert (protected["later_scores"] > protected["after"]).all()
    assert np.median(protected["later_scores"]) >= np.median(protected["first_scores"]) - 0.005
    # Without it (every row learned), the trees learned the corner: they are no longer flagged.
    assert (unprotected["later_scores"] <= unprotected["after"]).all()
    assert np.median(unprotected["later_scores"]) < np.median(protected["first_scores"]) - 0.2


def test_ceiling_holds_under_a_flood(floods):
    run = floods["protected"]
    config = run["model"].config
    assert max(run["quantiles"]) > config.max_threshold  # the flood lifts the quantile over the ceiling
    assert max(run["thresholds"]) <= config.max_threshold  # the threshold stays at or below it
    # without a ceiling, the quantile's rise lets a part of the flood through and learn
    loose = floods["no ceiling"]
    assert max(loose["thresholds"]) > config.max_threshold
    assert not (loose["later_scores"] > loose["after"]).any()


def test_drift_reports_the_flood(floods):
    drifts = floods["protected"]["drifts"]
    assert max(drifts) > 0.1  # the quantile rose well above its smoothed reference
    assert drifts[-1] > 0


# -- checkpoints --------------------------------------------------------------------------------


def trained(config: ModelConfig | None = None, partition: int = 2, n: int = 2_550) -> PartitionModel:
    model = PartitionModel(config or ModelConfig(warmup_events=500), partition)
    feed(model, generated_like(np.random.default_rng(16), n))  # ends mid-batch on purpose
    for price in (10.0, 30.0, 20.0):
        model.market.add(price)
    return model


def same_run(a: PartitionModel, b: PartitionModel, X: np.ndarray) -> None:
    for got, want in zip(feed(a, X, batch=137), feed(b, X, batch=137)):
        assert np.array_equal(got, want)
    assert (a.threshold, a.drift, a.seen, a.learned) == (b.threshold, b.drift, b.seen, b.learned)
    assert a.explain(X[0]) == b.explain(X[0])


@pytest.mark.parametrize("key", [None, KEY])
def test_checkpoint_round_trip_continues_identically(key):
    config = ModelConfig(warmup_events=500, checkpoint_key=key)
    model = trained(config)
    model.score_learn(generated_like(np.random.default_rng(17), 33))  # mid-batch, rows since end_batch
    raw = model.to_bytes()
    assert raw.startswith(MAGIC)
    restored = PartitionModel.from_bytes(raw, config)
    assert (restored.seen, restored.learned, restored.threshold, restored.partition) == (
        model.seen, model.learned, model.threshold, 2)
    assert np.array_equal(restored.hist, model.hist) and list(restored.sample) == list(model.sample)
    assert restored.config == model.config and restored.features == FEATURE_NAMES
    assert restored.market.ring == [10.0, 30.0, 20.0] and restored.market.median() == 20.0
    assert restored.to_bytes() == raw
    same_run(restored, model, generated_like(np.random.default_rng(18), 1_500))


def test_checkpoint_without_config_uses_its_own_values():
    model = trained(ModelConfig(warmup_events=500, target_flag_rate=0.05, max_threshold=0.9))
    restored = PartitionModel.from_bytes(model.to_bytes())
    assert restored.config == model.config and restored.partition == model.partition
    same_run(restored, model, generated_like(np.random.default_rng(19), 600))


def test_checkpoint_with_a_negative_seed():
    model = trained(ModelConfig(warmup_events=500, seed=-7), partition=1, n=600)
    restored = PartitionModel.from_bytes(model.to_bytes(), model.config)
    assert restored.seen == 600 and restored.hst.seed == -6


def test_checkpoint_size():
    model = trained(n=25_000)
    raw = model.to_bytes()
    assert len(model.sample) == 512
    assert len(raw) < 80_000 and len(model.hst.to_bytes()) < 24_000


def test_restored_model_takes_the_new_threshold_settings():
    model = trained(ModelConfig(warmup_events=500, target_flag_rate=0.02))
    model.end_batch()
    raw = model.to_bytes()
    looser = PartitionModel.from_bytes(raw, ModelConfig(warmup_events=500, target_flag_rate=0.1))
    assert looser.seen == model.seen and looser.config.target_flag_rate == 0.1
    assert looser.threshold < model.threshold  # recomputed at once from the same histogram
    capped = PartitionModel.from_bytes(raw, ModelConfig(warmup_events=500, max_threshold=0.3))
    assert capped.threshold == 0.3
    floored = PartitionModel.from_bytes(raw, ModelConfig(warmup_events=500, score_floor=0.99))
    assert floored.threshold == 0.99
    cold = PartitionModel.from_bytes(raw, ModelConfig(warmup_events=10**6))
    assert cold.threshold == 1.0 and not cold.warm
    # the same trees continue: scores are those of the original model
    X = generated_like(np.random.default_rng(21), 300)
    assert np.array_equal(looser.score_learn(X, np.zeros(300, bool)), model.score_learn(X, np.zeros(300, bool)))


def test_checkpoint_of_another_feature_set_starts_over():
    features = FEATURE_NAMES[:-1]
    model = PartitionModel(ModelConfig(warmup_events=500), 2, features)
    feed(model, generated_like(np.random.default_rng(22), 1_200)[:, :-1])
    raw = model.to_bytes()
    restored = PartitionModel.from_bytes(raw)
    assert restored.seen == 0 and not restored.warm and restored.threshold == 1.0
    assert restored.features == FEATURE_NAMES and restored.hst.features == FEATURE_NAMES
    assert restored.hst.seed == model.hst.seed and restored.partition == 2
    assert PartitionModel.from_bytes(raw, features=features).seen == 1_200  # when those are configured


@pytest.mark.parametrize("change", [{"n_trees": 21}, {"height": 5}, {"window_size": 200}, {"seed": 1}])
def test_another_tree_shape_starts_over(change):
    model = trained()
    config = ModelConfig(warmup_events=500, **change)
    restored = PartitionModel.from_bytes(model.to_bytes(), config)
    assert restored.seen == 0 and restored.learned == 0 and restored.config == config
    assert (restored.hst.n_trees, restored.hst.height, restored.hst.window_size, restored.hst.seed) == (
        config.n_trees, config.height, config.window_size, config.seed + 2)


def test_another_partition_starts_over():
    model = trained(partition=2)
    restored = PartitionModel.from_bytes(model.to_bytes(), model.config, partition=5)
    assert restored.seen == 0 and restored.partition == 5 and restored.hst.seed == 47
    assert PartitionModel.from_bytes(model.to_bytes(), model.config, partition=2).seen == model.seen


@pytest.fixture(scope="module")
def signed():
    config = ModelConfig(warmup_events=500, checkpoint_key=KEY)
    model = trained(config, n=1_200)
    return config, model.to_bytes()


def test_hmac_rejects_tampering(signed):
    config, raw = signed
    rng = np.random.default_rng(0)
    for position in [0, 5, 9, 15, 40, len(raw) // 2, len(raw) - 40, len(raw) - 1, *rng.integers(len(raw), size=40)]:
        tampered = bytearray(raw)
        tampered[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(CheckpointError, match="HMAC mismatch"):
            PartitionModel.from_bytes(bytes(tampered), config)
    for cut in (1, 32, 33, len(raw) // 2):
        with pytest.raises(CheckpointError):
            PartitionModel.from_bytes(raw[:-cut], config)


def test_hmac_wrong_key_missing_tag_and_no_key(signed):
    config, raw = signed
    with pytest.raises(CheckpointError, match="HMAC mismatch"):
        PartitionModel.from_bytes(raw, ModelConfig(warmup_events=500, checkpoint_key=b"another key"))
    unsigned = trained(ModelConfig(warmup_events=500), n=1_200).to_bytes()
    with pytest.raises(CheckpointError, match="HMAC mismatch"):
        PartitionModel.from_bytes(unsigned, config)
    # an unsigned blob with a valid tag appended: the tag checks, the missing flag does not
    with pytest.raises(CheckpointError, match="no HMAC"):
        PartitionModel.from_bytes(unsigned + hmac.new(KEY, unsigned, hashlib.sha256).digest(), config)
    with pytest.raises(CheckpointError, match="key is needed"):
        PartitionModel.from_bytes(raw)
    with pytest.raises(CheckpointError, match="key is needed"):
        PartitionModel.from_bytes(raw, ModelConfig(warmup_events=500))
    assert PartitionModel.from_bytes(raw, config).seen == 1_200


def test_old_pickles_and_other_versions_are_refused():
    model = trained(n=600)
    with pytest.raises(CheckpointError, match=r"bad magic .*not a model checkpoint \(a pickle\?\)"):
        PartitionModel.from_bytes(pickle.dumps((2, {"seen": 1}), protocol=pickle.HIGHEST_PROTOCOL))
    raw = model.to_bytes()
    with pytest.raises(CheckpointError, match="version"):
        PartitionModel.from_bytes(raw[:4] + (CHECKPOINT_VERSION + 1).to_bytes(2, "little") + raw[6:])
    with pytest.raises(CheckpointError, match="flags"):
        PartitionModel.from_bytes(raw[:6] + b"\x02\x00" + raw[8:])
    with pytest.raises(CheckpointError, match="bytes"):
        PartitionModel.from_bytes("not bytes")  # type: ignore[arg-type]
    for cut in range(0, len(raw), 997):
        with pytest.raises(CheckpointError):
            PartitionModel.from_bytes(raw[:cut])
    with pytest.raises(CheckpointError, match="trailing"):
        PartitionModel.from_bytes(raw + b"\0")


def rewrite(raw: bytes, change=None, trees: bytes | None = None, head: bytes | None = None) -> bytes:
    """An unsigned checkpoint with its JSON header changed by `change(header)` (or replaced by `head`)."""
    head_len = struct.unpack_from("<I", raw, 8)[0]
    header = json.loads(raw[12: 12 + head_len])
    if change is not None:
        change(header)
    if head is None:
        head = json.dumps(header).encode()
    rest = raw[12 + head_len:] if trees is None else trees
    return raw[:8] + struct.pack("<I", len(head)) + head + rest


def _set(path: str, value):
    def change(header):
        *parents, last = path.split(".")
        node = header
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return change


def _delete(name: str):
    return lambda header: header.pop(name)


BROKEN = {
    "seen is a string": _set("seen", "1200"),
    "seen negative": _set("seen", -1),
    "learned above seen": lambda h: h.update(learned=h["seen"] + 1),
    "learned off the trees' window": lambda h: h.update(learned=h["learned"] - 1),
    "partition a bool": _set("partition", True),
    "threshold above 1": _set("threshold", 1.5),
    "threshold null": _set("threshold", None),
    "drift a list": _set("drift", [0.0]),
    "hist short": lambda h: h["hist"].pop(),
    "hist negative": _set("hist.3", -1.0),
    "hist a string": _set("hist.3", "1"),
    "hist huge int": _set("hist.3", 10**400),
    "sample row short": lambda h: h["sample"][0].pop(),
    "sample too long": lambda h: h.update(sample=h["sample"] * 600),
    "sample not rows": _set("sample", [1.0, 2.0]),
    "features not distinct": lambda h: h.update(features=[h["features"][0]] * len(h["features"])),
    "features empty": _set("features", []),
    "features not a list": _set("features", "value"),
    "config missing a field": lambda h: h["config"].pop("seed"),
    "config extra field": _set("config.checkpoint_key", "x"),
    "config n_trees a float": _set("config.n_trees", 20.0),
    "config n_trees not the trees'": _set("config.n_trees", 19),
    "config seed not the trees'": _set("config.seed", 41),
    "partition not the trees'": _set("partition", 3),
    "market missing": _delete("market"),
    "market size 0": _set("market.size", 0),
    "market unsorted": _set("market.sorted", [30.0, 10.0, 20.0]),
    "market sorted differs": _set("market.sorted", [10.0, 20.0, 31.0]),
    "market next outside": _set("market.next", 64),
    "market next on a ring not full": _set("market.next", 1),
    "market ring longer than size": _set("market.size", 2),
    "market price a string": _set("market.ring.0", "10"),
    "extra key": _set("extra", 1),
    "missing key": _delete("quantile"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_bad_headers_raise_checkpoint_error(name):
    raw = trained(n=1_200).to_bytes()
    PartitionModel.from_bytes(rewrite(raw))  # the rewrite alone is fine
    with pytest.raises(CheckpointError):
        PartitionModel.from_bytes(rewrite(raw, BROKEN[name]))


def test_bad_json_and_bad_trees_raise_checkpoint_error():
    raw = trained(n=1_200).to_bytes()
    for head in (b"{", b"[1, 2]", b"\xff\xfe", b'{"seen": NaN}', b'{"seen": Infinity}', b"[" * 100_000):
        with pytest.raises(CheckpointError):
            PartitionModel.from_bytes(rewrite(raw, head=head))
    other = CompiledHST.new(n_trees=20, height=6, window_size=250, seed=44, features=FEATURE_NAMES)
    with pytest.raises(CheckpointError, match="trees"):
        PartitionModel.from_bytes(rewrite(raw, trees=other.to_bytes()))
    with pytest.raises(CheckpointError, match="trees"):
        PartitionModel.from_bytes(rewrite(raw, trees=b"CHST" + b"\0" * 40))
    with pytest.raises(CheckpointError, match="trees"):  # a signed tree blob inside an unsigned checkpoint
        PartitionModel.from_bytes(rewrite(raw, trees=other.to_bytes(b"k")))


def test_checkpoint_error_is_hsts():
    assert CheckpointError is hst_module.CheckpointError and issubclass(CheckpointError, ValueError)


@FUZZ
@given(st.binary(max_size=4096) | st.binary(max_size=400).map(
    lambda b: MAGIC + CHECKPOINT_VERSION.to_bytes(2, "little") + b))
def test_random_bytes_raise_checkpoint_error(raw):
    for config in (None, ModelConfig(checkpoint_key=KEY)):
        with pytest.raises(CheckpointError):
            PartitionModel.from_bytes(raw, config)


_SMALL_CONFIG = ModelConfig(n_trees=2, height=2, window_size=10, warmup_events=10)
_SMALL_MODEL = PartitionModel(_SMALL_CONFIG, 1)
feed(_SMALL_MODEL, generated_like(np.random.default_rng(5), 45), batch=20)
_SMALL_MODEL.market.add(3.0)
_SMALL_BLOB = _SMALL_MODEL.to_bytes()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_SMALL_BLOB) - 1), st.integers(0, 255)), max_size=6),
       st.none() | st.integers(0, len(_SMALL_BLOB) - 1))
def test_mutated_checkpoints_restore_or_raise_checkpoint_error(changes, cut):
    """Unsigned, a mutated (or cut) checkpoint either restores into a usable model or raises CheckpointError."""
    raw = bytearray(_SMALL_BLOB)
    for position, value in changes:
        raw[position] = value
    try:
        model = PartitionModel.from_bytes(bytes(raw[:cut]), _SMALL_CONFIG)
    except CheckpointError:
        assert changes or cut is not None
        return
    assert cut is None
    model.score_learn(generated_like(np.random.default_rng(0), 30))
    model.end_batch()
    model.explain(np.full(D, 0.5))
    model.market.add(1.0)
    model.to_bytes()


# -- explanations -------------------------------------------------------------------------------


def test_explain_without_sample_is_empty():
    assert PartitionModel(ModelConfig()).explain(np.full(D, 0.5)) == []


@pytest.mark.parametrize("feature, extreme", [(FEATURE_NAMES[0], 1.0), (FEATURE_NAMES[1], 0.0), (FEATURE_NAMES[-1], 1.0)])
def test_explain_puts_the_most_deviant_feature_first(feature, extreme):
    model = PartitionModel(ModelConfig(warmup_events=300))
    feed(model, stationary(13, 2_000))
    x = np.full(D, 0.5)
    x[FEATURE_NAMES.index(feature)] = extreme
    second = next(name for name in FEATURE_NAMES[2:-1] if name != feature)
    x[FEATURE_NAMES.index(second)] = 0.7  # a second, smaller deviation
    rows = model.explain(x, top=3)
    assert rows == model.explain(dict(zip(FEATURE_NAMES, x.tolist())), top=3)  # a row or a dict
    assert len(rows) == 3
    assert set(rows[0]) == {"feature", "value", "typical", "deviation"}
    assert rows[0]["feature"] == feature and rows[1]["feature"] == second
    assert (rows[0]["deviation"] > 0) == (extreme > 0.5)
    assert abs(rows[0]["deviation"]) > abs(rows[1]["deviation"]) > abs(rows[2]["deviation"])
    assert rows[0]["value"] == pytest.approx(unscale(feature, extreme), rel=1e-3, abs=1e-9)
    lo, hi = sorted((unscale(feature, 0.45), unscale(feature, 0.55)))
    assert lo <= rows[0]["typical"] <= hi


def test_explain_top_limits_rows():
    model = PartitionModel(ModelConfig(warmup_events=300))
    feed(model, stationary(14, 500))
    x = stationary(15, 1)[0]
    assert len(model.explain(x, top=1)) == 1
    assert len(model.explain(x, top=D + 5)) == D
    with pytest.raises(ValueError):
        model.explain(np.zeros(D + 1))


# -- config -------------------------------------------------------------------------------------


def test_config_from_settings():
    s = Settings(model_n_trees=5, model_height=6, model_window_size=100, model_seed=7,
                 model_warmup_events=50, target_flag_rate=0.01, score_floor=0.3)
    c = ModelConfig.from_settings(s)
    assert (c.n_trees, c.height, c.window_size, c.seed, c.warmup_events, c.target_flag_rate, c.score_floor) == (
        5, 6, 100, 7, 50, 0.01, 0.3)
    assert c.checkpoint_key is None and c.max_threshold == 0.98 == Settings.max_threshold
    assert ModelConfig.from_settings(Settings(max_threshold=0.9)).max_threshold == 0.9
    keyed = ModelConfig.from_settings(SimpleNamespace(**{**vars(s), "model_checkpoint_key": "s3cret"}))
    assert keyed.checkpoint_key == b"s3cret" and "s3cret" not in repr(keyed)
    unkeyed = ModelConfig.from_settings(SimpleNamespace(**{**vars(s), "model_checkpoint_key": ""}))
    assert unkeyed.checkpoint_key is None


def test_histogram_bins():
    model = PartitionModel(ModelConfig())
    model.score_learn(np.zeros((300, D)))  # first window scores 0, then the densest point
    assert model.hist.shape == (BINS,) and model.hist.sum() == 300


_ONE_MODEL = PartitionModel(ModelConfig())  # built once: River builds its trees in tens of ms


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.sampled_from([0.0, 0.0004, 0.0005, 0.2, 0.2004, 0.5, 0.9991, 0.9999, 1.0]), min_size=1,
                max_size=8), st.floats(0.0, 1.0), st.floats(0.0, 5.0))
def test_a_few_scores_fill_the_histogram_as_bincount_does(scores, threshold, credit):
    """Up to model._FEW scores go into the histogram by a Python loop: the same sums, bit for bit."""
    import anomaly_stream.detect.model as model_module

    model, outcomes, saved = _ONE_MODEL, [], model_module._FEW
    for few in (saved, 0):
        model.hist = np.random.default_rng(3).random(len(model.hist)) * 7.3
        model.threshold, model._flag_credit = threshold, credit
        model_module._FEW = few
        try:
            model._add_to_histogram(np.array(scores))
        finally:
            model_module._FEW = saved
        outcomes.append((model.hist.copy(), model._flag_credit))
    assert np.array_equal(outcomes[0][0], outcomes[1][0])
    assert outcomes[0][1] == outcomes[1][1]


def test_history_counts_event_time_from_the_first_row_and_survives_a_checkpoint():
    model = PartitionModel(ModelConfig())
    assert model.history(1_000.0) == 0.0 and model.history(4_600.0) == 3_600.0
    assert model.history(900.0) == 0.0, "an earlier event moves the start back"
    assert PartitionModel.from_bytes(model.to_bytes()).history(4_600.0) == 3_700.0


def test_a_checkpoint_written_before_history_was_kept_reads_as_a_partition_with_history():
    raw = trained(ModelConfig(warmup_events=500)).to_bytes()
    _, version, flags, head_len = PREFIX.unpack_from(raw)
    header = json.loads(raw[PREFIX.size:PREFIX.size + head_len])
    del header["since"]
    head = json.dumps(header, separators=(",", ":")).encode()
    old = PREFIX.pack(MAGIC, version, flags, len(head)) + head + raw[PREFIX.size + head_len:]
    assert PartitionModel.from_bytes(old).history(1_700_000_000.0) == 1_700_000_000.0
