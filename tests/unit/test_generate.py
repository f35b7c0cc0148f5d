"""Tests for the synthetic transaction generator (anomaly_stream.tools.generate)."""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict

import pytest

from anomaly_stream.tools.generate import (
    DEFAULT_SCENARIO_RATES,
    SCENARIOS,
    GeneratorConfig,
    TrafficGenerator,
)

HASH_RE = re.compile(r"^0x[0-9a-f]{64}$")
ADDRESS_RE = re.compile(r"^0x[0-9a-f]{40}$")
QUANTITY_RE = re.compile(r"^0x(0|[1-9a-f][0-9a-f]*)$")
DATA_RE = re.compile(r"^0x([0-9a-f]{2})*$")
GWEI = 10**9
ETH = 10**18

COMMON_KEYS = {
    "hash", "from", "to", "nonce", "gas", "value", "blockNumber",
    "transactionIndex", "type", "chainId", "gasPrice", "input",
    "blockTimestamp", "gasUsed", "status", "contractAddress", "label",
}
EIP1559_KEYS = COMMON_KEYS | {"maxFeePerGas", "maxPriorityFeePerGas"}
QUANTITY_KEYS = (
    "nonce", "gas", "value", "blockNumber", "transactionIndex", "chainId",
    "gasPrice", "blockTimestamp", "gasUsed",
)

# Every scenario frequent enough to show up many times in a short stream.
BOOSTED_RATES = {
    "wallet_drain": 0.001,
    "dusting": 0.0005,
    "address_poisoning": 0.01,
    "gas_price_spike": 0.01,
    "dormant_large_transfer": 0.01,
    "contract_creation_burst": 0.001,
}


def q(value: str) -> int:
    return int(value, 16)


@pytest.fixture(scope="module")
def boosted() -> list[dict]:
    return TrafficGenerator(GeneratorConfig(scenario_rates=BOOSTED_RATES)).take(40_000)


@pytest.fixture(scope="module")
def default_stream() -> list[dict]:
    return TrafficGenerator().take(200_000)


def by_label(txs: list[dict], label: str) -> list[dict]:
    return [tx for tx in txs if tx["label"] == label]


def episodes(txs: list[dict], label: str, key: str) -> list[list[int]]:
    """Positions of each episode's txs, grouped by the address ``key`` names.

    Episodes still running when the sample ends are dropped: a burst lasts at
    most a minute of event time, well under 1500 transactions.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, tx in enumerate(txs):
        if tx["label"] == label:
            groups[tx[key]].append(i)
    return [p for p in groups.values() if p[-1] < len(txs) - 1500]


# -- schema -------------------------------------------------------------------


def test_every_field_has_json_rpc_format(boosted):
    emptied = 0
    for tx in map(dict, boosted):
        # A successful token transfer carries the ingester's ownerTokenBalance (0 when it moved everything).
        balance = tx.pop("ownerTokenBalance", None)
        if balance is not None:
            assert tx["input"].startswith("0xa9059cbb") and tx["status"] == "0x1" and QUANTITY_RE.match(balance)
            emptied += balance == "0x0"
        if tx["type"] == "0x2":
            assert set(tx) == EIP1559_KEYS
            assert QUANTITY_RE.match(tx["maxFeePerGas"])
            assert QUANTITY_RE.match(tx["maxPriorityFeePerGas"])
        else:
            assert tx["type"] == "0x0"
            assert set(tx) == COMMON_KEYS
        for key in QUANTITY_KEYS:
            assert QUANTITY_RE.match(tx[key]), (key, tx[key])
        assert HASH_RE.match(tx["hash"])
        assert ADDRESS_RE.match(tx["from"])
        assert DATA_RE.match(tx["input"])
        assert tx["chainId"] == "0x1"
        assert tx["status"] in ("0x0", "0x1")
        assert tx["label"] is None or tx["label"] in SCENARIOS
        if tx["to"] is None:
            assert ADDRESS_RE.match(tx["contractAddress"])
            assert len(tx["input"]) > 2
        else:
            assert ADDRESS_RE.match(tx["to"])
            assert tx["contractAddress"] is None
    assert emptied > 0


def test_gas_accounting_is_consistent(boosted):
    for tx in boosted:
        assert q(tx["gasUsed"]) <= q(tx["gas"])
        if tx["input"] == "0x" and tx["to"] is not None:
            assert q(tx["gas"]) == q(tx["gasUsed"]) == 21_000
        else:
            assert q(tx["gasUsed"]) > 21_000
        if tx["type"] == "0x2":
            assert q(tx["maxPriorityFeePerGas"]) <= q(tx["gasPrice"]) <= q(tx["maxFeePerGas"])


def test_contract_calls_start_with_a_selector(boosted):
    calls = [tx for tx in boosted if tx["to"] is not None and tx["input"] != "0x"]
    assert calls
    assert all(len(tx["input"]) >= 10 for tx in calls)
    selectors = Counter(tx["input"][:10] for tx in calls)
    for selector in ("0xa9059cbb", "0x095ea7b3", "0x38ed1739"):
        assert selectors[selector] > 0


def test_hashes_are_unique(boosted):
    assert len({tx["hash"] for tx in boosted}) == len(boosted)


def test_nonces_increase_by_one_per_sender(boosted):
    last: dict[str, int] = {}
    for tx in boosted:
        nonce = q(tx["nonce"])
        if tx["from"] in last:
            assert nonce == last[tx["from"]] + 1
        last[tx["from"]] = nonce


def test_blocks_and_timestamps_advance_monotonically(boosted):
    config = GeneratorConfig()
    previous = None
    for tx in boosted:
        number, index = q(tx["blockNumber"]), q(tx["transactionIndex"])
        stamp = q(tx["blockTimestamp"])
        assert stamp == config.start_time + 12 * (number - config.start_block)
        if previous is not None:
            assert number >= previous[0]
            if number == previous[0]:
                assert index == previous[1] + 1
            else:
                assert index == 0
        previous = (number, index)


def test_blocks_hold_about_150_transactions(default_stream):
    per_block = Counter(tx["blockNumber"] for tx in default_stream)
    assert 140 <= statistics.mean(per_block.values()) <= 160


# -- realism of ordinary traffic ---------------------------------------------


def test_sender_activity_is_heavy_tailed(default_stream):
    senders = Counter(tx["from"] for tx in default_stream if tx["label"] is None)
    counts = sorted(senders.values(), reverse=True)
    total = sum(counts)
    assert counts[0] / total > 0.01  # a few very active senders
    assert sum(counts[:100]) / total > 0.3
    assert statistics.median(counts) <= 3  # long tail of rare senders
    assert sum(1 for c in counts if c == 1) / len(counts) > 0.2


def test_values_are_heavy_tailed_and_calls_mostly_zero(default_stream):
    normal = [tx for tx in default_stream if tx["label"] is None]
    transfers = [q(tx["value"]) / ETH for tx in normal if tx["input"] == "0x"]
    assert 0.03 < statistics.median(transfers) < 0.3
    inside = sum(1 for v in transfers if 0.001 <= v <= 10) / len(transfers)
    assert 0.9 < inside < 0.995
    calls = [tx for tx in normal if tx["input"] != "0x" and tx["to"] is not None]
    assert sum(1 for tx in calls if tx["value"] == "0x0") / len(calls) > 0.7


def test_gas_price_drifts_within_regime(default_stream):
    normal = [tx for tx in default_stream if tx["label"] is None]
    prices = [q(tx["gasPrice"]) / GWEI for tx in normal]
    assert min(prices) >= 5.0
    assert max(prices) <= 63.0
    block_floor: dict[str, float] = {}
    for tx, price in zip(normal, prices):
        block_floor[tx["blockNumber"]] = min(price, block_floor.get(tx["blockNumber"], price))
    floors = list(block_floor.values())
    assert max(floors) / min(floors) > 1.1  # it moves ...
    steps = [abs(b / a - 1) for a, b in zip(floors, floors[1:])]
    assert statistics.median(steps) < 0.05  # ... but slowly


# -- determinism and API ------------------------------------------------------


def test_same_seed_gives_same_stream():
    config = GeneratorConfig(seed=7, scenario_rates=BOOSTED_RATES)
    assert TrafficGenerator(config).take(3_000) == TrafficGenerator(config).take(3_000)


def test_different_seeds_differ():
    a = TrafficGenerator(GeneratorConfig(seed=1)).take(100)
    b = TrafficGenerator(GeneratorConfig(seed=2)).take(100)
    assert [tx["hash"] for tx in a] != [tx["hash"] for tx in b]


def test_take_and_iteration_continue_one_stream():
    reference = TrafficGenerator().take(20)
    generator = TrafficGenerator()
    first = generator.take(10)
    rest = [next(iter(generator)) for _ in range(10)]
    assert first + rest == reference


def test_config_overrides_are_applied():
    config = GeneratorConfig(start_time=1_600_000_000, start_block=100, chain_id=5, n_addresses=50)
    txs = TrafficGenerator(config).take(2_000)
    assert q(txs[0]["blockNumber"]) == 100
    assert q(txs[0]["blockTimestamp"]) == 1_600_000_000
    assert all(tx["chainId"] == "0x5" for tx in txs)
    senders = {tx["from"] for tx in txs if tx["label"] is None}
    assert len(senders) <= 50


@pytest.mark.parametrize(
    "rates",
    [
        {"nonsense": 0.1},
        {"dusting": -0.1},
        {"dusting": 0.6, "wallet_drain": 0.6},
    ],
)
def test_invalid_rates_are_rejected(rates):
    with pytest.raises(ValueError):
        GeneratorConfig(scenario_rates=rates)


# -- scenarios ----------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_appears_alone_when_enabled(scenario):
    txs = TrafficGenerator(GeneratorConfig(scenario_rates={scenario: 0.01})).take(5_000)
    labels = Counter(tx["label"] for tx in txs)
    assert labels[scenario] > 0
    assert set(labels) == {None, scenario}


def test_zero_rates_give_no_labels():
    txs = TrafficGenerator(GeneratorConfig(scenario_rates={})).take(20_000)
    assert all(tx["label"] is None for tx in txs)


def test_default_labelled_fraction_is_about_one_percent(default_stream):
    expected = GeneratorConfig().expected_labelled_fraction()
    assert 0.009 < expected < 0.011
    labelled = sum(1 for tx in default_stream if tx["label"] is not None)
    assert labelled / len(default_stream) == pytest.approx(expected, rel=0.2)
    assert {tx["label"] for tx in default_stream} == {None, *SCENARIOS}


def test_labelled_fraction_follows_configured_rates():
    config = GeneratorConfig(
        scenario_rates={
            "gas_price_spike": 0.03,
            "address_poisoning": 0.02,
            "contract_creation_burst": 0.003,
        }
    )
    txs = TrafficGenerator(config).take(50_000)
    labelled = sum(1 for tx in txs if tx["label"] is not None)
    assert labelled / len(txs) == pytest.approx(config.expected_labelled_fraction(), rel=0.1)


def test_default_rates_cover_every_scenario():
    assert set(DEFAULT_SCENARIO_RATES) == set(SCENARIOS)


def first_seen_positions(txs: list[dict]) -> dict[str, int]:
    """Index of each address's first appearance, as sender or recipient."""
    seen: dict[str, int] = {}
    for i, tx in enumerate(txs):
        seen.setdefault(tx["from"], i)
        if tx["to"] is not None:
            seen.setdefault(tx["to"], i)
    return seen


def test_wallet_drain_empties_known_wallet_to_fresh_address(boosted):
    first_seen = first_seen_positions(boosted)
    drains = episodes(boosted, "wallet_drain", key="to")
    assert len(drains) >= 5
    for positions in drains:
        txs = [boosted[i] for i in positions]
        drainer = txs[0]["to"]
        assert 5 <= len(txs) <= 20
        assert len({tx["from"] for tx in txs}) == 1
        victim = txs[0]["from"]
        assert any(tx["from"] == victim and tx["label"] is None for tx in boosted[: positions[0]])
        assert first_seen[drainer] == positions[0]
        assert sum(q(tx["value"]) for tx in txs) > 1 * ETH
        for tx in txs:
            tip = q(tx["maxPriorityFeePerGas"] if tx["type"] == "0x2" else tx["gasPrice"])
            assert tip >= 5 * GWEI
        span = q(txs[-1]["blockTimestamp"]) - q(txs[0]["blockTimestamp"])
        assert span <= 5 * 12


def test_dusting_hits_many_distinct_fresh_recipients(boosted):
    first_seen = first_seen_positions(boosted)
    dustings = episodes(boosted, "dusting", key="from")
    assert len(dustings) >= 5
    for positions in dustings:
        txs = [boosted[i] for i in positions]
        recipients = {tx["to"] for tx in txs}
        assert 10 <= len(recipients) == len(txs) <= 50
        assert all(first_seen[tx["to"]] == i for i, tx in zip(positions, txs))
        assert all(10**9 <= q(tx["value"]) <= 10**12 for tx in txs)


def test_poisoning_mimics_a_previous_counterparty(boosted):
    counterparties: dict[str, set[str]] = defaultdict(set)
    poisonings = 0
    for tx in boosted:
        if tx["label"] == "address_poisoning":
            poisonings += 1
            look_alike, victim = tx["from"], tx["to"]
            assert q(tx["value"]) <= 10**12
            assert tx["nonce"] == "0x0"
            matches = [
                c for c in counterparties[victim]
                if c[2:6] == look_alike[2:6] and c[-4:] == look_alike[-4:]
            ]
            assert matches and look_alike not in matches
        elif tx["to"] is not None:
            counterparties[tx["from"]].add(tx["to"])
    assert poisonings > 100


def test_gas_price_spike_pays_a_multiple_of_the_going_price(boosted):
    normal_prices: dict[str, list[int]] = defaultdict(list)
    for tx in boosted:
        if tx["label"] is None:
            normal_prices[tx["blockNumber"]].append(q(tx["gasPrice"]))
    spikes = by_label(boosted, "gas_price_spike")
    assert len(spikes) > 100
    for tx in spikes:
        ratio = q(tx["gasPrice"]) / statistics.median(normal_prices[tx["blockNumber"]])
        # 20-100x of base + tip, against a block median with a small tip.
        assert 15 <= ratio <= 160


def test_dormant_large_transfer_comes_from_unseen_sender(boosted):
    first_seen = first_seen_positions(boosted)
    transfers = [(i, tx) for i, tx in enumerate(boosted) if tx["label"] == "dormant_large_transfer"]
    assert len(transfers) > 100
    nonces = Counter(tx["nonce"] == "0x0" for _, tx in transfers)
    assert nonces[True] > 0 and nonces[False] > 0
    for i, tx in transfers:
        assert first_seen[tx["from"]] == i
        assert 100 * ETH <= q(tx["value"]) <= 10_000 * ETH


def test_contract_creation_burst_deploys_from_one_sender(boosted):
    bursts = episodes(boosted, "contract_creation_burst", key="from")
    assert len(bursts) >= 5
    for positions in bursts:
        txs = [boosted[i] for i in positions]
        assert 5 <= len(txs) <= 15
        assert [q(tx["nonce"]) for tx in txs] == list(range(len(txs)))
        for tx in txs:
            assert tx["to"] is None
            assert ADDRESS_RE.match(tx["contractAddress"])
            assert len(tx["input"]) >= 2 + 2 * 2_000
        assert len({tx["contractAddress"] for tx in txs}) == len(txs)
