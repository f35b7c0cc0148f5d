"""One partition's detector: River half-space trees, an adaptive threshold, explanations.

Free of Faust: the worker, the backtest and the benchmarks all drive the same
`PartitionModel` with the same calls, and its whole state pickles into one
checkpoint (a few hundred KiB at the default size).

Per event: `x = features.extract(tx, profile, now, model.market)` (the
partition's fee market lives here so it is checkpointed with the trees),
`score = model.score_learn(x)` (score before learn), then
`score > model.threshold` flags it. The threshold is fixed for a batch and
recomputed by `end_batch`: it is the (1 - target flag rate) quantile of the
recent scores (a histogram whose counts decay with a half-life in events),
and never below the absolute floor. No flag is raised during warm-up.
"""

from __future__ import annotations

import pickle
import statistics
from collections import deque
from dataclasses import dataclass

from river.anomaly import HalfSpaceTrees

from ..settings import Settings
from .features import FEATURE_NAMES, FeeMarket, unscale

BINS = 1000
SAMPLE_EVERY = 8  # every 8th feature vector joins the sample used to explain flags
SAMPLE_SIZE = 512
# 2: the fee market and the feature names joined the state. A checkpoint of
# another version or feature set was trained on other inputs: it is
# discarded and the partition starts over (warm-up again).
CHECKPOINT_VERSION = 2


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

    @classmethod
    def from_settings(cls, settings) -> ModelConfig:
        return cls(
            n_trees=settings.model_n_trees, height=settings.model_height,
            window_size=settings.model_window_size, seed=settings.model_seed,
            warmup_events=settings.model_warmup_events,
            target_flag_rate=settings.target_flag_rate, score_floor=settings.score_floor,
        )


class PartitionModel:
    def __init__(self, config: ModelConfig, partition: int = 0):
        self.config = config
        # Each partition's trees get their own seed so replicas do not share blind spots.
        self.hst = HalfSpaceTrees(
            n_trees=config.n_trees, height=config.height,
            window_size=config.window_size, seed=config.seed + partition,
        )
        self.hist = [0.0] * BINS
        self.seen = 0
        self._since_batch = 0
        self.threshold = 1.0  # nothing can be flagged until the first end_batch after warm-up
        self.sample: deque[dict[str, float]] = deque(maxlen=SAMPLE_SIZE)
        self._typical: dict[str, tuple[float, float]] | None = None  # per batch: median, MAD
        self.partition = partition
        self.features = FEATURE_NAMES  # what the trees were built on
        self.market = FeeMarket()  # the partition's recent gas prices, an input of extract

    @property
    def warm(self) -> bool:
        return self.seen >= max(self.config.warmup_events, self.config.window_size)

    def score_learn(self, x: dict[str, float]) -> float:
        score = self.hst.score_one(x)
        self.hst.learn_one(x)
        self.seen += 1
        self._since_batch += 1
        self.hist[min(int(score * BINS), BINS - 1)] += 1.0
        if not self.seen % SAMPLE_EVERY:
            self.sample.append(x)
        return score

    def end_batch(self) -> None:
        """Decay the score histogram by the batch's length and recompute the threshold."""
        if not self._since_batch:
            return
        decay = 0.5 ** (self._since_batch / self.config.halflife_events)
        self._since_batch = 0
        self._typical = None
        hist = self.hist
        total = 0.0
        for i in range(BINS):
            hist[i] *= decay
            total += hist[i]
        if not self.warm or total <= 0:
            self.threshold = 1.0
            return
        # Walk down from the top bin until the target share of mass is above us.
        budget = total * self.config.target_flag_rate
        above = 0.0
        i = BINS - 1
        while i > 0 and above + hist[i] <= budget:
            above += hist[i]
            i -= 1
        # Scores strictly above the upper edge of bin i are flagged.
        self.threshold = max((i + 1) / BINS, self.config.score_floor)

    def explain(self, x: dict[str, float], top: int = 3) -> list[dict]:
        """The features furthest from their recent median, in robust std devs."""
        if not self.sample:
            return []
        if self._typical is None:
            self._typical = {}
            for name in x:
                column = [s[name] for s in self.sample]
                median = statistics.median(column)
                self._typical[name] = median, statistics.median(abs(v - median) for v in column)
        rows = []
        for name, value in x.items():
            median, mad = self._typical[name]
            z = (value - median) / (1.4826 * mad + 0.01)
            rows.append((abs(z), name, value, median, z))
        rows.sort(reverse=True)
        return [
            {"feature": name, "value": _round(unscale(name, value)),
             "typical": _round(unscale(name, median)), "deviation": round(z, 2)}
            for _, name, value, median, z in rows[:top]
        ]

    def to_bytes(self) -> bytes:
        # The checkpoint is only ever read back from our own changelog topic.
        return pickle.dumps((CHECKPOINT_VERSION, self.__dict__), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, raw: bytes, config: ModelConfig | None = None) -> PartitionModel:
        """Restore a checkpoint; a stale one (other version, features or trees) starts over.

        With `config`, the restored model runs with it: the threshold settings
        (target flag rate, floor, warm-up, half-life) simply apply; a change of
        tree shape (trees, height, window, seed) discards the trained trees.
        """
        version, state = pickle.loads(raw)  # noqa: S301 - our own changelog, see to_bytes
        if version not in (1, CHECKPOINT_VERSION):
            raise ValueError(f"unknown model checkpoint version {version}")
        old_config: ModelConfig = state["config"]
        partition = state.get("partition", state["hst"].seed - old_config.seed)
        config = config or old_config
        shape = ("n_trees", "height", "window_size", "seed")
        if (version != CHECKPOINT_VERSION or state.get("features") != FEATURE_NAMES
                or any(getattr(config, k) != getattr(old_config, k) for k in shape)):
            return cls(config, partition)
        model = cls.__new__(cls)
        model.__dict__.update(state)
        model.config = config
        return model


def _round(value: float) -> float:
    return float(f"{value:.4g}")
