"""Where the detector's feature limits come from: their distributions on real mainnet traffic.

    python benchmarks/calibration.py [--traffic ../shared/data/traffic]

Replays each real file set of ../shared/data/traffic (no labels: ordinary
traffic, bots included) through the sender and receiver feature transforms,
in chain order, one profile per address as the worker keeps them, and prints
the 50/90/99/99.9th percentiles of every transformed feature (the values the
limits in `anomaly_stream.detect.features` apply to) and of the burst count
`detector.LEARN_CAP_PER_MINUTE` caps, and the quantities the flow rules of
`anomaly_stream.detect.flows` apply their limits to (`flows.*`), and counts
behind the rules' limits (`creations.*`, `spenders.*`, `balances.*`: token
transfers, those with a balance from `readers.with_trace_balances`, those that
emptied it, and those into a fresh address from its sole sender). Writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from common import arguments, write_result

from anomaly_stream.detect.features import (
    PERSPECTIVE_FEATURES, RECEIVER, SENDER, FeeMarket, edges_of, receiver_raw, sender_raw,
)
from anomaly_stream.detect import flows
from anomaly_stream.detect.detector import fresh_deployer
from anomaly_stream.detect.schema import WEI_PER_ETH, InvalidTransaction, decode
from anomaly_stream.detect.semantics import decode_call
from anomaly_stream.tools.readers import read_transactions, with_trace_balances

SETS = ("mainnet-2017-ethereum-etl", "mainnet-2024-rpc-blocks", "mainnet-2020-22-mev-blocks")
PERCENTILES = (50, 90, 99, 99.9)


def replay(path: Path) -> dict[str, list[float]]:
    market, profiles, columns = FeeMarket(), {}, {}
    granted: dict[str, set] = {}  # spender -> distinct owners that granted it
    spender_sends: dict[int, int] = {}  # owners granted before -> transactions the spender sent
    creations: dict[str, int] = {}  # all, nonce_0, by_fresh_deployer (detector.fresh_deployer)
    # token transfers; with a balance (readers.with_trace_balances); emptied; emptied into a fresh
    # receiver from its sole sender (the one-transfer drain_to_fresh, before its nonce cap and hour gate)
    balances = dict.fromkeys(("token_transfers", "known", "emptied", "emptied_into_fresh"), 0)
    clock, start = 0.0, None
    for obj in with_trace_balances(read_transactions(path)):
        try:
            tx = decode(orjson.dumps(obj))
        except InvalidTransaction:
            continue
        # Sets without timestamps (2024 blocks): 12 s slots from the first block.
        now = tx.block_timestamp or (tx.block_number or 0) * 12.0
        clock = max(clock, now)
        start = clock if start is None else start
        call = decode_call(tx.to, tx.value_wei, tx.input)
        if tx.sender in granted:  # features.pulls_from_approver: real spenders do not send
            n = len(granted[tx.sender])
            spender_sends[n] = spender_sends.get(n, 0) + 1
        if call.kind == "approval" and not call.revoke and call.counterparty is not None:
            granted.setdefault(call.counterparty, set()).add(call.owner or tx.sender)
        profile = profiles.get(tx.sender)
        fresh = flows.young(profile, clock)  # as detector.process_batch has it
        funder = profile.funder if profile is not None else ""
        eth = tx.value_wei / WEI_PER_ETH if call.kind == "eth_transfer" else 0.0
        hops = flows.relay_depth(profile, eth, fresh)
        if fresh and eth > 0.0 and profile.src not in ("", "*") and profile.src_eth > 0.0:
            columns.setdefault("flows.relay_share", []).append(eth / profile.src_eth)
        raw, profiles[tx.sender], _ = sender_raw(tx, call, profile, clock, market)
        for name, value in zip(PERSPECTIVE_FEATURES[SENDER], raw):
            columns.setdefault(f"{SENDER}.{name}", []).append(value)
        columns.setdefault("sender.burst_count", []).append(profiles[tx.sender].burst)
        if call.kind == "creation":  # detector._deployer_rule: new, freshly funded deployers are rare
            keys = ["all"] + ["nonce_0"] * (tx.nonce == 0)
            keys += ["by_fresh_deployer"] * fresh_deployer(tx, profiles[tx.sender], clock)
            for key in keys:
                creations[key] = creations.get(key, 0) + 1
        if call.kind == "token_transfer":
            balances["token_transfers"] += 1
            balances["known"] += tx.owner_token_balance is not None
            balances["emptied"] += tx.owner_token_balance == 0
        if call.kind == "eth_transfer" and tx.value_wei > 0:
            columns.setdefault("flows.eth_transfer_value", []).append(tx.value_wei / WEI_PER_ETH)
        for edge in edges_of(tx, call, fresh, clock, funder, hops):
            raw, profiles[edge.receiver], _ = receiver_raw(edge, profiles.get(edge.receiver), clock)
            for name, value in zip(PERSPECTIVE_FEATURES[RECEIVER], raw):
                columns.setdefault(f"{RECEIVER}.{name}", []).append(value)
            inflow = flows.observe(edge, profiles[edge.receiver], clock)
            balances["emptied_into_fresh"] += edge.sender_emptied and inflow.sole_source_moves >= 1
            # At a trace's start every address is first seen, so "fresh within
            # the hour" holds for exchanges too; a running worker has seen them.
            # `flows_after_1h` leaves the trace's first hour out.
            late = clock - start > flows.FRESH_WINDOW_SECONDS
            for name, value in zip(flows.Inflow._fields, inflow):
                columns.setdefault(f"flows.{name}", []).append(float(value))
                if late:
                    columns.setdefault(f"flows_after_1h.{name}", []).append(float(value))
    for key, count in balances.items():
        columns[f"balances.{key}"] = [float(count)]
    for key in ("all", "nonce_0", "by_fresh_deployer"):
        columns[f"creations.{key}"] = [float(creations.get(key, 0))]
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
            share = round(float((v > 0).mean()), 5)
            result[name][column] = {"n": len(v), "percentiles": dict(zip(map(str, PERCENTILES), q)),
                                    "share_nonzero": share}
            nz = v[v > 0]
            q_nz = [round(float(np.percentile(nz, p)), 3) for p in PERCENTILES] if len(nz) else []
            result[name][column]["nonzero_percentiles"] = dict(zip(map(str, PERCENTILES), q_nz))
            result[name][column]["max"] = round(float(v.max()), 3)
            print(f"  {column:40s} n={len(v):6d} nonzero={share:.5f} p50/90/99/99.9={q} "
                  f"of nonzero={q_nz} max={v.max():.3g}")
    write_result(opts.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
