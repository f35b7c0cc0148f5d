"""Detection quality per attack kind, planted into real mainnet traffic and into generated traffic.

    .venv/bin/python benchmarks/quality.py [--short] [--seeds 3,4,5] [--params report|tune]
                                           [--episodes 20] [--partitions 8] [--json OUT.json]
                                           [--kinds K1,K2] [--no-watchlist]

Backgrounds: the 2017 ethereum-etl export (19,999 real transactions over
8.7 hours, the longest contiguous real set in ../shared/data/traffic) and
the generator's ordinary traffic (no scenarios of its own; 40,000 rows, the
first half a warm-up where no episode starts: `backgrounds`). Into each,
`tools.scenarios.plant` puts `--episodes` episodes of one kind at a time
(so attacks stay a few percent of the traffic), and each result is replayed
by `tools.backtest.replay`, the worker's own code, at the shipped defaults
(`Settings()`), with OFAC's list loaded as a deployment would have it.

Per kind it reports, over the planted transactions that carry the attack
(roles other than `funding`, which is an ordinary exchange or mixer
withdrawal):
- `recall@1%` and `recall@0.1%`: at the score cut that lets 1% (0.1%) of the
  background through (threshold-free, the ROC view);
- `recall@op`: at the worker's own operating point (its adaptive thresholds
  and rules), with that operating point's flag rate on the background;
- `episodes@op`: the share of episodes with at least one flagged transaction
  (what an on-call engineer sees: one alert per episode).
Warm-up rows (the first MODEL_WARMUP_EVENTS per partition) are excluded.

Honesty: detector limits were set from the real traffic's own distributions
(benchmarks/calibration.py), not from these scenarios. Tune on `--params
tune --seeds 1,2`; report with `--params report --seeds 3,4,5`, whose
scenario parameters differ (more or fewer victims, other spacing, other
look-alike match lengths). Writes benchmarks/results/quality.json and a plot.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import structlog

from common import DATA, arguments, ofac_listed, write_result

from anomaly_stream.settings import Settings
from anomaly_stream.tools import plots
from anomaly_stream.tools.backtest import replay
from anomaly_stream.tools.evaluation import NORMAL, score_cut_at_fpr
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator
from anomaly_stream.tools.readers import read_transactions, with_trace_balances
from anomaly_stream.tools.scenarios import KINDS, plant

TRAFFIC = DATA / "traffic"
RESULTS = Path(__file__).resolve().parent / "results"
# Scenario parameters to tune on, and others to report on (the defaults of
# tools.scenarios are the tuning set).
PARAMS = {
    "tune": {},
    "report": {"victims": (8, 40), "phishing_window_s": 5400, "fan_in_sources": (8, 30),
               "fan_in_window_s": (120, 1800), "lookalike_prefix": 3, "lookalike_suffix": 5,
               "peel_hops": (4, 10), "drain_tokens": (1, 4), "drain_transfers": (2, 4),
               # Forta, H1 2024: 44% of attacks funded through Tornado Cash (../shared/data/README.md).
               "exploit_tornado_share": 0.44},
}


def backgrounds(short: bool) -> dict[str, tuple[list[dict], dict]]:
    """Each background and the scenario parameters it adds (where its episodes may start).

    The generated background opens with as much ordinary traffic again, where
    no episode starts: a deployed worker has been running, and a replay that
    starts cold judges nothing of its first half (a receiver model warms
    after 1,000 edges per partition, 20,000 generated rows are 27 minutes,
    under the flow rules' hour), so episodes planted there straddled the
    opening of the gate and lost the marks made before it. The real trace's
    first hour is its warm-up (8.7 hours; episodes start after its first 10%).
    Neither has the ingester's `ownerTokenBalance`: both get the trace's own
    stand-in (`readers.with_trace_balances`), so ordinary transfers that
    empty a balance are in the background as they would be live.
    """
    real = with_trace_balances(read_transactions(TRAFFIC / "mainnet-2017-ethereum-etl"))
    generated = with_trace_balances(
        TrafficGenerator(GeneratorConfig(seed=7, scenario_rates={})).take(24_000 if short else 40_000))
    return {"mainnet-2017": (real[:12_000] if short else real, {}),
            "generated": (generated, {"start_window": (0.5, 1.0)})}


def evaluate(txs: list[dict], outcome) -> dict:
    role = {tx["hash"].lower(): tx.get("role") for tx in txs}
    episode = {tx["hash"].lower(): tx.get("episode") for tx in txs}
    warm = np.asarray(outcome.warm, dtype=bool)
    scores = np.asarray(outcome.scores)[warm]
    flagged = np.asarray(outcome.flagged, dtype=bool)[warm]
    labels = np.asarray(outcome.labels, dtype=object)[warm]
    hashes = np.asarray(outcome.hashes, dtype=object)[warm]
    normal = labels == NORMAL
    cuts = {key: score_cut_at_fpr(scores[normal], fpr) for key, fpr in (("1%", 0.01), ("0.1%", 0.001))}
    result = {"background_n": int(normal.sum()), "background_flag_rate": float(flagged[normal].mean())}
    for kind in KINDS:
        rows = (labels == kind) & np.array([role.get(h) != "funding" for h in hashes], dtype=bool)
        if not rows.any():
            continue
        caught = defaultdict(bool)
        for h, f in zip(hashes[rows], flagged[rows]):
            caught[episode[h]] |= bool(f)
        result[kind] = {
            "n": int(rows.sum()),
            **{f"recall@{key}": float((scores[rows] > cut).mean()) for key, cut in cuts.items()},
            "recall@op": float(flagged[rows].mean()),
            "episodes@op": sum(caught.values()) / len(caught),
            "episodes": len(caught),
        }
        # Which steps of the attack are missed (role: see tools.scenarios).
        roles = np.array([role.get(h) for h in hashes[rows]], dtype=object)
        for r in sorted(set(roles)):
            result[kind][f"recall@1%/{r}"] = float((scores[rows][roles == r] > cuts["1%"]).mean())
    return result


def run(short: bool, seeds: list[int], params_name: str, episodes: int, partitions: int,
        kinds: tuple[str, ...] = KINDS, watchlist: bool = True) -> dict:
    settings = Settings()
    # `--no-watchlist` measures the model and the other rules without OFAC's list.
    listed = ofac_listed() if watchlist else None
    out: dict = {"seeds": seeds, "params": params_name, "episodes_per_kind": episodes,
                 "watchlists": ["ofac"] if watchlist else [], "runs": {}}
    for name, (background, where) in backgrounds(short).items():
        for seed in seeds:
            # One kind per replay: ten kinds at once would make attacks a sixth of the traffic.
            for kind in kinds:
                txs = plant(background, [kind], seed, episodes, {**PARAMS[params_name], **where})
                lines = [orjson.dumps({k: v for k, v in tx.items() if k not in ("episode", "role")})
                         for tx in txs]
                outcome = replay(lines, settings, partitions, label_field="label", listed=listed)
                out["runs"][f"{name}/seed{seed}/{kind}"] = evaluate(txs, outcome)
    return out


def summarise(result: dict) -> dict:
    """Per background and kind: the median over seeds of each figure."""
    table: dict = {}
    for run_name, figures in result["runs"].items():
        background = run_name.split("/")[0]
        for kind, row in figures.items():
            if isinstance(row, dict):
                for key, value in row.items():
                    table.setdefault(background, {}).setdefault(kind, {}).setdefault(key, []).append(value)
            else:
                table.setdefault(background, {}).setdefault(kind, []).append(row)
    return {b: {k: ({m: float(np.median(v)) for m, v in row.items()} if isinstance(row, dict)
                    else float(np.median(row))) for k, row in kinds.items()} for b, kinds in table.items()}


def main() -> int:
    parser = arguments("quality", short="12,000 real and 12,000 generated background transactions, one seed")
    parser.add_argument("--seeds", default="3,4,5", help="scenario seeds (tune on 1,2; report on others)")
    parser.add_argument("--params", choices=sorted(PARAMS), default="report")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated attack kinds (default: all)")
    parser.add_argument("--no-watchlist", action="store_true", help="replay without the OFAC list")
    opts = parser.parse_args()
    # The worker logs every anomaly at info: thousands of lines per replay.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    seeds = [int(s) for s in opts.seeds.split(",")][: 1 if opts.short else None]
    kinds = tuple(k for k in opts.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    result = run(opts.short, seeds, opts.params, opts.episodes, opts.partitions, kinds, not opts.no_watchlist)
    result["median"] = summary = summarise(result)
    heads = ("recall@1%", "recall@0.1%", "recall@op", "episodes@op")
    for background, rows in summary.items():
        print(f"\n{background}: background flag rate at the operating point "
              f"{rows['background_flag_rate']:.3%} of {int(rows['background_n'])} transactions")
        print(f"{'kind':<30}" + "".join(f"{h:>13}" for h in heads))
        for kind in KINDS:
            if kind in rows:
                print(f"{kind:<30}" + "".join(f"{rows[kind][h]:>13.3f}" for h in heads))
                by_role = {k.split("/")[1]: v for k, v in rows[kind].items() if k.startswith("recall@1%/")}
                print(f"{'':<30}recall@1% by role: " + ", ".join(f"{r} {v:.2f}" for r, v in by_role.items()))
    write_result(opts.json, result)
    if kinds != KINDS or opts.no_watchlist:
        return 0  # a partial run: the committed plot stays the whole picture
    plots.bars(RESULTS / "quality.png", "Recall at 1% false positives per attack kind (median over seeds)",
               "recall", {f"{b[:4]}: {k}": row["recall@1%"] for b, rows in summary.items()
                          for k, row in rows.items() if isinstance(row, dict)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
