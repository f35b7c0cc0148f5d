"""Watch-lists on the real broker: `anomaly-stream watchlist` reaches every replica within a batch."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import orjson
import pytest

from anomaly_stream.tools.backtest import kafka_partition
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

from ..support import REPO, consume_all, keyed, produce, run

pytestmark = pytest.mark.integration


def watchlist_cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "anomaly_stream", "watchlist", *args], cwd=REPO,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_entries(workers, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(w.metrics().get("watchlist_entries") == n for w in workers):
            return
        time.sleep(0.3)
    raise AssertionError(f"not every replica holds {n} watch-listed addresses: "
                         f"{[w.metrics().get('watchlist_entries') for w in workers]}")


def payments(to: list[str], seed: int, t: int) -> list[dict]:
    """One payment to each address, from senders spread over all partitions."""
    senders = TrafficGenerator(GeneratorConfig(seed=seed, scenario_rates={})).take(len(to))
    return [dict(tx, to=address, hash="0x%064x" % random.Random(seed * 1000 + i).getrandbits(256),
                 blockTimestamp=hex(t)) for i, (tx, address) in enumerate(zip(senders, to))]


def test_a_loaded_list_flags_on_every_replica_and_a_removal_stops_it(workers, env, tmp_path):
    env = {**env, "MODEL_WARMUP_EVENTS": "1000000"}  # the model flags nothing: only the rule can
    first, second = workers(env), workers(env)
    first.wait_ready()
    second.wait_ready()
    listed = ["0x" + f"{i:02x}" * 20 for i in range(1, 9)]
    path = tmp_path / "list.txt"
    path.write_text("# test list\n" + "\n".join(f"{a},test entry {i}" for i, a in enumerate(listed)) + "\nnot-an-address\n")
    out = watchlist_cli(env, "load", str(path), "--list", "incident-42")
    assert "8 addresses read (1 lines skipped); 8 written" in out
    wait_entries([first, second], 8)
    assert "incident-42" in watchlist_cli(env, "show", listed[0])

    txs = payments(listed * 4, seed=3, t=int(time.time()))
    assert len({kafka_partition(tx["from"].encode(), 4) for tx in txs}) == 4, "every partition gets some"
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(txs)))
    anomalies = [orjson.loads(r.value) for r in run(consume_all(env["KAFKA_ANOMALIES_TOPIC"], expect=len(txs)))]
    by_hash = {d["tx_hash"]: d for d in anomalies if d["perspective"] == "sender"}
    assert set(by_hash) == {tx["hash"] for tx in txs}, "every payment to a listed address is flagged"
    for d in by_hash.values():
        assert d["severity"] == "high"
        assert {"rule": "watchlist", "list": "incident-42", "role": "to"}.items() <= d["reasons"][0].items()
    assert len({d["source"]["partition"] for d in by_hash.values()}) == 4, "on both replicas' partitions"

    assert "8 addresses taken off" in watchlist_cli(env, "remove", "--list", "incident-42")
    wait_entries([first, second], 0)
    later = payments(listed, seed=4, t=int(time.time()))
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(later)))
    for w in (first, second):
        w.wait_metric("transactions_processed_total", 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(
            w.metrics()["transactions_processed_total"] for w in (first, second)) < len(txs) + len(later):
        time.sleep(0.3)
    flagged = {orjson.loads(r.value)["tx_hash"] for r in run(consume_all(env["KAFKA_ANOMALIES_TOPIC"]))}
    assert not flagged & {tx["hash"] for tx in later}, "off the list, no longer flagged"
