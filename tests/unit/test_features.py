"""Tests for feature extraction and sender profiles (anomaly_stream.features)."""

from __future__ import annotations

import math

import orjson
import pytest

from anomaly_stream.features import (
    BURST_TAU_SECONDS,
    FEATURE_NAMES,
    FEATURES,
    NEVER_SEEN_SECONDS,
    RATE_TAU_SECONDS,
    RECENT_COUNTERPARTIES,
    AddressProfile,
    extract,
    unscale,
)
from anomaly_stream.generate import GeneratorConfig, TrafficGenerator
from anomaly_stream.schema import WEI_PER_ETH, WEI_PER_GWEI, Tx, decode

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
    for obj in TrafficGenerator(GeneratorConfig(seed=5)).take(3_000):
        tx = decode(orjson.dumps(obj))
        x, profile = extract(tx, profiles.get(tx.sender), tx.block_timestamp)
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
    x, _ = extract(big, None, T0)
    assert x["value_eth"] == x["gas_price_gwei"] == x["priority_fee_gwei"] == x["input_bytes"] == 1.0
    assert x["contract_creation"] == 1.0 and x["dust_transfer"] == 0.0
    x, _ = extract(small, None, T0)
    assert x["value_eth"] == x["gas_price_gwei"] == x["priority_fee_gwei"] == x["input_bytes"] == 0.0
    assert x["dust_transfer"] == 1.0 and x["contract_creation"] == 0.0
    # A sender quiet for over three years sits at the top of seconds_since_last, not above it.
    x, _ = extract(small, AddressProfile(first_seen=T0 - 10**9, last_seen=T0 - 10**9, n_tx=3), T0)
    assert x["seconds_since_last"] == 1.0


def test_first_transaction_of_a_new_sender():
    x, profile = extract(make_tx(), None, T0)
    # A first-seen sender looks like one last active a day ago, not like the extreme of the range.
    assert x["seconds_since_last"] == pytest.approx(math.log10(1 + NEVER_SEEN_SECONDS) / 8)
    assert 0.5 < x["seconds_since_last"] < 0.7
    assert x["burst"] == 0.0  # no history to burst against
    assert x["value_zscore"] == pytest.approx(0.5)  # z = 0 in the middle of [-6, 6]
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
    assert x["seconds_since_last"] == pytest.approx(math.log10(61) / 8)


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
    assert x["seconds_since_last"] == pytest.approx(math.log10(1 + 10 * 3600 - 49) / 8)


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


def test_value_far_above_history_gives_high_zscore():
    history = [(make_tx(value_wei=int((0.1 + 0.01 * (i % 5)) * WEI_PER_ETH)), T0 + 60 * i) for i in range(30)]
    xs, profile = run(history)
    assert all(0.3 < x["value_zscore"] < 0.7 for x in xs)
    x, _ = extract(make_tx(value_wei=5_000 * WEI_PER_ETH), profile, T0 + 3600)
    assert x["value_zscore"] > 0.95
    _, profile = run(history)
    x, _ = extract(make_tx(value_wei=0), profile, T0 + 3600)
    assert x["value_zscore"] < 0.05


def test_repeated_identical_value_uses_the_spread_floor():
    xs, profile = run([(make_tx(value_wei=WEI_PER_ETH), T0 + i) for i in range(10)])
    assert profile.value_var == pytest.approx(0.0, abs=1e-12)
    # Twice the value is log10(2) = 0.3 above the mean: z = 0.3 / 0.25, not infinite.
    x, _ = extract(make_tx(value_wei=2 * WEI_PER_ETH), profile, T0 + 20)
    assert x["value_zscore"] == pytest.approx((math.log10(2) / 0.25 + 6) / 12, abs=1e-3)


def test_out_of_order_event_time_never_goes_backwards():
    _, profile = extract(make_tx(), None, T0)
    x, profile = extract(make_tx(), profile, T0 - 100)
    assert x["seconds_since_last"] == 0.0
    assert profile.last_seen == T0


def test_scaled_values_of_known_inputs():
    tx = make_tx(value_wei=10**18, gas=100_000, gas_used=50_000, gas_price_wei=99 * WEI_PER_GWEI,
                 priority_fee_wei=9 * WEI_PER_GWEI, nonce=999, input_bytes=99, selector="0xffff0000")
    x, _ = extract(tx, None, T0)
    lim = {f.name: f for f in FEATURES}

    def scaled(name, v):
        return (v - lim[name].lo) / (lim[name].hi - lim[name].lo)

    assert x["value_eth"] == pytest.approx(scaled("value_eth", math.log10(2)))  # 1 ETH
    assert x["gas_price_gwei"] == pytest.approx(scaled("gas_price_gwei", 2))
    assert x["priority_fee_gwei"] == pytest.approx(scaled("priority_fee_gwei", 1))
    assert x["input_bytes"] == pytest.approx(scaled("input_bytes", 2))
    assert x["dust_transfer"] == 0.0
    assert x["contract_creation"] == 0.0
    assert x["seconds_since_last"] == pytest.approx(scaled("seconds_since_last", math.log10(1 + NEVER_SEEN_SECONDS)))
    assert x["burst"] == 0.0
    assert x["value_zscore"] == pytest.approx(0.5)


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
        ("gas_price_gwei", make_tx(gas_price_wei=37 * WEI_PER_GWEI), 37),
        ("priority_fee_gwei", make_tx(priority_fee_wei=3 * WEI_PER_GWEI), 3),
        ("input_bytes", make_tx(input_bytes=1234), 1234),
        ("seconds_since_last", make_tx(), NEVER_SEEN_SECONDS),
    ],
)
def test_unscale_inverts_scaling(name, tx, human):
    x, _ = extract(tx, None, T0)
    assert unscale(name, x[name]) == pytest.approx(human, rel=1e-9)


def test_unscale_of_history_features():
    profile = AddressProfile(first_seen=T0 - 86_400, last_seen=T0 - 30, n_tx=4, tx_per_hour=3.0, burst=4.0)
    x, profile = extract(make_tx(), profile, T0)
    assert unscale("seconds_since_last", x["seconds_since_last"]) == pytest.approx(30)
    # `burst` unscales to the Poisson z-score, not to the decayed count kept in the profile.
    recent = 4.0 * math.exp(-30 / BURST_TAU_SECONDS)
    expected = 3.0 * math.exp(-30 / RATE_TAU_SECONDS) / 60
    assert unscale("burst", x["burst"]) == pytest.approx((recent - expected) / math.sqrt(expected + 1))
    assert profile.burst == pytest.approx(recent + 1)


@pytest.mark.parametrize("scaled, human", [(0.0, -6.0), (0.5, 0.0), (0.75, 3.0), (1.0, 6.0)])
def test_unscale_linear_zscore(scaled, human):
    assert unscale("value_zscore", scaled) == pytest.approx(human)


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
