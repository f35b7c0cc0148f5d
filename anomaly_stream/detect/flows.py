"""Flow rules: how value reaches a fresh address, seen from that address (the receiving side).

Rules in the style of Forta's bots, beside the trees:

- **fan_in_same_funder**: a fresh address receiving value moves from 3+
  distinct young senders (`young`) that were all first paid by one address
  (`AddressProfile.funder`, carried in each edge as `sender_funder`): a
  sweep of throwaway addresses an attacker funded into one collector.
  Fires during the model's warm-up too. Its sends are followed up.
- **drain_to_fresh**: an address that has sent nothing, first seen within
  the last ten minutes, received every value move (ETH with value, token
  transfers) from ONE sender (no service: `DRAIN_MAX_SENDER_NONCE`), at least
  two of them, adding up to 1+ ETH or to 2+ distinct tokens, or one token
  transfer that left its sender none of the token (`Edge.sender_emptied`:
  the balance the ingester read, `ownerTokenBalance`). A wallet emptied
  into a new address (a compromised key, a drainer) looks like this from
  the new address; ordinary payouts come from senders that pay many
  addresses. The moves before the one it fires on are
  raised late (`take_earlier`), as are a fan-in's first sweeps.
  An address it fired on is marked (`flow_at`): what it sends for the hour
  after is flagged on the sending side too (`followup_reason`).

- **peel_chain**: a fresh address whose first ETH is the end of 2+ relays
  in a row: each a young address (`young`) passing on at least
  `RELAY_SHARE` of the ETH it received from its one source, to an address
  that had received nothing (`relay_depth`, carried in the edge as
  `sender_hops`, kept as `AddressProfile.hops`). Stolen funds walked through
  a line of fresh addresses, a little peeled off to exchanges at each step,
  look like this; a real payment forwarded once (a deposit address swept, a
  new wallet topped up from an older new one) is one relay. Its sends are
  followed up, and the chain's moves before it (the first relays' inflows
  and peels, which no rule could name yet: the trail, `trail_of`) are raised late.

The profile also keeps `fresh_in` (value moves received only from young
senders, `young`), which `benchmarks/calibration.py` reports: a fan-in rule
on it (3+ young senders, and only those, into a fresh receiver) and a peel
rule on freshness alone (a young sender's 10+ ETH as a brand-new receiver's
first inflow) were measured and dropped: on real 2017 traffic they fired on
99 and ~480 of 14,547 edges after the trace's first hour (real
funded-then-swept fan-ins and fresh-to-fresh hops exist in numbers), over
the 1% budget. Depth of fresh hops alone did not rescue it (3+ on 230 real
2017 edges); depth of relays, which pass on what they received, does.

Limits come from the real traffic of ../shared/data/traffic, the figures
`benchmarks/calibration.py` prints under `flows.*` (2017 | 2024 | 2020-22
MEV blocks; `flows_after_1h.*` leaves out a trace's first hour, where every
address is first seen). Plain functions over the `AddressProfile`; no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

from .features import INBOUND_WINDOW_SECONDS, RECEIVER, RUN_SECONDS, SENDER, TRAIL_MOVES, AddressProfile, Edge
from .lookalike import digest
from .schema import WEI_PER_ETH

# A receiver is "fresh" for these rules within the hour after we first saw it
# (features.INBOUND_WINDOW_SECONDS) and while it has sent nothing.
FRESH_WINDOW_SECONDS = INBOUND_WINDOW_SECONDS
# ETH a sole sender must have moved into a fresh receiver: 1 ETH is the
# p50 of real plain ETH transfer values in 2017 and about their p90 since
# (2024 0.87, the MEV blocks 1.05; benchmarks/calibration.py,
# "flows.eth_transfer_value"), a sizeable sum in every era. Real traffic
# barely feels the limit, the other conditions are what is rare:
# `benchmarks/real_traffic.py` counts 35 drain_to_fresh hits in 19,999 real
# 2017 transactions at 1 ETH, 34 at 10 ETH, none in 2024 or the MEV blocks at
# either. The generated background's ETH transfers have a p90 of 1.3 ETH and
# most of its drains move 1-8 ETH: at 10 ETH the rule missed them (tune seeds 1,2:
# large_eth_drain 0.09 generated, 0.59 real; at 1 ETH 0.44 and 0.74).
DRAIN_MIN_ETH = 1.0
# A sole sender with a nonce above this is a service paying a user twice (an
# exchange withdrawal, often a small test first), not a wallet being emptied:
# of the senders behind drain_to_fresh's 30 real 2017 receivers (benchmarks/
# real_traffic.py), the exchange hot wallets had nonces of 15,757-217,333;
# 10,000 is above 99.4% of 2017's senders (35 of 5,986 exceed it; p99 4,000).
# A drained wallet with more transactions than that is left to the model.
DRAIN_MAX_SENDER_NONCE = 10_000
# Distinct tokens a sole sender moved into a fresh receiver: no real 2017 or
# MEV edge has two or more (flows.sole_source_tokens, max 1); 2024's (max 4)
# fall in its five minutes, where every address is first seen.
DRAIN_MIN_TOKENS = 2
# A drain's moves into the fresh address come within this of its first
# (features.RUN_SECONDS, a run of moves). Over real 2017 edges, two or more
# moves from a sole sender into a fresh receiver: 2.0% of value moves within
# its first hour, 1.1% within its first ten minutes (tune seeds: no recall lost).
DRAIN_WINDOW_SECONDS = RUN_SECONDS
# What a marked address sends is flagged for this long after the mark.
FOLLOWUP_SECONDS = INBOUND_WINDOW_SECONDS

# Distinct young senders, all first paid by ONE address, into one fresh
# receiver (within its first hour, before it sends). Real traffic
# (benchmarks/calibration.py, "flows.same_funder_senders", whole traces, the
# first hour included): 2017 max 2 (65 of 17,314 edges reach 2, 17 of 14,547
# after the first hour), 2024 max 2 (1 of 1,967), MEV blocks max 1. With 3
# the rule fires on no real edge: real deposit addresses swept into one
# collector were paid by their many users (the funder-blind fan-in rule
# fired on 99 real 2017 edges).
FAN_IN_MIN_SENDERS = 3

# A relay passes on at least this share of the ETH it received from its one
# source. Real ETH payments of young senders with one source
# (benchmarks/calibration.py, "flows.relay_share"): in 2017 3,049 of 3,338
# pass on 90%+ of what they received, 2,945 of them 99%+ (an address emptied,
# minus the fee); 2024 74 of 84. Young addresses pass on everything: it is
# the depth that is rare, not the share.
RELAY_SHARE = 0.9
# Relays in a row before a fresh receiver's first ETH. Real traffic
# ("flows.fresh_hop_depth"): one relay is common (2017: 58 of 17,314 edges,
# 52 of 14,547 after the first hour; 2024: 13 of 1,967; MEV blocks: 5 of
# 4,741), two or more rare (2017: 1; 2024: 3, one chain four relays deep in
# its five minutes; MEV blocks: none).
PEEL_MIN_RELAYS = 2
# The chain's moves before the peel rule can fire, raised late when it does: the
# inflow and the sends of each of the PEEL_MIN_RELAYS relays (the trail, `trail_of`).
PEEL_TRAIL = TRAIL_MOVES

DRAIN = "drain_to_fresh"
FAN_IN = "fan_in_same_funder"
PEEL = "peel_chain"
RULES = (DRAIN, FAN_IN, PEEL)
_TOKEN_ID = 10  # characters of a token address kept to tell tokens apart


# The trail: the moves that led along a chain, carried in each relay's payment
# (`Edge.sender_trail`) and kept by the young addresses on it
# (`AddressProfile.trail`): the inflow a fresh address got from a young sender,
# the ETH it passed on or peeled off while young. Each is (tx hash, time,
# sender, receiver, wei as text, perspective): "receiver" for an inflow (its
# receiving side judged it), "sender" for a send, so the side that already
# raised a move drops it (detector._forget) and no side raises a move twice.
# At most PEEL_TRAIL, the newest; the receiver the rule fires on raises them
# and keeps none, so a chain is reported once.


class Late(NamedTuple):
    """An earlier move a rule raises when it fires, as the side that saw it (`perspective`)."""

    tx_hash: str
    event_time: float
    kind: str
    token: str | None
    value_wei: int
    sender: str
    address: str  # whose move: the receiver of an inflow, the sender of a relay's send
    other: str
    perspective: str


class Inflow(NamedTuple):
    """What the flow rules measure on one edge (0 when the rule's condition does not hold)."""

    sole_source_moves: int  # value moves from the receiver's only sender, the receiver fresh
    sole_source_eth: float
    sole_source_tokens: int
    fresh_only_senders: int  # young senders into a fresh receiver that received from nothing else
    fresh_hop_eth: float  # ETH of a young sender's payment that is a fresh receiver's first
    same_funder_senders: int  # distinct young senders into a fresh receiver, all first paid by one address
    fresh_hop_depth: int  # relays in a row ending in a young sender's payment that is a fresh receiver's first ETH


def judged(model, event_time: float) -> bool:
    """Whether the flow rules judge a partition's edge at `event_time` (`model`: its receiver model).

    Freshness means something only against traffic already seen (at a
    trace's start every address is first seen; calibration's
    `flows_after_1h`): the rules wait for an hour of the partition's edges or
    its warm receiver model, whichever comes first (a sparse trace, 2017's
    0.6 tx/s over 8 partitions, takes 4 hours to warm one).
    """
    return model.history(event_time) >= FRESH_WINDOW_SECONDS or model.warm


def young(profile: AddressProfile | None, now: float) -> bool:
    """A throwaway sender: funded within the hour before (first seen as a receiver), at most one send before.

    `features.edges_of` adds the chain's word (a nonce of at most 1). An
    address never seen before is not young: real first-time senders of an
    8.7-hour trace are mostly old addresses (2017: ICO contributors, users
    of exchanges); fan-in sources and peel hops were paid just before.
    """
    return (profile is not None and profile.in_n > 0 and profile.n_tx <= 1
            and now - profile.first_seen <= FRESH_WINDOW_SECONDS)


def relay_depth(profile: AddressProfile | None, eth: float, fresh: bool) -> int:
    """Relays in a row this payment of `eth` ETH ends, the sender's profile before it (0: not a relay).

    A relay is a young sender (`fresh`, see `young`) passing on RELAY_SHARE
    or more of the ETH it received from its one source.
    """
    if (not fresh or profile is None or eth <= 0.0 or profile.src in ("", "*")
            or eth < RELAY_SHARE * profile.src_eth):
        return 0
    return profile.hops + 1


def moves_value(edge: Edge) -> bool:
    return edge.role == "to" and (edge.kind == "token_transfer" or (edge.kind == "eth_transfer"
                                                                     and edge.value_wei > 0))


def observe(edge: Edge, profile: AddressProfile, now: float) -> Inflow:
    """Update the receiver's inflow state with `edge` (call once per edge, after extract_receiver)."""
    if not moves_value(edge):
        return Inflow(0, 0.0, 0, 0, 0.0, 0, 0)
    fresh = profile.n_tx == 0 and now - profile.first_seen <= FRESH_WINDOW_SECONDS
    first_inflow = profile.src == ""
    sender = digest(edge.sender)
    eth = edge.value_wei / WEI_PER_ETH if edge.kind == "eth_transfer" else 0.0
    move = (edge.tx_hash, now, edge.kind, edge.token, str(edge.value_wei), edge.sender)
    if first_inflow and fresh and edge.sender_nonce <= DRAIN_MAX_SENDER_NONCE:
        # Kept only where the drain rule can fire: services' payouts, most first inflows, never do.
        profile.src_first = (move,)
    elif profile.src_first and not (fresh and profile.src == sender):
        profile.src_first = ()
    if first_inflow or profile.src == sender:
        profile.src = sender
        profile.src_n += 1
        profile.src_eth += eth
        if edge.token is not None:
            tid = edge.token[-_TOKEN_ID:]
            if tid not in profile.src_tokens and len(profile.src_tokens) < 4:
                profile.src_tokens = profile.src_tokens + (tid,)
    else:
        profile.src = "*"
    if profile.fresh_in >= 0:
        profile.fresh_in = profile.fresh_in + 1 if edge.sender_fresh else -1
    if not profile.funder and eth > 0.0:
        # Provenance: the first ETH payment, and the relays in a row it came through.
        profile.funder = sender
        profile.hops = edge.sender_hops if edge.sender_fresh else 0
        if edge.sender_fresh:
            profile.trail = (edge.sender_trail + ((edge.tx_hash, now, edge.sender, edge.receiver,
                                                   str(edge.value_wei), RECEIVER),))[-PEEL_TRAIL:]
    if fresh and edge.sender_fresh and edge.sender_funder and profile.fan_funder != "*":
        if profile.fan_funder in ("", edge.sender_funder):
            profile.fan_funder = edge.sender_funder
            if sender not in profile.fan_senders and len(profile.fan_senders) < FAN_IN_MIN_SENDERS:
                profile.fan_senders = profile.fan_senders + (sender,)
                if len(profile.fan_senders) < FAN_IN_MIN_SENDERS:
                    profile.fan_first = profile.fan_first + (move,)
        else:
            profile.fan_funder, profile.fan_first = "*", ()
    same_funder = len(profile.fan_senders) if fresh and profile.fan_funder not in ("", "*") else 0
    sole = fresh and profile.src == sender and now - profile.first_seen <= DRAIN_WINDOW_SECONDS
    return Inflow(
        profile.src_n if sole else 0,
        profile.src_eth if sole else 0.0,
        len(profile.src_tokens) if sole else 0,
        profile.fresh_in if fresh and profile.fresh_in > 0 else 0,
        eth if fresh and first_inflow and edge.sender_fresh else 0.0,
        same_funder,
        edge.sender_hops if fresh and first_inflow and edge.sender_fresh and eth > 0.0 else 0,
    )


def inflow_reasons(edge: Edge, profile: AddressProfile, now: float, warm: bool = True) -> list[dict]:
    """The flow rules that fire on this edge; a drain marks the receiver for the follow-up.

    The state is updated whatever `warm` says; the rules fire only when warm.
    """
    f = observe(edge, profile, now)
    reasons = []
    if f.same_funder_senders >= FAN_IN_MIN_SENDERS:
        # Not held back while the model warms up: shared funders mean the
        # same in a trace's first hour, where every address is first seen.
        reasons.append({"rule": FAN_IN, "role": "receiver", "address": edge.receiver, "sender": edge.sender,
                        "senders": f.same_funder_senders})
        profile.flow_at, profile.flow_rule = now, FAN_IN
    if not warm:
        return reasons
    emptied = f.sole_source_moves >= 1 and edge.sender_emptied
    if edge.sender_nonce <= DRAIN_MAX_SENDER_NONCE and (emptied or (
            f.sole_source_moves >= 2
            and (f.sole_source_eth >= DRAIN_MIN_ETH or f.sole_source_tokens >= DRAIN_MIN_TOKENS))):
        reason = {"rule": DRAIN, "role": "receiver", "address": edge.receiver, "sender": edge.sender,
                  "moves": f.sole_source_moves, "eth": round(f.sole_source_eth, 6), "tokens": f.sole_source_tokens}
        if emptied:
            reason["emptied"] = edge.token
        reasons.append(reason)
        profile.flow_at, profile.flow_rule = now, DRAIN
    if f.fresh_hop_depth >= PEEL_MIN_RELAYS:
        reasons.append({"rule": PEEL, "role": "receiver", "address": edge.receiver, "sender": edge.sender,
                        "relays": f.fresh_hop_depth})
        profile.flow_at, profile.flow_rule = now, PEEL
    return reasons


def take_earlier(edge: Edge, profile: AddressProfile, reasons: list[dict]) -> list[tuple[dict, Late]]:
    """The earlier moves of a drain, fan-in or peel chain that fired now on `edge`, each with its reason; handed over once.

    From the thief's side a drain's first transfer is one payment, a
    fan-in's first sweeps are those of any new address, a peel chain's first
    hops and peels those of new addresses paying each other: only the move
    the rule fires on says what they were (AddressProfile.src_first,
    .fan_first, the trail the edge carries).
    """
    out = []
    for reason in reasons:
        if reason["rule"] == DRAIN and profile.src_first:
            out += [(reason, _late_inflow(edge.receiver, move)) for move in profile.src_first]
            profile.src_first = ()
        elif reason["rule"] == FAN_IN and profile.fan_first:
            out += [(reason, _late_inflow(edge.receiver, move)) for move in profile.fan_first]
            profile.fan_first = ()
        elif reason["rule"] == PEEL:
            out += [(reason, _late_trail(move)) for move in edge.sender_trail]
            profile.trail = ()  # this address's own inflow is raised now: the chain was reported here
    return out


def _late_inflow(receiver: str, move: tuple) -> Late:
    tx_hash, t, kind, token, value, sender = move
    return Late(tx_hash, t, kind, token, int(value), sender, receiver, sender, RECEIVER)


def _late_trail(move: tuple) -> Late:
    tx_hash, t, sender, receiver, value, perspective = move
    address, other = (receiver, sender) if perspective == RECEIVER else (sender, receiver)
    return Late(tx_hash, t, "eth_transfer", None, int(value), sender, address, other, perspective)


def trail_of(profile: AddressProfile, address: str) -> tuple:
    """The peel-chain moves that led to `address`, a young sender: its trail, else its first inflow if it was ETH."""
    if profile.trail:
        return profile.trail
    if profile.src_first and profile.src_first[0][2] == "eth_transfer":
        tx_hash, t, _, _, value, sender = profile.src_first[0]
        return ((tx_hash, t, sender, address, value, RECEIVER),)
    return ()


def extend_trail(profile: AddressProfile, fresh: bool, tx_hash: str, sender: str, recipient: str | None,
                 eth_wei: int, now: float) -> None:
    """A young sender on a chain (a trail to extend) adds its ETH payment, unless a rule marked it already.

    A marked address's sends are flagged as they happen (`followup_reason`).
    """
    if not fresh or eth_wei <= 0 or recipient is None or profile.flow_at:
        return
    trail = trail_of(profile, sender)
    if trail:
        profile.trail = (trail + ((tx_hash, now, sender, recipient, str(eth_wei), SENDER),))[-PEEL_TRAIL:]


def followup_reason(profile: AddressProfile, moves: bool, now: float) -> list[dict]:
    """A value move sent by an address a flow rule marked within FOLLOWUP_SECONDS."""
    if moves and profile.flow_at and now - profile.flow_at <= FOLLOWUP_SECONDS:
        return [{"rule": profile.flow_rule or DRAIN, "role": "sender", "since": profile.flow_at}]
    return []
