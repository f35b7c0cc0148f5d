"""Where the detector's feature limits come from: their distributions on real mainnet traffic.

    python benchmarks/calibration.py [--traffic ../shared/data/traffic]

Replays each real file set of ../shared/data/traffic (no labels: ordinary
traffic, bots included) through the sender and receiver feature transforms,
in chain order, one profile per address as the worker keeps them, and prints
the 50/90/99/99.9th percentiles of every transformed feature (the values the
limits in `anomaly_stream.detect.features` apply to) and of the burst count
`detector.LEARN_CAP_PER_MINUTE` caps. Writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from common import arguments, write_result

from anomaly_stream.detect.features import (
    PERSPECTIVE_FEATURES, RECEIVER, SENDER, FeeMarket, edges_of, receiver_raw, sender_raw,
)
from anomaly_stream.detect.schema import InvalidTransaction, decode
from anomaly_stream.detect.semantics import decode_call
from anomaly_stream.tools.readers import read_transactions

SETS = ("mainnet-2017-ethereum-etl", "mainnet-2024-rpc-blocks", "mainnet-2020-22-mev-blocks")
PERCENTILES = (50, 90, 99, 99.9)


def replay(path: Path) -> dict[str, list[float]]:
    market, profiles, columns = FeeMarket(), {}, {}
    granted: dict[str, set] = {}  # spender -> distinct owners that granted it
    spender_sends: dict[int, int] = {}  # owners granted before -> transactions the spender sent
    clock = 0.0
    for obj in read_transactions(path):
        try:
            tx = decode(orjson.dumps(obj))
        except InvalidTransaction:
            continue
        # Sets without timestamps (2024 blocks): 12 s slots from the first block.
        now = tx.block_timestamp or (tx.block_number or 0) * 12.0
        clock = max(clock, now)
        call = decode_call(tx.to, tx.value_wei, tx.input)
        if tx.sender in granted:  # features.pulls_from_approver: real spenders do not send
            n = len(granted[tx.sender])
            spender_sends[n] = spender_sends.get(n, 0) + 1
        if call.kind == "approval" and not call.revoke and call.counterparty is not None:
            granted.setdefault(call.counterparty, set()).add(call.owner or tx.sender)
        profile = profiles.get(tx.sender)
        fresh = profile is None or profile.n_tx == 0
        raw, profiles[tx.sender], _ = sender_raw(tx, call, profile, clock, market)
        for name, value in zip(PERSPECTIVE_FEATURES[SENDER], raw):
            columns.setdefault(f"{SENDER}.{name}", []).append(value)
        columns.setdefault("sender.burst_count", []).append(profiles[tx.sender].burst)
        for edge in edges_of(tx, call, fresh, clock):
            raw, profiles[edge.receiver], _ = receiver_raw(edge, profiles.get(edge.receiver), clock)
            for name, value in zip(PERSPECTIVE_FEATURES[RECEIVER], raw):
                columns.setdefault(f"{RECEIVER}.{name}", []).append(value)
    columns["spenders.granted_by_2+"] = [float(sum(len(v) >= 2 for v in granted.values()))]
    columns["spenders.sends_after_1_grant"] = [float(spender_sends.get(1, 0))]
    columns["spenders.sends_after_2+_grants"] = [float(sum(v for k, v in spender_sends.items() if k >= 2))]
    return columns


def main() -> int:
    parser = arguments("calibration", short="(no effect: the real sets are small)")
    parser.add_argument("--traffic", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "traffic")
    opts = parser.parse_args()
    result = {}
    for name in SETS:
        columns = replay(opts.traffic / name)
        result[name] = {}
        print(f"\n{name}")
        for column, values in columns.items():
            v = np.asarray(values)
            q = [round(float(np.percentile(v, p)), 3) for p in PERCENTILES]
            share = round(float((v > 0).mean()), 4)
            result[name][column] = {"n": len(v), "percentiles": dict(zip(map(str, PERCENTILES), q)),
                                    "share_nonzero": share}
            print(f"  {column:40s} n={len(v):6d} nonzero={share:.4f} p50/90/99/99.9={q}")
    write_result(opts.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
