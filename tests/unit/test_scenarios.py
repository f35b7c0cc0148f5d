"""Tests for the planted attack scenarios (anomaly_stream.tools.scenarios).

Backgrounds: the real 2017 ethereum-etl CSV (legacy fees, timestamps) and
2024 RPC blocks (EIP-1559 fees, no timestamps) from ../shared/data/traffic,
read through tools.readers, and the generator's ordinary traffic.
"""

from __future__ import annotations

import copy
import csv
import gzip
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from eth_abi import decode as abi_decode

from anomaly_stream.detect.schema import decode
from anomaly_stream.tools import scenarios
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator
from anomaly_stream.tools.readers import read_transactions
from anomaly_stream.tools.scenarios import (
    ABI,
    KINDS,
    PERMIT2,
    TORNADO_POOLS,
    Background,
    create_address,
    episodes,
    plant,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EPISODES = 8
SEED = 11


def _int(v) -> int:
    return int(v, 16) if isinstance(v, str) and v.startswith("0x") else int(v)


def _args(tx: dict, name: str) -> tuple:
    _, selector, types = ABI[name]
    assert tx["input"][:10] == selector, (name, tx["input"][:10])
    return tuple(_lower(abi_decode(list(types), bytes.fromhex(tx["input"][10:]))))


def _lower(value):
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, (tuple, list)):
        return type(value)(_lower(v) for v in value)
    return value


def _affixes(a: str, b: str) -> tuple[int, int]:
    a, b = a[2:].lower(), b[2:].lower()
    p = next((i for i in range(40) if a[i] != b[i]), 40)
    s = next((i for i in range(40) if a[39 - i] != b[39 - i]), 40)
    return p, s


class Planted:
    """A planted stream and what the tests look up in it."""

    def __init__(self, background: list[dict], out: list[dict], per_kind: int = 0):
        self.background, self.out, self.per_kind = background, out, per_kind
        self.planted = [tx for tx in out if tx.get("episode") is not None]
        self.episodes = episodes(out)
        self.position = {tx["hash"]: i for i, tx in enumerate(out)}
        self.bg_addresses = set()
        self.first_send: dict[str, int] = {}
        self.sent: dict[str, list[tuple[int, set[str]]]] = defaultdict(list)  # sender -> (position, counterparties)
        for tx in background:
            self.bg_addresses.add(tx["from"].lower())
            if tx.get("to"):
                self.bg_addresses.add(tx["to"].lower())
        for i, tx in enumerate(out):
            if tx.get("episode") is None:
                sender = tx["from"].lower()
                self.first_send.setdefault(sender, i)
                if tx.get("to"):
                    counterparties = {tx["to"].lower()}
                    if tx.get("input", "").startswith("0xa9059cbb") and len(tx["input"]) >= 138:
                        counterparties.add(_args(tx, "transfer")[0])
                    self.sent[sender].append((i, counterparties))
        self.tokens = {tx["to"].lower() for tx in background
                       if tx.get("to") and (tx.get("input") or "").startswith("0xa9059cbb")}

    def of(self, kind: str) -> list[list[dict]]:
        found = [txs for ep, txs in self.episodes.items() if ep.startswith(kind + "-")]
        assert found, f"no {kind} episode"
        return found

    def fresh(self, address: str) -> bool:
        return address.lower() not in self.bg_addresses

    def had_history(self, address: str, tx: dict) -> bool:
        first = self.first_send.get(address.lower())
        return first is not None and first < self.position[tx["hash"]]


@pytest.fixture(scope="module")
def bg_2017():
    return list(read_transactions(DATA / "traffic" / "mainnet-2017-ethereum-etl"))


@pytest.fixture(scope="module")
def bg_2024():
    return list(read_transactions(DATA / "traffic" / "mainnet-2024-rpc-blocks"))


@pytest.fixture(scope="module")
def bg_generated():
    return TrafficGenerator(GeneratorConfig(seed=7, scenario_rates={})).take(6000)


@pytest.fixture(scope="module")
def prepared(bg_2017):
    return Background(bg_2017)


@pytest.fixture(scope="module")
def real(bg_2017, prepared):
    return Planted(bg_2017, plant(prepared, KINDS, seed=SEED, episodes_per_kind=EPISODES), EPISODES)


@pytest.fixture(scope="module")
def real_2024(bg_2024):
    return Planted(bg_2024, plant(bg_2024, KINDS, seed=SEED, episodes_per_kind=4), 4)


@pytest.fixture(scope="module")
def generated(bg_generated):
    return Planted(bg_generated, plant(bg_generated, KINDS, seed=SEED, episodes_per_kind=4), 4)


@pytest.fixture(params=["real", "real_2024", "generated"])
def stream(request) -> Planted:
    return request.getfixturevalue(request.param)


# -- every kind, every background ---------------------------------------------------------


def test_every_planted_transaction_decodes_and_is_labelled(stream):
    counts = Counter()
    for tx in stream.planted:
        decode(orjson.dumps(tx))  # raises on anything the worker would dead-letter
        assert tx["label"] in KINDS and tx["episode"].startswith(tx["label"] + "-")
        assert tx["role"] in scenarios.ROLES
        counts[tx["label"]] += 1
    assert set(counts) == set(KINDS)
    episodes_per_kind = Counter(ep.rsplit("-", 1)[0] for ep in stream.episodes)
    assert all(episodes_per_kind[k] == stream.per_kind for k in KINDS), episodes_per_kind
    hashes = [tx["hash"] for tx in stream.out]
    assert len(set(hashes)) == len(hashes)


def test_background_kept_in_order_and_unlabelled(stream):
    rest = [tx for tx in stream.out if tx.get("episode") is None]
    assert len(rest) == len(stream.background)
    for mine, theirs in zip(rest, stream.background):
        assert "episode" not in mine and mine.get("label") is None
        assert {k: v for k, v in mine.items() if k != "transactionIndex"} == \
               {k: v for k, v in theirs.items() if k != "transactionIndex"}


def test_block_fields_and_time_order(stream):
    keys = [(_int(tx["blockNumber"]), _int(tx["transactionIndex"])) for tx in stream.out]
    assert all(a < b for a, b in zip(keys, keys[1:])), "(blockNumber, transactionIndex) is a strict chain order"
    block = {}
    for tx in stream.background:
        block.setdefault(tx["blockNumber"], (tx.get("blockTimestamp"), tx.get("blockHash")))
    for tx in stream.planted:
        assert tx["blockNumber"] in block, "planted into an existing block"
        assert (tx.get("blockTimestamp"), tx.get("blockHash")) == block[tx["blockNumber"]]
    stamps = [_int(tx["blockTimestamp"]) for tx in stream.out if "blockTimestamp" in tx]
    assert all(a <= b for a, b in zip(stamps, stamps[1:]))


def test_no_timestamps_added_where_the_background_has_none(real_2024):
    assert not any("blockTimestamp" in tx for tx in real_2024.out)


def test_fee_style_follows_the_background(real, real_2024):
    assert all("maxFeePerGas" not in tx and "gasPrice" in tx for tx in real.planted)
    share = lambda txs: sum("maxFeePerGas" in tx for tx in txs) / len(txs)  # noqa: E731
    assert abs(share(real_2024.planted) - share(real_2024.background)) < 0.1
    for tx in real_2024.planted:
        if "maxFeePerGas" in tx:
            assert tx["type"] == "0x2" and _int(tx["maxPriorityFeePerGas"]) <= _int(tx["maxFeePerGas"])
    prices = sorted(_int(tx["gasPrice"]) for tx in real.background)
    assert all(prices[0] <= _int(tx["gasPrice"]) <= prices[-1] for tx in real.planted)


def test_fresh_senders_count_nonces_from_their_start(stream):
    nonces = defaultdict(list)
    for tx in stream.planted:
        if stream.fresh(tx["from"]):
            nonces[tx["from"]].append(_int(tx["nonce"]))
    assert nonces
    for sender, seen in nonces.items():
        assert seen == list(range(seen[0], seen[0] + len(seen))), sender


def test_same_seed_same_output_other_seed_other_output(bg_2017, prepared):
    kinds = ["approval_phishing", "address_poisoning_dust", "peel_chain"]
    one = plant(bg_2017, kinds, seed=3, episodes_per_kind=3)
    assert orjson.dumps(one) == orjson.dumps(plant(prepared, kinds, seed=3, episodes_per_kind=3))
    other = plant(prepared, kinds, seed=4, episodes_per_kind=3)
    assert {tx["hash"] for tx in one if "episode" in tx} != {tx["hash"] for tx in other if "episode" in tx}


def test_a_kinds_episodes_do_not_depend_on_the_other_kinds(prepared, real):
    alone = plant(prepared, ["token_drain"], seed=SEED, episodes_per_kind=EPISODES)
    mine = {tx["hash"]: (tx["from"], tx["to"], tx["input"], tx["value"], tx["blockNumber"])
            for tx in alone if "episode" in tx}
    together = {tx["hash"]: (tx["from"], tx["to"], tx["input"], tx["value"], tx["blockNumber"])
                for tx in real.planted if tx["label"] == "token_drain"}
    assert mine == together


def test_the_input_is_not_modified(bg_generated):
    before = copy.deepcopy(bg_generated)
    plant(bg_generated, KINDS, seed=1, episodes_per_kind=2)
    assert bg_generated == before


def test_bad_arguments():
    rows = TrafficGenerator(GeneratorConfig(seed=1, scenario_rates={})).take(50)
    with pytest.raises(ValueError, match="unknown kinds"):
        plant(rows, ["wallet_drain"], seed=1)
    with pytest.raises(ValueError, match="unknown scenario params"):
        plant(rows, KINDS, seed=1, params={"victim": 3})
    with pytest.raises(ValueError, match="empty"):
        plant([], KINDS, seed=1)


# -- what each kind looks like (on the real 2017 background) ----------------------------


def test_approval_phishing(real):
    for txs in real.of("approval_phishing"):
        approvals = [tx for tx in txs if tx["role"] == "approval"]
        assert 5 <= len(approvals) <= 30
        spenders, victims = set(), {}
        for tx in approvals:
            name = "approve" if tx["input"].startswith(ABI["approve"][1]) else "increaseAllowance"
            spender, amount = _args(tx, name)
            spenders.add(spender)
            assert amount > 0
            assert tx["to"] in real.tokens, "a real token of the background's transfer calls"
            assert real.had_history(tx["from"], tx), "the victim sent before in the background"
            victims[tx["from"]] = tx["to"]
        assert len(spenders) == 1 and len(victims) == len(approvals)
        spender = spenders.pop()
        assert real.fresh(spender)
        assert sum(_args(tx, "approve")[1] == 2**256 - 1 for tx in approvals
                   if tx["input"].startswith(ABI["approve"][1])) >= 1 or len(approvals) < 8
        stamps = [_int(tx["blockTimestamp"]) for tx in approvals]
        assert max(stamps) - min(stamps) <= 3600 + 60
        drains = [tx for tx in txs if tx["role"] == "drain"]
        assert drains
        collectors = set()
        for tx in drains:
            if tx["to"] == spender:  # a drainer contract, called by an accomplice
                ((token, inner),) = _args(tx, "aggregate")[0]
                victim, collector, amount = _lower(abi_decode(["address", "address", "uint256"], inner[4:]))
                assert inner[:4].hex() == ABI["transferFrom"][1][2:]
                assert real.fresh(tx["from"])
            else:
                assert tx["from"] == spender
                token = tx["to"]
                victim, collector, amount = _args(tx, "transferFrom")
            assert victims[victim] == token and amount > 0
            collectors.add(collector)
        assert len(collectors) == 1 and real.fresh(collectors.pop())


def test_permit_phishing(real, bg_2017, prepared):
    for txs in real.of("permit_phishing"):
        permits = [tx for tx in txs if tx["role"] == "approval"]
        owners = set()
        for tx in permits:
            owner, spender, value, deadline, v, r, s = _args(tx, "permit") if tx["input"].startswith(
                ABI["permit"][1]) else (None,) * 7
            if owner is None:  # Permit2
                owner, ((token, amount, expiration, nonce), spender, deadline), signature = _args(tx, "permit2_permit")
                assert tx["to"] == PERMIT2 and len(signature) == 65
            else:
                assert v in (27, 28) and tx["to"] in real.tokens
            assert tx["from"] != owner and real.had_history(owner, tx) and real.fresh(spender)
            owners.add(owner)
        assert len(owners) == len(permits) >= 5

    forced = Planted(bg_2017, plant(prepared, ["permit_phishing"], seed=5, episodes_per_kind=2,
                                    params={"permit2_share": 1.0, "victims": (5, 6)}))
    for txs in forced.of("permit_phishing"):
        grants = {}
        for tx in txs:
            if tx["role"] == "approval":
                owner, ((token, amount, _, _), spender, _), _ = _args(tx, "permit2_permit")
                assert amount == 2**160 - 1
                grants[owner] = (token, spender)
        for tx in (t for t in txs if t["role"] == "drain"):
            assert tx["to"] == PERMIT2
            owner, collector, amount, token = _args(tx, "permit2_transferFrom")
            assert grants[owner] == (token, tx["from"]) and forced.fresh(collector)


def test_fan_in_sweep(real):
    for txs in real.of("fan_in_sweep"):
        sweeps = [tx for tx in txs if tx["role"] == "sweep"]
        assert 10 <= len(sweeps) <= 40
        sources = {tx["from"] for tx in sweeps}
        assert len(sources) == len(sweeps) and all(real.fresh(a) for a in sources)
        funded = {tx["to"]: tx for tx in txs if tx["role"] == "funding" and tx["to"] in sources}
        assert set(funded) == sources and len({tx["from"] for tx in funded.values()}) == 1
        collectors = set()
        for tx in sweeps:
            assert real.position[funded[tx["from"]]["hash"]] < real.position[tx["hash"]]
            if tx["input"] == "0x":
                collectors.add(tx["to"])
                received = _int(funded[tx["from"]]["value"])
                left = received - _int(tx["value"]) - _int(tx["gas"]) * _int(tx["gasPrice"])
                assert 0 <= left <= 50 * _int(tx["gasPrice"])  # almost all of it
            else:
                assert tx["to"] in real.tokens
                collectors.add(_args(tx, "transfer")[0])
        assert len(collectors) == 1 and real.fresh(collectors.pop())


def _poisoning_cases(p: Planted, kind: str):
    """(poison tx, victim, look-alike) per episode."""
    for txs in p.of(kind):
        (tx,) = [t for t in txs if t["role"] == "poison"]
        if tx["input"] == "0x":
            yield tx, tx["to"], tx["from"], txs
        elif tx["input"].startswith(ABI["transferFrom"][1]):
            victim, lookalike, amount = _args(tx, "transferFrom")
            assert amount == 0
            yield tx, victim, lookalike, txs
        else:
            victim, amount = _args(tx, "transfer")
            yield tx, victim, tx["from"], txs


def _counterparties_before(p: Planted, victim: str, tx: dict) -> set[str]:
    """Whom the victim paid (ETH or token transfer recipients) in the background before `tx`."""
    return {c for pos, cps in p.sent[victim] if pos < p.position[tx["hash"]] for c in cps}


@pytest.mark.parametrize("kind", ["address_poisoning_zero", "address_poisoning_dust", "address_poisoning_fake_token"])
def test_poisoning_lookalikes_imitate_a_real_counterparty(bg_2017, prepared, kind):
    p = Planted(bg_2017, plant(prepared, [kind], seed=2, episodes_per_kind=6,
                               params={"lookalike_prefix": 4, "lookalike_suffix": 5, "zero_eth_share": 0.5}))
    ptype = scenarios._POISON_TYPE[kind]
    for tx, victim, lookalike, txs in _poisoning_cases(p, kind):
        assert p.fresh(lookalike) and p.had_history(victim, tx)
        matches = [c for c in _counterparties_before(p, victim, tx) if _affixes(lookalike, c) == (4, 5)]
        assert matches and lookalike not in matches
        if ptype == "dust":
            assert tx["from"] == lookalike
            if tx["input"] == "0x":
                assert 10**12 <= _int(tx["value"]) <= 10**14
        if ptype == "fake":
            (setup,) = [t for t in txs if t["role"] == "setup"]
            assert setup["to"] is None and tx["to"] == create_address(setup["from"], _int(setup["nonce"]))
            assert p.fresh(tx["to"]) and p.position[setup["hash"]] < p.position[tx["hash"]]
        if ptype == "zero" and tx["input"] != "0x":
            assert p.fresh(tx["from"]) and tx["from"] != victim

    # By default the lengths follow the real pairs of that poisoning type.
    p = Planted(bg_2017, plant(prepared, [kind], seed=2, episodes_per_kind=10))
    real_pairs = {(a, b) for a, b, _ in scenarios._POISON_AFFIXES[ptype]}
    for tx, victim, lookalike, _ in _poisoning_cases(p, kind):
        affixes = {_affixes(lookalike, c) for c in _counterparties_before(p, victim, tx)}
        assert affixes & real_pairs, affixes


def test_peel_chain(real):
    exchanges = set()
    for txs in real.of("peel_chain"):
        hops = [tx for tx in txs if tx["role"] == "hop"]
        assert 6 <= len(hops) <= 16
        assert real.had_history(hops[0]["from"], hops[0])
        for a, b in zip(hops, hops[1:]):
            assert b["from"] == a["to"] and real.fresh(b["from"])
            assert _int(b["value"]) < _int(a["value"])
            assert real.position[a["hash"]] < real.position[b["hash"]]
        for tx in txs:
            if tx["role"] == "peel":
                exchanges.add(tx["to"])
                assert _int(tx["value"]) <= 0.06 * _int(hops[0]["value"]) or tx is txs[-1]
    assert exchanges and all(not real.fresh(a) for a in exchanges), "peels go to exchanges of the background"


def test_exploit_contract(real, bg_2017):
    gas = sorted(_int(tx["gas"]) for tx in bg_2017)
    for txs in real.of("exploit_contract"):
        funding = [tx for tx in txs if tx["role"] == "funding"]
        (setup,) = [tx for tx in txs if tx["role"] == "setup"]
        attacker = setup["from"]
        assert real.fresh(attacker) and setup["to"] is None and len(setup["input"]) // 2 - 1 >= 4000
        for tx in funding:
            assert tx["to"] in TORNADO_POOLS.values()
            proof, root, nullifier, recipient, relayer, fee, refund = _args(tx, "tornado_withdraw")
            assert recipient == attacker and relayer == tx["from"] and len(proof) == 256
        contract = create_address(attacker, 0)
        assert _int(setup["nonce"]) == 0 and real.fresh(contract)
        calls = [tx for tx in txs if tx["role"] == "exploit"]
        assert calls
        for tx in calls:
            assert tx["from"] == attacker and tx["to"] == contract
            assert _int(tx["gas"]) >= gas[int(0.999 * (len(gas) - 1))]
            protocol, tokens, amounts = _lower(abi_decode(list(ABI["exploit"][2]), bytes.fromhex(tx["input"][10:])))
            assert not real.fresh(protocol) and set(tokens) <= real.tokens and len(amounts) == len(tokens)


def test_tornado_funding_as_transfers(bg_2017, prepared):
    p = Planted(bg_2017, plant(prepared, ["exploit_contract"], seed=1, episodes_per_kind=2,
                               params={"tornado_funding": "transfer"}))
    for txs in p.of("exploit_contract"):
        attacker = next(tx for tx in txs if tx["role"] == "setup")["from"]
        for tx in (t for t in txs if t["role"] == "funding"):
            assert tx["from"] in TORNADO_POOLS.values() and tx["to"] == attacker and _int(tx["value"]) > 0


def test_token_drain(real):
    for txs in real.of("token_drain"):
        victim = txs[0]["from"]
        assert real.had_history(victim, txs[0])
        thieves, tokens = set(), set()
        for tx in txs:
            assert tx["from"] == victim and tx["to"] in real.tokens
            recipient, amount = _args(tx, "transfer")
            thieves.add(recipient)
            tokens.add(tx["to"])
            assert amount > 0
        assert len(thieves) == 1 and real.fresh(thieves.pop()) and len(tokens) >= 2


def test_large_eth_drain(real, real_2024):
    for p in (real, real_2024):
        tips = sorted(_int(tx["maxPriorityFeePerGas"]) for tx in p.background if "maxPriorityFeePerGas" in tx)
        prices = sorted(_int(tx["gasPrice"]) for tx in p.background if "maxFeePerGas" not in tx)
        for txs in p.of("large_eth_drain"):
            victim = txs[0]["from"]
            assert p.had_history(victim, txs[0]) and len(txs) >= 2
            assert len({tx["to"] for tx in txs}) == 1 and p.fresh(txs[0]["to"])
            assert all(tx["from"] == victim and tx["input"] == "0x" and _int(tx["value"]) > 0 for tx in txs)
            for tx in txs:
                if "maxPriorityFeePerGas" in tx:  # high, within the background's range
                    assert tips[int(0.89 * len(tips))] <= _int(tx["maxPriorityFeePerGas"]) <= tips[-1]
                else:
                    assert _int(tx["gasPrice"]) <= prices[-1]
    legacy = sorted(_int(tx["gasPrice"]) for tx in real.background)
    drains = [_int(tx["gasPrice"]) for txs in real.of("large_eth_drain") for tx in txs]
    assert sorted(drains)[len(drains) // 2] >= legacy[int(0.8 * len(legacy))]


# -- constants from the shared data -------------------------------------------------------


def test_embedded_poison_hunter_figures_match_the_file():
    affixes, delays = defaultdict(Counter), defaultdict(list)
    with open(DATA / "labels" / "poison-hunter" / "phishing_transfers_sample.csv", newline="") as f:
        for row in csv.DictReader(f):
            ptype = row["phishing_type"]
            affixes[ptype][_affixes(row["attacker"], row["similar_norm"])] += 1
            delays[ptype].append(int(row["block_distance"]))
    for ptype in ("zero", "dust", "fake"):
        assert {(p, s): c for p, s, c in scenarios._POISON_AFFIXES[ptype]} == dict(affixes[ptype])
        assert list(scenarios._POISON_DELAY_BLOCKS[ptype]) == sorted(delays[ptype])


def test_tornado_pools_are_sanctioned_and_tagged():
    ofac = {line.strip().lower() for line in open(DATA / "labels" / "ofac" / "sanctioned_addresses_ETH.txt")}
    with gzip.open(DATA / "labels" / "etherscan-tags" / "etherscan_tags.csv.gz", "rt") as f:
        tags = {row["address"].lower(): row["name"] for row in csv.DictReader(f)}
    for denomination, address in TORNADO_POOLS.items():
        assert address in ofac
        assert tags[address] == f"Tornado.Cash: {denomination} ETH"
