"""CompiledHST (anomaly_stream.detect.hst) against River's HalfSpaceTrees, event for event.

Every comparison is exact (==): the compiled scores are River's bit for bit,
and after a run the compiled masses, counter and window flag equal River's.
River is driven as the model drives it: score_one, then learn_one.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river.anomaly import HalfSpaceTrees

from anomaly_stream.detect import hst as hst_module
from anomaly_stream.detect.hst import FORMAT_VERSION, MAGIC, CheckpointError, CompiledHST

# Five named columns (the detector's feature set changes; these tests do not depend on it).
FEATURES = ["value", "premium", "creation", "dust", "burst"]
DEFAULT = {"n_trees": 20, "height": 6, "window_size": 250, "seed": 42}  # ModelConfig's
KEY = b"k" * 32
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def river_run(hst: HalfSpaceTrees, X: np.ndarray, features=FEATURES) -> np.ndarray:
    scores = []
    for row in X.tolist():
        x = dict(zip(features, row))
        scores.append(hst.score_one(x))
        hst.learn_one(x)
    return np.array(scores, dtype=np.float64)


def compiled_run(model: CompiledHST, X: np.ndarray, sizes) -> np.ndarray:
    out, at = [], 0
    for size in sizes:
        out.append(model.score_learn(X[at: at + size]))
        at += size
    assert at == len(X)
    return np.concatenate(out)


def random_sizes(rng: np.random.Generator, n: int) -> list[int]:
    """Batch sizes mixing the small-batch path, pieces across pivots and blocks across 4096."""
    sizes = []
    while sum(sizes) < n:
        kind = rng.integers(3)
        size = int(rng.integers(1, 9) if kind == 0 else rng.integers(9, 700) if kind == 1
                   else rng.integers(3000, 6000))
        sizes.append(min(size, n - sum(sizes)))
    return sizes


def small_sizes(rng: np.random.Generator, n: int) -> list[int]:
    """Batch sizes of 1 to 8 (the small-batch path only) adding up to n."""
    sizes = [int(s) for s in rng.integers(1, 9, size=n)]
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n))]
    sizes.append(n - sum(sizes))
    return sizes


def clusters(rng: np.random.Generator, n: int, d: int = 5) -> np.ndarray:
    centres = rng.random((4, d))
    X = centres[rng.integers(4, size=n)] + rng.normal(0, 0.03, (n, d))
    outliers = rng.random(n) < 0.01
    X[outliers] = rng.random((outliers.sum(), d))
    return np.clip(X, 0.0, 1.0)


def assert_same_state(model: CompiledHST, hst: HalfSpaceTrees) -> None:
    ours, theirs = model.to_arrays(), CompiledHST.from_river(hst, model.features).to_arrays()
    for name, value in theirs.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(ours[name], value), name
        else:
            assert ours[name] == value, name


# 30k events keep this file near 20 s on a shared 2-core machine (River: ~75 us an event);
# benchmarks/model.py checks the same equality over 100k events for each batch size.
DEFAULT_EVENTS = 30_000


@pytest.fixture(scope="module")
def default_run():
    """Uniform events through River with the default config: the reference."""
    X = np.random.default_rng(7).random((DEFAULT_EVENTS, len(FEATURES)))
    hst = HalfSpaceTrees(**DEFAULT)
    return X, river_run(hst, X), hst


def test_default_config_random_batches(default_run):
    X, expected, hst = default_run
    model = CompiledHST.new(features=FEATURES, **DEFAULT)
    scores = compiled_run(model, X, random_sizes(np.random.default_rng(1), len(X)))
    assert (expected[250:] > 0).all() and (expected[:250] == 0).all()  # scored from the first pivot
    assert np.array_equal(scores, expected)  # exact, bit for bit
    assert_same_state(model, hst)


def test_one_batch_and_single_events(default_run):
    X, expected, _ = default_run
    model = CompiledHST.new(features=FEATURES, **DEFAULT)
    assert np.array_equal(model.score_learn(X[:20_000]), expected[:20_000])
    singles = np.array([model.score_learn(X[i: i + 1])[0] for i in range(20_000, 21_100)])
    assert np.array_equal(singles, expected[20_000:21_100])
    # mid-window, with single-event visits still pending: a checkpoint includes them
    restored = CompiledHST.from_bytes(model.to_bytes())
    assert np.array_equal(restored.score_learn(X[21_100:22_000]), expected[21_100:22_000])


def test_small_batches_only_with_a_long_window():
    """Visits of small batches are added to l_mass in bulk: at pivots and past _MAX_PENDING."""
    config = {**DEFAULT, "window_size": 1_000}
    rng = np.random.default_rng(8)
    X = clusters(rng, 2_600)
    hst = HalfSpaceTrees(**config)
    expected = river_run(hst, X)
    model = CompiledHST.new(features=FEATURES, **config)
    assert np.array_equal(compiled_run(model, X, small_sizes(rng, len(X))), expected)
    assert_same_state(model, hst)


@pytest.mark.parametrize("remembered", [1024, 3])
def test_small_batches_of_repeated_rows(monkeypatch, remembered):
    """Real feature rows repeat (mostly zeros): remembered paths and totals stay River's across pivots.

    With room for 3 rows, the memory is cleared and refilled all the time.
    """
    monkeypatch.setattr(hst_module, "_REMEMBERED", remembered)
    rng = np.random.default_rng(9)
    distinct = np.where(rng.random((12, 5)) < 0.7, 0.0, rng.random((12, 5)))
    distinct[0] = 0.0
    X = distinct[rng.choice(12, size=3_000, p=[0.6] + [0.4 / 11] * 11)]
    hst = HalfSpaceTrees(**DEFAULT)
    expected = river_run(hst, X)
    model = CompiledHST.new(features=FEATURES, **DEFAULT)
    assert np.array_equal(compiled_run(model, X, small_sizes(rng, len(X))), expected)
    assert_same_state(model, hst)


@pytest.mark.parametrize("config", [
    {"n_trees": 5, "height": 3, "window_size": 10, "seed": 3},
    {"n_trees": 3, "height": 1, "window_size": 1, "seed": 0},
    {"n_trees": 2, "height": 0, "window_size": 7, "seed": 1},
    {"n_trees": 4, "height": 9, "window_size": 64, "seed": None},
])
def test_small_configs(config):
    rng = np.random.default_rng(11)
    X = rng.random((4_000, 3))
    features = ["b", "a", "c"]  # not sorted: River builds over sorted names, columns are ours
    hst = HalfSpaceTrees(**config)
    model = CompiledHST.from_river(hst, features)  # builds on a copy of River's rng: same trees, seeded or not
    expected = river_run(hst, X, features)
    assert np.array_equal(compiled_run(model, X, random_sizes(rng, len(X))), expected)
    assert_same_state(model, hst)


def test_clustered_data():
    rng = np.random.default_rng(5)
    X = clusters(rng, 15_000)
    hst = HalfSpaceTrees(**DEFAULT)
    expected = river_run(hst, X)
    model = CompiledHST.new(features=FEATURES, **DEFAULT)
    assert np.array_equal(compiled_run(model, X, random_sizes(rng, len(X))), expected)
    # Early stopping (r_mass < 0.1 * window) is exercised: the outliers score well above the rest.
    assert np.median(expected[-5000:]) < np.max(expected[-5000:]) - 0.2
    assert_same_state(model, hst)


def test_score_is_zero_until_the_first_pivot():
    model = CompiledHST.new(n_trees=5, height=3, window_size=10, seed=1, features=FEATURES)
    scores = model.score_learn(np.random.default_rng(0).random((11, 5)))
    assert (scores[:10] == 0).all() and scores[10] > 0


def test_restore_mid_window_from_trained_river():
    rng = np.random.default_rng(9)
    X = clusters(rng, 15_000)
    hst = HalfSpaceTrees(**DEFAULT)
    river_run(hst, X[:12_345])
    assert hst.counter == 12_345 % 250
    model = CompiledHST.from_river(hst, FEATURES)
    assert_same_state(model, hst)
    expected = river_run(hst, X[12_345:])
    assert np.array_equal(compiled_run(model, X[12_345:], random_sizes(rng, len(X) - 12_345)), expected)
    assert_same_state(model, hst)


def test_fresh_river_model_left_untouched():
    hst = HalfSpaceTrees(**DEFAULT)
    model = CompiledHST.from_river(hst, FEATURES)
    assert hst.trees == [] and hst.counter == 0
    X = np.random.default_rng(2).random((600, 5))
    assert np.array_equal(model.score_learn(X), river_run(hst, X))


def test_nan_goes_right_as_in_river():
    X = np.random.default_rng(4).random((1_500, 5))
    X[::7, 2] = np.nan
    hst = HalfSpaceTrees(**DEFAULT)
    expected = river_run(hst, X)
    assert np.array_equal(CompiledHST.new(features=FEATURES, **DEFAULT).score_learn(X), expected)


def test_bad_inputs():
    model = CompiledHST.new(features=FEATURES, **DEFAULT)
    with pytest.raises(ValueError):
        model.score_learn(np.zeros((3, 4)))
    with pytest.raises(ValueError):
        model.score_learn(np.zeros(5))
    assert model.score_learn(np.zeros((0, 5))).shape == (0,)
    with pytest.raises(ValueError):
        CompiledHST.from_river(HalfSpaceTrees(**DEFAULT), ["a", "a"])
    trained = HalfSpaceTrees(**DEFAULT)
    trained.learn_one({"x": 0.5, "y": 0.5})
    with pytest.raises(ValueError, match="splits on"):
        CompiledHST.from_river(trained, ["x"])


# -- score_learn_where: learn only admissible rows -----------------------------------------------


def river_where(hst: HalfSpaceTrees, X: np.ndarray, may_learn: np.ndarray, thresholds, sizes,
                features=FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """River's loop that learns a row iff it may and its score <= the threshold of its batch."""
    scores, learned = [], []
    rows = iter(zip(X.tolist(), may_learn.tolist()))
    for size, threshold in zip(sizes, thresholds):
        for _ in range(size):
            row, may = next(rows)
            x = dict(zip(features, row))
            score = hst.score_one(x)
            scores.append(score)
            learned.append(bool(may and score <= threshold))
            if learned[-1]:
                hst.learn_one(x)
    return np.array(scores, dtype=np.float64), np.array(learned)


def compiled_where(model: CompiledHST, X, may_learn, thresholds, sizes) -> tuple[np.ndarray, np.ndarray]:
    scores, learned, at = [], [], 0
    for size, threshold in zip(sizes, thresholds):
        s, l = model.score_learn_where(X[at: at + size], may_learn[at: at + size], threshold)
        scores.append(s)
        learned.append(l)
        at += size
    return np.concatenate(scores), np.concatenate(learned)


@pytest.mark.parametrize("config", [
    DEFAULT,
    {"n_trees": 5, "height": 3, "window_size": 10, "seed": 3},  # many pivots inside one chunk
    {"n_trees": 3, "height": 2, "window_size": 1, "seed": 0},  # a pivot after every learned row
])
def test_score_learn_where_equals_the_river_loop(config):
    rng = np.random.default_rng(12)
    n = 12_000 if config is DEFAULT else 4_000
    X = clusters(rng, n)
    may_learn = rng.random(n) < 0.7
    may_learn[1_000:1_600] = False  # a long run of vetoed rows: chunks that learn nothing
    sizes = random_sizes(rng, n)
    thresholds = [None if rng.random() < 0.2 else float(rng.uniform(0.3, 0.9)) for _ in sizes]
    hst = HalfSpaceTrees(**config)
    expected, expected_learned = river_where(hst, X, may_learn, [np.inf if t is None else t for t in thresholds],
                                             sizes)
    model = CompiledHST.new(features=FEATURES, **config)
    scores, learned = compiled_where(model, X, may_learn, thresholds, sizes)
    assert np.array_equal(scores, expected)
    assert np.array_equal(learned, expected_learned)
    assert 0.3 * n < learned.sum() < 0.7 * n and (may_learn & ~learned).any()  # flags skipped rows too
    assert_same_state(model, hst)


def test_score_learn_where_all_skipped_rows_advance():
    model = CompiledHST.new(features=FEATURES, **DEFAULT)
    X = np.random.default_rng(13).random((9_000, 5))
    model.score_learn(X[:400])
    state = model.to_arrays()
    scores, learned = model.score_learn_where(X[400:9_000], np.zeros(8_600, dtype=bool))
    assert not learned.any() and model.counter == 150
    again = CompiledHST.from_arrays(state)
    assert np.array_equal(scores, again.score_learn_where(X[400:9_000], threshold=-1.0)[0])  # no row passes
    for name, value in state.items():
        now = model.to_arrays()[name]
        assert np.array_equal(now, value) if isinstance(value, np.ndarray) else now == value


def test_score_learn_where_defaults_are_score_learn(default_run):
    X, expected, _ = default_run
    model = CompiledHST.new(features=FEATURES, **DEFAULT)
    scores, learned = model.score_learn_where(X[:3_000])
    assert np.array_equal(scores, expected[:3_000]) and learned.all()
    singles = [model.score_learn_where(X[i: i + 1])[0][0] for i in range(3_000, 3_020)]
    assert np.array_equal(singles, expected[3_000:3_020])


def test_score_learn_where_bad_masks():
    model = CompiledHST.new(features=FEATURES, **DEFAULT)
    with pytest.raises(ValueError, match="may_learn"):
        model.score_learn_where(np.zeros((3, 5)), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="may_learn"):
        model.score_learn_where(np.zeros((3, 5)), np.ones(3))
    scores, learned = model.score_learn_where(np.zeros((0, 5)), np.zeros(0, dtype=bool))
    assert scores.shape == learned.shape == (0,)


# -- checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A compiled default model mid-window, with the River twin and the events to continue on."""
    rng = np.random.default_rng(3)
    X = clusters(rng, 6_000)
    hst = HalfSpaceTrees(**DEFAULT)
    river_run(hst, X[:3_210])
    expected = river_run(copy.deepcopy(hst), X[3_210:])
    return CompiledHST.from_river(hst, FEATURES), X[3_210:], expected


@pytest.mark.parametrize("key", [None, KEY])
def test_bytes_round_trip_continues_identically(trained, key):
    model, X, expected = trained
    raw = model.to_bytes(key)
    assert raw.startswith(MAGIC)
    restored = CompiledHST.from_bytes(raw, key)
    for name, value in model.to_arrays().items():
        got = restored.to_arrays()[name]
        assert np.array_equal(got, value) if isinstance(value, np.ndarray) else got == value
    assert restored.seed == 42 and restored.features == tuple(FEATURES)
    assert np.array_equal(restored.score_learn(X), expected)
    # and again after it learned: a second round trip is the same model
    again = CompiledHST.from_bytes(restored.to_bytes(key), key)
    assert again.to_bytes(key) == restored.to_bytes(key)


def test_arrays_round_trip(trained):
    model, X, expected = trained
    assert np.array_equal(CompiledHST.from_arrays(model.to_arrays()).score_learn(X[:700]), expected[:700])


def test_checkpoint_is_smaller_than_river_pickle(trained):
    model, _, _ = trained
    hst = HalfSpaceTrees(**DEFAULT)
    river_run(hst, np.random.default_rng(0).random((300, 5)))
    assert len(model.to_bytes()) < 24_000 < 3 * 24_000 < len(pickle.dumps(hst))


def test_hmac_rejects_tampering_wrong_key_and_missing_tag(trained):
    model, _, _ = trained
    raw = model.to_bytes(KEY)
    rng = np.random.default_rng(0)
    for position in [0, 5, 9, 15, 40, len(raw) // 2, len(raw) - 40, len(raw) - 1, *rng.integers(len(raw), size=40)]:
        tampered = bytearray(raw)
        tampered[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(CheckpointError):
            CompiledHST.from_bytes(bytes(tampered), KEY)
    with pytest.raises(CheckpointError, match="HMAC mismatch"):
        CompiledHST.from_bytes(raw[:100] + bytes([raw[100] ^ 4]) + raw[101:], KEY)
    with pytest.raises(CheckpointError, match="HMAC mismatch"):
        CompiledHST.from_bytes(raw, b"another key")
    # with a key the HMAC is checked before anything else: an unsigned blob fails it
    unsigned = model.to_bytes()
    with pytest.raises(CheckpointError, match="HMAC mismatch"):
        CompiledHST.from_bytes(unsigned, KEY)
    # an unsigned blob with a valid tag appended: the tag checks, the missing flag does not
    with pytest.raises(CheckpointError, match="no HMAC"):
        CompiledHST.from_bytes(unsigned + hmac.new(KEY, unsigned, hashlib.sha256).digest(), KEY)
    with pytest.raises(CheckpointError, match="key is needed"):
        CompiledHST.from_bytes(raw)
    # clearing the flag and dropping the tag is refused too, when a key is required
    stripped = bytearray(raw[:-32])
    stripped[6] = 0
    with pytest.raises(CheckpointError, match="HMAC mismatch"):
        CompiledHST.from_bytes(bytes(stripped), KEY)
    with pytest.raises(CheckpointError, match="too short to carry an HMAC"):
        CompiledHST.from_bytes(raw[:40], KEY)
    assert isinstance(CompiledHST.from_bytes(bytes(stripped)), CompiledHST)  # unsigned: fine keyless


def test_specific_decode_errors(trained):
    model, _, _ = trained
    raw = model.to_bytes()
    with pytest.raises(CheckpointError, match=r"bad magic .*\(a pickle\?\)"):
        CompiledHST.from_bytes(b"\x80\x05" + raw[2:])  # a pickle's opening is not a checkpoint
    with pytest.raises(CheckpointError, match="not a compiled-HST checkpoint$"):
        CompiledHST.from_bytes(b"APMC" + raw[4:])  # the model's format is not this one
    with pytest.raises(CheckpointError, match="flags"):
        CompiledHST.from_bytes(raw[:6] + b"\x02\x00" + raw[8:])
    with pytest.raises(CheckpointError, match="expected bytes"):
        CompiledHST.from_bytes("not bytes")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="version"):
        CompiledHST.from_bytes(raw[:4] + (FORMAT_VERSION + 1).to_bytes(2, "little") + raw[6:])
    with pytest.raises(CheckpointError, match="trailing"):
        CompiledHST.from_bytes(raw + b"\0")
    with pytest.raises(CheckpointError):
        CompiledHST.from_bytes(pickle.dumps(model.to_arrays()))
    for cut in range(0, len(raw), 97):
        with pytest.raises(CheckpointError):
            CompiledHST.from_bytes(raw[:cut])
    # wrong shapes declared in the header
    head_len = int.from_bytes(raw[8:12], "little")
    head = raw[12: 12 + head_len].replace(b'"shape":[20,63]', b'"shape":[20,62]', 1)
    assert len(head) == head_len
    with pytest.raises(CheckpointError, match="shape"):
        CompiledHST.from_bytes(raw[:12] + head + raw[12 + head_len:])


def test_inconsistent_states_rejected(trained):
    model, _, _ = trained
    good = model.to_arrays()
    broken = [
        {"l_mass": good["l_mass"][:, :-1]},
        {"counter": 250},
        {"counter": -1},
        {"split_feature": good["split_feature"] + 5},
        {"split_threshold": np.where(good["split_threshold"] > 0.5, np.nan, good["split_threshold"])},
        {"l_mass": good["l_mass"] + np.eye(20, 127, 5, dtype=np.int64)},  # a child without its parent
        {"r_mass": np.zeros_like(good["r_mass"])},  # after a pivot the roots hold the window
        {"features": ("a", "a", "b", "c", "d")},
        {"height": 7},
    ]
    for change in broken:
        with pytest.raises(CheckpointError):
            CompiledHST.from_arrays({**good, **change})
    state = dict(good)
    del state["r_mass"]
    with pytest.raises(CheckpointError):
        CompiledHST.from_arrays(state)


@FUZZ
@given(st.binary(max_size=4096) | st.binary(max_size=400).map(lambda b: MAGIC + b"\x01\x00" + b))
def test_random_bytes_raise_checkpoint_error(raw):
    for key in (None, KEY):
        with pytest.raises(CheckpointError):
            CompiledHST.from_bytes(raw, key)


_SMALL_BLOB = CompiledHST.new(n_trees=3, height=3, window_size=10, seed=1, features=FEATURES).to_bytes()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_SMALL_BLOB) - 1), st.integers(0, 255)), max_size=6),
       st.none() | st.integers(0, len(_SMALL_BLOB) - 1))
def test_mutated_blobs_decode_or_raise_checkpoint_error(changes, cut):
    """Unsigned, a mutated (or cut) blob either decodes into a usable model or raises CheckpointError."""
    raw = bytearray(_SMALL_BLOB)
    for position, value in changes:
        raw[position] = value
    try:
        model = CompiledHST.from_bytes(bytes(raw[:cut]))
    except CheckpointError:
        assert changes or cut is not None
        return
    assert cut is None
    model.score_learn(np.random.default_rng(0).random((30, len(model.features))))
