"""What the shipped defaults flag on real mainnet traffic, and why.

    .venv/bin/python benchmarks/real_traffic.py [--json OUT.json]

Replays every file set of ../shared/data/traffic (ordinary traffic, bots
included, no labels) through `tools.backtest.replay` (the worker's own code)
at `Settings()` defaults with OFAC's list loaded, with the ingester's `ownerTokenBalance`
stood in for by the trace's own ledger (`readers.with_trace_balances`), and prints per set: transactions, dead letters,
the share flagged, the anomalies by reason, and the replay's speed. Writes
benchmarks/results/real_traffic.json and a bar plot of the flag rates.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from common import DATA, arguments, ofac_listed, write_result

from anomaly_stream.settings import Settings
from anomaly_stream.tools import plots
from anomaly_stream.tools.backtest import replay, report
from anomaly_stream.tools.readers import read_transactions, with_trace_balances

TRAFFIC = DATA / "traffic"
RESULTS = Path(__file__).resolve().parent / "results"
SETS = ("mainnet-2017-ethereum-etl", "mainnet-2020-ethereum-etl-transactions.csv.gz",
        "mainnet-2020-22-mev-blocks", "mainnet-2023-ethereum-etl", "mainnet-2024-rpc-blocks")


def main() -> int:
    opts = arguments("real_traffic", short="(no effect: the real sets are small)").parse_args()
    result = {}
    listed = ofac_listed()
    print(f"{'file set':<48}{'tx':>7}{'dead':>6}{'flagged':>9}  by reason")
    for name in SETS:
        records = map(orjson.dumps, with_trace_balances(read_transactions(TRAFFIC / name)))
        outcome = replay(records, Settings(), partitions=8, listed=listed)
        summary = report(outcome, labelled=False)
        summary["anomalies_by_reason"] = dict(sorted(outcome.reasons.items()))
        result[name] = summary
        print(f"{name:<48}{summary['n']:>7}{summary['dead_letters']:>6}{summary['flag_rate']:>9.3%}  "
              f"{summary['anomalies_by_reason']}  ({summary['tx_per_s']} tx/s)")
    write_result(opts.json, result)
    plots.bars(RESULTS / "real_traffic.png", "Share of real mainnet traffic flagged at the shipped defaults",
               "flagged", {name.replace("mainnet-", "").split(".")[0]: r["flag_rate"] for name, r in result.items()},
               fmt="{:.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
