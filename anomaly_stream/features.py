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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from .schema import WEI_PER_GWEI, Tx

RATE_TAU_SECONDS = 3600.0  # activity rate is an hourly rate, decayed over an hour
VALUE_ALPHA_MIN = 0.05  # the running value mean/variance forgets slowly
NOVELTY_ALPHA = 0.2
MIN_VALUE_STD = 0.25  # log10 units: a factor of 1.8
RECENT_COUNTERPARTIES = 8
_log10 = math.log10


class Feature(NamedTuple):
    name: str
    meaning: str
    lo: float
    hi: float
    log: bool  # the transform was log10(1 + x): invert it to explain in human units


FEATURES: tuple[Feature, ...] = (
    Feature("value_gwei", "value transferred, in gwei", 0, 14, True),
    Feature("gas_price_gwei", "effective or max fee per gas, in gwei", 0, 5, True),
    Feature("priority_fee_gwei", "EIP-1559 priority fee, in gwei", 0, 4, True),
    Feature("gas_limit", "gas limit", 4, 8, True),
    Feature("gas_used_ratio", "gas used / gas limit (0.5 when no receipt)", 0, 1, False),
    Feature("input_bytes", "calldata size in bytes", 0, 6, True),
    Feature("contract_creation", "1 when `to` is null", 0, 1, False),
    Feature("method_selector", "4-byte selector bucket (0 for plain transfers)", 0, 1, False),
    Feature("nonce", "sender nonce", 0, 7, True),
    Feature("seconds_since_last", "seconds since the sender's previous tx", 0, 8, True),
    Feature("tx_per_hour", "sender activity, decayed hourly rate", 0, 4, True),
    Feature("value_zscore", "value vs the sender's own history, in std devs", -6, 6, False),
    Feature("new_counterparty", "1 when `to` is not among the sender's recent counterparties", 0, 1, False),
    Feature("fan_out", "share of the sender's recent txs that went to new counterparties", 0, 1, False),
    Feature("address_age_seconds", "seconds since the sender was first seen", 0, 8, True),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
_SCALE = tuple((f.name, f.lo, 1.0 / (f.hi - f.lo)) for f in FEATURES)
NEVER_SEEN_SECONDS = 10**8 - 1  # "since last" for a first transaction: the top of the range


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

    def to_bytes(self) -> bytes:
        return orjson.dumps((
            self.first_seen, self.last_seen, self.n_tx, self.tx_per_hour,
            self.value_mean, self.value_var, self.fan_out, self.recent, self.anomalies,
            self.partition,
        ))

    @classmethod
    def from_bytes(cls, raw: bytes) -> AddressProfile:
        f, l, n, r, m, v, fo, recent, a, p = orjson.loads(raw)
        return cls(f, l, n, r, m, v, fo, tuple(recent), a, p)

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
    decay = math.exp(-since_last / RATE_TAU_SECONDS) if profile.n_tx else 0.0
    profile.tx_per_hour = profile.tx_per_hour * decay + 1.0
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

    selector = tx.selector
    raw = (
        log_value,
        _log10(1.0 + tx.gas_price_wei / WEI_PER_GWEI),
        _log10(1.0 + tx.priority_fee_wei / WEI_PER_GWEI),
        _log10(max(tx.gas, 1)),
        tx.gas_used / tx.gas if tx.gas_used is not None and tx.gas else 0.5,
        _log10(1.0 + tx.input_bytes),
        0.0 if tx.to else 1.0,
        int(selector[2:6], 16) / 65535.0 if selector else 0.0,
        _log10(1.0 + tx.nonce),
        _log10(1.0 + since_last),
        _log10(1.0 + profile.tx_per_hour),
        zscore,
        new_counterparty,
        profile.fan_out,
        _log10(1.0 + max(0.0, now - profile.first_seen)),
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
