"""One partition's detector: half-space trees that learn only what they do not flag, an adaptive threshold.

Free of Faust: the worker, the backtest and the benchmarks all drive the same
`PartitionModel` with the same calls.

Per batch: the caller builds the batch's feature rows `X` (n x
len(model.features), in [0, 1], the partition's `model.market` feeding the
fee features), then `scores = model.score_learn(X, may_learn)`; row i is
flagged iff `scores[i] > model.threshold` (the threshold in force for the
whole batch); then `model.end_batch()` recomputes the threshold.

The trees are River's `HalfSpaceTrees` (seed `config.seed + partition`, so
replicas do not share blind spots) run as `CompiledHST` arrays: the same
scores to the bit, for a batch at once.

Protection. A row is learned only if it may (`may_learn[i]`, the caller's
veto) and it was not flagged (`score <= threshold`). Half-space trees learn
whatever they see: a drain of 20 transactions to one corner of the feature
space fills that corner's mass within the window and its later transactions
stop scoring high. Not learning flagged rows keeps them anomalous (River's
anomaly filters call this protecting the detector). The threshold itself is
the (1 - target flag rate) quantile of the recent scores, so a flood of
outliers would lift it until the flood passes as normal and is learned; the
ceiling `max_threshold` bounds it: whatever scores above the ceiling stays
flagged and unlearned. The cost: a legitimate regime change whose events
score above the ceiling is never learned either, and keeps being flagged;
`drift` (below) is the signal to watch for it.

Threshold. A histogram of all scored rows' scores whose counts decay with a
half-life in events; at `end_batch` the quantile above, then the ceiling,
then the floor (`score_floor` wins over the ceiling if set above it). No
flag is raised during warm-up (threshold 1.0: every admissible row learns).

Drift. `drift` is the raw quantile (before the ceiling and floor) minus an
exponentially smoothed reference of its past values (half-life
`halflife_events`, updated at each `end_batch`), in score units: positive
when recent traffic scores higher than over the last half-life or so (a
flood, a market shift, trees learning less), negative when lower. A
persistent `drift` well above zero while `quantile > max_threshold` means
the ceiling is holding something back. 0.0 until the first warm batch.

Checkpoints (`to_bytes` / `from_bytes`): never pickle. A versioned binary
encoding, with an HMAC-SHA256 over all of it when `config.checkpoint_key` is
set, checked before anything is decoded:

    b"APMC" | version u16 | flags u16 | header length u32 | JSON header |
    CompiledHST bytes (hst.py's own format, unsigned) |
    [32-byte HMAC-SHA256 over everything before it, if flags & 1]

The JSON header holds the config's values (never the key), the partition,
feature names, counters, threshold state, histogram, fee market and the
explanation sample (a list of lists).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import deque
from dataclasses import dataclass, field, fields, replace

import numpy as np
import orjson

from ..settings import Settings
from .features import FEATURE_NAMES, FeeMarket, unscale
from .hst import FLAG_HMAC, PREFIX, CheckpointError, CompiledHST, verified_prefix

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "MAGIC", "ModelConfig", "PartitionModel"]

BINS = 1000
SAMPLE_EVERY = 8  # every 8th scored row joins the sample used to explain flags
# Flagged rows feed the threshold's histogram from a budget: each scored row
# adds FLAG_CREDIT x the target flag rate, a flagged row spends up to 1, and
# the budget holds at most FLAG_CREDIT_MAX rows' worth. At the target rate
# nothing changes; a flood of outliers (a batch of 50 fresh 1,000 ETH
# transfers lifted the threshold from 0.39 to 0.62 in one batch, after which
# the rest of the flood passed and was learned) barely moves the quantile.
FLAG_CREDIT = 2.0
FLAG_CREDIT_MAX = 5.0
SAMPLE_SIZE = 512
_FEW = 8  # rows up to which a batch's histogram and checks are Python loops (`_add_to_histogram`)
MAGIC = b"APMC"
# 3: the non-executable encoding (1 and 2 were pickles, now refused with CheckpointError).
CHECKPOINT_VERSION = 3
_MAX_HEADER = 1 << 22
# The tree shape: a checkpoint whose trees differ in any of these is stale, not corrupt.
_SHAPE = ("n_trees", "height", "window_size", "seed")
# Settings that only steer the threshold: a restored model recomputes it when they change.
_THRESHOLD_SETTINGS = ("warmup_events", "target_flag_rate", "score_floor", "max_threshold")


@dataclass(frozen=True)
class ModelConfig:
    """The model's part of `Settings` (whose defaults, documented there, these are)."""

    n_trees: int = Settings.model_n_trees
    height: int = Settings.model_height
    window_size: int = Settings.model_window_size
    seed: int = Settings.model_seed
    warmup_events: int = Settings.model_warmup_events
    target_flag_rate: float = Settings.target_flag_rate
    score_floor: float = Settings.score_floor
    # The threshold follows roughly the last 20k scores: long enough for a
    # stable tail quantile, short enough to follow a drifting gas market.
    halflife_events: int = 20_000
    # The threshold's ceiling: a flood of outliers cannot lift it above this,
    # so rows scoring above it are always flagged and never learned. The
    # normal 2% quantile of generated-like traffic is about 0.7, outliers at
    # a far corner of the feature space score 0.98-0.99.
    max_threshold: float = Settings.max_threshold
    # HMAC-SHA256 key of the checkpoints (None: unsigned). Not in repr: it must not reach a log.
    checkpoint_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings) -> ModelConfig:
        key = getattr(settings, "model_checkpoint_key", "") or ""
        return cls(
            n_trees=settings.model_n_trees, height=settings.model_height,
            window_size=settings.model_window_size, seed=settings.model_seed,
            warmup_events=settings.model_warmup_events,
            target_flag_rate=settings.target_flag_rate, score_floor=settings.score_floor,
            max_threshold=getattr(settings, "max_threshold", Settings.max_threshold),
            checkpoint_key=key.encode() if key else None,  # the str's UTF-8 bytes; "" = unsigned
        )


# The config values a checkpoint records (all but the key), with their JSON types.
_CONFIG_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.name != "checkpoint_key")
_CONFIG_INTS = ("n_trees", "height", "window_size", "seed", "warmup_events", "halflife_events")


class PartitionModel:
    """Score-then-learn over batches, learning only unflagged rows the caller allows."""

    def __init__(self, config: ModelConfig, partition: int = 0, features: tuple[str, ...] = FEATURE_NAMES):
        self.config = config
        self.partition = partition
        self.features = tuple(features)  # X's columns, what the trees are built on
        self.hst = CompiledHST.new(n_trees=config.n_trees, height=config.height,
                                   window_size=config.window_size, seed=config.seed + partition,
                                   features=self.features)
        self.hist = np.zeros(BINS, dtype=np.float64)
        self.seen = 0  # rows scored
        self.learned = 0  # rows learned (the others were flagged or vetoed by may_learn)
        self.since: float | None = None  # event time of the first row (`history`)
        self._since_batch = 0
        self._flag_credit = FLAG_CREDIT_MAX  # see FLAG_CREDIT; not checkpointed: a restart starts full
        self.threshold = 1.0  # nothing can be flagged until the first end_batch after warm-up
        self.quantile: float | None = None  # the raw quantile of the last warm end_batch
        self.drift = 0.0
        self._reference: float | None = None  # the smoothed quantile drift is measured against
        self.sample: deque[tuple[float, ...]] = deque(maxlen=SAMPLE_SIZE)
        self._typical: tuple[np.ndarray, np.ndarray] | None = None  # per batch: median, MAD per column
        # The sample's rows as an array, kept beside the deque (same rows, ring order:
        # medians do not depend on the order), so `explain` converts no Python tuples.
        self._ring: np.ndarray | None = None
        self._ring_at = 0  # where the next row overwrites the full ring
        self._ring_of: deque | None = None  # the deque the ring mirrors
        self.market = FeeMarket()  # the partition's recent gas prices, an input of the features

    @property
    def warm(self) -> bool:
        """Warm-up is over: enough rows scored, and one full window learned (scores are 0 before it)."""
        return self.seen >= self.config.warmup_events and self.learned >= self.config.window_size

    def history(self, event_time: float) -> float:
        """Seconds of event time the partition has behind it at `event_time`; the first call starts the clock.

        What "first seen within the hour" means depends on it: at a
        partition's start every address is first seen.
        """
        if self.since is None or event_time < self.since:
            self.since = event_time
        return event_time - self.since

    def score_learn(self, X: np.ndarray, may_learn: np.ndarray | None = None) -> np.ndarray:
        """Score every row in order, then learn it iff `may_learn[i]` and its score <= `threshold`.

        X: (n, len(features)) finite floats (features in [0, 1]); `may_learn`:
        n bools, default all True. Exactly River's `score_one` per row, with
        `learn_one` on the learned rows only (see `CompiledHST.score_learn_where`).
        Returns the n scores; `threshold` is unchanged until `end_batch`.
        """
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"X must have shape (n, {len(self.features)}), got {X.shape}")
        n = len(X)
        if not (all(map(math.isfinite, X.ravel().tolist())) if n <= _FEW else np.isfinite(X).all()):
            raise ValueError("X has non-finite values")
        if may_learn is not None:
            may_learn = np.asarray(may_learn, dtype=bool)
        scores, learned = self.hst.score_learn_where(X, may_learn, self.threshold)
        if not n:
            return scores
        first = self.seen
        self.seen += n
        self._since_batch += n
        self.learned += int(np.count_nonzero(learned))
        self._add_to_histogram(scores)
        # Rows whose 1-based position in the stream is a multiple of SAMPLE_EVERY.
        rows = X[(-first - 1) % SAMPLE_EVERY:: SAMPLE_EVERY]
        self.sample.extend(map(tuple, rows.tolist()))
        if self._ring is not None and self._ring_of is self.sample:
            self._ring_add(rows)
        return scores

    def score_batch(self, X: np.ndarray, may_learn: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`score_learn` over a batch, with the threshold each row is judged by.

        A cold model that warms up inside the batch sets its threshold at that
        row (`end_batch`), and the rest of the batch is judged by it: a
        backlog's first batch was otherwise judged wholly by the cold
        threshold 1.0, and nothing in it could be flagged (an integration
        run missed 3 planted outliers that came 1,500 rows into a partition's
        first batch).
        """
        n = len(X)
        if self.warm or not n:
            return self.score_learn(X, may_learn), np.full(n, self.threshold)
        config, start, scores, thresholds = self.config, 0, [], []
        while start < n and not self.warm:
            # Chunks no longer than what warm-up still needs; at least 64 rows, so a batch
            # whose rows mostly may not be learned takes few chunks.
            step = max(config.warmup_events - self.seen, config.window_size - self.learned, 64)
            stop = min(n, start + step)
            thresholds.append(np.full(stop - start, self.threshold))
            scores.append(self.score_learn(X[start:stop], None if may_learn is None else may_learn[start:stop]))
            start = stop
        if start < n:
            self.end_batch()
            thresholds.append(np.full(n - start, self.threshold))
            scores.append(self.score_learn(X[start:], None if may_learn is None else may_learn[start:]))
        return np.concatenate(scores), np.concatenate(thresholds)

    def _add_to_histogram(self, scores: np.ndarray) -> None:
        """Each score's weight into its bin; the sums are bincount's, in its order, either way.

        Up to _FEW scores, a Python loop: numpy's per-call cost (four calls over
        1000 bins) was most of a small batch's scoring (backtests of quiet traces
        run thousands of batches of a few rows). Bins hold non-negative sums, so
        adding the 0.0 of bins that got nothing changes nothing.
        """
        values = scores.tolist()
        weights = self._histogram_weights(values)
        if len(values) > _FEW:
            bins = np.minimum((scores * BINS).astype(np.intp), BINS - 1)
            np.maximum(bins, 0, out=bins)
            self.hist += np.bincount(bins, weights=weights, minlength=BINS)
            return
        sums: dict[int, float] = {}
        for score, weight in zip(values, weights):
            b = min(max(int(score * BINS), 0), BINS - 1)  # int() truncates as astype does
            sums[b] = sums.get(b, 0.0) + weight
        hist = self.hist
        for b, weight in sums.items():
            hist[b] += weight

    def _histogram_weights(self, scores: list[float]) -> list[float]:
        """1 per row; the flagged share from the budget (FLAG_CREDIT), so a flood cannot lift the threshold."""
        threshold = self.threshold
        flagged = [score > threshold for score in scores]
        n_flagged = sum(flagged)
        credit = min(self._flag_credit + FLAG_CREDIT * self.config.target_flag_rate * len(scores), FLAG_CREDIT_MAX)
        weight = 1.0
        if n_flagged:
            weight = min(1.0, credit / n_flagged)
            credit -= weight * n_flagged
        self._flag_credit = credit
        return [weight if f else 1.0 for f in flagged]

    def _ring_add(self, rows: np.ndarray) -> None:
        rows = rows[-SAMPLE_SIZE:]
        ring = self._ring
        if len(ring) < SAMPLE_SIZE:  # warm-up: not full yet
            ring = np.concatenate((ring, rows))
            if len(ring) > SAMPLE_SIZE:
                ring = ring[-SAMPLE_SIZE:].copy()
            self._ring, self._ring_at = ring, 0
        elif len(rows):
            at = np.arange(self._ring_at, self._ring_at + len(rows)) % SAMPLE_SIZE
            ring[at] = rows
            self._ring_at = int(at[-1] + 1) % SAMPLE_SIZE

    def _sample_rows(self) -> np.ndarray:
        """The sample as an (n, d) array: the ring when it mirrors `sample`, else rebuilt from it."""
        ring = self._ring
        if ring is None or self._ring_of is not self.sample or len(ring) != len(self.sample):
            ring = self._ring = np.array(self.sample, dtype=np.float64).reshape(len(self.sample), -1)
            self._ring_at, self._ring_of = 0, self.sample
        return ring

    def end_batch(self) -> None:
        """Decay the score histogram by the batch's length, recompute the threshold and drift."""
        if not self._since_batch:
            return
        decay = 0.5 ** (self._since_batch / self.config.halflife_events)
        self._since_batch = 0
        self._typical = None
        self.hist *= decay
        quantile = self._quantile()
        if quantile is None:
            self.threshold = 1.0
            return
        self.quantile = quantile
        if self._reference is None:
            self._reference = quantile
            self.drift = 0.0
        else:
            self.drift = quantile - self._reference
            self._reference += (1.0 - decay) * (quantile - self._reference)
        self._apply(quantile)

    def _quantile(self) -> float | None:
        """The upper edge of the lowest bin with at most the target share of mass above it; None if cold."""
        total = float(self.hist.sum())
        if not self.warm or total <= 0:
            return None
        budget = total * self.config.target_flag_rate
        from_top = np.cumsum(self.hist[::-1])  # from_top[k]: the mass of bins BINS - 1 - k and up
        # The highest bin i >= 1 whose mass from i up is over the budget: from_top never
        # decreases (the counts are not negative), so its first k over the budget.
        k = int(np.searchsorted(from_top, budget, side="right"))
        i = BINS - 1 - k if k < BINS - 1 else 0
        return (i + 1) / BINS  # scores strictly above the upper edge of bin i are flagged

    def _apply(self, quantile: float) -> None:
        config = self.config
        self.threshold = max(min(quantile, config.max_threshold), config.score_floor)

    def explain(self, x: np.ndarray | dict, top: int = 3) -> list[dict]:
        """The features furthest from their recent median, in robust std devs.

        `x`: a row of X (in `features` order) or a dict by feature name.
        """
        if not self.sample:
            return []
        if isinstance(x, dict):
            values = [float(x[name]) for name in self.features]
        else:
            values = np.asarray(x, dtype=np.float64).reshape(-1).tolist()
            if len(values) != len(self.features):
                raise ValueError(f"x has {len(values)} values, expected {len(self.features)}")
        if self._typical is None:
            sample = self._sample_rows()
            median = np.median(sample, axis=0)
            self._typical = median, np.median(np.abs(sample - median), axis=0)
        medians, mads = self._typical
        rows = []
        for name, value, median, mad in zip(self.features, values, medians.tolist(), mads.tolist()):
            z = (value - median) / (1.4826 * mad + 0.01)
            rows.append((abs(z), name, value, median, z))
        rows.sort(reverse=True)
        return [
            {"feature": name, "value": _round(unscale(name, value)),
             "typical": _round(unscale(name, median)), "deviation": round(z, 2)}
            for _, name, value, median, z in rows[:top]
        ]

    # -- checkpoints ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The versioned, non-executable checkpoint (module doc), signed with `config.checkpoint_key`."""
        market = self.market
        header = {
            "config": {name: getattr(self.config, name) for name in _CONFIG_FIELDS},
            "partition": self.partition, "features": list(self.features),
            "seen": self.seen, "learned": self.learned, "since_batch": self._since_batch, "since": self.since,
            "threshold": self.threshold, "quantile": self.quantile, "drift": self.drift,
            "reference": self._reference, "hist": self.hist.tolist(),
            "market": {"size": market.size, "ring": list(market.ring), "sorted": list(market.sorted),
                       "next": market.next},
            "sample": [list(row) for row in self.sample],
        }
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        key = self.config.checkpoint_key
        flags = FLAG_HMAC if key is not None else 0
        body = b"".join((PREFIX.pack(MAGIC, CHECKPOINT_VERSION, flags, len(head)), head, self.hst.to_bytes()))
        if key is not None:
            body += hmac.new(key, body, hashlib.sha256).digest()
        return body

    @classmethod
    def from_bytes(cls, raw: bytes, config: ModelConfig | None = None, partition: int | None = None,
                   *, features: tuple[str, ...] = FEATURE_NAMES) -> PartitionModel:
        """Restore a checkpoint to continue exactly where it stopped.

        `config` (default: the checkpoint's values, unsigned) is the config
        the model runs with: its key verifies the HMAC, its threshold
        settings apply at once (the threshold is recomputed when they
        differ). `partition` default: the checkpoint's. `features`: the
        columns the caller will pass (default FEATURE_NAMES).

        CheckpointError (nothing is trusted): not bytes, wrong magic or
        version (including the pickles of versions 1 and 2), truncation,
        bad JSON, missing or wrong-typed fields, inconsistent state
        (counters, sample rows, fee market, trees vs header), HMAC missing
        (a key is configured but the blob is unsigned), present without a
        key to check it, or not matching.

        A fresh model (same config and partition) for a valid but stale
        checkpoint: features other than `features`, or trees of another
        shape than the config's (n_trees, height, window_size, or a seed
        other than config.seed + partition, a changed partition included).
        """
        key = config.checkpoint_key if config is not None else None
        raw, head_len, end = verified_prefix(raw, key, MAGIC, CHECKPOINT_VERSION, "model checkpoint")
        header, tree_bytes = _split(raw, head_len, end)
        state = _decode_header(header)
        stored_config = ModelConfig(**state["config"])
        hst = _checked_trees(tree_bytes, state, stored_config)
        config = config if config is not None else replace(stored_config, checkpoint_key=None)
        partition = state["partition"] if partition is None else partition
        features = tuple(features)
        if state["features"] != features or any(getattr(config, k) != getattr(stored_config, k) for k in _SHAPE) \
                or partition != state["partition"]:
            return cls(config, partition, features)  # stale but honest: start over
        model = cls._restored(config, partition, features, hst, state)
        if any(getattr(config, k) != getattr(stored_config, k) for k in _THRESHOLD_SETTINGS):
            quantile = model._quantile()
            if quantile is None:
                model.threshold = 1.0
            else:
                model.quantile = quantile
                model._apply(quantile)
        return model

    @classmethod
    def _restored(cls, config: ModelConfig, partition: int, features: tuple[str, ...], hst: CompiledHST,
                  state: dict) -> PartitionModel:
        """A model in the checkpoint's state (decoded header `state`, checked trees `hst`), run with `config`."""
        model = cls.__new__(cls)
        model.config = config
        model.partition = partition
        model.features = features
        model.hst = hst
        model.hist = np.array(state["hist"], dtype=np.float64)
        model.seen, model.learned, model._since_batch = state["seen"], state["learned"], state["since_batch"]
        model.since = state["since"]
        model.threshold, model.quantile, model.drift = state["threshold"], state["quantile"], state["drift"]
        model._reference = state["reference"]
        model.sample = deque(map(tuple, state["sample"]), maxlen=SAMPLE_SIZE)
        model._typical = None
        model._flag_credit = FLAG_CREDIT_MAX
        model._ring, model._ring_at, model._ring_of = None, 0, None  # rebuilt from the sample when needed
        market = FeeMarket(state["market"]["size"])
        market.ring, market.sorted, market.next = (state["market"][k] for k in ("ring", "sorted", "next"))
        model.market = market
        return model


def _checked_trees(tree_bytes: bytes, state: dict, stored_config: ModelConfig) -> CompiledHST:
    """The checkpoint's trees, which must match its header: features, shape, seed and learned rows."""
    try:
        hst = CompiledHST.from_bytes(tree_bytes)
    except CheckpointError as exc:
        raise CheckpointError(f"trees: {exc}") from None
    if hst.features != state["features"] or (hst.n_trees, hst.height, hst.window_size, hst.seed) != (
            stored_config.n_trees, stored_config.height, stored_config.window_size,
            stored_config.seed + state["partition"]):
        raise CheckpointError("the trees do not match the header's features, shape or seed")
    learned, window = state["learned"], stored_config.window_size
    if hst.counter != learned % window or hst.first_window != (learned < window):
        raise CheckpointError(f"the trees' window (counter {hst.counter}) does not match {learned} learned rows")
    return hst


def _split(raw: bytes, head_len: int, end: int) -> tuple[dict, bytes]:
    """The JSON header and the tree bytes of a checkpoint whose prefix `verified_prefix` checked."""
    if head_len > _MAX_HEADER or PREFIX.size + head_len > end:
        raise CheckpointError(f"truncated: header of {head_len} bytes does not fit")
    try:
        # orjson: a fixed nesting limit (the standard library's recursive decoder
        # overflowed the C stack on 100,000 nested brackets under a raised
        # recursion limit: a segfault, not an exception) and no NaN or Infinity.
        header = orjson.loads(raw[PREFIX.size: PREFIX.size + head_len])
    except ValueError as exc:  # orjson.JSONDecodeError and UnicodeDecodeError included
        raise CheckpointError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError("header is not a JSON object")
    return header, raw[PREFIX.size + head_len: end]


_HEADER_KEYS = {"config", "partition", "features", "seen", "learned", "since_batch", "threshold", "quantile",
                "drift", "reference", "hist", "market", "sample", "since"}
# Keys a checkpoint of an earlier release may lack.
_HEADER_ADDED = {"since"}


def _decode_header(header: dict) -> dict:
    """The header's fields type- and range-checked (CheckpointError saying which is wrong)."""
    if set(header) | _HEADER_ADDED != _HEADER_KEYS:
        raise CheckpointError(f"header keys {sorted(header)} are not the expected ones")
    config = header["config"]
    if not isinstance(config, dict) or set(config) != set(_CONFIG_FIELDS):
        raise CheckpointError("config does not hold the expected fields")
    for name in _CONFIG_FIELDS:
        value = config[name]
        if name in _CONFIG_INTS:
            low = 1 if name in ("n_trees", "window_size", "halflife_events") else -(2**63) if name == "seed" else 0
            _check_int(f"config.{name}", value, low)
        else:
            config[name] = _check_float(f"config.{name}", value)
    features = header["features"]
    if (not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features)
            or len(set(features)) != len(features)):
        raise CheckpointError("features must be a list of distinct names")
    state = {"config": config, "features": tuple(features)}
    for name in ("partition", "seen", "learned", "since_batch"):
        state[name] = _check_int(name, header[name], 0)
    if not state["learned"] <= state["seen"] or state["since_batch"] > state["seen"]:
        raise CheckpointError("learned and since_batch cannot exceed seen")
    threshold = _check_float("threshold", header["threshold"])
    if not 0.0 <= threshold <= 1.0:
        raise CheckpointError(f"threshold {threshold} outside [0, 1]")
    state["threshold"] = threshold
    state["drift"] = _check_float("drift", header["drift"])
    for name in ("quantile", "reference"):
        state[name] = None if header[name] is None else _check_float(name, header[name])
    if "since" in header:
        state["since"] = None if header["since"] is None else _check_float("since", header["since"])
    else:  # written before `since` was kept: a partition with history if it saw any
        state["since"] = 0.0 if state["seen"] > 0 else None
    hist = header["hist"]
    if not isinstance(hist, list) or len(hist) != BINS:
        raise CheckpointError(f"hist must be a list of {BINS} numbers")
    state["hist"] = [_check_float("hist", v) for v in hist]
    if min(state["hist"]) < 0:
        raise CheckpointError("hist has negative counts")
    sample = header["sample"]
    if not isinstance(sample, list) or len(sample) > SAMPLE_SIZE:
        raise CheckpointError(f"sample must be a list of at most {SAMPLE_SIZE} rows")
    width = len(features)
    for row in sample:
        if not isinstance(row, list) or len(row) != width:
            raise CheckpointError(f"sample rows must be lists of {width} numbers")
    state["sample"] = [[_check_float("sample", v) for v in row] for row in sample]
    state["market"] = _decode_market(header["market"])
    return state


def _decode_market(market) -> dict:
    """FeeMarket's public fields, with its invariants: ring of at most size, sorted its sorted copy."""
    if not isinstance(market, dict) or set(market) != {"size", "ring", "sorted", "next"}:
        raise CheckpointError("market must hold size, ring, sorted and next")
    size = _check_int("market.size", market["size"], 1)
    ring, ordered = market["ring"], market["sorted"]
    if not isinstance(ring, list) or not isinstance(ordered, list) or len(ring) > size:
        raise CheckpointError("market ring and sorted must be lists, the ring at most size long")
    ring = [_check_float("market.ring", v) for v in ring]
    ordered = [_check_float("market.sorted", v) for v in ordered]
    if ordered != sorted(ring):
        raise CheckpointError("market.sorted is not the ring sorted")
    position = _check_int("market.next", market["next"], 0)
    if position >= size or (len(ring) < size and position):
        raise CheckpointError(f"market.next {position} is not a position of a full ring of {size}")
    return {"size": size, "ring": ring, "sorted": ordered, "next": position}


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise CheckpointError(f"{name} must be an int >= {low}, got {str(value)[:40]}")
    return value


def _check_float(name: str, value) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**53:
        return float(value)
    if not isinstance(value, float) or not math.isfinite(value):
        raise CheckpointError(f"{name} must be a finite number, got {str(value)[:40]}")
    return value


def _round(value: float) -> float:
    return float(f"{value:.4g}")
