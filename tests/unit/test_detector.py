"""Tests for the batch hot path (anomaly_stream.detect.detector)."""

from __future__ import annotations

import json

import orjson
import pytest

from anomaly_stream.detect import detector
from anomaly_stream.detect.detector import (
    ANOMALY_SCHEMA,
    FRESH_DEPLOYER,
    FUNDED,
    DeadLetter,
    Record,
    alert_key,
    encode,
    process_batch,
    process_edges,
    severity,
)
from anomaly_stream.detect.features import PERSPECTIVE_FEATURES, RECEIVER, AddressProfile
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator
from anomaly_stream.detect.model import ModelConfig, PartitionModel

DOCUMENT_KEYS = {
    "schema", "tx_hash", "address", "to", "value_wei", "value_eth", "gas_price_gwei",
    "block_number", "event_time", "detected_at", "score", "threshold", "explanation", "source",
    "perspective", "sender", "counterparty", "kind", "method", "token", "token_amount",
    "reasons", "severity", "alert_key",
}


@pytest.fixture(scope="module")
def txs() -> list[dict]:
    return TrafficGenerator(GeneratorConfig(seed=21)).take(200)


def keyed(tx: dict, offset: int, ts: float = 1.0) -> Record:
    return Record(offset, tx["from"].encode(), orjson.dumps(tx), ts)


def no_profiles(sender):
    return None


def test_counts_add_up_for_a_mixed_batch(txs):
    good = [keyed(tx, i) for i, tx in enumerate(txs[:20])]
    bad = [
        Record(100, b"k", b"{not json", 1.0),
        Record(101, None, b"[]", 1.0),
        Record(102, txs[20]["from"].encode(), orjson.dumps({k: v for k, v in txs[20].items() if k != "hash"}), 1.0),
    ]
    other = txs[22]["from"]
    miskeyed = [
        Record(200, None, orjson.dumps(txs[21]), 1.0),
        Record(201, other.encode(), orjson.dumps(dict(txs[23], **{"from": txs[24]["from"]})), 1.0),
        Record(202, txs[25]["from"].upper().encode(), orjson.dumps(txs[25]), 1.0),
        Record(203, b"\xff\xfe", orjson.dumps(txs[26]), 1.0),
    ]
    records = good[:10] + bad[:2] + miskeyed[:2] + good[10:] + bad[2:] + miskeyed[2:]
    model = PartitionModel(ModelConfig())
    result = process_batch(model, records, no_profiles, partition=3)

    assert result.processed + len(result.dead_letters) + len(result.rekeyed) == len(records)
    assert result.processed == 20 == len(result.scores) == model.seen
    assert [(d.record.offset, d.reason) for d in result.dead_letters] == [
        (100, "malformed_json"), (101, "not_an_object"), (102, "missing_field")]
    assert all(isinstance(d, DeadLetter) for d in result.dead_letters)
    assert [(s, r.offset) for s, r in result.rekeyed] == [
        (txs[21]["from"], 200), (txs[24]["from"], 201), (txs[25]["from"], 202), (txs[26]["from"], 203)]
    assert set(result.profiles) == {tx["from"] for tx in txs[:20]}
    assert all(p.partition == 3 for p in result.profiles.values())
    assert result.latest_event_time == max(int(tx["blockTimestamp"], 16) for tx in txs[:20])
    assert result.anomalies == []  # still warming up


def test_require_key_false_scores_unkeyed_records(txs):
    records = [Record(i, None, orjson.dumps(tx), 1.0) for i, tx in enumerate(txs[:30])]
    records.append(Record(30, b"someone-else", orjson.dumps(txs[30]), 1.0))
    result = process_batch(PartitionModel(ModelConfig()), records, no_profiles, 0, require_key=False)
    assert result.processed == 31
    assert result.rekeyed == [] and result.dead_letters == []


def test_every_record_rekeyed_when_none_are_keyed(txs):
    records = [Record(i, None, orjson.dumps(tx), 1.0) for i, tx in enumerate(txs[:10])]
    model = PartitionModel(ModelConfig())
    result = process_batch(model, records, no_profiles, 0)
    assert result.processed == 0 and len(result.rekeyed) == 10
    assert model.seen == 0 and result.profiles == {} and result.latest_event_time == 0.0


def test_empty_batch():
    result = process_batch(PartitionModel(ModelConfig()), [], no_profiles, 0)
    assert (result.processed, result.anomalies, result.dead_letters, result.rekeyed) == (0, [], [], [])


def test_lookup_once_per_sender_and_profile_reused(txs):
    sender = txs[0]["from"]
    same_sender = [dict(txs[i], **{"from": sender}) for i in range(5)]
    known = AddressProfile(first_seen=1.0, last_seen=1.0, n_tx=7, tx_per_hour=0.5)
    calls = []

    def lookup(s):
        calls.append(s)
        return known if s == sender else None

    records = [keyed(tx, i) for i, tx in enumerate(same_sender + txs[5:8])]
    result = process_batch(PartitionModel(ModelConfig()), records, lookup, 2)
    assert sorted(calls) == sorted({tx["from"] for tx in same_sender + txs[5:8]})
    assert result.profiles[sender] is known
    assert known.n_tx == 12 and known.partition == 2


def test_event_time_falls_back_to_record_timestamp(txs):
    tx = {k: v for k, v in txs[0].items() if k != "blockTimestamp"}
    model = PartitionModel(ModelConfig())
    model.threshold = -1.0  # flag everything
    result = process_batch(model, [keyed(tx, 5, ts=1_750_000_000.5)], no_profiles, 0, clock=lambda: 1_760_000_000.0)
    assert result.latest_event_time == 1_750_000_000.5
    assert result.profiles[tx["from"]].last_seen == 1_750_000_000.5
    assert result.anomalies[0]["event_time"] == 1_750_000_000.5


def test_anomaly_documents_have_the_documented_keys(txs):
    model = PartitionModel(ModelConfig())
    model.threshold = -1.0  # flag everything in this batch
    records = [keyed(tx, 1000 + i, ts=5.0) for i, tx in enumerate(txs[:40])]
    result = process_batch(model, records, no_profiles, 6, clock=lambda: 1_800_000_123.5)
    assert len(result.anomalies) == result.processed == 40
    for tx, record, doc, score in zip(txs, records, result.anomalies, result.scores):
        assert set(doc) == DOCUMENT_KEYS
        assert doc["schema"] == ANOMALY_SCHEMA
        assert doc["tx_hash"] == tx["hash"]
        assert doc["address"] == tx["from"]
        assert doc["to"] == tx["to"]
        assert doc["value_wei"] == str(int(tx["value"], 16))
        assert doc["value_eth"] == pytest.approx(int(tx["value"], 16) / 10**18)
        assert doc["gas_price_gwei"] == pytest.approx(int(tx["gasPrice"], 16) / 10**9)
        assert doc["block_number"] == int(tx["blockNumber"], 16)
        assert doc["event_time"] == int(tx["blockTimestamp"], 16)
        assert doc["detected_at"] == 1_800_000_123.5
        assert doc["score"] == round(score, 6)
        assert doc["threshold"] == -1.0
        assert doc["perspective"] == "sender" and doc["reasons"][0]["rule"] == "model"
        assert doc["severity"] in ("low", "medium", "high") and len(doc["alert_key"]) == 20
        assert doc["source"] == {"partition": 6, "offset": record.offset, "timestamp": 5.0}
        assert isinstance(doc["explanation"], list)
        for row in doc["explanation"]:
            assert set(row) == {"feature", "value", "typical", "deviation"}
        assert json.loads(encode(doc)) == doc
    assert any(doc["explanation"] for doc in result.anomalies)  # once the sample fills
    counts = {}
    for tx in txs[:40]:
        counts[tx["from"]] = counts.get(tx["from"], 0) + 1
    assert {s: p.anomalies for s, p in result.profiles.items()} == counts


def test_a_batch_that_warms_the_model_judges_its_rest_and_the_next_batch_by_one_threshold(txs):
    model = PartitionModel(ModelConfig(warmup_events=250, window_size=250))
    stream = TrafficGenerator(GeneratorConfig(seed=22)).take(600)
    records = [keyed(tx, i) for i, tx in enumerate(stream)]
    first = process_batch(model, records[:300], no_profiles, 0)
    # The batch warms the model at row 250: the rows before are judged by the cold
    # threshold 1.0 (nothing flagged), the rest by the threshold set at that row.
    cold, warm = first.thresholds[:250], first.thresholds[250:]
    assert cold == [1.0] * 250 and len(set(warm)) == 1 and warm[0] < 1.0
    flagged = {first.hashes[i] for i, (s, t) in enumerate(zip(first.scores, first.thresholds)) if s > t}
    assert flagged and {d["tx_hash"] for d in first.anomalies} == flagged
    assert all(first.hashes.index(d["tx_hash"]) >= 250 for d in first.anomalies)
    assert model.threshold < 1.0
    threshold = model.threshold
    second = process_batch(model, records[300:], no_profiles, 0)
    assert len(second.anomalies) == sum(s > threshold for s in second.scores)
    assert all(doc["threshold"] == round(threshold, 6) for doc in second.anomalies)


def test_severity_and_alert_key():
    model_reason = [{"rule": "model"}]
    assert severity(model_reason, 0.99, 0.9) == "medium" and severity(model_reason, 0.91, 0.9) == "low"
    assert severity([{"rule": "model"}, {"rule": "watchlist"}], 0.1, 0.9) == "high"
    t = 1_700_000_000
    key = alert_key("sender", "0xab", model_reason, t)
    assert key == alert_key("sender", "0xab", model_reason, t + 60), "an episode is one alert"
    assert key != alert_key("receiver", "0xab", model_reason, t)
    assert key != alert_key("sender", "0xab", [{"rule": "watchlist"}], t)


def test_a_failure_inside_scoring_dead_letters_that_message_only(txs, monkeypatch):
    model = PartitionModel(ModelConfig())
    real = detector.extract_sender
    poisoned = txs[1]["hash"]
    calls = []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 2:
            raise ZeroDivisionError("boom")
        return real(*args)

    monkeypatch.setattr(detector, "extract_sender", flaky)
    result = process_batch(model, [keyed(tx, i) for i, tx in enumerate(txs[:5])], no_profiles, 0)
    assert result.processed == 4
    [dead] = result.dead_letters
    assert dead.reason == "processing_error" and "boom" in dead.detail
    assert orjson.loads(dead.record.value)["hash"] == poisoned


def test_the_fee_market_is_the_models_and_sees_only_scored_transactions(txs):
    model = PartitionModel(ModelConfig())
    good = [keyed(tx, i) for i, tx in enumerate(txs[:30])]
    mis = [Record(100 + i, None, orjson.dumps(tx), 1.0) for i, tx in enumerate(txs[30:40])]
    process_batch(model, good[:15] + mis + [Record(200, b"k", b"{not json", 1.0)], no_profiles, 0)
    process_batch(model, good[15:], no_profiles, 0)  # the market carries over to the next batch
    prices = [int(tx["gasPrice"], 16) / 1e9 for tx in txs[:30]]
    assert model.market.ring == prices  # rekeyed and dead-lettered messages never enter it
    assert model.market.median() == sorted(prices)[15]


def test_a_legacy_overbid_is_priced_against_the_market(txs):
    # A warm model on ordinary traffic, then a legacy (type 0) transaction without a
    # priority fee paying ten times the going price: the premium feature sees it.
    model = PartitionModel(ModelConfig(warmup_events=250, window_size=250))
    stream = TrafficGenerator(GeneratorConfig(seed=8, scenario_rates={})).take(1_500)
    process_batch(model, [keyed(tx, i) for i, tx in enumerate(stream)], no_profiles, 0, require_key=False)
    going = model.market.median()
    tx = dict(stream[-1], type="0x0", gasPrice=hex(int(going * 10 * 1e9)), hash="0x" + "ab" * 32)
    for field in ("maxFeePerGas", "maxPriorityFeePerGas"):
        tx.pop(field, None)
    result = process_batch(model, [keyed(tx, 5_000)], no_profiles, 0)
    assert result.processed == 1
    ordinary = [s for s in process_batch(model, [keyed(t, 6_000 + i) for i, t in enumerate(stream[:200])],
                                         no_profiles, 0, require_key=False).scores]
    assert result.scores[0] > sorted(ordinary)[int(0.95 * len(ordinary))]


# -- rules, the receiving side, protection ----------------------------------------

TOKEN = "0xdac17f958d2ee523a2206206994597c13d831ec7"


def word(x) -> str:
    return (x[2:] if isinstance(x, str) else f"{x:x}").rjust(64, "0")


def tx_from(sender: str, to: str | None, value: int = 10**17, data: str = "0x", n: int = 0, t: int = 1_700_000_000,
            nonce: int = 1):
    return {"hash": "0x" + f"{n:064x}", "from": sender, "to": to, "value": hex(value), "gas": "0x5208",
            "gasPrice": hex(20 * 10**9), "nonce": hex(nonce), "input": data, "blockTimestamp": hex(t)}


def test_a_watch_listed_counterparty_is_an_anomaly_whatever_the_score_and_is_not_learned(txs):
    model = PartitionModel(ModelConfig())
    bad = "0x" + "66" * 20
    data = "0xa9059cbb" + word(bad) + word(10**6)
    tx = tx_from(txs[0]["from"], TOKEN, 0, data)
    result = process_batch(model, [keyed(tx, 1)], no_profiles, 0,
                           listed=lambda a: {"ofac": "SDN"} if a == bad else None)
    [doc] = result.anomalies
    assert doc["reasons"] == [{"rule": "watchlist", "list": "ofac", "label": "SDN", "role": "counterparty",
                               "address": bad}]
    assert doc["severity"] == "high" and doc["counterparty"] == bad and doc["token"] == TOKEN
    assert model.learned == 0, "a flagged transaction is not learned"


def test_paying_a_lookalike_of_a_real_counterparty_is_flagged_on_the_senders_side():
    model = PartitionModel(ModelConfig())
    me, real = "0x" + "11" * 20, "0x12" + "0" * 34 + "abcd"
    fake = "0x12" + "f" * 34 + "abcd"
    profiles = {}
    first = process_batch(model, [keyed(tx_from(me, real, n=1), 1)], profiles.get, 0)
    profiles.update(first.profiles)
    assert not first.anomalies
    second = process_batch(model, [keyed(tx_from(me, fake, n=2), 2)], profiles.get, 0)
    [doc] = second.anomalies
    assert doc["reasons"][0]["rule"] == "lookalike" and doc["reasons"][0]["address"] == fake


def test_poisoning_from_a_lookalike_is_flagged_on_the_receivers_side():
    sender_model = PartitionModel(ModelConfig())
    receiver_model = PartitionModel(ModelConfig(), features=PERSPECTIVE_FEATURES[RECEIVER])
    victim, real = "0x" + "11" * 20, "0x12" + "0" * 34 + "abcd"
    poisoner = "0x12" + "f" * 34 + "abcd"
    profiles = {}
    paid = process_batch(sender_model, [keyed(tx_from(victim, real, n=1), 1)], profiles.get, 0)
    profiles.update(paid.profiles)
    # The poisoner's zero-value transferFrom(victim, lookalike, 0): the edge to the owner.
    data = "0x23b872dd" + word(victim) + word(poisoner) + word(0)
    poison = process_batch(sender_model, [keyed(tx_from("0x" + "99" * 20, TOKEN, 0, data, n=2), 2)],
                           profiles.get, 0)
    profiles.update(poison.profiles)
    to_owner = [e for e in poison.edges if e.receiver == victim]
    records = [Record(i, e.receiver.encode(), e.to_bytes(), 1.0) for i, e in enumerate(to_owner)]
    result = process_edges(receiver_model, records, profiles.get, 0)
    [doc] = result.anomalies
    assert doc["perspective"] == "receiver" and doc["address"] == victim
    assert doc["reasons"][0]["rule"] == "lookalike" and doc["reasons"][0]["address"] == poisoner


def test_funds_from_a_listed_address_mark_the_receiver_and_its_contract_creation():
    sender_model = PartitionModel(ModelConfig())
    receiver_model = PartitionModel(ModelConfig(), features=PERSPECTIVE_FEATURES[RECEIVER])
    mixer, fresh = "0x" + "77" * 20, "0x" + "88" * 20
    listed = {mixer: {"ofac": "Tornado Cash"}}.get
    profiles = {}
    funding = process_batch(sender_model, [keyed(tx_from(mixer, fresh, 10**18, n=1), 1)], profiles.get, 0,
                            listed=listed)
    profiles.update(funding.profiles)
    edges = [Record(0, e.receiver.encode(), e.to_bytes(), 1.0) for e in funding.edges]
    received = process_edges(receiver_model, edges, profiles.get, 0, listed=listed)
    profiles.update(received.profiles)
    assert profiles[fresh].funded_by == "ofac"
    creation = process_batch(sender_model, [keyed(tx_from(fresh, None, 0, "0x6080", n=2), 2)], profiles.get, 0)
    [doc] = creation.anomalies
    assert doc["reasons"][0] == {"rule": "funded_by_watchlist", "list": "ofac", "role": "sender", "address": fresh}


def test_a_mixer_withdrawal_funds_its_recipient_and_its_exploit_calls_are_flagged_for_an_hour():
    sender_model = PartitionModel(ModelConfig())
    receiver_model = PartitionModel(ModelConfig(), features=PERSPECTIVE_FEATURES[RECEIVER])
    pool, relayer, attacker = "0x" + "77" * 20, "0x" + "66" * 20, "0x" + "88" * 20
    contract = "0x" + "99" * 20
    listed = {pool: {"ofac": "Tornado Cash"}}.get
    # withdraw(proof, root, nullifierHash, recipient, relayer, fee, refund), relayed: 0 ETH at top level.
    data = ("0x21a0adb6" + word(224) + "ab" * 32 + "cd" * 32 + word(attacker) + word(relayer) + word(10**16)
            + word(0) + word(32) + "ef" * 32)
    t0 = 1_700_000_000
    withdrawal = process_batch(sender_model, [keyed(tx_from(relayer, pool, 0, data, n=1, t=t0), 1)],
                               no_profiles, 0, listed=listed)
    [to_recipient] = withdrawal.edges
    assert (to_recipient.receiver, to_recipient.other, to_recipient.kind) == (attacker, pool, "withdrawal")
    profiles = dict(withdrawal.profiles)
    received = process_edges(receiver_model, [Record(0, attacker.encode(), to_recipient.to_bytes(), 1.0)],
                             profiles.get, 0, listed=listed)
    profiles.update(received.profiles)
    assert profiles[attacker].funded_by == "ofac"

    def rules(tx, n):
        result = process_batch(sender_model, [keyed(tx, n)], profiles.get, 0)
        profiles.update(result.profiles)
        return [r["rule"] for doc in result.anomalies for r in doc["reasons"]]

    assert rules(tx_from(attacker, None, 0, "0x6080", n=2, t=t0 + 1800, nonce=0), 2) == [FUNDED]
    attack = "0xdeadbeef" + word(1)
    assert FUNDED in rules(tx_from(attacker, contract, 0, attack, n=3, t=t0 + 2400), 3)
    assert FUNDED not in rules(tx_from(attacker, contract, 0, attack, n=4, t=t0 + 1800 + 2 * 3600, nonce=2), 4)


def test_a_new_address_deploying_as_its_first_transaction_after_being_funded_is_flagged_with_its_calls():
    sender_model = PartitionModel(ModelConfig())
    receiver_model = PartitionModel(ModelConfig(), features=PERSPECTIVE_FEATURES[RECEIVER])
    exchange, attacker, veteran, slow, contract = ("0x" + c * 20 for c in ("76", "88", "89", "8a", "99"))
    t0 = 1_700_000_000
    profiles = {}

    def rules(tx, n):
        result = process_batch(sender_model, [keyed(tx, n)], profiles.get, 0)
        profiles.update(result.profiles)
        edges = [Record(n, e.receiver.encode(), e.to_bytes(), 1.0) for e in result.edges]
        profiles.update(process_edges(receiver_model, edges, profiles.get, 0).profiles)
        return [r["rule"] for doc in result.anomalies for r in doc["reasons"]]

    assert rules(tx_from(exchange, attacker, 20 * 10**18, n=1, t=t0, nonce=5000), 1) == []
    assert rules(tx_from(attacker, None, 0, "0x6080", n=2, t=t0 + 5 * 3600, nonce=0), 2) == [FRESH_DEPLOYER]
    assert rules(tx_from(attacker, contract, 0, "0xdeadbeef" + word(1), n=3, t=t0 + 6 * 3600), 3) == [
        FRESH_DEPLOYER]
    # A deployer with a history, and one whose funds came more than a day before, are no such thing.
    assert rules(tx_from(exchange, veteran, 10**18, n=4, t=t0, nonce=5001), 4) == []
    assert rules(tx_from(veteran, None, 0, "0x6080", n=5, t=t0 + 60, nonce=7), 5) == []
    assert rules(tx_from(exchange, slow, 10**18, n=6, t=t0, nonce=5002), 6) == []
    assert rules(tx_from(slow, None, 0, "0x6080", n=7, t=t0 + 25 * 3600, nonce=0), 7) == []


def test_a_malformed_edge_is_dead_lettered():
    model = PartitionModel(ModelConfig(), features=PERSPECTIVE_FEATURES[RECEIVER])
    result = process_edges(model, [Record(3, b"k", b"[1,2,3]", 1.0)], no_profiles, 0)
    assert result.processed == 0 and [d.reason for d in result.dead_letters] == ["malformed_edge"]


def test_a_decoder_crash_is_a_dead_letter_not_a_worker_crash(monkeypatch):
    def crash(raw):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(detector, "decode", crash)
    result = process_batch(PartitionModel(ModelConfig()), [Record(1, b"k", b"{}", 1.0)], no_profiles, 0)
    assert [d.reason for d in result.dead_letters] == ["processing_error"]


def test_a_spender_that_pulls_its_approvers_tokens_is_flagged_and_so_are_later_approvals_to_it():
    sender_model = PartitionModel(ModelConfig())
    receiver_model = PartitionModel(ModelConfig(), features=PERSPECTIVE_FEATURES[RECEIVER])
    victim, other, spender, collector = ("0x" + c * 20 for c in ("31", "32", "5a", "6b"))
    profiles = {}

    def edges_to_spender(result):
        recs = [Record(i, e.receiver.encode(), e.to_bytes(), 1.0) for i, e in enumerate(result.edges)
                if e.receiver == spender]
        out = process_edges(receiver_model, recs, profiles.get, 0)
        profiles.update(out.profiles)
        return out

    approve = "0x095ea7b3" + word(spender) + word(2**256 - 1)
    granted = process_batch(sender_model, [keyed(tx_from(victim, TOKEN, 0, approve, n=1), 1)], profiles.get, 0)
    profiles.update(granted.profiles)
    assert not edges_to_spender(granted).anomalies, "one approval is ordinary"
    pull = "0x23b872dd" + word(victim) + word(collector) + word(10**6)
    drained = process_batch(sender_model, [keyed(tx_from(spender, TOKEN, 0, pull, n=2, t=1_700_000_060), 2)],
                            profiles.get, 0)
    profiles.update(drained.profiles)
    doc, late = drained.anomalies
    assert any(r["rule"] == "spender_pulls" and r["owner"] == victim for r in doc["reasons"])
    assert doc["severity"] == "high"
    # The approval before the pull, raised now: its owner can still revoke.
    assert late["tx_hash"] == "0x" + f"{1:064x}" and late["perspective"] == "receiver"
    assert late["address"] == spender and late["counterparty"] == victim and late["token"] == TOKEN
    assert late["reasons"] == [{"rule": "spender_pulls", "role": "approval", "address": spender, "owner": victim,
                                "late": True, "pulled_in": "0x" + f"{2:064x}"}]
    assert late["event_time"] == 1_700_000_000 and late["source"]["offset"] == 2
    assert profiles[spender].grants == (), "handed over once"
    again = process_batch(sender_model, [keyed(tx_from(spender, TOKEN, 0, pull, n=4, t=1_700_000_090), 4)],
                          profiles.get, 0)
    assert len(again.anomalies) == 1, "a second pull raises no grant twice"
    later = process_batch(sender_model, [keyed(tx_from(other, TOKEN, 0, approve, n=3, t=1_700_000_120), 3)],
                          profiles.get, 0)
    profiles.update(later.profiles)
    [doc] = edges_to_spender(later).anomalies
    assert doc["perspective"] == "receiver" and doc["reasons"][0]["rule"] == "spender_pulls"
    assert profiles[spender].grants == (), "raised already: not kept to be raised late at the next pull"


def test_a_drainer_contract_emptied_through_its_multicall_is_flagged_with_the_grants_it_reveals():
    # Approvals to a contract S; an accomplice calls S.aggregate([(token, transferFrom(victim, collector, x))]).
    sender_model = PartitionModel(ModelConfig())
    receiver_model = PartitionModel(ModelConfig(), features=PERSPECTIVE_FEATURES[RECEIVER])
    victim, other, drainer, accomplice, collector = ("0x" + c * 20 for c in ("31", "32", "5a", "4c", "6b"))
    profiles = {}

    def at_drainer(tx, n):
        sent = process_batch(sender_model, [keyed(tx, n)], profiles.get, 0)
        profiles.update(sent.profiles)
        recs = [Record(n, e.receiver.encode(), e.to_bytes(), 1.0) for e in sent.edges if e.receiver == drainer]
        out = process_edges(receiver_model, recs, profiles.get, 0)
        profiles.update(out.profiles)
        return sent, out

    approve = "0x095ea7b3" + word(drainer) + word(2**256 - 1)
    assert not at_drainer(tx_from(victim, TOKEN, 0, approve, n=1), 1)[1].anomalies
    inner = "23b872dd" + word(victim) + word(collector) + word(10**6)
    aggregate = ("0x252dba42" + word(32) + word(1) + word(32) + word(TOKEN) + word(64) + word(len(inner) // 2)
                 + inner + "00" * 28)
    sent, out = at_drainer(tx_from(accomplice, drainer, 0, aggregate, n=2, t=1_700_000_060), 2)
    assert {e.role for e in sent.edges} == {"to", "owner", "via"}
    doc, late = out.anomalies
    assert doc["tx_hash"] == "0x" + f"{2:064x}" and doc["perspective"] == "receiver"
    assert any(r == {"rule": "spender_pulls", "role": "spender", "address": drainer, "owner": victim}
               for r in doc["reasons"])
    assert late["tx_hash"] == "0x" + f"{1:064x}" and late["address"] == drainer
    assert late["reasons"][0]["pulled_in"] == doc["tx_hash"] and late["reasons"][0]["late"] is True
    # The campaign goes on: the next approval to the drainer is flagged as it happens.
    [doc] = at_drainer(tx_from(other, TOKEN, 0, approve, n=3, t=1_700_000_120), 3)[1].anomalies
    assert doc["reasons"][0]["rule"] == "spender_pulls"


def test_a_multicall_moving_tokens_of_an_owner_that_granted_the_contract_nothing_is_no_spender_rule():
    receiver_model = PartitionModel(ModelConfig(), features=PERSPECTIVE_FEATURES[RECEIVER])
    multicall, owner = "0x" + "5a" * 20, "0x" + "31" * 20
    inner = "23b872dd" + word(owner) + word("0x" + "6b" * 20) + word(10**6)
    aggregate = ("0x252dba42" + word(32) + word(1) + word(32) + word(TOKEN) + word(64) + word(len(inner) // 2)
                 + inner + "00" * 28)
    sent = process_batch(PartitionModel(ModelConfig()), [keyed(tx_from("0x" + "4c" * 20, multicall, 0, aggregate,
                                                                       n=1), 1)], no_profiles, 0)
    [via] = [Record(0, e.receiver.encode(), e.to_bytes(), 1.0) for e in sent.edges if e.role == "via"]
    out = process_edges(receiver_model, [via], no_profiles, 0)
    assert not any(r["rule"] == "spender_pulls" for d in out.anomalies for r in d["reasons"])


def test_pulling_tokens_of_an_owner_that_granted_nothing_is_no_spender_rule():
    model = PartitionModel(ModelConfig())
    pull = "0x23b872dd" + word("0x" + "31" * 20) + word("0x" + "6b" * 20) + word(10**6)
    result = process_batch(model, [keyed(tx_from("0x" + "5a" * 20, TOKEN, 0, pull, n=1), 1)], no_profiles, 0)
    assert not any(r["rule"] == "spender_pulls" for d in result.anomalies for r in d["reasons"])


def test_a_block_from_the_future_is_dead_lettered_and_a_producer_clock_ahead_is_clamped(txs):
    model = PartitionModel(ModelConfig())
    now = 1_700_000_000.0
    future = dict(txs[0], blockTimestamp=hex(4_000_000_000))
    result = process_batch(model, [keyed(future, 1)], no_profiles, 0, clock=lambda: now)
    assert [(d.reason, d.detail) for d in result.dead_letters] == [("out_of_range", "blockTimestamp ahead of the clock")]
    untimed = {k: v for k, v in txs[1].items() if k != "blockTimestamp"}
    result = process_batch(model, [keyed(untimed, 2, ts=now + 10**6)], no_profiles, 0, clock=lambda: now)
    assert result.processed == 1 and result.latest_event_time == now + detector.MAX_CLOCK_SKEW_SECONDS


def warm_model(seed: int, n: int) -> tuple[PartitionModel, dict, int]:
    """A model at the shipped defaults warmed on n ordinary transactions; their profiles; the last time."""
    from anomaly_stream.settings import Settings

    model = PartitionModel(ModelConfig.from_settings(Settings()), 0)
    normal = TrafficGenerator(GeneratorConfig(seed=seed, scenario_rates={})).take(n)
    profiles: dict = {}
    for i in range(0, len(normal), 500):
        result = process_batch(model, [keyed(tx, i + j) for j, tx in enumerate(normal[i:i + 500])],
                               profiles.get, 0, require_key=False)
        profiles.update(result.profiles)
    return model, profiles, int(normal[-1]["blockTimestamp"], 16)


def test_a_flood_of_large_transfers_stays_flagged_and_unlearned():
    """250 fresh 1,000 ETH transfers into one partition after warm-up: each batch is flagged
    whole and nothing of it is learned (without the flag budget the first batch lifted the
    threshold from 0.39 to 0.62 and the rest of the flood passed and was learned)."""
    model, profiles, t = warm_model(seed=11, n=4_000)
    for batch in range(5):
        flood = [tx_from("0x%040x" % (10**30 + batch * 100 + k), "0x%040x" % (10**31 + batch * 100 + k),
                         1000 * 10**18, n=10**6 + batch * 100 + k, t=t + batch) for k in range(50)]
        learned = model.learned
        result = process_batch(model, [keyed(tx, 10**6 + k) for k, tx in enumerate(flood)], profiles.get, 0)
        assert len(result.anomalies) == 50, f"flood batch {batch}: {len(result.anomalies)} of 50 flagged"
        assert model.learned == learned


def test_an_address_marked_benign_is_not_flagged_by_the_model_but_rules_still_fire():
    model, profiles, t = warm_model(seed=12, n=3_000)
    senders = ["0x%040x" % (10**30 + k) for k in range(6)]
    bad = "0x" + "66" * 20
    big = [tx_from(s, "0x%040x" % (10**31 + k), 1000 * 10**18, n=10**6 + k, t=t) for k, s in enumerate(senders)]
    listed = tx_from(senders[1], bad, 10**17, n=10**7, t=t)
    benign = set(senders[:3]).__contains__
    result = process_batch(model, [keyed(tx, 10**6 + k) for k, tx in enumerate(big + [listed])], profiles.get, 0,
                           listed=lambda a: {"ofac": "SDN"} if a == bad else None, benign=benign)
    flagged = {d["tx_hash"]: d for d in result.anomalies}
    assert {tx["hash"] for tx in big[3:]} <= set(flagged), "the others' outliers are flagged"
    assert not {tx["hash"] for tx in big[:3]} & set(flagged), "the benign senders' are not"
    assert result.suppressed == 3
    assert [r["rule"] for r in flagged[listed["hash"]]["reasons"]] == ["watchlist"], "a rule still fires"


def test_a_wallet_emptied_into_a_fresh_address_is_flagged_then_what_that_address_sends():
    """flows.drain_to_fresh: the second large move from the sole sender on the receiver's side, then the thief."""
    receiver_model = PartitionModel(ModelConfig(warmup_events=0, window_size=1),
                                    features=PERSPECTIVE_FEATURES[RECEIVER])
    receiver_model.since = 0.0  # the flow rules judge freshness only against an hour of traffic already seen
    victim, thief, onward = ("0x" + c * 20 for c in ("41", "42", "43"))
    send_and_receive, _ = _chain(receiver_model)

    _, first = send_and_receive(tx_from(victim, thief, 30 * 10**18, n=7), 1)
    assert not any(r["rule"] == "drain_to_fresh" for d in first.anomalies for r in d["reasons"])
    _, second = send_and_receive(tx_from(victim, thief, 8 * 10**18, n=8, t=1_700_000_030), 2)
    doc, late = [d for d in second.anomalies if d["reasons"][0]["rule"] == "drain_to_fresh"]
    assert doc["address"] == thief and doc["severity"] == "high" and doc["reasons"][0]["moves"] == 2
    # The first move, raised late: from the thief's side it was one payment.
    assert late["tx_hash"] == "0x" + f"{7:064x}" and late["value_wei"] == str(30 * 10**18)
    assert late["event_time"] == 1_700_000_000 and late["kind"] == "eth_transfer" and late["sender"] == victim
    assert late["reasons"][0]["late"] and late["reasons"][0]["revealed_by"] == "0x" + f"{8:064x}"
    _, third = send_and_receive(tx_from(victim, thief, 2 * 10**18, n=9, t=1_700_000_060), 4)
    assert len([d for d in third.anomalies if d["reasons"][0]["rule"] == "drain_to_fresh"]) == 1, "raised once"
    onward_sent, _ = send_and_receive(tx_from(thief, onward, 37 * 10**18, n=0, t=1_700_000_300), 3)
    [doc] = onward_sent.anomalies
    assert doc["perspective"] == "sender" and any(r["rule"] == "drain_to_fresh" for r in doc["reasons"])


def _peel(hop_share: float, hops: int = 4, since: float | None = 0.0):
    """A victim's 40 ETH walked through fresh addresses, each passing on `hop_share` of what it got, 5 minutes apart."""
    receiver_model = PartitionModel(ModelConfig(warmup_events=10**6), features=PERSPECTIVE_FEATURES[RECEIVER])
    receiver_model.since = since
    send_and_receive, profiles = _chain(receiver_model)
    addresses = ["0x" + f"{0x60 + i:02x}" * 20 for i in range(hops + 2)]
    amount, t, fired = 40 * 10**18, 1_700_000_000, []
    for i, (a, b) in enumerate(zip(addresses, addresses[1:])):
        sent, received = send_and_receive(tx_from(a, b, amount, n=300 + i, t=t, nonce=9 if i == 0 else 0), i)
        fired.append([r["rule"] for d in sent.anomalies + received.anomalies for r in d["reasons"]
                      if r["rule"] == "peel_chain"])
        amount, t = int(amount * hop_share), t + 300
    return fired, profiles, addresses


def test_funds_relayed_through_a_line_of_fresh_addresses_are_a_peel_chain_from_the_second_relay():
    """flows.peel_chain: the victim's payment is no relay, the first fresh address's is one, the next the second."""
    fired, profiles, addresses = _peel(0.97)
    assert [bool(f) for f in fired] == [False, False, True, True, True]
    assert [profiles[a].hops for a in addresses[1:]] == [0, 1, 2, 3, 4]
    assert fired[3] == ["peel_chain", "peel_chain"], "the marked address's send is followed up, its receiver fires"


@pytest.mark.parametrize("listed_exchange", [False, True])
def test_a_peel_chain_raises_its_first_hops_and_peels_late_once_it_is_revealed(listed_exchange):
    """flows.trail_of: what the relays before the revealing one received and peeled off comes with the chain.

    A peel the sending side raised already (to a listed exchange) is not raised again.
    """
    receiver_model = PartitionModel(ModelConfig(warmup_events=10**6), features=PERSPECTIVE_FEATURES[RECEIVER])
    receiver_model.since = 0.0
    victim, a1, a2, a3, a4, exchange = ("0x" + f"{0x60 + i:02x}" * 20 for i in range(6))
    listed = {exchange: {"ofac": "SDN"}}.get if listed_exchange else detector.nothing_listed
    send_and_receive, profiles = _chain(receiver_model, listed)
    t, eth = 1_700_000_000, 10**18
    steps = [(victim, a1, 40 * eth, 9), (a1, exchange, eth, 0), (a1, a2, 38 * eth, 1), (a2, exchange, eth, 0),
             (a2, a3, 36 * eth, 1), (a3, a4, 35 * eth, 0)]
    results = [send_and_receive(tx_from(a, b, v, n=400 + i, t=t + 60 * i, nonce=nonce), i)
               for i, (a, b, v, nonce) in enumerate(steps)]
    hashes = ["0x" + f"{400 + i:064x}" for i in range(len(steps))]
    late = [d for d in results[4][1].anomalies if d["reasons"][0].get("late")]
    expected = [(hashes[0], "receiver", a1, victim), (hashes[1], "sender", a1, exchange),
                (hashes[2], "receiver", a2, a1), (hashes[3], "sender", a2, exchange)]
    if listed_exchange:
        expected = [m for m in expected if m[1] == "receiver"]
        assert all(any(r["rule"] == "watchlist" for r in results[i][0].anomalies[0]["reasons"]) for i in (1, 3))
    assert [(d["tx_hash"], d["perspective"], d["address"], d["counterparty"]) for d in late] == expected
    assert all(d["reasons"][0]["rule"] == "peel_chain" and d["reasons"][0]["revealed_by"] == hashes[4] for d in late)
    live = {(d["tx_hash"], d["perspective"]) for d in results[4][1].anomalies if not d["reasons"][0].get("late")}
    assert live == {(hashes[4], "receiver")}
    assert profiles[a3].trail == (), "handed over once"
    assert not any(d["reasons"][0].get("late") for d in results[5][1].anomalies), "the chain was reported at a3"


def test_addresses_that_keep_most_of_what_they_got_are_no_relays():
    fired, profiles, addresses = _peel(0.5)
    assert not any(fired) and all(profiles[a].hops == 0 for a in addresses[1:])


def test_the_flow_rules_wait_for_an_hour_of_the_partitions_edges():
    """At a partition's start every address is first seen: a chain in its first hour is not judged."""
    fired, _, _ = _peel(0.97, since=None)
    assert not any(fired)
    fired, _, _ = _peel(0.97, since=1_700_000_000 - 3600 + 600)  # the hour is over at the third hop
    assert [bool(f) for f in fired] == [False, False, True, True, True]


def test_a_service_paying_a_fresh_address_twice_is_no_drain():
    """An exchange withdrawal, a small test first: flows.DRAIN_MAX_SENDER_NONCE."""
    receiver_model = PartitionModel(ModelConfig(warmup_events=10**6), features=PERSPECTIVE_FEATURES[RECEIVER])
    receiver_model.since = 0.0
    exchange, user = "0x" + "44" * 20, "0x" + "45" * 20
    send_and_receive, profiles = _chain(receiver_model)
    send_and_receive(tx_from(exchange, user, 10**18, n=7, nonce=217_333), 1)
    assert profiles[user].src_first == (), "nothing kept to raise late: the rule cannot fire on a service"
    sent, received = send_and_receive(tx_from(exchange, user, 50 * 10**18, n=8, t=1_700_000_030, nonce=217_334), 2)
    assert not any(r["rule"] == "drain_to_fresh" for d in sent.anomalies + received.anomalies for r in d["reasons"])


def _chain(receiver_model=None, listed=detector.nothing_listed):
    """A sender and a receiver model and a send_and_receive that routes each batch's edges, as the worker does."""
    sender_model = PartitionModel(ModelConfig())
    if receiver_model is None:
        receiver_model = PartitionModel(ModelConfig(warmup_events=10**6), features=PERSPECTIVE_FEATURES[RECEIVER])
    profiles = {}

    def send_and_receive(tx, offset):
        sent = process_batch(sender_model, [keyed(tx, offset)], profiles.get, 0, listed=listed)
        profiles.update(sent.profiles)
        recs = [Record(i, e.receiver.encode(), e.to_bytes(), 1.0) for i, e in enumerate(sent.edges)]
        received = process_edges(receiver_model, recs, profiles.get, 0)
        profiles.update(received.profiles)
        return sent, received

    return send_and_receive, profiles


def _fan_in(funders, t0=1_700_000_000):
    """Fresh sources, source i first paid by funders[i], each sweeping 0.05 ETH into one fresh collector."""
    send_and_receive, profiles = _chain()
    collector = "0x" + "c0" * 20
    fired = []
    for i, funder in enumerate(funders):
        source = "0x" + f"{0x50 + i:02x}" * 20
        send_and_receive(tx_from(funder, source, 6 * 10**16, n=100 + i, t=t0 + 20 * i), 2 * i)
        _, received = send_and_receive(tx_from(source, collector, 5 * 10**16, n=200 + i, t=t0 + 20 * i + 60, nonce=0),
                                       2 * i + 1)
        fired.append(any(r["rule"] == "fan_in_same_funder" for d in received.anomalies for r in d["reasons"]))
    return fired, profiles, send_and_receive, collector


def test_fresh_sources_funded_by_one_address_sweeping_into_a_fresh_collector_are_flagged_from_the_third():
    """flows.fan_in_same_funder, while the receiver model is still warming up; then what the collector sends."""
    hub = "0x" + "4f" * 20
    fired, profiles, send_and_receive, collector = _fan_in([hub] * 5)
    assert fired == [False, False, True, True, True]
    assert profiles[collector].fan_first == (), "the first two sweeps were raised with the third"
    assert profiles["0x" + "50" * 20].funder == profiles["0x" + "51" * 20].funder != ""
    sent, _ = send_and_receive(tx_from(collector, "0x" + "99" * 20, 2 * 10**17, n=0, t=1_700_000_500), 99)
    [doc] = sent.anomalies
    assert [r["rule"] for r in doc["reasons"]] == ["fan_in_same_funder"] and doc["severity"] == "high"


def test_a_fan_ins_first_sweeps_are_raised_late_with_the_one_it_fires_on():
    send_and_receive, _ = _chain()
    hub, collector, raised = "0x" + "4f" * 20, "0x" + "c0" * 20, []
    for i in range(3):
        source = "0x" + f"{0x50 + i:02x}" * 20
        send_and_receive(tx_from(hub, source, 6 * 10**16, n=100 + i, t=1_700_000_000 + 20 * i), 2 * i)
        _, received = send_and_receive(tx_from(source, collector, 5 * 10**16, n=200 + i,
                                               t=1_700_000_060 + 20 * i, nonce=0), 2 * i + 1)
        raised.append(sorted((d["tx_hash"][-3:], bool(d["reasons"][0].get("late"))) for d in received.anomalies))
    assert raised == [[], [], [("0c8", True), ("0c9", True), ("0ca", False)]]


def test_fresh_sources_paid_by_different_addresses_are_no_fan_in():
    """Real deposit addresses swept into one collector were paid by their many users."""
    fired, _, _, _ = _fan_in(["0x" + f"{0xa0 + i:02x}" * 20 for i in range(5)])
    assert not any(fired)
    # One source paid by another address than the rest ends it for the collector.
    hub, other = "0x" + "4f" * 20, "0x" + "4e" * 20
    fired, _, _, _ = _fan_in([hub, hub, other, hub, hub])
    assert not any(fired)


def test_sources_with_history_are_no_fan_in():
    """Sources that have sent before (nonce > 1) are no throwaway addresses, whatever paid them."""
    send_and_receive, _ = _chain()
    hub, collector = "0x" + "4f" * 20, "0x" + "c0" * 20
    fired = False
    for i in range(5):
        source = "0x" + f"{0x50 + i:02x}" * 20
        send_and_receive(tx_from(hub, source, 6 * 10**16, n=100 + i, t=1_700_000_000 + 20 * i), 2 * i)
        _, received = send_and_receive(tx_from(source, collector, 5 * 10**16, n=200 + i, t=1_700_000_060 + 20 * i,
                                                       nonce=40),
                                       2 * i + 1)
        fired |= any(r["rule"] == "fan_in_same_funder" for d in received.anomalies for r in d["reasons"])
    assert not fired


def test_one_token_transfer_that_empties_its_sender_into_a_fresh_address_is_a_drain():
    """The ingester's `ownerTokenBalance` of 0: the whole balance moved, to an address seen now for the first time."""
    receiver_model = PartitionModel(ModelConfig(warmup_events=10**6), features=PERSPECTIVE_FEATURES[RECEIVER])
    receiver_model.since = 0.0
    victim, thief, friend = "0x" + "46" * 20, "0x" + "47" * 20, "0x" + "48" * 20
    send_and_receive, profiles = _chain(receiver_model)

    def drained(recipient, n, **fields):
        tx = {**tx_from(victim, TOKEN, 0, "0xa9059cbb" + word(recipient) + word(10**9), n=n, t=1_700_000_000 + n,
                        nonce=40), **fields}
        sent, received = send_and_receive(tx, n)
        return [r for d in received.anomalies for r in d["reasons"] if r["rule"] == "drain_to_fresh"]

    assert drained(friend, 1, ownerTokenBalance="0x5") == [], "some of the token left: a payment"
    assert drained("0x" + "49" * 20, 2) == [], "no balance read (a file without it): a payment"
    [reason] = drained(thief, 3, ownerTokenBalance="0x0")
    assert reason["emptied"] == TOKEN and reason["moves"] == 1 and reason["address"] == thief
    assert profiles[thief].flow_at > 0, "its sends are followed up"
    known = "0x" + "4a" * 20
    send_and_receive(tx_from(friend, known, 10**17, n=4, t=1_700_000_004), 4)
    assert drained(known, 5, ownerTokenBalance="0x0") == [], "paid by another address before: no sole source"
