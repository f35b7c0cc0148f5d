"""Tests for feature extraction and sender profiles (anomaly_stream.detect.features)."""

from __future__ import annotations

import math
import pickle
import statistics

import orjson
import pytest

from anomaly_stream.detect.features import (
    BURST_TAU_SECONDS,
    FEATURE_NAMES,
    FEATURES,
    MARKET_WINDOW,
    RATE_TAU_SECONDS,
    RECENT_COUNTERPARTIES,
    AddressProfile,
    FeeMarket,
    extract,
    unscale,
)
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator
from anomaly_stream.detect.schema import WEI_PER_ETH, WEI_PER_GWEI, Tx, decode

SENDER = "0x" + "ab" * 20
T0 = 1_700_000_000.0


def make_tx(to: str | None = "0x" + "cd" * 20, value_wei: int = 10**17, **changes) -> Tx:
    fields = dict(
        hash="0x" + "12" * 32, sender=SENDER, to=to, value_wei=value_wei, gas=21_000,
        gas_price_wei=20 * WEI_PER_GWEI, priority_fee_wei=WEI_PER_GWEI, nonce=5, input_bytes=0,
        selector=None, block_number=1, block_timestamp=None, gas_used=21_000, status=1,
    )
    fields.update(changes)
    return Tx(**fields)


def addr(i: int) -> str:
    return "0x" + f"{i:08x}" + "00" * 16


def run(txs_and_times, profile=None):
    xs = []
    for tx, t in txs_and_times:
        x, profile = extract(tx, profile, t)
        xs.append(x)
    return xs, profile


def test_feature_table_is_consistent():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == len(FEATURES)
    for f in FEATURES:
        assert f.hi > f.lo


def test_generated_stream_features_are_in_unit_range_and_ordered():
    profiles: dict[str, AddressProfile] = {}
    market = FeeMarket()
    for obj in TrafficGenerator(GeneratorConfig(seed=5)).take(3_000):
        tx = decode(orjson.dumps(obj))
        x, profile = extract(tx, profiles.get(tx.sender), tx.block_timestamp, market)
        profiles[tx.sender] = profile
        assert tuple(x) == FEATURE_NAMES
        for name, value in x.items():
            assert 0.0 <= value <= 1.0, (name, value)
            assert not math.isnan(value)


def test_extreme_inputs_are_clipped_into_unit_range():
    big = make_tx(to=None, value_wei=10**27, gas=10**9, gas_price_wei=10**16, priority_fee_wei=10**16,
                  nonce=2**64 - 1, input_bytes=1 << 20, selector="0xffffffff", gas_used=10**9)
    small = make_tx(value_wei=0, gas=0, gas_price_wei=0, priority_fee_wei=0, nonce=0, gas_used=None)
    for tx in (big, small):
        for t in (T0, T0 - 10**9, T0 + 10**9):
            x, _ = extract(tx, AddressProfile(first_seen=T0, last_seen=T0, n_tx=3), t)
            assert all(0.0 <= v <= 1.0 for v in x.values()), x
    x, _ = extract(big, None, T0, FeeMarket())
    assert x["value_eth"] == x["fee_premium_gwei"] == x["contract_creation"] == 1.0
    assert x["dust_transfer"] == 0.0
    x, _ = extract(small, None, T0, FeeMarket())
    assert x["value_eth"] == x["fee_premium_gwei"] == x["contract_creation"] == 0.0
    assert x["dust_transfer"] == 1.0
    # A gas price far below the going price is no negative premium: it clips at 0.
    market = FeeMarket()
    market.add(10**6)
    x, _ = extract(small, None, T0, market)
    assert x["fee_premium_gwei"] == 0.0
    # A sender quiet for over three years is no burst.
    x, _ = extract(small, AddressProfile(first_seen=T0 - 10**9, last_seen=T0 - 10**9, n_tx=3, burst=50.0), T0)
    assert x["burst"] == 0.0


def test_first_transaction_of_a_new_sender():
    x, profile = extract(make_tx(), None, T0)
    # Being first seen is not itself a feature: 8% of ordinary traffic is.
    assert x["burst"] == 0.0  # no history to burst against
    assert x["value_eth"] == pytest.approx(math.log10(1.1) / 3)
    assert x["fee_premium_gwei"] == 0.0  # a 1 gwei tip is ordinary
    assert x["contract_creation"] == 0.0 and x["dust_transfer"] == 0.0
    assert profile.fan_out == 1.0  # its counterparty was new
    assert profile.recent == (make_tx().to[:10],)
    assert profile.n_tx == 1
    assert profile.first_seen == profile.last_seen == T0
    assert profile.tx_per_hour == 1.0
    assert profile.burst == 1.0
    assert profile.value_mean == pytest.approx(math.log10(1 + 10**17 / WEI_PER_GWEI))
    assert profile.value_var == 0.0


def test_existing_profile_is_updated_in_place():
    _, profile = extract(make_tx(), None, T0)
    x, same = extract(make_tx(), profile, T0 + 60)
    assert same is profile
    assert profile.n_tx == 2
    assert profile.last_seen == T0 + 60
    assert profile.tx_per_hour == pytest.approx(math.exp(-60 / RATE_TAU_SECONDS) + 1)
    assert x["burst"] > 0.0  # two in a minute from a sender with no habit yet


def test_repeated_counterparty_is_not_new():
    _, profile = run([(make_tx(to=addr(1)), T0), (make_tx(to=addr(1)), T0 + 10)])
    assert profile.fan_out == pytest.approx(0.8)  # 1 + 0.2 * (0 - 1): the repeat was not new
    assert profile.recent == (addr(1)[:10],)
    extract(make_tx(to=addr(2)), profile, T0 + 20)
    assert profile.fan_out == pytest.approx(0.84)  # 0.8 + 0.2 * (1 - 0.8)
    assert profile.recent == (addr(2)[:10], addr(1)[:10])


def test_repeated_contract_creation_counts_as_same_counterparty():
    _, profile = run([(make_tx(to=None), T0), (make_tx(to=None), T0 + 1)])
    assert profile.recent == ("create",)
    assert profile.fan_out == pytest.approx(0.8)


def test_recent_counterparties_are_bounded_and_forget_the_oldest():
    n = RECENT_COUNTERPARTIES + 1
    xs, profile = run([(make_tx(to=addr(i)), T0 + i) for i in range(n)])
    assert len(profile.recent) == RECENT_COUNTERPARTIES
    assert addr(0)[:10] not in profile.recent  # pushed out by the newer ones
    extract(make_tx(to=addr(n - 1)), profile, T0 + n + 1)
    assert len(profile.recent) == RECENT_COUNTERPARTIES and profile.recent[0] == addr(n - 1)[:10]


def test_fan_out_rises_with_new_counterparties_and_falls_with_repeats():
    fans, profile = [], None
    for i in range(20):
        _, profile = extract(make_tx(to=addr(1)), profile, T0 + i)
        fans.append(profile.fan_out)
    assert fans[0] == 1.0
    assert all(b < a for a, b in zip(fans, fans[1:]))
    assert fans[-1] < 0.05
    _, profile = run([(make_tx(to=addr(i)), T0 + i) for i in range(20)])
    assert profile.fan_out == 1.0


def test_burst_raises_tx_per_hour():
    burst, profile = run([(make_tx(), T0 + i) for i in range(10)])
    spaced, _ = run([(make_tx(), T0 + 3600 * i) for i in range(10)])
    rates = [x["burst"] for x in burst]
    assert all(b > a for a, b in zip(rates, rates[1:]))
    assert burst[-1]["burst"] > spaced[-1]["burst"] + 0.1
    # Ten transactions within ten seconds: close to 10 per hour.
    assert profile.tx_per_hour == pytest.approx(10, abs=0.1)


def test_activity_rate_decays_after_a_quiet_period():
    xs, profile = run([(make_tx(), T0 + i) for i in range(50)])
    busy, busy_count = profile.tx_per_hour, profile.burst
    assert xs[-1]["burst"] > 0.5  # fifty in fifty seconds from a new sender is a burst
    x, profile = extract(make_tx(), profile, T0 + 10 * 3600)
    # Both the hourly rate and the last-minute count have decayed to (almost) nothing,
    # then counted this one transaction.
    assert profile.tx_per_hour < 1.01 < busy
    assert profile.burst == pytest.approx(1.0) and busy_count > 30
    assert x["burst"] == 0.0  # one transaction after ten quiet hours is no burst


def test_burst_rises_for_a_quiet_sender_sending_rapidly():
    # A sender that sends about once a day, then ten transactions two seconds apart.
    history = [(make_tx(), T0 + 86_400 * i) for i in range(5)]
    xs, profile = run(history)
    assert all(x["burst"] == 0.0 for x in xs)
    start = T0 + 86_400 * 5
    burst, _ = run([(make_tx(), start + 2 * i) for i in range(10)], profile)
    scores = [x["burst"] for x in burst]
    assert scores[0] == 0.0  # the first of them still looks like the daily habit
    assert all(b > a for a, b in zip(scores, scores[1:]))
    # Nine earlier sends (decayed: ~7.8) in the last minute against ~0.15 expected: z ~ 7, log10(8) / 1.5.
    assert scores[-1] > 0.55


def test_burst_stays_low_for_a_steadily_busy_sender():
    # One transaction every ten seconds for four hours. The hourly rate takes a few hours
    # (its time constant is one) to learn the habit; after that the last-minute count is
    # what the hourly rate predicts, so it is no burst however busy the sender is.
    xs, profile = run([(make_tx(), T0 + 10 * i) for i in range(4 * 360)])
    assert profile.tx_per_hour > 350
    assert all(x["burst"] == 0.0 for x in xs[-360:])
    assert all(x["burst"] < 0.05 for x in xs[-720:])
    # The same sender speeding up tenfold is a burst.
    fast, _ = run([(make_tx(), T0 + 10 * 4 * 360 + i) for i in range(30)], profile)
    assert fast[-1]["burst"] > 0.3


def test_burst_value_matches_the_poisson_z_score():
    profile = AddressProfile(first_seen=T0 - 86_400, last_seen=T0 - 30, n_tx=40, tx_per_hour=12.0, burst=6.0)
    x, profile = extract(make_tx(), profile, T0)
    recent = 6.0 * math.exp(-30 / BURST_TAU_SECONDS)
    expected = 12.0 * math.exp(-30 / RATE_TAU_SECONDS) * BURST_TAU_SECONDS / RATE_TAU_SECONDS
    z = (recent - expected) / math.sqrt(expected + 1)
    assert x["burst"] == pytest.approx(math.log10(1 + z) / 1.5)
    assert profile.burst == pytest.approx(recent + 1)
    assert profile.tx_per_hour == pytest.approx(12.0 * math.exp(-30 / RATE_TAU_SECONDS) + 1)


def test_profile_tracks_the_senders_value_statistics():
    # Not a model input any more (a two-sided z-score flagged senders paying less than usual),
    # but kept in the profile the API shows.
    history = [(make_tx(value_wei=int((0.1 + 0.01 * (i % 5)) * WEI_PER_ETH)), T0 + 60 * i) for i in range(30)]
    _, profile = run(history)
    assert profile.value_mean == pytest.approx(math.log10(0.12 * WEI_PER_ETH / WEI_PER_GWEI), abs=0.02)
    assert 0.0 < math.sqrt(profile.value_var) < 0.1
    _, profile = run([(make_tx(value_wei=WEI_PER_ETH), T0 + i) for i in range(10)])
    assert profile.value_var == pytest.approx(0.0, abs=1e-12)


def test_out_of_order_event_time_never_goes_backwards():
    _, profile = extract(make_tx(), None, T0)
    x, profile = extract(make_tx(), profile, T0 - 100)
    assert profile.last_seen == T0
    assert profile.burst == pytest.approx(2.0)  # nothing decayed: no time went by
    assert x["burst"] > 0.0


def test_scaled_values_of_known_inputs():
    tx = make_tx(value_wei=10**18, gas=100_000, gas_used=50_000, gas_price_wei=99 * WEI_PER_GWEI,
                 priority_fee_wei=9 * WEI_PER_GWEI, nonce=999, input_bytes=99, selector="0xffff0000")
    x, _ = extract(tx, None, T0)
    assert tuple(x) == FEATURE_NAMES
    lim = {f.name: f for f in FEATURES}

    def scaled(name, v):
        return (v - lim[name].lo) / (lim[name].hi - lim[name].lo)

    assert x["value_eth"] == pytest.approx(scaled("value_eth", math.log10(2)))  # 1 ETH
    assert x["fee_premium_gwei"] == pytest.approx(scaled("fee_premium_gwei", 1))  # no market: the 9 gwei tip
    assert x["dust_transfer"] == 0.0
    assert x["contract_creation"] == 0.0
    assert x["burst"] == 0.0


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


def test_fee_premium_of_legacy_and_eip1559_transactions():
    market = FeeMarket()
    for _ in range(MARKET_WINDOW):
        market.add(20.0)  # the going price: 20 gwei
    # A legacy transaction has no priority fee: its premium is its price above the market.
    legacy = make_tx(gas_price_wei=45 * WEI_PER_GWEI, priority_fee_wei=0)
    x, _ = extract(legacy, None, T0, market)
    assert unscale("fee_premium_gwei", x["fee_premium_gwei"]) == pytest.approx(25)
    assert market.median() == 20.0  # one overbid does not move the median
    assert market.sorted[-1] == 45.0  # but it joined the window, after being scored
    # An EIP-1559 transaction: the larger of its tip and its price above the market.
    x, _ = extract(make_tx(gas_price_wei=21 * WEI_PER_GWEI, priority_fee_wei=30 * WEI_PER_GWEI), None, T0, market)
    assert unscale("fee_premium_gwei", x["fee_premium_gwei"]) == pytest.approx(30)
    x, _ = extract(make_tx(gas_price_wei=60 * WEI_PER_GWEI, priority_fee_wei=2 * WEI_PER_GWEI), None, T0, market)
    assert unscale("fee_premium_gwei", x["fee_premium_gwei"]) == pytest.approx(40)
    # Ordinary: paying the going price plus a small tip.
    x, _ = extract(make_tx(gas_price_wei=20 * WEI_PER_GWEI, priority_fee_wei=WEI_PER_GWEI // 2), None, T0, market)
    assert x["fee_premium_gwei"] == 0.0


def test_fee_premium_separates_generated_drains_and_spikes_from_normal_traffic():
    market = FeeMarket()
    premiums: dict[str, list[float]] = {}
    for obj in TrafficGenerator(GeneratorConfig(seed=3)).take(30_000):
        tx = decode(orjson.dumps(obj))
        x, _ = extract(tx, None, tx.block_timestamp, market)
        premiums.setdefault(obj["label"] or "normal", []).append(x["fee_premium_gwei"])
    normal = sorted(premiums["normal"])
    assert statistics.median(normal) == 0.0  # three quarters of traffic pay under 1 gwei above the market
    assert normal[int(0.999 * len(normal))] < 0.25
    assert min(premiums["wallet_drain"]) > normal[int(0.999 * len(normal))]
    assert min(premiums["gas_price_spike"]) == 1.0


@pytest.mark.parametrize(
    "value_wei, input_bytes, to, dust",
    [(0, 0, "0x" + "cd" * 20, 1.0), (10**13 - 1, 0, "0x" + "cd" * 20, 1.0), (10**13, 0, "0x" + "cd" * 20, 0.0),
     (0, 4, "0x" + "cd" * 20, 0.0), (0, 0, None, 0.0)],
)
def test_dust_transfer(value_wei, input_bytes, to, dust):
    x, _ = extract(make_tx(to=to, value_wei=value_wei, input_bytes=input_bytes), None, T0)
    assert x["dust_transfer"] == dust


def test_profile_bytes_round_trip():
    xs, profile = run([(make_tx(to=addr(i % 3), value_wei=10**15 * (i + 1)), T0 + 7.5 * i) for i in range(12)])
    profile.anomalies = 3
    profile.partition = 5
    restored = AddressProfile.from_bytes(profile.to_bytes())
    assert restored == profile
    assert isinstance(restored.recent, tuple)
    # The restored profile gives exactly the same next features.
    a, _ = extract(make_tx(to=addr(7)), profile, T0 + 1000)
    b, _ = extract(make_tx(to=addr(7)), restored, T0 + 1000)
    assert a == b


def test_profile_as_dict():
    _, profile = run([(make_tx(), T0), (make_tx(), T0 + 1)])
    d = profile.as_dict()
    assert set(d) == {"first_seen", "last_seen", "n_tx", "tx_per_hour", "value_gwei_log_mean",
                      "value_gwei_log_std", "fan_out", "anomalies"}
    assert d["n_tx"] == 2
    orjson.dumps(d)


@pytest.mark.parametrize(
    "name, tx, human",
    [
        ("value_eth", make_tx(value_wei=5 * WEI_PER_ETH), 5),
        ("value_eth", make_tx(value_wei=250 * WEI_PER_ETH), 250),
        ("fee_premium_gwei", make_tx(priority_fee_wei=3 * WEI_PER_GWEI), 3),
        ("fee_premium_gwei", make_tx(priority_fee_wei=37 * WEI_PER_GWEI), 37),
        ("contract_creation", make_tx(to=None), 1),
    ],
)
def test_unscale_inverts_scaling(name, tx, human):
    x, _ = extract(tx, None, T0)
    assert unscale(name, x[name]) == pytest.approx(human, rel=1e-9)


def test_unscale_of_history_features():
    profile = AddressProfile(first_seen=T0 - 86_400, last_seen=T0 - 30, n_tx=4, tx_per_hour=3.0, burst=4.0)
    x, profile = extract(make_tx(), profile, T0)
    # `burst` unscales to the Poisson z-score, not to the decayed count kept in the profile.
    recent = 4.0 * math.exp(-30 / BURST_TAU_SECONDS)
    expected = 3.0 * math.exp(-30 / RATE_TAU_SECONDS) / 60
    assert unscale("burst", x["burst"]) == pytest.approx((recent - expected) / math.sqrt(expected + 1))
    assert profile.burst == pytest.approx(recent + 1)


@pytest.mark.parametrize("scaled, human", [(0.0, 0.0), (1.0, 1.0)])
def test_unscale_binary_features(scaled, human):
    assert unscale("dust_transfer", scaled) == unscale("contract_creation", scaled) == human


def test_unscale_limits():
    for f in FEATURES:
        expected_lo = 10**f.lo - 1 if f.log else f.lo
        expected_hi = 10**f.hi - 1 if f.log else f.hi
        assert unscale(f.name, 0.0) == pytest.approx(expected_lo)
        assert unscale(f.name, 1.0) == pytest.approx(expected_hi)


def test_unscale_unknown_feature_raises():
    with pytest.raises(ValueError):
        unscale("no_such_feature", 0.5)


def test_profile_written_before_burst_field_still_loads():
    old = orjson.dumps((T0, T0 + 5, 3, 1.5, 8.0, 0.1, 0.5, ["0xabcdef01"], 1, 4))
    profile = AddressProfile.from_bytes(old)
    assert (profile.n_tx, profile.recent, profile.anomalies, profile.partition) == (3, ("0xabcdef01",), 1, 4)
    assert profile.burst == 0.0
