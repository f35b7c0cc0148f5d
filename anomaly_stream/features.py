"""Features: a validated transaction plus its sender's history, mapped into [0, 1].

Half-space trees need every feature inside fixed limits. Each feature is first
transformed (mostly log10(1 + x) of a quantity in human units) and then scaled
linearly between the documented limits in `FEATURES`, with clipping. Fixed
limits cost nothing per event and keep the model stable across restarts,
where a running scaler would drift and need checkpointing too.

Per-address behaviour is an `AddressProfile`, updated here and stored by the
caller (a changelogged Faust table in the worker, a dict in the backtest).
Time is event time: the block timestamp, else the Kafka message timestamp, so
that replaying a file or a backfill gives the same features as live traffic.

Why these features (measured with `benchmarks/quality.py`, 200k generated
transactions, 4 partitions): half-space trees split on randomly chosen
features at random points, so (1) every weak feature dilutes the strong ones
(15 features caught ~0.2 of the labelled attacks at 1% false positives),
(2) binary indicators of rare kinds (`contract_creation`, `dust_transfer`)
are isolated by any split on them, and (3) a transform should squeeze normal
traffic into a small part of [0, 1] and leave the tail room: value is
log10(1 + ETH), so ordinary transfers sit below 0.1 and 100+ ETH above 0.5.
Sender history enters as deviations from the sender's own normal
(`burst`: last-minute count vs its hourly rate; `value_zscore`), not as raw
levels, because busy senders are ordinary. Kept in the profile but no longer
model inputs (they added noise): nonce, gas limit/used, selector bucket,
hourly rate, counterparty novelty and fan-out, address age.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from .schema import WEI_PER_ETH, WEI_PER_GWEI, Tx

RATE_TAU_SECONDS = 3600.0  # activity rate is an hourly rate, decayed over an hour
VALUE_ALPHA_MIN = 0.05  # the running value mean/variance forgets slowly
NOVELTY_ALPHA = 0.2
MIN_VALUE_STD = 0.25  # log10 units: a factor of 1.8
RECENT_COUNTERPARTIES = 8
BURST_TAU_SECONDS = 60.0  # the burst count forgets within about a minute
DUST_WEI = 10**13  # 1e-5 ETH: below this a plain transfer moves nothing of value
_log10 = math.log10


class Feature(NamedTuple):
    name: str
    meaning: str
    lo: float
    hi: float
    log: bool  # the transform was log10(1 + x): invert it to explain in human units


# Fewer, sharper features: half-space trees split on randomly chosen features,
# so every weak feature dilutes the strong ones (measured with
# benchmarks/quality.py: 15 features gave ~0.2 recall per scenario, see the
# module notes). Each feature below isolates at least one attack pattern in a
# region where ordinary traffic is rare.
FEATURES: tuple[Feature, ...] = (
    Feature("value_eth", "value transferred, in ETH", 0, 4, True),
    Feature("gas_price_gwei", "effective or max fee per gas, in gwei", 0, 4, True),
    Feature("priority_fee_gwei", "EIP-1559 priority fee, in gwei", 0, 2, True),
    Feature("input_bytes", "calldata size in bytes (init code for a creation)", 0, 5, True),
    Feature("contract_creation", "1 when `to` is null", 0, 1, False),
    Feature("dust_transfer", "1 for a plain transfer (no calldata) of less than 1e-5 ETH, zero included", 0, 1, False),
    Feature("seconds_since_last", "seconds since the sender's previous tx (a day for a first-seen sender)", 0, 8, True),
    Feature("burst", "sender's last-minute count above what its hourly rate predicts, in Poisson std devs", 0, 1.5, True),
    Feature("value_zscore", "value vs the sender's own history, in std devs", -6, 6, False),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
_SCALE = tuple((f.name, f.lo, 1.0 / (f.hi - f.lo)) for f in FEATURES)
# "Since last" for a sender's first transaction: a day, what a rarely active
# sender looks like. Not the top of the range: first-seen senders are common
# (8% of generated traffic), and putting them at an extreme made them the
# main source of false positives.
NEVER_SEEN_SECONDS = 86_400


@dataclass(slots=True)
class AddressProfile:
    """What we remember of one sender, compact enough to changelog per batch."""

    first_seen: float
    last_seen: float
    n_tx: int = 0
    tx_per_hour: float = 0.0
    value_mean: float = 0.0  # of log10(1 + value in gwei)
    value_var: float = 0.0
    fan_out: float = 0.0
    recent: tuple[str, ...] = ()  # address prefixes of the latest distinct counterparties
    anomalies: int = 0
    partition: int = -1  # the input partition that owns this sender, for TableBound
    burst: float = 0.0  # transactions in about the last minute, decayed (BURST_TAU_SECONDS)

    def to_bytes(self) -> bytes:
        return orjson.dumps((
            self.first_seen, self.last_seen, self.n_tx, self.tx_per_hour,
            self.value_mean, self.value_var, self.fan_out, self.recent, self.anomalies,
            self.partition, self.burst,
        ))

    @classmethod
    def from_bytes(cls, raw: bytes) -> AddressProfile:
        # Profiles written before `burst` existed have 10 fields: it starts at 0.
        f, l, n, r, m, v, fo, recent, a, p, *rest = orjson.loads(raw)
        return cls(f, l, n, r, m, v, fo, tuple(recent), a, p, *rest)

    def as_dict(self) -> dict:
        return {
            "first_seen": self.first_seen, "last_seen": self.last_seen, "n_tx": self.n_tx,
            "tx_per_hour": round(self.tx_per_hour, 4),
            "value_gwei_log_mean": round(self.value_mean, 4),
            "value_gwei_log_std": round(math.sqrt(self.value_var), 4),
            "fan_out": round(self.fan_out, 4), "anomalies": self.anomalies,
        }


def extract(tx: Tx, profile: AddressProfile | None, now: float) -> tuple[dict[str, float], AddressProfile]:
    """Features of `tx` given its sender's profile before it; returns the updated profile.

    `profile` is updated in place when given (the caller owns it and writes it
    back once per batch); a new one is created for a first-seen sender.
    """
    log_value = _log10(1.0 + tx.value_wei / WEI_PER_GWEI)
    to_key = tx.to[:10] if tx.to else "create"
    if profile is None:
        profile = AddressProfile(first_seen=now, last_seen=now)
        since_last = NEVER_SEEN_SECONDS
        zscore = 0.0
        new_counterparty = 1.0
    else:
        since_last = max(0.0, now - profile.last_seen)
        # A floor on the spread keeps one repeated value from making every
        # other value infinitely surprising.
        zscore = (log_value - profile.value_mean) / max(math.sqrt(profile.value_var), MIN_VALUE_STD)
        new_counterparty = 0.0 if to_key in profile.recent else 1.0

    # Update the profile with this transaction before reading rate and fan-out,
    # so a burst shows in its own transactions and not only in the next one.
    if profile.n_tx:
        hourly = profile.tx_per_hour * math.exp(-since_last / RATE_TAU_SECONDS)
        recent = profile.burst * math.exp(-since_last / BURST_TAU_SECONDS)
        # The hourly rate predicts hourly/60 transactions in the last minute;
        # a burst is how far above that the sender is, in Poisson std devs.
        expected = hourly * (BURST_TAU_SECONDS / RATE_TAU_SECONDS)
        burst_z = (recent - expected) / math.sqrt(expected + 1.0)
        profile.tx_per_hour = hourly + 1.0
        profile.burst = recent + 1.0
    else:
        profile.tx_per_hour = profile.burst = 1.0
        burst_z = 0.0
    alpha = max(1.0 / (profile.n_tx + 1), VALUE_ALPHA_MIN)
    delta = log_value - profile.value_mean
    profile.value_mean += alpha * delta
    profile.value_var = (1 - alpha) * (profile.value_var + alpha * delta * delta)
    if profile.n_tx:
        profile.fan_out += NOVELTY_ALPHA * (new_counterparty - profile.fan_out)
    else:
        profile.fan_out = new_counterparty
    if new_counterparty:
        profile.recent = (to_key,) + profile.recent[: RECENT_COUNTERPARTIES - 1]
    profile.n_tx += 1
    profile.last_seen = max(profile.last_seen, now)

    raw = (
        _log10(1.0 + tx.value_wei / WEI_PER_ETH),
        _log10(1.0 + tx.gas_price_wei / WEI_PER_GWEI),
        _log10(1.0 + tx.priority_fee_wei / WEI_PER_GWEI),
        _log10(1.0 + tx.input_bytes),
        0.0 if tx.to else 1.0,
        1.0 if tx.value_wei < DUST_WEI and not tx.input_bytes and tx.to else 0.0,
        _log10(1.0 + since_last),
        _log10(1.0 + burst_z) if burst_z > 0.0 else 0.0,
        zscore,
    )
    x = {}
    for (name, lo, inv), value in zip(_SCALE, raw):
        s = (value - lo) * inv
        x[name] = 0.0 if s < 0.0 else (1.0 if s > 1.0 else s)
    return x, profile


def unscale(name: str, scaled: float) -> float:
    """The human-unit value of a scaled feature, for explanations."""
    f = FEATURES[FEATURE_NAMES.index(name)]
    value = f.lo + scaled * (f.hi - f.lo)
    return 10**value - 1.0 if f.log else value
