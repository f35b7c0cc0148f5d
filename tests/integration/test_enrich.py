"""Anomalies enriched with on-chain facts from a real JSON-RPC node (ganache), through Redis."""

from __future__ import annotations

import os

import orjson
import pytest
from web3 import HTTPProvider, Web3

from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

from ..support import consume_all, deployment_env, keyed, produce, run
from .test_detector import outlier

pytestmark = pytest.mark.integration
ETH_URL = f"http://127.0.0.1:{os.environ.get('STACK_ETH_PORT', '18545')}"


def outlier_from(sender: str, to: str, i: int) -> dict:
    return {**outlier(500 + i), "from": sender, "to": to, "contractAddress": None}


def test_flagged_transactions_carry_onchain_facts_and_repeats_hit_the_cache(workers):
    w3 = Web3(HTTPProvider(ETH_URL))
    accounts = [a.lower() for a in w3.eth.accounts]
    env = deployment_env(enrich_onchain=1, eth_rpc_url=ETH_URL, redis_key_prefix=f"enrich-{os.getpid()}")
    worker = workers(env)
    worker.wait_ready()
    normal = TrafficGenerator(GeneratorConfig(seed=31, scenario_rates={})).take(8000)
    # Six senders, one counterparty: each outlier is its sender's first transfer to it (a
    # sender repeating one already seems less new), and the counterparty is asked once.
    payee = accounts[-1]
    outliers = [outlier_from(accounts[i], payee, i) for i in range(6)]
    first, second = normal[:6000] + outliers[:3], outliers[3:] + normal[6000:]
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(first)))
    worker.wait_metric("transactions_processed_total", len(first))
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(second)))  # a later batch: the cache is warm
    worker.wait_metric("transactions_processed_total", len(first) + len(second))

    documents = {d["tx_hash"]: d for d in (orjson.loads(r.value) for r in run(consume_all(env["KAFKA_ANOMALIES_TOPIC"])))}
    enriched = [documents[o["hash"]] for o in outliers if o["hash"] in documents]
    assert len(enriched) >= 5
    for document in enriched:
        balance = w3.eth.get_balance(Web3.to_checksum_address(document["sender"])) / 10**18
        assert document["onchain"] == {
            "sender_balance_eth": pytest.approx(balance), "counterparty_is_contract": False,
            "counterparty_code_size": 0,
        }
    m = worker.metrics()
    assert m["enrichment_total{result=ok}"] >= len(enriched)
    # One RPC call per distinct address at most: the payee, asked again and again, costs
    # one call; the rest came from the cache.
    every = [orjson.loads(r.value) for r in run(consume_all(env["KAFKA_ANOMALIES_TOPIC"]))]
    distinct = {d["sender"] for d in every} | {d["counterparty"] or d["to"] for d in every} - {None}
    rpc_calls = m.get("eth_rpc_latency_seconds_count{method=batch}", 0)
    assert 0 < rpc_calls <= len(distinct)
    # The second group of outliers found the payee in the cache.
    assert m["redis_cache_requests_total{result=hit}"] >= 2


def test_a_dead_node_never_blocks_an_anomaly(workers):
    env = deployment_env(enrich_onchain=1, eth_rpc_url="http://127.0.0.1:1", enrich_timeout_seconds=0.3)
    worker = workers(env)
    worker.wait_ready()
    normal = TrafficGenerator(GeneratorConfig(seed=32, scenario_rates={})).take(6000)
    outliers = [outlier(700 + i) for i in range(5)]
    txs = normal[:5000] + outliers + normal[5000:]
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(txs)))
    worker.wait_metric("transactions_processed_total", len(txs))
    documents = [orjson.loads(r.value) for r in run(consume_all(env["KAFKA_ANOMALIES_TOPIC"]))]
    m = worker.metrics()
    # Every anomaly went out, without facts, and each one counts as failed or skipped.
    assert documents and len(documents) == m["anomalies_published_total"]
    assert all(d["onchain"] is None for d in documents)
    assert m.get("enrichment_total{result=error}", 0) + m.get("enrichment_total{result=skipped}", 0) \
        == len(documents)
    assert m.get("enrichment_total{result=ok}", 0) == 0
