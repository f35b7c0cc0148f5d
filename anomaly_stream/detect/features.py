"""Features: what a transaction does, its addresses' history and the fee market, mapped into [0, 1].

Two perspectives, each with its own half-space trees per partition:

- **sender**: the transaction as its sender's act (`extract_sender`), on the
  input topic, partitioned by sender;
- **receiver**: the same transaction as an event in the life of the
  address it gives value or rights to (`extract_receiver`), on the edges
  topic, partitioned by that address. Approval phishing, fan-in sweeps and
  poisoning are visible only here: many owners granting one fresh spender,
  many fresh addresses paying one fresh collector.

Both are co-partitioned (same partition count, same key hash), so one
`AddressProfile` per address holds both sides, in the partition that owns
the address on both topics.

What a transaction moves comes from its calldata (`semantics.decode_call`):
on mainnet most value moves as tokens, so a USDT drain is a 0-ETH call to
the token contract whose real recipient is in the arguments.

Every limit below comes from real mainnet traffic (../shared/data/traffic,
`benchmarks/calibration.py` prints the figures): 2017 (19,999 tx,
ethereum-etl), 2024 (3,591 tx, JSON-RPC blocks), 2020-22 (6,716 tx with
fees, bot-heavy MEV blocks). A transform squeezes what ordinary traffic
does into the bottom of [0, 1]: lower limits sit near the 90th percentile
of ordinary traffic and upper limits near its 99.9th, so that half-space
trees, which split at random points, isolate the rest.

Lessons kept from the generator era (benchmarks/quality.py history): every
weak feature dilutes the strong ones (fewer, sharper features), and a
feature must not have a normal tail of its own (two-sided z-scores and
"time since last seen" made ordinary first-seen senders anomalous).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from .lookalike import DIGEST_LENGTH, digest, imitated
from .schema import WEI_PER_ETH, WEI_PER_GWEI, Tx
from .semantics import PULLED_BY_TO, Call

def compact(raw: bytes) -> bytes:
    """A copy of `raw` that holds only its own length, for values kept in tables.

    orjson (3.12+) returns even a 70-byte document inside its 4 KiB write
    buffer; kept in a table, that made each address profile cost ~4.3 KB of
    resident memory instead of ~0.3 KB (benchmarks/memory.py). The copy costs
    about 0.1 us.
    """
    return bytes(memoryview(raw))


RATE_TAU_SECONDS = 3600.0  # activity rate is an hourly rate, decayed over an hour
BURST_TAU_SECONDS = 60.0  # the burst count forgets within about a minute
VALUE_ALPHA_MIN = 0.05  # the running amount mean/variance forgets slowly
NOVELTY_ALPHA = 0.2
# Digests of the latest distinct counterparties, both directions: what a look-alike is
# compared with (lookalike.py's false-match table was measured at 16). A poisoning comes
# minutes after the victim's real transfer (Poison-Hunter's delays: median 3 blocks for
# zero-value, 24 for dust), and an active victim meets others in between: after a real
# send, the sender met 8+ others within 5 minutes in 37.7% of sends (2017, exchange
# wallets weigh in), 8.1% (2024), 6.4% (MEV blocks); 16+ in 32.9%, 5.2%, 3.2%. At 8 the
# generated background's busy victims had lost the real counterparty (report seeds:
# fake-token poisoning 0.68, at 16 0.93); 8 more digests cost ~150 bytes of a profile.
RECENT_COUNTERPARTIES = 16
RECENT_INBOUND = 16  # (digest, time) of the latest distinct inbound senders and approvers
INBOUND_WINDOW_SECONDS = 3600.0  # distinct senders "in the last hour"
APPROVAL_WINDOW_SECONDS = 6 * 3600.0  # Forta's ice-phishing bot counts approvals over hours
# Freshness decays as exp(-age / FRESH_SECONDS): 0.92 after 5 minutes, 0.37
# after an hour, 0.05 after three; exchange and router addresses, which
# receive from many fresh addresses all day, are hours old to a running worker.
FRESH_SECONDS = 3600.0
RUN_SECONDS = 600.0  # a run of moves to one first-time counterparty: within ten minutes
DEPLOYER_SECONDS = 3600.0  # calls within the hour after the caller created a contract
# The fee market is the median gas price of the partition's last 64 scored
# transactions: at mainnet's ~15 tx/s over 8 partitions, about a block;
# 2024's median gas price moves ~3% block to block, so the median follows
# the base fee and a single overbidding sender cannot move it.
MARKET_WINDOW = 64
_log10 = math.log10
_log2 = math.log2


class Feature(NamedTuple):
    name: str
    meaning: str
    lo: float
    hi: float
    transform: str  # "log10" (log10(1 + x)), "log2" (log2(1 + x)) or "" (linear): inverted to explain


# Figures: `benchmarks/calibration.py`, percentiles p90/p99/p99.9 of each
# transformed value over real traffic, 2017 | 2024 | 2020-22 MEV blocks.
SENDER_FEATURES: tuple[Feature, ...] = (
    # One-sided z of the log amount moved (ETH, or the token's raw amount)
    # against the sender's own history of that asset, for a counterparty it
    # never dealt with; 0 with fewer than 2 earlier moves of that asset.
    # Real: p90 0.09 | 0 | 0, p99 1.2 | 0.59 | 1.96, p99.9 2.3 | 2.4 | 14.5.
    Feature("value_to_new_counterparty", "amount moved to a first-time counterparty, in standard deviations "
            "above the sender's usual amount of that asset", 0.5, 6.0, ""),
    # log10(1 + ETH) moved by a sender on its first transaction.
    # Real: p90 0.32 | 0.04 | 0.11, p99 2.0 | 0.60 | 1.04, p99.9 3.4 | 1.7 | 2.6
    # (2017's tail is exchange deposit addresses). From 9 ETH (1.0) to 2,500 ETH (3.4).
    Feature("fresh_sender_value_eth", "ETH moved by a sender seen for the first time", 1.0, 3.4, "log10"),
    # log10(1 + premium / going price): what is paid above the partition's
    # recent median gas price, as a multiple of it, so it means the same at
    # 20 and at 200 gwei (the generator era's absolute 1-49 gwei saturated on
    # ordinary 2024 traffic). Real: p90 0.10 | 0.19 | 0.11, p99 0.70 | 0.57 |
    # 0.99, p99.9 0.70 | 1.48 | 2.5 (MEV bots). From 0.19 (0.55x) to 1.48 (29x).
    Feature("fee_premium_ratio", "fee paid above the going price, as a multiple of it", 0.19, 1.48, "log10"),
    # log10(1 + z), z: the last minute's count above what the sender's hourly
    # rate predicts, in Poisson standard deviations. Real: p90 1.66 | 0.55 |
    # 0.82, p99 2.14 | 1.23 | 1.42, p99.9 2.19 | 1.44 | 1.58 (2017: exchange
    # hot wallets sending hundreds a minute). From 0.55 to 2.19.
    Feature("burst", "sender's last-minute count above its hourly rate, in Poisson std devs", 0.55, 2.19, "log10"),
    # Grants to a spender or operator the sender never dealt with: 1 unlimited,
    # 0.5 limited. Nonzero for 0.05% | 6.1% | 5.7% of real traffic, mostly
    # unlimited grants to routers: alone no anomaly; with the receiver's side
    # (many owners, a fresh spender) it is phishing.
    Feature("grant_to_new_spender", "approval to a first-time spender: 1 unlimited, 0.5 limited", 0.0, 1.0, ""),
    # Contract creations: 0.16% | 0 | 0.01% of real traffic.
    Feature("contract_creation", "1 when `to` is null", 0.0, 1.0, ""),
    # log2(1 + n): n value moves in a row to the same first-time counterparty
    # within ten minutes (a drain empties a wallet in several transfers, of
    # several tokens); 0 for n < 2. Real: nonzero 2.5% | 1.1% | 0.13%, p99
    # 2.8 | 1.6 | 0, p99.9 5.4 | 2.3 | 1.6 (2017: payouts in a row). From 2 moves to 9.
    Feature("repeat_to_new_counterparty", "value moves to the same first-time counterparty within ten minutes",
            1.58, 3.32, "log2"),
    # log10(gas limit) of a call by an address that created a contract within
    # the hour (an exploit: deploy, then call it with a large gas limit).
    # Real: nonzero 0.16% | 0 | 0, and then p99.9 4.95 (90k gas). From 250k
    # gas (p90 of all real 2017 limits) to 3.5M (their p99.9).
    Feature("deployer_call_gas", "gas limit of a call made within the hour after the caller created a contract",
            5.4, 6.54, "log10"),
)

RECEIVER_FEATURES: tuple[Feature, ...] = (
    # log2(1 + distinct inbound senders within the hour; a profile remembers
    # 16) x the share of them that were first-time senders x the receiver's
    # freshness: a fresh collector swept by fresh addresses. Each factor alone
    # is ordinary (real p90: 16 senders an hour at exchanges; fresh-sender
    # share 0.97; most receivers are new to any observer), the product is not.
    # Real, over whole traces (so the first hour's exchange wallets count as
    # fresh; 2024 spans five minutes), with first-time senders counted as
    # the edges count them (`flows.young` and a nonce of at most 1): p90 0.20
    # | 0 | 0, p99 1.80 | 0.91 | 0, p99.9 3.53 | 2.26 | 0.20 (before the
    # stricter `sender_fresh`: p90 0.66 | 2.09 | 0.20). The limits were set
    # on those older figures and kept: 2.09 now sits near 2024's p99.9 and
    # between 2017's p99 and p99.9. To 4.09 (the product's maximum).
    Feature("fresh_fan_in", "distinct senders within the hour x their first-time share x receiver freshness",
            2.09, 4.09, ""),
    # log2(1 + distinct owners granting this address within 6 hours) x its
    # freshness: many owners approving a spender nobody knew (Forta's
    # ice-phishing bot counts ~10 approvals to one spender within hours).
    # Real: nonzero 0.08% | 13.7% | 5.2%, p99 0 | 3.92 | 1.0, p99.9 0 | 4.0 |
    # 2.3 (2024: routers within five minutes of blocks, all fresh to us).
    Feature("fresh_approvers", "distinct approving owners within 6 hours x spender freshness", 1.0, 4.0, ""),
    # 1 when a third party moved this owner's tokens (a top-level transferFrom
    # not sent by the owner) to an address the owner never dealt with: how an
    # approval phishing drain looks from the victim's side. Real: nonzero for
    # 0.11% | 0.25% | 0.21% of edges.
    Feature("pulled_by_third_party", "a third party moved this owner's tokens to a stranger", 0.0, 1.0, ""),
    # log10(1 + ETH received) by an address first seen within the hour: the
    # hop of a peel chain. Real: p90 1.04 | 0.12 | 0.15, p99 3.8 | 0.81 | 1.1,
    # p99.9 3.99 | 1.9 | 2.5. From 10 ETH (1.04) to 9,800 ETH (3.99).
    Feature("fresh_receiver_value_eth", "ETH received by an address first seen within the hour", 1.04, 3.99, "log10"),
)

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


SENDER = "sender"
RECEIVER = "receiver"
FEATURES = {SENDER: SENDER_FEATURES, RECEIVER: RECEIVER_FEATURES}
PERSPECTIVE_FEATURES = {p: tuple(f.name for f in fs) for p, fs in FEATURES.items()}
FEATURE_NAMES = PERSPECTIVE_FEATURES[SENDER]
_FEATURE_BY_NAME = {f.name: f for fs in FEATURES.values() for f in fs}
_SCALES = {p: tuple((f.lo, 1.0 / (f.hi - f.lo)) for f in fs) for p, fs in FEATURES.items()}


def _scale(perspective: str, raw: tuple[float, ...]) -> list[float]:
    x = []
    for (lo, inv), value in zip(_SCALES[perspective], raw):
        s = (value - lo) * inv
        x.append(0.0 if s < 0.0 else (1.0 if s > 1.0 else s))
    return x


def unscale(name: str, scaled: float) -> float:
    """The human-unit value of a scaled feature, for explanations."""
    f = _FEATURE_BY_NAME[name]
    value = f.lo + scaled * (f.hi - f.lo)
    if f.transform == "log10":
        return 10**value - 1.0
    if f.transform == "log2":
        return 2**value - 1.0
    return value


@dataclass(slots=True)
class AddressProfile:
    """What we remember of one address, both sides, compact enough to changelog per batch."""

    first_seen: float
    last_seen: float
    n_tx: int = 0  # transactions sent
    tx_per_hour: float = 0.0
    value_mean: float = 0.0  # of log10(1 + ETH moved)
    value_var: float = 0.0
    fan_out: float = 0.0  # smoothed share of sends to a first-time counterparty
    counterparties: tuple[str, ...] = ()  # digests (lookalike.digest) of recent counterparties, both directions
    anomalies: int = 0
    partition: int = -1  # the partition that owns this address, for TableBound
    burst: float = 0.0  # transactions in about the last minute, decayed (BURST_TAU_SECONDS)
    token_n: int = 0  # token moves sent
    token_mean: float = 0.0  # of log10(1 + raw token amount)
    token_var: float = 0.0
    in_n: int = 0  # inbound transactions (edges) received
    in_senders: tuple = ()  # (digest, time) of recent distinct inbound senders
    in_fresh_share: float = 0.0
    approvers: tuple = ()  # (digest, time) of recent distinct owners granting this address
    funded_by: str = ""  # the watch-list of the address that first sent it funds, if any
    run_to: str = ""  # digest of the latest first-time counterparty
    run_n: int = 0  # value moves to it since, within RUN_SECONDS
    run_t: float = 0.0
    created_at: float = 0.0  # when this address last created a contract
    pulled_at: float = 0.0  # when this address, as a spender, last pulled the tokens of an owner who granted it
    # Inflow state of the flow rules (detect/flows.py), the receiving side:
    src: str = ""  # digest of the one address that moved value to this one, "*" once there were several
    src_n: int = 0  # value moves received from it
    src_eth: float = 0.0  # ETH received from it
    src_tokens: tuple = ()  # distinct tokens received from it (their last characters), at most 4
    fresh_in: int = 0  # value moves received from fresh senders; -1 once one came from an established sender
    flow_at: float = 0.0  # when the drain rule last named this address as the receiver
    # Funding provenance (flows.py): who paid this address first, carried in its edges.
    funder: str = ""  # digest of the first address that sent it ETH
    hops: int = 0  # relays in a row that brought that first payment (flows.relay_depth; 0: none)
    fan_funder: str = ""  # the funder shared by the fresh senders paying this address, "*" once they differ
    fan_senders: tuple = ()  # digests of those distinct fresh senders, at most flows.FAN_IN_MIN_SENDERS
    flow_rule: str = ""  # the flow rule that set flow_at
    # (tx hash, owner, token, time) of the latest grants to this address, at most
    # RECENT_INBOUND within APPROVAL_WINDOW_SECONDS: the approvals at risk once it pulls.
    grants: tuple = ()
    # Moves (tx hash, time, kind, token, value in wei as text, sender) a flow rule
    # raises late if it fires (flows.take_earlier): the first from `src` while this
    # address is fresh, and the fan-in's sweeps before the one it fires on.
    src_first: tuple = ()
    fan_first: tuple = ()
    # The peel chain's moves that led here and were not raised (flows.trail_of, at most
    # flows.PEEL_TRAIL): raised late by the receiver that reveals the chain.
    trail: tuple = ()

    def to_bytes(self) -> bytes:
        return compact(orjson.dumps((
            self.first_seen, self.last_seen, self.n_tx, self.tx_per_hour, self.value_mean,
            self.value_var, self.fan_out, self.counterparties, self.anomalies, self.partition,
            self.burst, self.token_n, self.token_mean, self.token_var, self.in_n,
            self.in_senders, self.in_fresh_share, self.approvers, self.funded_by,
            self.run_to, self.run_n, self.run_t, self.created_at, self.pulled_at,
            self.src, self.src_n, self.src_eth, self.src_tokens, self.fresh_in, self.flow_at,
            self.funder, self.hops, self.fan_funder, self.fan_senders, self.flow_rule, self.grants,
            self.src_first, self.fan_first, self.trail,
        )))

    @classmethod
    def from_bytes(cls, raw: bytes) -> AddressProfile:
        # Profiles of earlier versions (10 or 11 fields, `recent` holding address
        # prefixes) keep their sender statistics; the rest starts empty. Those
        # of 24 fields (before the flow rules) start with no inflow state, those
        # of 30 (before funding provenance) with no funder.
        fields = orjson.loads(raw)
        if len(fields) < 19:
            f, l, n, r, m, v, fo, _recent, a, p, *rest = fields
            return cls(f, l, n, r, m, v, fo, (), a, p, *rest[:1])
        profile = cls(*fields)
        # Digests of another length (before the middle characters) would look
        # alike the new digest of the same address: forgotten once.
        profile.counterparties = tuple(d for d in profile.counterparties if len(d) == DIGEST_LENGTH)
        profile.in_senders = tuple(map(tuple, profile.in_senders))
        profile.approvers = tuple(map(tuple, profile.approvers))
        profile.src_tokens = tuple(profile.src_tokens)
        profile.fan_senders = tuple(profile.fan_senders)
        profile.grants = tuple(map(tuple, profile.grants))
        profile.src_first = tuple(map(tuple, profile.src_first))
        profile.fan_first = tuple(map(tuple, profile.fan_first))
        profile.trail = tuple(map(tuple, profile.trail))
        return profile

    def as_dict(self) -> dict:
        return {
            "first_seen": self.first_seen, "last_seen": self.last_seen, "n_tx": self.n_tx,
            "tx_per_hour": round(self.tx_per_hour, 4),
            "value_eth_log_mean": round(self.value_mean, 4),
            "value_eth_log_std": round(math.sqrt(self.value_var), 4),
            "token_moves": self.token_n, "fan_out": round(self.fan_out, 4), "anomalies": self.anomalies,
            "inbound": self.in_n, "inbound_fresh_share": round(self.in_fresh_share, 4),
            "funded_by": self.funded_by or None,
        }


def new_profile(now: float) -> AddressProfile:
    return AddressProfile(first_seen=now, last_seen=now)


def remember_counterparty(profile: AddressProfile, d: str) -> bool:
    """Put a counterparty digest first; True if it was not among the recent ones."""
    known = profile.counterparties
    if d in known:
        if known[0] != d:
            profile.counterparties = (d,) + tuple(c for c in known if c != d)
        return False
    profile.counterparties = (d,) + known[: RECENT_COUNTERPARTIES - 1]
    return True


def _moved(tx: Tx, call: Call) -> tuple[bool, float]:
    """(is it a token, log10(1 + amount)) of what the call moves; ETH in ETH, tokens raw."""
    if call.token is not None and call.kind == "token_transfer":
        return True, _log10(1.0 + call.amount)
    return False, _log10(1.0 + tx.value_wei / WEI_PER_ETH)


def _running(n: int, mean: float, var: float, x: float) -> tuple[float, float, float]:
    """z of x against (mean, var) before it, then the updated mean and variance."""
    z = (x - mean) / math.sqrt(var + 0.25) if n >= 2 else 0.0
    alpha = max(1.0 / (n + 1), VALUE_ALPHA_MIN)
    delta = x - mean
    return z, mean + alpha * delta, (1 - alpha) * (var + alpha * delta * delta)


def extract_sender(
    tx: Tx, call: Call, profile: AddressProfile | None, now: float, market: FeeMarket | None,
) -> tuple[list[float], AddressProfile, bool]:
    """Sender features of `tx` given its sender's profile and the fee market before it.

    Returns the features, the updated profile (in place when given; the
    caller writes it back once per batch) and whether the counterparty is new
    to the sender. `market` is read, then given this transaction's gas price.
    """
    raw, profile, new_counterparty = sender_raw(tx, call, profile, now, market)
    return _scale(SENDER, raw), profile, new_counterparty


def sender_raw(
    tx: Tx, call: Call, profile: AddressProfile | None, now: float, market: FeeMarket | None,
) -> tuple[tuple[float, ...], AddressProfile, bool]:
    """`extract_sender` before scaling: the transformed values the limits apply to."""
    first = profile is None or profile.n_tx == 0
    if profile is None:
        profile = new_profile(now)
    burst_z = _advance_rates(profile, now)
    counterparty = call.counterparty
    d = digest(counterparty) if counterparty is not None else ""
    new_counterparty = counterparty is not None and remember_counterparty(profile, d)
    run = _run_to_new_counterparty(tx, call, profile, d, new_counterparty, now)
    if tx.to is None:
        profile.created_at = now
    deployer = tx.to is not None and profile.created_at and now - profile.created_at <= DEPLOYER_SECONDS
    profile.fan_out += NOVELTY_ALPHA * ((1.0 if new_counterparty else 0.0) - profile.fan_out)
    z = _amount_z(tx, call, profile)
    profile.n_tx += 1
    profile.last_seen = max(profile.last_seen, now)
    ratio = _fee_ratio(tx, market)
    grant = _grant(tx, call, profile, new_counterparty, now)
    return (
        z if new_counterparty and z > 0.0 else 0.0,
        _log10(1.0 + tx.value_wei / WEI_PER_ETH) if first else 0.0,
        _log10(1.0 + ratio),
        _log10(1.0 + burst_z) if burst_z > 0.0 else 0.0,
        grant,
        0.0 if tx.to else 1.0,
        _log2(1.0 + run) if run else 0.0,
        _log10(tx.gas) if deployer else 0.0,
    ), profile, new_counterparty


def _advance_rates(profile: AddressProfile, now: float) -> float:
    """Decay the sender's hourly rate and burst count to `now` and count this transaction in both.

    Returns the burst z before it: the decayed last-minute count above what
    the hourly rate predicts, in Poisson standard deviations (0 for a first send).
    """
    since_last = max(0.0, now - profile.last_seen)
    if profile.n_tx:
        hourly = profile.tx_per_hour * math.exp(-since_last / RATE_TAU_SECONDS)
        recent = profile.burst * math.exp(-since_last / BURST_TAU_SECONDS)
        # The hourly rate predicts hourly/60 transactions in the last minute.
        expected = hourly * (BURST_TAU_SECONDS / RATE_TAU_SECONDS)
        burst_z = (recent - expected) / math.sqrt(expected + 1.0)
        profile.tx_per_hour = hourly + 1.0
        profile.burst = recent + 1.0
    else:
        profile.tx_per_hour = profile.burst = 1.0
        burst_z = 0.0
    return burst_z


def _run_to_new_counterparty(tx: Tx, call: Call, profile: AddressProfile, d: str,
                             new_counterparty: bool, now: float) -> int:
    """Update the run of value moves to the latest first-time counterparty `d`; its length, if 2 or more, else 0."""
    moves_value = call.kind == "token_transfer" or (call.kind == "eth_transfer" and tx.value_wei > 0)
    if new_counterparty and moves_value:
        profile.run_to, profile.run_n, profile.run_t = d, 1, now
    elif moves_value and d == profile.run_to and now - profile.run_t <= RUN_SECONDS:
        profile.run_n += 1
    return profile.run_n if moves_value and d == profile.run_to and profile.run_n >= 2 else 0


def _amount_z(tx: Tx, call: Call, profile: AddressProfile) -> float:
    """z of the amount moved against the sender's history of that asset (ETH or tokens), then learn it."""
    is_token, amount = _moved(tx, call)
    if is_token:
        z, profile.token_mean, profile.token_var = _running(profile.token_n, profile.token_mean,
                                                             profile.token_var, amount)
        profile.token_n += 1
    else:
        z, profile.value_mean, profile.value_var = _running(profile.n_tx - profile.token_n, profile.value_mean,
                                                             profile.value_var, amount)
    return z


def _fee_ratio(tx: Tx, market: FeeMarket | None) -> float:
    """The premium paid above the market's going price, as a multiple of it; then the market learns this price."""
    gas_price = tx.gas_price_wei / WEI_PER_GWEI
    premium = tx.priority_fee_wei / WEI_PER_GWEI
    ratio = 0.0
    if market is not None:
        going = market.median()
        if going is not None:
            if gas_price - going > premium:
                premium = gas_price - going
            ratio = premium / going if going > 0 else 0.0
        market.add(gas_price)
    return ratio


def _grant(tx: Tx, call: Call, profile: AddressProfile, new_counterparty: bool, now: float) -> float:
    """The grant_to_new_spender value; a permit the spender submits itself joins its own approvers."""
    if (call.kind == "approval" and not call.revoke and call.counterparty == tx.sender
            and call.owner is not None and call.owner != tx.sender):
        # A permit the spender submits itself: it sends no edge to itself, so
        # the grant joins its approvers here (same partition, same profile).
        profile.approvers, _ = _recent_distinct(profile.approvers, digest(call.owner), now, APPROVAL_WINDOW_SECONDS)
        profile.grants = _recent_grants(profile.grants, tx.hash, call.owner, call.token, now)
    grant = 0.0
    if call.kind == "approval" and not call.revoke and new_counterparty:
        grant = 1.0 if call.unlimited else 0.5
    return grant


def pulls_from_approver(tx: Tx, call: Call, profile: AddressProfile, now: float) -> bool:
    """The sender moves the tokens of an owner who granted it an allowance within APPROVAL_WINDOW_SECONDS.

    Real spenders are contracts and do not send: in ../shared/data/traffic
    (benchmarks/calibration.py, "spenders.*") of the spenders granted by 2+
    owners (2017: 1 while replayed in order, 2024: 21, 2020-22 MEV blocks:
    22) one sent anything (MEV: 24 transactions, a bot); spenders granted by
    one owner sent 3 (2017) and 3 (MEV). Pulling a granting owner's tokens
    is rarer still: the rule fires on 3 of 2017's 19,999 transactions
    (0.015%) and on none of 2024's or MEV's (backtest, by reason). An
    address that collects allowances and then pulls them itself is the
    drainer of approval and permit phishing (Forta's ice-phishing bot keys
    on the same transferFrom by the approved EOA).
    """
    owner = call.owner
    return (call.kind == "token_transfer" and owner is not None and owner != tx.sender
            and call.method not in PULLED_BY_TO and granted_by(profile, owner, now))


def granted_by(profile: AddressProfile, owner: str, now: float) -> bool:
    """`owner` granted this address an allowance within APPROVAL_WINDOW_SECONDS."""
    if not profile.approvers:
        return False
    d = digest(owner)
    since = now - APPROVAL_WINDOW_SECONDS
    return any(e == d and t >= since for e, t in profile.approvers)


class Edge(NamedTuple):
    """One transaction as the receiving side sees it: what the edges topic carries.

    `receiver` is the address the edge is keyed (and partitioned) by: the
    counterparty, the owner a call moves or grants from, or the contract that
    spent the owner's allowance inside a multicall. `other` is the address the
    receiver meets in it: the sender for the counterparty, the counterparty
    for the owner (a zero-value transferFrom(owner, lookalike, 0) puts the
    look-alike into the owner's history), the owner for the contract.
    """

    tx_hash: str
    receiver: str
    other: str
    role: str  # "to", "owner" or "via" (EDGE_ROLES)
    kind: str
    method: str
    token: str | None
    value_wei: int
    sender: str
    sender_fresh: bool  # the sender had sent nothing before
    event_time: float
    block_number: int | None
    # Version 2: the sender's funding provenance (AddressProfile.funder) and,
    # since version 3, the relays in a row this payment ends (`flows.relay_depth`;
    # version 2 carried the sender's own depth, read as 0); "" and 0 in
    # version-1 edges, which old workers may still have on the topic.
    sender_funder: str = ""
    sender_hops: int = 0
    sender_nonce: int = 0  # version 3: the transaction's nonce, how busy its sender is (0 before)
    # Version 4: a relay's payment carries the chain's earlier moves (AddressProfile.trail).
    sender_trail: tuple = ()
    # Version 5: a token transfer that left its owner none of the token (Tx.owner_token_balance 0).
    sender_emptied: bool = False

    def to_bytes(self) -> bytes:
        return orjson.dumps((EDGE_VERSION, *self[:7], str(self.value_wei), *self[8:]))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Edge:
        """Decode an edge; anything malformed raises ValueError (the edges topic is input too)."""
        try:
            fields = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"malformed edge: {exc}") from None
        if (not isinstance(fields, list) or not fields or type(fields[0]) is not int
                or (len(fields), fields[0]) not in _EDGE_SHAPES):
            raise ValueError("not an edge of a known version")
        _, h, receiver, other, role, kind, method, token, value, sender, fresh, t, block, *provenance = fields
        # Missing in older versions: the provenance (before 2), the nonce (before 3), the trail
        # (before 4) and the emptied flag (before 5).
        funder, hops, nonce, trail, emptied = provenance + ["", 0, 0, [], False][len(provenance):]
        strings = (h, receiver, other, role, kind, method, sender, funder)
        if (not all(isinstance(v, str) for v in strings) or not (token is None or isinstance(token, str))
                or not isinstance(value, str) or not value.isdigit() or len(value) > 40
                or not isinstance(fresh, bool) or not isinstance(t, (int, float))
                or not (block is None or isinstance(block, int))
                or not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops < 1 << 16
                or not isinstance(nonce, int) or isinstance(nonce, bool) or not 0 <= nonce < 1 << 64
                or len(funder) > DIGEST_LENGTH
                or len(receiver) != 42 or len(other) != 42 or role not in EDGE_ROLES
                or type(trail) is not list or (trail and not _valid_trail(trail))
                or not isinstance(emptied, bool)):
            raise ValueError("malformed edge fields")
        return cls(h, receiver, other, role, kind, method, token, int(value), sender, fresh, float(t), block,
                   funder, hops if fields[0] >= 3 else 0, nonce, tuple(map(tuple, trail)), emptied)


def _valid_trail(trail: list) -> bool:
    """At most TRAIL_MOVES moves (tx hash, time, sender, receiver, wei as text, perspective)."""
    return len(trail) <= TRAIL_MOVES and all(
        isinstance(m, list) and len(m) == 6 and isinstance(m[0], str) and len(m[0]) <= 66
        and isinstance(m[1], (int, float)) and not isinstance(m[1], bool)
        and isinstance(m[2], str) and len(m[2]) == 42 and isinstance(m[3], str) and len(m[3]) == 42
        and isinstance(m[4], str) and m[4].isdigit() and len(m[4]) <= 40 and m[5] in (SENDER, RECEIVER)
        for m in trail)


# "to": the counterparty meets the sender (a spender its grantor); "owner": the owner
# a call moves or grants from meets the counterparty; "via": a contract that spent
# the owner's allowance inside the call (semantics.PULLED_BY_TO) meets the owner.
EDGE_ROLES = frozenset({"to", "owner", "via"})
EDGE_VERSION = 5
# (field count, version) of the edges decoded: versions 1 (before the sender's
# provenance), 2 (another meaning of `sender_hops`, no nonce), 3 (no trail) and
# 4 (no emptied flag) stay readable through a rolling upgrade.
_EDGE_SHAPES = frozenset({(13, 1), (15, 2), (16, 3), (17, 4), (18, 5)})
# Moves a relay's payment carries at most (flows.PEEL_TRAIL, kept here so the
# decoder needs no import of the rules).
TRAIL_MOVES = 4


# Only what moves value or grants rights reaches the receiving side: a call's
# `to` is a contract that every user of a dapp calls (in real traffic such
# receivers have 16+ distinct senders an hour at the 90th percentile), which
# says nothing about the contract and drowns the receivers that matter.
EDGE_KINDS = frozenset({"eth_transfer", "token_transfer", "approval", "withdrawal"})


def edges_of(tx: Tx, call: Call, sender_fresh: bool, now: float, funder: str = "", hops: int = 0,
             trail: tuple = ()) -> list[Edge]:
    """The edges a scored transaction sends to the receiving side.

    `sender_fresh` (`flows.young`: first seen within the hour, at most one
    send before) counts only with a nonce of at most 1: an address new on
    chain, not just new to this worker. In an 8.7-hour trace most senders
    are first seen (2017: the first-time share of an exchange's inbound
    senders is 0.97 at p90); with the nonce only throwaway addresses remain.
    (Trace files carry no nonce: the reader's placeholder is 0.)
    `funder` is the sender's provenance (AddressProfile.funder), `hops` the
    relays in a row this payment ends (`flows.relay_depth`), `trail` the chain's
    earlier moves a relay's payment carries (`flows.trail_of`).
    """
    if call.kind not in EDGE_KINDS:
        return []
    sender_fresh = sender_fresh and tx.nonce <= 1
    out = []
    counterparty, owner = call.counterparty, call.owner
    if counterparty is not None and counterparty != tx.sender:
        # A spender meets whoever grants: the owner of a permit, which anyone may submit;
        # a mixer's recipient the pool that pays it, whoever relays the withdrawal.
        grantor = owner if call.kind in ("approval", "withdrawal") and owner is not None else tx.sender
        emptied = call.kind == "token_transfer" and call.amount > 0 and tx.owner_token_balance == 0
        out.append(Edge(tx.hash, counterparty, grantor, "to", call.kind, call.method, call.token,
                        tx.value_wei, tx.sender, sender_fresh, now, tx.block_number, funder, hops, tx.nonce,
                        trail, emptied))
    if call.kind == "withdrawal":
        return out
    if owner is not None and owner != tx.sender and owner != counterparty and counterparty is not None:
        out.append(Edge(tx.hash, owner, counterparty, "owner", call.kind, call.method, call.token,
                        tx.value_wei, tx.sender, sender_fresh, now, tx.block_number, funder, hops, tx.nonce))
    if call.method in PULLED_BY_TO and owner is not None and tx.to not in (owner, counterparty):
        # The contract that spent the owner's allowance, where the owner's grants to it are kept.
        out.append(Edge(tx.hash, tx.to, owner, "via", call.kind, call.method, call.token,
                        tx.value_wei, tx.sender, sender_fresh, now, tx.block_number, funder, hops, tx.nonce))
    return out


def _recent_grants(grants: tuple, tx_hash: str, owner: str, token: str | None, now: float) -> tuple:
    """Add a grant to the bounded list of recent ones (AddressProfile.grants), the newest first."""
    since = now - APPROVAL_WINDOW_SECONDS
    return ((tx_hash, owner, token, now),) + tuple(g for g in grants[:RECENT_INBOUND - 1] if g[3] >= since)


def _recent_distinct(entries: tuple, d: str, now: float, window: float) -> tuple[tuple, int]:
    """Add (d, now) to a bounded list of distinct (digest, time); count those within the window."""
    kept = [(d, now)] + [(e, t) for e, t in entries if e != d and t >= now - window]
    kept = tuple(kept[:RECENT_INBOUND])
    return kept, len(kept)


def extract_receiver(edge: Edge, profile: AddressProfile | None, now: float,
                     ) -> tuple[list[float], AddressProfile, str | None]:
    """Receiver features of an edge, the updated profile, and the counterparty digest `other` imitates."""
    raw, profile, imitates = receiver_raw(edge, profile, now)
    return _scale(RECEIVER, raw), profile, imitates


def receiver_raw(edge: Edge, profile: AddressProfile | None, now: float,
                 ) -> tuple[tuple[float, ...], AddressProfile, str | None]:
    """`extract_receiver` before scaling."""
    if profile is None:
        profile = new_profile(now)
    other = digest(edge.other)
    # Before `other` joins the history: a look-alike of a real counterparty, or a stranger.
    # (A contract pulling an owner's tokens meets an owner who granted it, not a look-alike.)
    imitates = imitated(other, profile.counterparties) if edge.role != "via" else None
    stranger = other not in profile.counterparties
    remember_counterparty(profile, other)
    age = max(0.0, now - profile.first_seen)
    fresh = math.exp(-age / FRESH_SECONDS)
    senders = 0
    if edge.role == "to":
        profile.in_senders, senders = _recent_distinct(profile.in_senders, other, now, INBOUND_WINDOW_SECONDS)
        profile.in_fresh_share += NOVELTY_ALPHA * ((1.0 if edge.sender_fresh else 0.0) - profile.in_fresh_share)
        profile.in_n += 1
    if edge.kind == "approval" and edge.role == "to":
        profile.approvers, approvers = _recent_distinct(profile.approvers, other, now, APPROVAL_WINDOW_SECONDS)
        profile.grants = _recent_grants(profile.grants, edge.tx_hash, edge.other, edge.token, now)
    else:
        approvers = sum(1 for _, t in profile.approvers if t >= now - APPROVAL_WINDOW_SECONDS)
    profile.last_seen = max(profile.last_seen, now)
    value_eth = edge.value_wei / WEI_PER_ETH if edge.role == "to" else 0.0
    pulled = edge.role == "owner" and edge.kind == "token_transfer" and stranger
    return (
        _log2(1.0 + senders) * profile.in_fresh_share * fresh,
        _log2(1.0 + approvers) * fresh,
        1.0 if pulled else 0.0,
        _log10(1.0 + value_eth) if age < INBOUND_WINDOW_SECONDS else 0.0,
    ), profile, imitates
