"""River's half-space trees compiled to arrays: the same trees, the same scores, in batches.

`CompiledHST` holds River's `HalfSpaceTrees` (river 0.26) as numpy arrays and
runs score-then-learn over a batch of events at once, with River's results to
the bit. The trees are River's own: `from_river` copies the node structure
(split feature, split threshold, masses) of trees River built with its seed,
it does not re-implement River's randomness.

Why a batch can be vectorised exactly. In River (river/anomaly/hst.py):

* `learn_one` adds 1 to `l_mass` of every node on the event's root-to-leaf
  path in every tree; after `window_size` learned events (`counter` reaches
  it) the window pivots: every node's `r_mass = l_mass`, `l_mass = 0`,
  `counter = 0`, and the first-window flag is cleared;
* `score_one` reads only `r_mass`: it is 0 (the int) until the first pivot,
  then `1 - score / max_score` with `max_score = n_trees * window_size *
  (2 ** (height + 1) - 1)`, where `score` sums, over the trees, the walk's
  `r_mass * 2 ** depth` for each visited node; the walk stops after adding a
  node whose `r_mass < size_limit = 0.1 * window_size` and otherwise goes
  left iff `x[feature] < threshold`, down to the leaf (depth `height`).

So `r_mass` is constant between pivots, and with every feature present the
path of an event depends only on the tree structure, never on the masses.
`score_learn` therefore computes all paths of a batch level by level across
trees and events (fancy indexing on flat arrays), then cuts the batch at the
pivots: each piece is scored against one `r_mass` and its paths are added to
`l_mass` with one `bincount`. A call with at most `_SMALL` events (one
event at a time, say) would pay numpy's per-call overhead dozens of times
per level; it walks Python lists of the same arrays instead (River's walk
without its node objects) and adds its visits to `l_mass` in bulk later
(at the pivot, or before the state is read): scores never read `l_mass`.
It remembers the path of each row it has seen and, until the next pivot,
its score: rows repeat in real traffic (mostly-zero features).

Bit-identical, not approximately equal: every term `r_mass * 2 ** depth` is
an integer, and River's float sums of them stay exact (below `max_score`,
which `from_arrays` requires to be under 2 ** 53),
so the per-event total is the same integer in int64 here; then
`1.0 - total / max_score` is the same IEEE division and subtraction River
does. Comparisons `value < threshold` are between the same float64 values;
`not (value < threshold)` (go right) also matches River for NaN.

`score_learn_where(X, may_learn, threshold)` is River's loop that learns a
row only if it may and it scored at most `threshold` (the detector's
protection: flagged rows are not learned). Pivots then fall after
`window_size` learned rows, which depends on the scores: the batch is
scored in chunks that end at the row completing the window (see there).

Missing features are not supported: River walks a missing feature towards
the child with the larger `l_mass`, which makes paths depend on the masses.
X must carry every feature (a column per name, in `features` order); the
detector always passes all of them.

Checkpoints (`to_bytes`): no pickle, a versioned binary encoding, optionally
authenticated with HMAC-SHA256 (verified before anything else is decoded):

    b"CHST" | version u16 | flags u16 | header length u32 | JSON header |
    raw little-endian arrays (in the order the header lists them) |
    [32-byte HMAC-SHA256 over everything before it, if flags & 1]

Masses are stored in the narrowest unsigned type that holds `window_size`
(uint16 at the default 250), so the default model (20 trees of height 6) is
about 22 KB, against about 86 KB for a pickle of River's trained model
(measured by benchmarks/model.py).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import struct
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

__all__ = ["CheckpointError", "CompiledHST", "FORMAT_VERSION", "MAGIC"]

MAGIC = b"CHST"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<4sHHI")  # magic, version, flags, header length
FLAG_HMAC = 1
_TAG_SIZE = hashlib.sha256().digest_size
_MAX_HEIGHT = 24  # 2**25 nodes a tree: far beyond any useful model, bounds allocation on decode
_MAX_HEADER = 1 << 20
_MAX_WINDOW = 2**32 - 1  # masses are stored as uint16 or uint32
# Paths are computed for at most this many events at once (memory: (height + 1)
# x n_trees x BLOCK int64 indices, 4.6 MB at the default size).
_BLOCK = 4096
# Up to this many events, score_learn walks Python lists (as River does, without its objects).
_SMALL = 8
# Rows whose path (and total) the small-batch walk remembers, per model: a path
# is n_trees * (height + 1) 8-byte ints (1.1 KB at the default size).
_REMEMBERED = 1024
_MAX_PENDING = 1 << 16


class CheckpointError(ValueError):
    """A compiled-HST checkpoint or state that cannot be used; the message says why.

    `reason`, the label of `model_checkpoints_rejected_total`: `forged` (its
    signature does not verify or is missing), `unsupported` (another format or
    version, a pickle included), else `corrupt`.
    """

    def __init__(self, message: str, reason: str = "corrupt"):
        super().__init__(message)
        self.reason = reason


class CompiledHST:
    """River's HalfSpaceTrees as arrays: same trees (built by River with its seed), same scores.

    Node `i` of a tree (heap order: root 0, children `2i + 1` and `2i + 2`)
    is `split_feature[t, i]` / `split_threshold[t, i]` for the `2**height - 1`
    branches, and `l_mass[t, i]` / `r_mass[t, i]` for all `2**(height+1) - 1`
    nodes. `counter` and `first_window` are River's.
    """

    def __init__(self, *, features: Sequence[str], n_trees: int, height: int, window_size: int,
                 split_feature: np.ndarray, split_threshold: np.ndarray, l_mass: np.ndarray,
                 r_mass: np.ndarray, counter: int, first_window: bool, seed: int | None = None):
        self.features = tuple(features)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.counter = counter
        self.first_window = first_window
        self.n_nodes = 2 ** (height + 1) - 1
        self.max_score = n_trees * window_size * self.n_nodes  # River's _max_score, an int
        self.size_limit = 0.1 * window_size  # River's, the same float expression
        nodes = self.n_nodes
        # Flat per-node arrays, leaves padded (never read as splits), indexed by t * nodes + i.
        feature = np.zeros((n_trees, nodes), dtype=np.intp)
        threshold = np.zeros((n_trees, nodes), dtype=np.float64)
        feature[:, : nodes // 2] = split_feature
        threshold[:, : nodes // 2] = split_threshold
        self._feature = feature.ravel()
        self._threshold = threshold.ravel()
        self._l_mass = np.array(l_mass, dtype=np.int64).reshape(-1)
        self._r_mass = np.array(r_mass, dtype=np.int64).reshape(-1)
        self._base = (np.arange(n_trees, dtype=np.intp) * nodes)[:, None]
        # The right child of every node, as a global index: 2g + 2 - t * nodes for g = t * nodes + i.
        flat = np.arange(n_trees * nodes, dtype=np.intp)
        self._right = 2 * flat + 2 - np.repeat(self._base.ravel(), nodes)  # leaves: never read as parents
        self._depth_shift = np.arange(height + 1, dtype=np.int64)[:, None, None]  # r_mass * 2**depth
        self._lists = None  # Python-list copies of the structure and of r_mass, for small batches
        self._r_list = None
        self._paths_of: dict[tuple[float, ...], array] = {}  # row -> its path (`_walk`)
        self._totals: dict[tuple[float, ...], int] = {}  # row -> its score's total under this r_mass
        # Nodes visited by small batches, not yet in _l_mass: machine ints, which numpy
        # reads in place (a list of 35k ints a window took longer to convert than to add).
        self._pending = array("q")

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_river(cls, hst, features: Sequence[str]) -> CompiledHST:
        """Compile River's model, fresh or trained (its trees, masses, counter and window flag).

        `features` names X's columns. A fresh model has no trees yet (River
        builds them in the first `learn_one`, over `sorted(x)` with its rng);
        they are built here by River on a copy, exactly as that first call
        would, so the original is left untouched and both continue alike.
        """
        features = tuple(features)
        if len(set(features)) != len(features) or not features:
            raise ValueError(f"features must be distinct names, got {features!r}")
        if not hst.trees:
            built = copy.deepcopy(hst)
            built.learn_one(dict.fromkeys(features, 0.0))  # builds the trees; masses dropped below
            trees, counter, first_window, fresh = built.trees, 0, True, True
        else:
            trees, counter, fresh = hst.trees, hst.counter, False
            first_window = getattr(hst, "_first_window", None)
            if first_window is None:  # after the first pivot the roots hold window_size
                first_window = trees[0].r_mass == 0
        n_trees, height, nodes = hst.n_trees, hst.height, 2 ** (hst.height + 1) - 1
        if len(trees) != n_trees:
            raise ValueError(f"River model has {len(trees)} trees, expected {n_trees}")
        index = {name: i for i, name in enumerate(features)}
        split_feature = np.zeros((n_trees, nodes // 2), dtype=np.intp)
        split_threshold = np.zeros((n_trees, nodes // 2), dtype=np.float64)
        l_mass = np.zeros((n_trees, nodes), dtype=np.int64)
        r_mass = np.zeros((n_trees, nodes), dtype=np.int64)
        for t, root in enumerate(trees):
            level = [root]
            for depth in range(height + 1):
                first = 2 ** depth - 1
                for k, node in enumerate(level):
                    i = first + k
                    is_branch = hasattr(node, "threshold")
                    if is_branch != (depth < height):
                        raise ValueError(f"tree {t} is not a complete tree of height {height}")
                    if is_branch:
                        if node.feature not in index:
                            raise ValueError(f"tree {t} splits on {node.feature!r}, not in {features}")
                        split_feature[t, i] = index[node.feature]
                        split_threshold[t, i] = node.threshold
                    if not fresh:
                        l_mass[t, i] = node.l_mass
                        r_mass[t, i] = node.r_mass
                level = [child for node in level for child in getattr(node, "children", ())]
        return cls.from_arrays({
            "features": features, "n_trees": n_trees, "height": height,
            "window_size": hst.window_size, "seed": hst.seed, "counter": counter,
            "first_window": bool(first_window), "split_feature": split_feature,
            "split_threshold": split_threshold, "l_mass": l_mass, "r_mass": r_mass,
        })

    @classmethod
    def new(cls, n_trees: int, height: int, window_size: int, seed: int | None,
            features: Sequence[str]) -> CompiledHST:
        """A fresh model whose trees River builds (default limits [0, 1] per feature)."""
        from river.anomaly import HalfSpaceTrees

        return cls.from_river(
            HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed),
            features,
        )

    # -- the hot path -----------------------------------------------------------------------

    def _paths(self, X: np.ndarray) -> np.ndarray:
        """Global node index (t * n_nodes + i) per level, tree and event: (height + 1, n_trees, n)."""
        n, d = X.shape
        values = X.ravel()  # C order: feature f of event e at e * d + f
        rows = np.arange(0, n * d, d, dtype=np.intp)
        paths = np.empty((self.height + 1, self.n_trees, n), dtype=np.intp)
        paths[0] = self._base
        feature, threshold, right = self._feature, self._threshold, self._right
        for depth in range(self.height):
            g = paths[depth]
            at = feature.take(g)
            at += rows
            go_left = values.take(at) < threshold.take(g)
            child = paths[depth + 1]
            right.take(g, out=child)
            child -= go_left  # left 2i + 1, right 2i + 2 (right also for NaN, as in River)
        return paths

    def _score_learn_small(self, X: np.ndarray, may_learn: list[bool] | None, bar: float,
                           scores: np.ndarray, learned: np.ndarray | None) -> None:
        """score_learn(_where) for a few events: River's walk on Python lists beats numpy's call overhead.

        Learns row `e` iff `may_learn[e]` (None: every row may) and its score
        is at most `bar`; marks it in `learned` (if given). The visited nodes
        wait in `_pending` (global indices) and are added to `l_mass` in bulk
        at the pivot (or when many are pending): scores never read `l_mass`.

        Rows repeat (most real transactions have mostly-zero features, the
        all-zero row above all), so a row's path is remembered (`_paths_of`:
        the structure never changes) and so is its score's integer total
        until the next pivot changes `r_mass` (`_totals`).
        """
        paths, totals = self._paths_of, self._totals
        pending = self._pending
        for e, row in enumerate(X.tolist()):
            key = tuple(row)
            path = paths.get(key)
            if path is None:
                if len(paths) >= _REMEMBERED:
                    paths.clear()
                path = paths[key] = self._walk(row)
            if self.first_window:
                score = 0.0
            else:
                total = totals.get(key)
                if total is None:
                    if len(totals) >= _REMEMBERED:
                        totals.clear()
                    total = totals[key] = self._total(path)
                score = 1 - total / self.max_score
            scores[e] = score
            if (may_learn is None or may_learn[e]) and score <= bar:
                if learned is not None:
                    learned[e] = True
                pending.extend(path)
                self.counter += 1
                if self.counter == self.window_size:
                    self._pivot()
        if len(pending) > _MAX_PENDING:
            self._flush()

    def _walk(self, row: list[float]) -> array:
        """The global node indices of a row's root-to-leaf path in every tree, tree after tree."""
        if self._lists is None:
            self._lists = self._feature.tolist(), self._threshold.tolist()
        feature, threshold = self._lists
        path = []
        visit = path.append
        levels, offset_of = range(self.height), self.n_nodes
        for t in range(self.n_trees):
            g = t * offset_of
            offset = 2 - g
            visit(g)
            for _ in levels:
                g = 2 * g + offset - (row[feature[g]] < threshold[g])  # left 2i + 1, right 2i + 2
                visit(g)
        return array("q", path)  # 8 bytes a node; `_pending.extend` copies it whole

    def _total(self, path: array) -> int:
        """River's score sum for a path: each tree's r_mass * 2**depth down to the first node below size_limit."""
        if self._r_list is None:
            self._r_list = self._r_mass.tolist()
        r_mass, size_limit, per_tree = self._r_list, self.size_limit, self.height + 1
        total = 0
        for start in range(0, len(path), per_tree):
            for depth, g in enumerate(path[start: start + per_tree]):
                r = r_mass[g]
                total += r << depth
                if r < size_limit:
                    break
        return total

    def _flush(self) -> None:
        if self._pending:
            self._learn(np.frombuffer(self._pending, dtype=np.int64))
            del self._pending[:]  # the view above is gone: the array may shrink

    def _learn(self, paths: np.ndarray) -> None:
        if paths.size < 4 * self._l_mass.size:
            np.add.at(self._l_mass, paths.ravel(), 1)
        else:
            self._l_mass += np.bincount(paths.ravel(), minlength=self._l_mass.size)

    def _pivot(self) -> None:
        self._flush()
        self._r_mass = self._l_mass
        self._l_mass = np.zeros_like(self._r_mass)
        self.first_window = False
        self.counter = 0
        self._r_list = None
        self._totals.clear()

    def _score(self, paths: np.ndarray) -> np.ndarray:
        """River's score_one for each event of a piece between pivots, from its paths.

        All levels at once: the masses along every path in one `take`; a
        level counts while every level above it had `r_mass >= size_limit`
        (River's walk stops after the first node below it). The terms are
        integers summed in int64, so the order of the sums changes nothing.
        """
        n = paths.shape[2]
        if self.first_window:
            return np.zeros(n, dtype=np.float64)
        r = self._r_mass.take(paths)  # (height + 1, n_trees, n)
        height = self.height
        if height:
            going = r[:-1] >= self.size_limit
            np.logical_and.accumulate(going, axis=0, out=going)
            r[1:] *= going  # levels below a stop count nothing
        r <<= self._depth_shift
        return 1 - r.sum(axis=(0, 1)) / self.max_score

    def _rows(self, X: np.ndarray) -> np.ndarray:
        """X as contiguous float64 rows of every feature; ValueError for another shape."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"X must have shape (n, {len(self.features)}), got {X.shape}")
        return X

    def score_learn(self, X: np.ndarray) -> np.ndarray:
        """For each row in order: River's score_one, then its learn_one. Returns the scores.

        X: shape (n, len(features)), columns in `features` order, every
        feature present (cast to float64; NaN goes right, as in River).
        """
        X = self._rows(X)
        n = X.shape[0]
        scores = np.empty(n, dtype=np.float64)
        if n <= _SMALL:
            self._score_learn_small(X, None, np.inf, scores, None)
            return scores
        for start in range(0, n, _BLOCK):
            block = X[start: start + _BLOCK]
            paths = self._paths(block)
            at = 0
            while at < len(block):
                stop = min(len(block), at + self.window_size - self.counter)
                piece = paths[:, :, at:stop]
                scores[start + at: start + stop] = self._score(piece)
                self._learn(piece)
                self.counter += stop - at
                if self.counter == self.window_size:  # River's pivot
                    self._pivot()
                at = stop
        return scores

    def score_learn_where(self, X: np.ndarray, may_learn: np.ndarray | None = None,
                          threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Score every row in order; learn a row iff `may_learn[i]` and its score <= `threshold`.

        Exactly River's loop `score = score_one(x); if may_learn[i] and score
        <= threshold: learn_one(x)`: a skipped row is scored at its position
        (against the masses of the window then in force) and learns nothing,
        in particular it does not advance the window's counter. Returns the
        scores and which rows were learned. `may_learn` None: every row may
        learn; `threshold` None: no score bar (then this is `score_learn`).

        Which rows are learned decides where the pivots fall, and the scores
        after a pivot depend on it, so a batch cannot be scored in one piece:
        it is scored in chunks of a little more than the `window_size -
        counter` rows the window still needs; the chunk is cut after its
        row that completes the window (if any), its admissible rows up to
        there are learned, the window pivots, and the rest is scored again
        against the new masses. Paths do not depend on masses: they are
        computed once per block. A chunk whose rows are all skipped is kept
        whole and the next chunk starts after it.
        """
        X = self._rows(X)
        n = X.shape[0]
        may_learn = _may_learn_mask(may_learn, n)
        bar = np.inf if threshold is None else float(threshold)
        scores = np.empty(n, dtype=np.float64)
        learned = np.zeros(n, dtype=bool)
        if n <= _SMALL:
            self._score_learn_small(X, may_learn.tolist(), bar, scores, learned)
            return scores, learned
        for start in range(0, n, _BLOCK):
            end = start + _BLOCK
            self._score_learn_where_block(self._paths(X[start:end]), may_learn[start:end], bar,
                                          scores[start:end], learned[start:end])
        return scores, learned

    def _score_learn_where_block(self, paths: np.ndarray, may_learn: np.ndarray, bar: float,
                                 scores: np.ndarray, learned: np.ndarray) -> None:
        """score_learn_where for one block of paths, in chunks cut at the pivots; fills `scores` and `learned`."""
        n = paths.shape[2]
        at = 0
        while at < n:
            need = self.window_size - self.counter  # learned rows until the pivot
            stop = min(n, at + need + (need >> 3) + 16)  # room for ~11% skipped rows
            piece = paths[:, :, at:stop]
            s = self._score(piece)
            ok = may_learn[at:stop] & (s <= bar)
            count = np.cumsum(ok)
            if count[-1] >= need:  # the window completes inside: cut after that row
                take = int(np.searchsorted(count, need)) + 1
                s, ok = s[:take], ok[:take]
                piece = piece[:, :, :take]
                got = need
            else:
                take, got = len(s), int(count[-1])
            scores[at: at + take] = s
            learned[at: at + take] = ok
            if got:
                self._learn(piece if got == take else piece[:, :, ok])
                self.counter += got
                if self.counter == self.window_size:
                    self._pivot()
            at += take

    # -- state ------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, Any]:
        """The whole state (copies): arrays, scalars and the feature names (a tuple of str)."""
        self._flush()
        shape = (self.n_trees, self.n_nodes)
        branches = self.n_nodes // 2
        return {
            "features": self.features, "n_trees": self.n_trees, "height": self.height,
            "window_size": self.window_size, "seed": self.seed, "counter": self.counter,
            "first_window": self.first_window,
            "split_feature": self._feature.reshape(shape)[:, :branches].copy(),
            "split_threshold": self._threshold.reshape(shape)[:, :branches].copy(),
            "l_mass": self._l_mass.reshape(shape).copy(),
            "r_mass": self._r_mass.reshape(shape).copy(),
        }

    @classmethod
    def from_arrays(cls, state: dict[str, Any]) -> CompiledHST:
        """Rebuild from `to_arrays`; an inconsistent state raises CheckpointError saying why."""
        try:
            features = tuple(state["features"])
            n_trees, height, window_size = state["n_trees"], state["height"], state["window_size"]
            seed, counter, first_window = state["seed"], state["counter"], state["first_window"]
            arrays = {k: np.asarray(state[k]) for k in ("split_feature", "split_threshold", "l_mass", "r_mass")}
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"incomplete state: {exc!r}") from None
        if not features or not all(isinstance(f, str) for f in features) or len(set(features)) != len(features):
            raise CheckpointError(f"features must be distinct names, got {features!r}")
        for name, value, low in (("n_trees", n_trees, 1), ("height", height, 0), ("window_size", window_size, 1)):
            if not _is_int(value) or value < low:
                raise CheckpointError(f"{name} must be an int >= {low}, got {value!r}")
        if height > _MAX_HEIGHT or window_size > _MAX_WINDOW:
            raise CheckpointError(f"height {height} or window_size {window_size} too large")
        if seed is not None and not _is_int(seed):
            raise CheckpointError(f"seed must be an int or None, got {seed!r}")
        if not _is_int(counter) or not 0 <= counter < window_size:
            raise CheckpointError(f"counter must be in [0, {window_size}), got {counter!r}")
        if not isinstance(first_window, (bool, np.bool_)):
            raise CheckpointError(f"first_window must be a bool, got {first_window!r}")
        nodes = 2 ** (height + 1) - 1
        if n_trees * window_size * nodes >= 2**53:
            raise CheckpointError("n_trees * window_size * nodes >= 2**53: River's float sums would round")
        expected = {"split_feature": (n_trees, nodes // 2), "split_threshold": (n_trees, nodes // 2),
                    "l_mass": (n_trees, nodes), "r_mass": (n_trees, nodes)}
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise CheckpointError(f"{name} has shape {arrays[name].shape}, expected {shape}")
        kinds = {"split_feature": "iu", "split_threshold": "f", "l_mass": "iu", "r_mass": "iu"}
        for name, kind in kinds.items():
            if arrays[name].dtype.kind not in kind:
                raise CheckpointError(f"{name} has dtype {arrays[name].dtype}")
        split_feature = arrays["split_feature"]
        if split_feature.size and (split_feature.min() < 0 or split_feature.max() >= len(features)):
            raise CheckpointError(f"split_feature outside [0, {len(features)})")
        if not np.isfinite(arrays["split_threshold"]).all():
            raise CheckpointError("split_threshold is not finite")
        # River's mass invariants: every learned event passes the root and one child per branch.
        for name, root in (("l_mass", counter), ("r_mass", 0 if first_window else window_size)):
            mass = arrays[name]
            if mass.min() < 0 or mass.max() > window_size:
                raise CheckpointError(f"{name} outside [0, {window_size}]")
            mass = mass.astype(np.int64)
            if (mass[:, 0] != root).any():
                raise CheckpointError(f"{name} at the roots is not {root}")
            if height and (mass[:, : nodes // 2] != mass[:, 1::2] + mass[:, 2::2]).any():
                raise CheckpointError(f"{name} of a branch is not the sum of its children's")
        return cls(features=features, n_trees=int(n_trees), height=int(height),
                   window_size=int(window_size), seed=None if seed is None else int(seed),
                   split_feature=split_feature.astype(np.intp),
                   split_threshold=arrays["split_threshold"].astype(np.float64),
                   l_mass=arrays["l_mass"], r_mass=arrays["r_mass"],
                   counter=int(counter), first_window=bool(first_window))

    # -- checkpoints ------------------------------------------------------------------------

    def to_bytes(self, key: bytes | None = None) -> bytes:
        """The versioned, non-executable encoding (see the module doc); signed if `key` is given."""
        state = self.to_arrays()
        mass_dtype = _mass_dtype(self.window_size)
        feature_dtype = "|u1" if len(self.features) <= 256 else "<u2"
        encoded = (("split_feature", feature_dtype), ("split_threshold", "<f8"),
                   ("l_mass", mass_dtype), ("r_mass", mass_dtype))
        header = {
            "features": list(self.features), "n_trees": self.n_trees, "height": self.height,
            "window_size": self.window_size, "seed": self.seed, "counter": self.counter,
            "first_window": self.first_window,
            "arrays": [{"name": name, "dtype": dtype, "shape": list(state[name].shape)}
                       for name, dtype in encoded],
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        flags = FLAG_HMAC if key is not None else 0
        parts = [PREFIX.pack(MAGIC, FORMAT_VERSION, flags, len(head)), head]
        parts += [np.ascontiguousarray(state[name], dtype=dtype).tobytes() for name, dtype in encoded]
        body = b"".join(parts)
        if key is not None:
            body += hmac.new(key, body, hashlib.sha256).digest()
        return body

    @classmethod
    def from_bytes(cls, raw: bytes, key: bytes | None = None) -> CompiledHST:
        """Decode `to_bytes`; anything unusable raises CheckpointError with the reason.

        With `key`, the blob must carry an HMAC-SHA256 made with that key; it
        is checked before anything else is read. Without `key`, a signed blob
        is refused too (it cannot be verified). Never unpickles.
        """
        raw, head_len, end = verified_prefix(raw, key, MAGIC, FORMAT_VERSION, "compiled-HST checkpoint")
        header = _read_header(raw, head_len, end)
        state = {k: header[k] for k in _SCALARS}
        if not isinstance(state["features"], list):
            raise CheckpointError("features is not a list")
        state.update(_read_arrays(raw, header, PREFIX.size + head_len, end))
        return cls.from_arrays(state)


_SCALARS = ("features", "n_trees", "height", "window_size", "seed", "counter", "first_window")


def _may_learn_mask(may_learn: np.ndarray | None, n: int) -> np.ndarray:
    """`may_learn` checked as a bool array of shape (n,); None: every row may learn."""
    if may_learn is None:
        return np.ones(n, dtype=bool)
    may_learn = np.asarray(may_learn)
    if may_learn.shape != (n,) or may_learn.dtype != np.bool_:
        raise ValueError(f"may_learn must be a bool array of shape ({n},), got "
                         f"{may_learn.dtype} {may_learn.shape}")
    return may_learn


def verified_prefix(raw, key: bytes | None, magic: bytes, version: int, noun: str) -> tuple[bytes, int, int]:
    """Check a checkpoint's prefix and HMAC: the blob as bytes, its header length, where its payload ends.

    The layout both formats share (this module's and detect.model's): `PREFIX`
    (`magic`, `version`, flags, header length), and when flags & FLAG_HMAC a
    trailing HMAC-SHA256 over everything before it. With `key`, the HMAC is
    verified before anything else is read (an unsigned blob fails it too);
    without, a signed blob is refused (it cannot be verified). `noun` names
    the format in the messages. Every rejection is a CheckpointError.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise CheckpointError(f"expected bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if key is not None:
        if len(raw) < PREFIX.size + _TAG_SIZE:
            raise CheckpointError("truncated: too short to carry an HMAC", "forged")
        expected = hmac.new(key, raw[:-_TAG_SIZE], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, raw[-_TAG_SIZE:]):
            raise CheckpointError("HMAC mismatch: tampered, truncated, unsigned or signed with another key", "forged")
    if len(raw) < PREFIX.size:
        raise CheckpointError(f"truncated: {len(raw)} bytes, shorter than the {PREFIX.size}-byte prefix")
    found_magic, found_version, flags, head_len = PREFIX.unpack_from(raw)
    if found_magic != magic:
        hint = " (a pickle?)" if raw[:1] == b"\x80" else ""  # pickle protocol >= 2 opens with PROTO
        raise CheckpointError(f"bad magic {found_magic!r}, not a {noun}{hint}", "unsupported")
    if found_version != version:
        raise CheckpointError(f"unsupported {noun} version {found_version} (this code reads {version})",
                              "unsupported")
    if flags & ~FLAG_HMAC:
        raise CheckpointError(f"unknown flags {flags:#x}")
    signed = bool(flags & FLAG_HMAC)
    if key is not None and not signed:  # a valid tag over an unsigned blob: refuse all the same
        raise CheckpointError("checkpoint carries no HMAC but a key is required", "forged")
    if key is None and signed:
        raise CheckpointError("checkpoint carries an HMAC: a key is needed to verify it", "forged")
    return raw, head_len, len(raw) - _TAG_SIZE if signed else len(raw)


def _read_header(raw: bytes, head_len: int, end: int) -> dict:
    """The checkpoint's JSON header, with exactly the expected keys."""
    if head_len > _MAX_HEADER or PREFIX.size + head_len > end:
        raise CheckpointError(f"truncated: header of {head_len} bytes does not fit")
    try:
        header = orjson.loads(raw[PREFIX.size: PREFIX.size + head_len])  # bounded nesting (model._split)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError("header is not a JSON object")
    if set(header) != {*_SCALARS, "arrays"}:
        raise CheckpointError(f"header keys {sorted(header)} are not the expected ones")
    return header


def _read_arrays(raw: bytes, header: dict, at: int, end: int) -> dict[str, np.ndarray]:
    """The arrays the header lists, read from `raw[at:end]` (views on it), checked against the tree shape."""
    height, n_trees = header["height"], header["n_trees"]
    if not (_is_int(height) and 0 <= height <= _MAX_HEIGHT and _is_int(n_trees) and n_trees >= 1):
        raise CheckpointError(f"bad tree shape: n_trees {n_trees!r}, height {height!r}")
    nodes = 2 ** (height + 1) - 1
    layout = {"split_feature": ((n_trees, nodes // 2), {"|u1", "<u2"}),
              "split_threshold": ((n_trees, nodes // 2), {"<f8"}),
              "l_mass": ((n_trees, nodes), {"<u2", "<u4"}),
              "r_mass": ((n_trees, nodes), {"<u2", "<u4"})}
    entries = header["arrays"]
    if (not isinstance(entries, list) or len(entries) != len(layout)
            or not all(isinstance(e, dict) and set(e) == {"name", "dtype", "shape"} for e in entries)
            or [e["name"] for e in entries] != list(layout)):
        raise CheckpointError(f"arrays must list {list(layout)} with name, dtype and shape")
    arrays = {}
    for entry in entries:
        shape, dtypes = layout[entry["name"]]
        if entry["dtype"] not in dtypes:
            raise CheckpointError(f"{entry['name']}: dtype {entry['dtype']!r} not allowed")
        if entry["shape"] != list(shape):
            raise CheckpointError(f"{entry['name']}: shape {entry['shape']!r}, expected {list(shape)}")
        dtype = np.dtype(entry["dtype"])
        nbytes = dtype.itemsize * shape[0] * shape[1]
        if at + nbytes > end:
            raise CheckpointError(f"truncated: {entry['name']} needs {nbytes} bytes, {end - at} left")
        arrays[entry["name"]] = np.frombuffer(raw, dtype=dtype, count=nbytes // dtype.itemsize,
                                              offset=at).reshape(shape)
        at += nbytes
    if at != end:
        raise CheckpointError(f"{end - at} trailing bytes after the arrays")
    return arrays


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _mass_dtype(window_size: int) -> str:
    return "<u2" if window_size <= np.iinfo(np.uint16).max else "<u4"
