"""Features: a validated transaction, its sender's history and the partition's fee market, mapped into [0, 1].

Half-space trees need every feature inside fixed limits. Each feature is first
transformed (mostly log10(1 + x) of a quantity in human units) and then scaled
linearly between the documented limits in `FEATURES`, with clipping. Fixed
limits cost nothing per event and keep the model stable across restarts,
where a running scaler would drift and need checkpointing too.

Per-address behaviour is an `AddressProfile`, updated here and stored by the
caller (a changelogged Faust table in the worker, a dict in the backtest).
The partition's recent fee market is a `FeeMarket` (the last
`MARKET_WINDOW` gas prices), owned by the partition's `PartitionModel` so
that it is checkpointed with the trees, and passed in by the caller.
Time is event time: the block timestamp, else the Kafka message timestamp, so
that replaying a file or a backfill gives the same features as live traffic.

Why these five features (measured with `benchmarks/quality.py`, 200k
generated transactions, 4 partitions, and over several model seeds, since
ten random trees make any single run noisy): half-space trees split on
randomly chosen features at random points, and scoring stops in a node
holding less than a tenth of the reference window, so

1. every weak feature dilutes the strong ones: 9 features caught 0.75-0.86
   of drains, gas spikes and dormant transfers at 1% false positives, the
   same signals in 5 features 0.99-1.0;
2. a feature must not have its own normal tail: a two-sided value z-score
   made "a sender that usually pays ETH calls a token contract" anomalous,
   and time since last activity made every first-seen sender (8% of
   traffic) look like one; both produced most false positives;
3. binary indicators of rare kinds (`contract_creation`, `dust_transfer`)
   are isolated by any split on them;
4. a transform should squeeze normal traffic into a small part of [0, 1]
   and give the attacks the rest: value is log10(1 + ETH) up to 1000 ETH,
   so ordinary transfers sit below 0.1 and 100+ ETH above 0.67; the fee
   premium maps everything up to 1 gwei (three quarters of traffic) to 0.

The fee premium is what a transaction pays above the going price: the
larger of its EIP-1559 priority fee and its gas price minus the median gas
price of the partition's recent transactions. The second term sees legacy
(type 0) transactions, which carry no priority fee, and the absolute
premium (gwei, not a ratio) separates a drain's 5-50 gwei overbid from
ordinary tips (0-3 gwei) at any base fee.

Kept in the sender profile but no longer model inputs (measured to add
noise): the value z-score against the sender's history, time since its
last transaction, hourly rate, counterparty novelty and fan-out; the API
shows them. Dropped as inputs too: raw gas price (it follows the market,
the premium does not), priority fee (inside the premium), calldata size.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from .schema import WEI_PER_ETH, WEI_PER_GWEI, Tx

def compact(raw: bytes) -> bytes:
    """A copy of `raw` that holds only its own length, for values kept in tables.

    orjson (3.12+) returns even a 70-byte document inside its 4 KiB write
    buffer; kept in a table, that made each address profile cost ~4.3 KB of
    resident memory instead of ~0.3 KB (benchmarks/memory.py). The copy costs
    about 0.1 us.
    """
    return bytes(memoryview(raw))


RATE_TAU_SECONDS = 3600.0  # activity rate is an hourly rate, decayed over an hour
VALUE_ALPHA_MIN = 0.05  # the running value mean/variance forgets slowly
NOVELTY_ALPHA = 0.2
RECENT_COUNTERPARTIES = 8
BURST_TAU_SECONDS = 60.0  # the burst count forgets within about a minute
DUST_WEI = 10**13  # 1e-5 ETH: below this a plain transfer moves nothing of value
# The fee market is the median gas price of the partition's last 64 scored
# transactions: at 2-3 tx/s per partition that is two or three blocks, close
# enough to follow the base fee, long enough that one overbidding burst (a
# drain is 5-20 transactions) cannot move the median.
MARKET_WINDOW = 64
_log10 = math.log10


class Feature(NamedTuple):
    name: str
    meaning: str
    lo: float
    hi: float
    log: bool  # the transform was log10(1 + x): invert it to explain in human units


# Fewer, sharper features: half-space trees split on randomly chosen features,
# so every weak feature dilutes the strong ones (see the module notes). Each
# feature isolates at least one attack pattern in a region where ordinary
# traffic is rare: value (large transfers, drains), fee premium (gas-price
# spikes, drains), creation and dust (creation bursts, dusting, poisoning),
# burst (drains, dusting, creation bursts).
FEATURES: tuple[Feature, ...] = (
    Feature("value_eth", "value transferred, in ETH (1000 ETH and more at the top)", 0, 3, True),
    # lo = log10(2): a premium up to 1 gwei is ordinary and maps to 0; hi = log10(50.1): 49 gwei and more is 1.
    Feature("fee_premium_gwei", "fee paid above the going price, in gwei: the larger of the priority fee "
            "and the gas price minus the partition's recent median gas price", 0.30103, 1.7, True),
    Feature("contract_creation", "1 when `to` is null", 0, 1, False),
    Feature("dust_transfer", "1 for a plain transfer (no calldata) of less than 1e-5 ETH, zero included", 0, 1, False),
    Feature("burst", "sender's last-minute count above what its hourly rate predicts, in Poisson std devs", 0, 1.5, True),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
_SCALE = tuple((f.name, f.lo, 1.0 / (f.hi - f.lo)) for f in FEATURES)


class FeeMarket:
    """The partition's recent gas prices (gwei): a ring of the last `size` and the same values sorted.

    Part of the partition's model state (pickled with it). `median` is the
    going price before the current transaction; `add` is called after it.
    """

    __slots__ = ("size", "ring", "sorted", "next")

    def __init__(self, size: int = MARKET_WINDOW):
        self.size = size
        self.ring: list[float] = []
        self.sorted: list[float] = []
        self.next = 0  # where the next price overwrites the ring once it is full

    def __getstate__(self):
        return self.size, self.ring, self.sorted, self.next

    def __setstate__(self, state):
        self.size, self.ring, self.sorted, self.next = state

    def median(self) -> float | None:
        s = self.sorted
        return s[len(s) >> 1] if s else None

    def add(self, price_gwei: float) -> None:
        s = self.sorted
        if len(self.ring) < self.size:
            self.ring.append(price_gwei)
        else:
            old = self.ring[self.next]
            self.ring[self.next] = price_gwei
            self.next = (self.next + 1) % self.size
            del s[bisect_left(s, old)]
        insort(s, price_gwei)


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
        return compact(orjson.dumps((
            self.first_seen, self.last_seen, self.n_tx, self.tx_per_hour,
            self.value_mean, self.value_var, self.fan_out, self.recent, self.anomalies,
            self.partition, self.burst,
        )))

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


def extract(
    tx: Tx, profile: AddressProfile | None, now: float, market: FeeMarket | None = None,
) -> tuple[dict[str, float], AddressProfile]:
    """Features of `tx` given its sender's profile and the fee market before it.

    Returns the features and the updated profile. `profile` is updated in
    place when given (the caller owns it and writes it back once per batch);
    a new one is created for a first-seen sender. `market` (the partition's
    `FeeMarket`) is read, then given this transaction's gas price; without
    one, the fee premium is the priority fee alone.
    """
    log_value = _log10(1.0 + tx.value_wei / WEI_PER_GWEI)
    to_key = tx.to[:10] if tx.to else "create"
    if profile is None:
        profile = AddressProfile(first_seen=now, last_seen=now)
        since_last = 0.0
        new_counterparty = 1.0
    else:
        since_last = max(0.0, now - profile.last_seen)
        new_counterparty = 0.0 if to_key in profile.recent else 1.0

    # Update the profile with this transaction before reading the burst,
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

    gas_price = tx.gas_price_wei / WEI_PER_GWEI
    premium = tx.priority_fee_wei / WEI_PER_GWEI
    if market is not None:
        going = market.median()
        if going is not None and gas_price - going > premium:
            premium = gas_price - going
        market.add(gas_price)

    raw = (
        _log10(1.0 + tx.value_wei / WEI_PER_ETH),
        _log10(1.0 + premium),
        0.0 if tx.to else 1.0,
        1.0 if tx.value_wei < DUST_WEI and not tx.input_bytes and tx.to else 0.0,
        _log10(1.0 + burst_z) if burst_z > 0.0 else 0.0,
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
