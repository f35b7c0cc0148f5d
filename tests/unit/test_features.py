"""Tests for feature extraction and address profiles (anomaly_stream.detect.features)."""

from __future__ import annotations

import math
import pickle

import orjson
import pytest

from anomaly_stream.detect import flows

from anomaly_stream.detect.features import (
    new_profile,
    FEATURES,
    MARKET_WINDOW,
    PERSPECTIVE_FEATURES,
    RECEIVER,
    RECENT_COUNTERPARTIES,
    RECENT_INBOUND,
    SENDER,
    AddressProfile,
    Edge,
    FeeMarket,
    edges_of,
    extract_receiver,
    extract_sender,
    unscale,
)
from anomaly_stream.detect.lookalike import digest
from anomaly_stream.detect.schema import WEI_PER_ETH, WEI_PER_GWEI, Tx
from anomaly_stream.detect.semantics import decode_call

ME = "0x" + "ab" * 20
T0 = 1_700_000_000.0
TOKEN = "0xdac17f958d2ee523a2206206994597c13d831ec7"


def make_tx(to: str | None = "0x" + "cd" * 20, value_wei: int = 10**17, data: str = "0x", **changes) -> Tx:
    fields = dict(
        hash="0x" + "12" * 32, sender=ME, to=to, value_wei=value_wei, gas=21_000,
        gas_price_wei=20 * WEI_PER_GWEI, priority_fee_wei=WEI_PER_GWEI, nonce=5, input_bytes=(len(data) - 2) // 2,
        selector=data[:10] if len(data) >= 10 else None, input=data, block_number=1, block_timestamp=None,
        gas_used=21_000, status=1,
    )
    fields.update(changes)
    return Tx(**fields)


def addr(i: int) -> str:
    return "0x" + "00" * 16 + f"{i:08x}"


def word(x: int | str) -> str:
    return (x[2:] if isinstance(x, str) else f"{x:x}").rjust(64, "0")


def transfer(recipient: str, amount: int) -> str:
    return "0xa9059cbb" + word(recipient) + word(amount)


def approve(spender: str, amount: int) -> str:
    return "0x095ea7b3" + word(spender) + word(amount)


def send(tx: Tx, profile=None, t=T0, market=None):
    call = decode_call(tx.to, tx.value_wei, tx.input)
    x, profile, new = extract_sender(tx, call, profile, t, market)
    return dict(zip(PERSPECTIVE_FEATURES[SENDER], x)), profile, new


def test_feature_tables_are_consistent():
    for perspective, features in FEATURES.items():
        names = [f.name for f in features]
        assert len(set(names)) == len(names) == len(PERSPECTIVE_FEATURES[perspective])
        assert all(f.lo < f.hi for f in features)


def test_every_feature_is_in_unit_range_for_extreme_inputs():
    market = FeeMarket()
    for _ in range(MARKET_WINDOW):
        market.add(20.0)
    x, _, _ = send(make_tx(value_wei=10**27, priority_fee_wei=10**13, gas_price_wei=10**13), market=market)
    assert all(0.0 <= v <= 1.0 for v in x.values())
    assert x["fresh_sender_value_eth"] == 1.0 and x["fee_premium_ratio"] == 1.0


def test_a_first_time_sender_moving_a_lot_stands_out_and_one_with_history_does_not():
    x, profile, new = send(make_tx(value_wei=5000 * WEI_PER_ETH))
    assert new and x["fresh_sender_value_eth"] > 0.9
    x, _, _ = send(make_tx(value_wei=5000 * WEI_PER_ETH, to=addr(2)), profile, T0 + 60)
    assert x["fresh_sender_value_eth"] == 0.0, "the second transaction is no first one"


def test_value_to_a_new_counterparty_is_measured_against_the_senders_own_amounts():
    profile = None
    for i in range(10):
        _, profile, _ = send(make_tx(value_wei=10**17, to=addr(i)), profile, T0 + i * 600)
    x, _, _ = send(make_tx(value_wei=300 * WEI_PER_ETH, to=addr(99)), profile, T0 + 7000)
    assert x["value_to_new_counterparty"] > 0.5
    x, _, _ = send(make_tx(value_wei=300 * WEI_PER_ETH, to=addr(3)), profile, T0 + 7100)
    assert x["value_to_new_counterparty"] == 0.0, "a known counterparty is not new"


def test_token_amounts_are_the_calldatas_not_the_eth_value():
    profile = None
    for i in range(5):
        _, profile, _ = send(make_tx(to=TOKEN, value_wei=0, data=transfer(addr(i), 10**8)), profile, T0 + i)
    assert profile.token_n == 5 and profile.n_tx == 5
    assert profile.token_mean == pytest.approx(math.log10(1 + 10**8), rel=0.01)
    x, profile, new = send(make_tx(to=TOKEN, value_wei=0, data=transfer(addr(50), 10**14)), profile, T0 + 10)
    assert new and x["value_to_new_counterparty"] == 1.0
    assert digest(addr(50)) == profile.counterparties[0], "the recipient, not the token contract"


def test_an_unlimited_grant_to_a_new_spender():
    x, profile, _ = send(make_tx(to=TOKEN, value_wei=0, data=approve(addr(7), 2**256 - 1)))
    assert x["grant_to_new_spender"] == 1.0
    x, _, _ = send(make_tx(to=TOKEN, value_wei=0, data=approve(addr(7), 5)), profile, T0 + 1)
    assert x["grant_to_new_spender"] == 0.0, "the spender is known now"
    x, _, _ = send(make_tx(to=TOKEN, value_wei=0, data=approve(addr(8), 5)), profile, T0 + 2)
    assert x["grant_to_new_spender"] == 0.5
    x, _, _ = send(make_tx(to=TOKEN, value_wei=0, data=approve(addr(9), 0)), profile, T0 + 3)
    assert x["grant_to_new_spender"] == 0.0, "a revocation grants nothing"


def test_counterparties_are_bounded_most_recent_first():
    profile = None
    for i in range(RECENT_COUNTERPARTIES + 3):
        _, profile, _ = send(make_tx(to=addr(i)), profile, T0 + i)
    assert len(profile.counterparties) == RECENT_COUNTERPARTIES
    assert profile.counterparties[0] == digest(addr(RECENT_COUNTERPARTIES + 2))
    _, profile, new = send(make_tx(to=addr(RECENT_COUNTERPARTIES)), profile, T0 + 100)
    assert not new and profile.counterparties[0] == digest(addr(RECENT_COUNTERPARTIES))


def test_burst_rises_for_a_quiet_sender_sending_rapidly():
    profile = None
    for i in range(5):
        _, profile, _ = send(make_tx(to=addr(i)), profile, T0 + i * 3600)
    xs = []
    for i in range(20):
        x, profile, _ = send(make_tx(to=addr(100 + i)), profile, T0 + 5 * 3600 + i)
        xs.append(x["burst"])
    assert xs[-1] > 0.3 and xs[-1] > xs[0]


def test_fee_premium_is_relative_to_the_going_price():
    market = FeeMarket()
    for _ in range(MARKET_WINDOW):
        market.add(200.0)
    x, _, _ = send(make_tx(gas_price_wei=210 * WEI_PER_GWEI, priority_fee_wei=0), market=market)
    assert x["fee_premium_ratio"] == 0.0, "5% over a 200 gwei market is ordinary"
    market = FeeMarket()
    for _ in range(MARKET_WINDOW):
        market.add(2.0)
    x, _, _ = send(make_tx(gas_price_wei=12 * WEI_PER_GWEI, priority_fee_wei=0), market=market)
    assert x["fee_premium_ratio"] > 0.4, "five times the going price is not"


def test_contract_creation():
    x, _, _ = send(make_tx(to=None, data="0x6080"))
    assert x["contract_creation"] == 1.0


def test_edges_go_to_the_counterparty_and_the_owner():
    owner, recipient = addr(1), addr(2)
    data = "0x23b872dd" + word(owner) + word(recipient) + word(0)
    tx = make_tx(to=TOKEN, value_wei=0, data=data)
    call = decode_call(tx.to, tx.value_wei, tx.input)
    edges = edges_of(tx, call, True, T0)
    assert [(e.receiver, e.other, e.role) for e in edges] == [(recipient, ME, "to"), (owner, recipient, "owner")]
    assert Edge.from_bytes(edges[1].to_bytes()) == edges[1]
    plain_call = make_tx(to=TOKEN, value_wei=0, data="0xd0e30db0")
    assert edges_of(plain_call, decode_call(TOKEN, 0, "0xd0e30db0"), False, T0) == []


def test_a_pull_inside_a_multicall_also_goes_to_the_contract_that_spent_the_allowance():
    owner, recipient, drainer = addr(1), addr(2), addr(3)
    inner = "23b872dd" + word(owner) + word(recipient) + word(5)
    data = "0x252dba42" + word(32) + word(1) + word(32) + word(TOKEN) + word(64) + word(100) + inner + "00" * 28
    tx = make_tx(to=drainer, value_wei=0, data=data)
    edges = edges_of(tx, decode_call(tx.to, tx.value_wei, tx.input), False, T0)
    assert [(e.receiver, e.other, e.role, e.token) for e in edges] == [
        (recipient, ME, "to", TOKEN), (owner, recipient, "owner", TOKEN), (drainer, owner, "via", TOKEN)]
    assert Edge.from_bytes(edges[2].to_bytes()) == edges[2]
    x, profile, imitates = receive(edges[2])
    assert imitates is None and profile.in_n == 0, "the contract received nothing"


@pytest.mark.parametrize("raw", [b"", b"[]", b"{}", b"[1,2]", b"not json", b'[1,"a","b","c","to","k","m",null,"x"'])
def test_a_malformed_edge_raises_value_error(raw):
    with pytest.raises(ValueError):
        Edge.from_bytes(raw)


def edge(receiver: str, other: str, t: float, kind: str = "eth_transfer", value: int = 10**17,
         fresh: bool = True, sender: str | None = None) -> Edge:
    return Edge("0x" + "34" * 32, receiver, other, "to", kind, "", None, value, sender or other, fresh, t, 1)


def receive(e: Edge, profile=None):
    x, profile, imitates = extract_receiver(e, profile, e.event_time)
    return dict(zip(PERSPECTIVE_FEATURES[RECEIVER], x)), profile, imitates


def test_a_fresh_collector_swept_by_many_fresh_addresses():
    profile = None
    for i in range(30):
        x, profile, _ = receive(edge(ME, addr(i), T0 + i * 10), profile)
    assert x["fresh_fan_in"] > 0.5 and profile.in_fresh_share > 0.9
    assert len(profile.in_senders) == RECENT_INBOUND
    x, profile, _ = receive(edge(ME, addr(500), T0 + 3 * 3600), profile)
    assert x["fresh_fan_in"] == 0.0, "hours later they are no longer recent, nor the collector fresh"


def test_approvals_from_many_owners_to_one_spender():
    profile = None
    for i in range(10):
        x, profile, _ = receive(edge(ME, addr(i), T0 + i * 60, kind="approval", value=0), profile)
    assert x["fresh_approvers"] > 0.5


def test_a_third_party_moving_an_owners_tokens_to_a_stranger():
    e = Edge("0x" + "34" * 32, ME, addr(9), "owner", "token_transfer", "transferFrom", TOKEN, 0, addr(8), True, T0, 1)
    x, profile, _ = receive(e)
    assert x["pulled_by_third_party"] == 1.0
    x, _, _ = receive(e._replace(event_time=T0 + 1), profile)
    assert x["pulled_by_third_party"] == 0.0, "the recipient is known now"


def test_a_lookalike_of_a_real_counterparty_is_named():
    real = "0x12" + "0" * 34 + "abcd"
    fake = "0x12" + "f" * 34 + "abcd"
    _, profile, imitates = receive(edge(ME, real, T0))
    assert imitates is None
    _, profile, imitates = receive(edge(ME, fake, T0 + 60, value=0), profile)
    assert imitates == digest(real)


def test_profile_bytes_round_trip_both_sides():
    _, profile, _ = send(make_tx(to=TOKEN, value_wei=0, data=transfer(addr(3), 10**9)))
    _, profile, _ = receive(edge(ME, addr(4), T0 + 5, kind="approval"), profile)
    profile.funded_by = "ofac"
    restored = AddressProfile.from_bytes(profile.to_bytes())
    assert restored == profile


def test_a_profile_of_the_previous_version_still_loads():
    old = b'[1.0,2.0,3,0.5,1.2,0.1,0.3,["0xcdcdcdcd"],1,4,0.2]'
    profile = AddressProfile.from_bytes(old)
    assert (profile.n_tx, profile.partition, profile.burst, profile.counterparties) == (3, 4, 0.2, ())


@pytest.mark.parametrize("name", [f.name for fs in FEATURES.values() for f in fs])
def test_unscale_maps_the_limits_back(name):
    f = next(f for fs in FEATURES.values() for f in fs if f.name == name)
    low, high = unscale(name, 0.0), unscale(name, 1.0)
    assert low < high
    if f.transform == "log10":
        assert low == pytest.approx(10**f.lo - 1)


def test_fee_market_median_follows_the_last_window():
    market = FeeMarket(size=5)
    assert market.median() is None
    for price in (10.0, 50.0, 20.0):
        market.add(price)
    assert market.median() == 20.0
    for price in (30.0, 40.0, 100.0, 100.0):  # 10 and 50 leave the window
        market.add(price)
    assert sorted(market.ring) == market.sorted == [20.0, 30.0, 40.0, 100.0, 100.0]
    assert market.median() == 40.0
    for _ in range(5):
        market.add(7.0)
    assert market.sorted == [7.0] * 5 and market.median() == 7.0


def test_fee_market_matches_a_brute_force_median_and_pickles():
    rng = __import__("random").Random(1)
    market = FeeMarket()
    prices = []
    for _ in range(500):
        p = round(rng.lognormvariate(3, 0.5), 1)  # rounding makes duplicates
        market.add(p)
        prices.append(p)
        window = prices[-MARKET_WINDOW:]
        assert market.median() == sorted(window)[len(window) // 2]
    restored = pickle.loads(pickle.dumps(market))
    assert (restored.ring, restored.sorted, restored.next) == (market.ring, market.sorted, market.next)
    restored.add(1.0)
    market.add(1.0)
    assert restored.median() == market.median()




# -- flow rules (detect/flows.py) ------------------------------------------------------------



def inflow(e: Edge, profile=None, warm: bool = True):
    _, profile, _ = extract_receiver(e, profile, e.event_time)
    return flows.inflow_reasons(e, profile, e.event_time, warm), profile


def test_a_fresh_address_drained_into_by_one_sender_is_flagged_from_the_second_move():
    victim = addr(1)
    reasons, profile = inflow(edge(ME, victim, T0, value=40 * 10**18))
    assert reasons == [], "one move is a payment"
    reasons, profile = inflow(edge(ME, victim, T0 + 60, value=5 * 10**18), profile)
    assert [r["rule"] for r in reasons] == [flows.DRAIN] and reasons[0]["moves"] == 2
    assert reasons[0]["eth"] == pytest.approx(45.0) and profile.flow_at == T0 + 60
    restored = AddressProfile.from_bytes(profile.to_bytes())
    assert restored == profile, "the inflow state survives the changelog"


def test_no_drain_when_a_second_sender_paid_the_address_or_the_amounts_are_small():
    _, profile = inflow(edge(ME, addr(1), T0, value=40 * 10**18))
    _, profile = inflow(edge(ME, addr(2), T0 + 10, value=40 * 10**18), profile)
    reasons, profile = inflow(edge(ME, addr(1), T0 + 20, value=40 * 10**18), profile)
    assert reasons == [] and profile.src == "*"
    _, small = inflow(edge(ME, addr(1), T0, value=4 * 10**17))
    reasons, _ = inflow(edge(ME, addr(1), T0 + 30, value=4 * 10**17), small)
    assert reasons == [], "0.8 ETH in two moves is under DRAIN_MIN_ETH"


def test_no_drain_into_an_address_that_sends_or_is_no_longer_fresh_or_while_cold():
    _, profile = inflow(edge(ME, addr(1), T0, value=40 * 10**18))
    late, _ = inflow(edge(ME, addr(1), T0 + flows.DRAIN_WINDOW_SECONDS + 1, value=40 * 10**18), profile)
    assert late == [], "the second move came after the drain window"
    _, profile = inflow(edge(ME, addr(1), T0, value=40 * 10**18))
    profile.n_tx = 1  # the receiver sent something: no sink
    reasons, _ = inflow(edge(ME, addr(1), T0 + 30, value=40 * 10**18), profile)
    assert reasons == []
    _, profile = inflow(edge(ME, addr(1), T0, value=40 * 10**18), warm=False)
    reasons, profile = inflow(edge(ME, addr(1), T0 + 30, value=40 * 10**18), profile, warm=False)
    assert reasons == [] and profile.src_n == 2, "state is kept while the partition is cold"


def test_two_tokens_from_one_sender_into_a_fresh_address_are_a_drain_and_one_token_twice_is_not():
    def token_edge(t, token):
        return Edge("0x" + "34" * 32, ME, addr(1), "to", "token_transfer", "transfer", token, 0, addr(1), False, t, 1)
    _, profile = inflow(token_edge(T0, TOKEN))
    reasons, profile = inflow(token_edge(T0 + 5, TOKEN), profile)
    assert reasons == [], "the same token twice: a payout"
    reasons, profile = inflow(token_edge(T0 + 9, "0x" + "77" * 20), profile)
    assert reasons and reasons[0]["tokens"] == 2


def test_the_drained_address_is_followed_on_its_sending_side_for_an_hour():
    profile = new_profile(T0)
    profile.flow_at = T0
    assert flows.followup_reason(profile, True, T0 + 600)[0]["rule"] == flows.DRAIN
    assert flows.followup_reason(profile, False, T0 + 600) == [], "only value moves"
    assert flows.followup_reason(profile, True, T0 + flows.FOLLOWUP_SECONDS + 1) == []


def test_young_senders_were_funded_within_the_hour_and_edges_need_an_early_nonce():
    assert not flows.young(None, T0), "never seen: an old address we did not see before"
    _, funded, _ = receive(edge(ME, addr(1), T0))
    assert flows.young(funded, T0 + 60)
    assert not flows.young(funded, T0 + flows.FRESH_WINDOW_SECONDS + 1)
    tx = make_tx(to=addr(2))
    call = decode_call(tx.to, tx.value_wei, tx.input)
    assert not edges_of(tx, call, True, T0)[0].sender_fresh, "nonce 5 is no new address on chain"
    assert edges_of(tx._replace(nonce=0), call, True, T0)[0].sender_fresh


def test_a_profile_of_the_previous_version_reads_with_empty_inflow_state():
    _, profile, _ = receive(edge(ME, addr(4), T0))
    old = orjson.loads(profile.to_bytes())[:24]
    restored = AddressProfile.from_bytes(orjson.dumps(old))
    assert restored.src == "" and restored.src_n == 0 and restored.flow_at == 0.0
    assert restored.in_n == profile.in_n


def test_edges_carry_the_senders_funder_and_older_versions_still_decode():
    tx = make_tx(to=addr(2))._replace(nonce=0)
    call = decode_call(tx.to, tx.value_wei, tx.input)
    [e] = edges_of(tx, call, True, T0, "ab" * 6, 2)
    assert (e.sender_funder, e.sender_hops) == ("ab" * 6, 2)
    assert Edge.from_bytes(e.to_bytes()) == e and orjson.loads(e.to_bytes())[0] == 5
    assert e.sender_nonce == 0 and Edge.from_bytes(e._replace(sender_nonce=12_345).to_bytes()).sender_nonce == 12_345
    move = ("0x" + "12" * 32, T0 - 60.0, addr(3), ME, str(10**18), "receiver")
    assert Edge.from_bytes(e._replace(sender_trail=(move,)).to_bytes()).sender_trail == (move,)
    for trail in ([move] * 5, [list(move[:5])], [[*move[:4], "-1", "receiver"]], [[*move[:5], "both"]]):
        with pytest.raises(ValueError):
            Edge.from_bytes(orjson.dumps(orjson.loads(e.to_bytes())[:16] + [trail, False]))
    assert Edge.from_bytes(e._replace(sender_emptied=True).to_bytes()).sender_emptied
    with pytest.raises(ValueError):
        Edge.from_bytes(orjson.dumps(orjson.loads(e.to_bytes())[:17] + [1]))
    v4 = orjson.loads(e._replace(sender_emptied=True).to_bytes())[:17]
    v4[0] = 4
    assert Edge.from_bytes(orjson.dumps(v4)) == e, "version 4: not emptied"
    v3 = orjson.loads(e.to_bytes())[:16]
    v3[0] = 3
    assert Edge.from_bytes(orjson.dumps(v3)) == e, "version 3: no trail"
    v2 = orjson.loads(e.to_bytes())[:15]
    v2[0] = 2
    old2 = Edge.from_bytes(orjson.dumps(v2))
    assert (old2.sender_hops, old2.sender_nonce) == (0, 0), "version 2's hops meant the sender's own depth"
    v1 = orjson.loads(e.to_bytes())[:13]
    v1[0] = 1
    old = Edge.from_bytes(orjson.dumps(v1))
    assert old[:12] == e[:12] and (old.sender_funder, old.sender_hops) == ("", 0)
    for bad in (v1 + ["", 0], orjson.loads(e.to_bytes())[:13], [True] + v1[1:], [[2]] + v1[1:]):
        with pytest.raises(ValueError):
            Edge.from_bytes(orjson.dumps(bad))
    bad_hops = orjson.loads(e.to_bytes())
    bad_hops[14] = -1
    with pytest.raises(ValueError):
        Edge.from_bytes(orjson.dumps(bad_hops))


def test_an_address_records_its_first_eth_payer_and_the_relays_behind_it():
    hub = addr(7)
    _, profile, _ = receive(edge(ME, hub, T0, fresh=False))
    flows.observe(edge(ME, hub, T0, fresh=False), profile, T0)
    assert profile.funder == digest(hub) and profile.hops == 0
    later = edge(ME, addr(8), T0 + 5, fresh=True)._replace(sender_hops=3)
    flows.observe(later, profile, T0 + 5)
    assert profile.funder == digest(hub) and profile.hops == 0, "the first payer stays"
    _, other, _ = receive(later._replace(receiver=addr(9)))
    flows.observe(later._replace(receiver=addr(9)), other, T0 + 5)
    assert other.funder == digest(addr(8)) and other.hops == 3


def test_a_profile_before_provenance_reads_with_no_funder():
    _, profile, _ = receive(edge(ME, addr(4), T0))
    flows.observe(edge(ME, addr(4), T0), profile, T0)
    old = orjson.loads(profile.to_bytes())[:30]
    restored = AddressProfile.from_bytes(orjson.dumps(old))
    assert restored.funder == "" and restored.fan_senders == () and restored.src == profile.src
    assert AddressProfile.from_bytes(profile.to_bytes()) == profile
