"""Attack scenarios planted into a background stream, for the quality benchmark.

    plant(background, kinds, seed, episodes_per_kind=20, params=None) -> list[dict]

`background` is a list of input-schema transaction dicts in chain order: real
mainnet traffic (`readers.read_transactions` over `../shared/data/traffic`) or
the generator's (`generate.TrafficGenerator`). `plant` returns a new list: the
background with attack transactions inserted at random positions, in time
order. Every planted transaction carries `"label": <kind>`, an `"episode"` id
(`"<kind>-<n>"`, one per attack) and a `"role"` (below); background rows get
no label (a generated background keeps its own `label` key as it is). The
input list and its dicts are not modified; background rows come back as the
same objects except where `transactionIndex` had to shift (then a copy).

Planted transactions are valid input-schema objects
(`anomaly_stream.detect.schema.decode(orjson.dumps(tx))` accepts them) and
look like their neighbours wherever the attack itself does not differ:

- Placement. Each step of an episode has an event time on the background's
  clock (`blockTimestamp`; else 12 s x `blockNumber`; else 0.08 s per row)
  and joins the block that holds that time, at a random position in it: it
  takes that block's `blockNumber`, `blockTimestamp` and `blockHash` when the
  block's rows have them (so a background without timestamps gets none), and
  `transactionIndex` is renumbered within the block so that (blockNumber,
  transactionIndex) stays a strict chain order. Episode time scales (an hour
  of approvals, minutes between peel-chain hops) are compressed to fit when
  the background is shorter than twice the episode (the 2024 blocks span
  5 minutes); the output's own clock is the background's. Episodes start
  at uniformly drawn rows of the `start_window`, so on a background of
  scattered blocks (the mev set) an episode lands in one or a few blocks.
- Fees. Copied from a random background transaction of the same block (its
  style: legacy `gasPrice`, or `maxFeePerGas`/`maxPriorityFeePerGas` with the
  effective `gasPrice` when the neighbour has both, its `type` and
  `chainId`), so the fee does not give an attack away. Only
  `large_eth_drain` bids high, and within the background's range: its tip is
  drawn between the `drain_tip_quantile` quantiles of the background's tips
  (legacy: of the gas prices within 1,000 rows).
- Gas limits are drawn from background transactions with the same selector
  (plain transfers from plain transfers), falling back on the background's
  ERC-20 `transfer` limits scaled by the call's usual cost; exploit calls use
  the top 0.1% of the background's gas limits, creations what their init code
  needs plus a margin, both at most the background's largest limit.
- Receipt fields (`gasUsed`, `status`, `effectiveGasPrice`, `contractAddress`,
  `logs`) are added only when the neighbour has them; `logs` then hold the
  ERC-20 `Transfer`/`Approval` events the call would emit.
- Nonces. A fresh address starts at 0 (a Tornado relayer or a hub: from a
  random history) and counts up; a background address continues from its
  last background nonce before the insertion point, so it may repeat a
  nonce the background uses later (the background is not renumbered).
- Addresses called "fresh" are random and appear nowhere in the background
  (senders, recipients, calldata addresses of token calls). Hashes are
  random 32 bytes, unique. Created contracts get the address the chain
  would give them (keccak of rlp(sender, nonce)).
- Determinism: the same background, kinds, seed and params give the same
  output. Each kind draws from its own random stream, so the episodes of a
  kind do not change when other kinds are planted beside it (only nonces
  and transaction indices of shared blocks and senders can).

Roles: `funding` (gas or capital reaching an attacker address: a Tornado
withdrawal by a relayer, an exchange withdrawal or a hub transfer), `setup`
(a fake token or exploit contract created), `approval` (approve,
increaseAllowance, permit), `drain` (value leaving a victim: transferFrom, a
victim's own token or ETH transfers to the attacker), `sweep` (fan-in into
the collector), `poison` (the poisoning transfer), `hop` and `peel` (peel
chain), `exploit` (the call into the exploit contract). `funding` and `setup`
are the attacker's preparation; a benchmark may count them or not.

Kinds, after real incidents (sources in ../shared/data/README.md):

- approval_phishing (PTXPhish: most payload phishing is an approval to a
  spender the victim never dealt with; Forta's ice-phishing bot): `victims`
  distinct background senders (with history before the episode; token
  holders first) each send `approve(S, 2**256-1)` (`unlimited_share`; else a
  large finite amount) or `increaseAllowance(S, amount)`
  (`increase_allowance_share`) to a real token taken from the background's
  `transfer` calls (one the victim used when it has one), all to ONE fresh
  spender S, within `phishing_window_s`; then S calls
  `transferFrom(victim, collector, amount)` on the token for a share of them
  (`drain_share`), `drain_delay_s` after each approval. With probability
  `contract_spender_share` S is a drainer contract instead, and a fresh
  accomplice EOA calls `S.aggregate([(token, transferFrom(victim, collector,
  amount))])` (Multicall's `aggregate((address,bytes)[])`). The collector is
  fresh. Sender side: the victims' approvals are their own transactions.
- permit_phishing: the victims sign EIP-2612 permits off-chain; S or a fresh
  relayer (half each) sends `permit(owner=victim, spender=S, value,
  deadline, v, r, s)` to the token (DAI's `permit(holder, spender, nonce,
  expiry, allowed, v, r, s)` on DAI), then S sends
  `transferFrom(victim, collector, amount)`. With probability
  `permit2_share` the episode uses Permit2
  (0x000000000022d473030f116ddee9f6b43ac78ba3): `permit(owner,
  ((token, uint160 max, expiration, nonce), S, sigDeadline), signature)`
  and `transferFrom(victim, collector, uint160 amount, token)` on Permit2.
  The victim sends nothing: only the owner argument names them. (Permits
  and Permit2 postdate 2017: on the 2017 background they are anachronistic
  but well-formed.)
- fan_in_sweep: `fan_in_sources` FRESH addresses each receive
  `fan_in_funding_eth` from one funding address (a fresh hub, or with
  `fan_in_exchange_share` an exchange hot wallet of the background), then,
  `fan_in_delay_s` later, send almost all of it (what they received minus
  the fee they pay and at most 50 gas's worth) to ONE fresh collector, or (with
  `fan_in_token_share`) a `transfer(collector, amount)` of a real token; the
  fundings are spread over `fan_in_window_s`.
- address_poisoning_zero / _dust / _fake_token (Poison-Hunter's 150 real
  transfers, Forta's address-poisoning bot): a victim V and a real
  counterparty C are taken from a background transfer V -> C (ETH to an
  address that receives no calls, or a token `transfer`); a look-alike L
  shares exactly `lookalike_prefix` leading and `lookalike_suffix` trailing
  hex characters with C (default: drawn from the 50 real pairs of that
  poisoning type in poison-hunter/phishing_transfers_sample.csv: zero-value
  mostly 3+5, dust 2+7, fake token 3-4+4-5 or 8+6); the poisoning comes
  `poison_delay_blocks` after V's real transfer (default: the same rows'
  block_distance: zero-value a median of 5 blocks, dust 25, fake token 150;
  one that would fall past the background's end is redrawn among the delays
  that fit). Then:
    * zero: a fresh attacker EOA sends `transferFrom(V, L, 0)` to the token
      (the token of V's transfer, else a popular background token): the
      zero-value trick, which needs no allowance. With `zero_eth_share`, L
      instead sends V a 0-ETH transfer (the four real poisonings in the 2024
      blocks, see detect/lookalike.py).
    * dust: L sends V `dust_eth` ETH, or (`dust_token_share`; the
      Poison-Hunter rows are all USDT/USDC dust) `transfer(V, amount)` of
      C's token for 1e-6..1e-4 of the token's median background amount.
    * fake_token: a fresh deployer creates a fake token contract F (role
      setup), and L sends F `transfer(V, amount)`, with the amount V paid C
      when that was a token transfer.
  L (or the attacker) is funded first (role funding). What a detector
  watching senders only can see: zero (transferFrom variant): a fresh sender
  moving someone else's tokens (`from` argument != sender) with amount 0; V
  and L appear only in the calldata. zero (0-ETH variant) and dust: a fresh
  sender L paying 0 or a dust amount to V. fake_token: a fresh sender L
  calling a contract created minutes before. In every variant the
  resemblance of L to C is visible only on the victim's side (comparing
  L with V's counterparties: an inbound perspective for the ETH variants,
  the calldata's victim or the Transfer log's recipient for the token ones).
- peel_chain: a background address with a large balance (top decile of the
  balance estimate below) sends `peel_start_share` of it to a fresh address,
  which forwards most of it to another fresh address, `peel_hops` hops
  `peel_hop_delay_s` apart; at each hop with `peel_probability` a
  `peel_fraction` is peeled off to an exchange (Etherscan-tagged exchange
  addresses that occur in the background, from
  ../shared/data/labels/etherscan-tags, else the background's busiest
  plain-transfer recipients), and the last address pays an exchange.
- exploit_contract: a fresh EOA X is funded through Tornado Cash (Forta: 44%
  of H1 2024 attacks were; `exploit_tornado_share` of the episodes, the
  others by one exchange or fresh-address payment): `tornado_withdrawals` withdrawals from a real
  Tornado Cash ETH pool (OFAC-listed, addresses below), each a relayer's
  `withdraw(proof, root, nullifierHash, recipient=X, relayer, fee, refund)`
  call to the pool (`tornado_funding="transfer"` writes each as an ETH
  transfer from the pool to X instead, as a trace-derived feed shows the
  internal transfer: no such top-level transaction exists on chain). X
  creates a contract (to=None, `exploit_code_bytes` of init code with the
  background's solc preamble, gas from the top of the background's range),
  then calls it `exploit_calls` times with a large gas limit and an unknown
  selector taking (protocol, tokens[], amounts[]): with logs, each call
  moves the tokens from a real protocol contract of the background (the
  non-token contract with the most distinct callers) to the contract and on
  to X.
- token_drain: a victim with history (a token holder when there are any)
  sends `transfer(D, amount)` of `drain_tokens` different real tokens to
  one fresh address D, `drain_spacing_s` apart; each amount is at the
  `drain_amount_quantile` of the token's background amounts, times
  `drain_amount_factor`, and is all the victim held of it: the message
  carries `ownerTokenBalance` 0, as the ingester would read it (a drainer
  transfers `balanceOf(victim)`).
- large_eth_drain: a victim whose balance estimate (the larger of its total
  inbound ETH and its largest outbound payment in the background) is at least
  the `drain_victim_balance_quantile` of all senders' sends `drain_share_of_balance` of it in `drain_transfers`
  ETH transfers (largest first) to a fresh address, `drain_spacing_s` apart,
  with tips between the `drain_tip_quantile` quantiles of the background's.

`params` (all optional; `DEFAULT_PARAMS` holds the defaults; a pair (lo, hi)
is drawn uniformly per episode or per transaction, integers inclusive):

    start_window            (0.1, 1.0)  share of the background where episodes start
    fund_attackers          True        fund attacker EOAs before their first transaction
    funding_mix             {"tornado": 0.44, "exchange": 0.21, "fresh": 0.35}
                                        source of that funding (Forta H1 2024: 44% Tornado
                                        Cash, 14% ChangeNow + 7% FixedFloat, exchanges here)
    funding_eth             (0.02, 0.5) funding amount (Tornado: the 0.1 or 1 ETH pool)
    funding_lead_s          (60, 1800)  funding precedes the first transaction by this
    tornado_funding         "withdraw"  or "transfer" (see exploit_contract)
    victims                 (5, 30)     approval/permit victims per episode
    phishing_window_s       3600        approvals/permits spread over this
    drain_share             (0.5, 1.0)  share of approvers drained (at least one)
    drain_delay_s           (12, 600)   approval -> transferFrom
    unlimited_share         0.85        approve(2**256-1) rather than a finite amount
    increase_allowance_share 0.2        increaseAllowance instead of approve
    contract_spender_share  0.25        spender is a drainer contract called by an accomplice
    permit2_share           0.2         permit_phishing episodes on Permit2
    fan_in_sources          (10, 40)    fresh addresses per fan-in
    fan_in_window_s         (60, 900)   fundings spread over this
    fan_in_delay_s          (12, 300)   funding -> sweep, per source
    fan_in_funding_eth      (0.005, 0.2)
    fan_in_token_share      0.3         sweeps that are a token transfer
    fan_in_exchange_share   0.5         fan-ins funded by a background exchange wallet
    lookalike_prefix        None        None: empirical (Poison-Hunter); int or (lo, hi)
    lookalike_suffix        None        likewise; prefix + suffix is capped at 38
    poison_delay_blocks     None        None: empirical (Poison-Hunter); int or (lo, hi)
    zero_eth_share          0.2         address_poisoning_zero as a 0-ETH transfer from L
    dust_eth                (1e-6, 1e-4) dust in ETH (log-uniform)
    dust_token_share        0.5         dust as a token transfer
    peel_hops               (5, 15)
    peel_hop_delay_s        (60, 1200)
    peel_probability        0.5
    peel_fraction           (0.01, 0.05)
    peel_start_share        (0.6, 0.95)
    tornado_withdrawals     (1, 3)      exploit funding withdrawals (10 ETH pool; 100 ETH: 1 in 4)
    exploit_tornado_share   1.0         exploits funded through Tornado Cash; the others by one
                                        exchange or fresh-address payment of the same amount
    exploit_code_bytes      (4000, 16000)
    exploit_calls           (1, 3)
    exploit_tokens          (1, 4)      tokens moved per exploit call
    drain_tokens            (2, 5)
    drain_spacing_s         (5, 180)    token_drain and large_eth_drain
    drain_amount_quantile   (0.9, 1.0)
    drain_amount_factor     (1.0, 3.0)
    drain_transfers         (2, 6)
    drain_share_of_balance  (0.85, 0.98)
    drain_tip_quantile      (0.9, 0.99)
    drain_victim_balance_quantile 0.75  large_eth_drain victims: balance estimate at least
                                        this quantile of the background senders' (2017: 5 ETH)
    victim_max_txs          100         background senders busier than this (exchanges,
                                        bots) are never victims or peel-chain sources
    victim_max_nonce        5000        nor are senders whose nonce is above this
    labels_dir              <repo>/../shared/data/labels  (exchange tags; optional)

`Background(rows)` analyses a background once for many `plant` calls.
`ABI` lists the calls planted here (signature, selector, argument types),
so a benchmark or test can decode any planted calldata with eth_abi;
`episodes(txs)` groups planted transactions by episode.
"""

from __future__ import annotations

import bisect
import csv
import functools
import gzip
import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import rlp
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector, keccak

from .readers import _int

__all__ = ["ABI", "DEFAULT_PARAMS", "KINDS", "PERMIT2", "ROLES", "TORNADO_POOLS", "Background", "create_address",
           "episodes", "plant"]

log = logging.getLogger(__name__)

KINDS = (
    "approval_phishing",
    "permit_phishing",
    "fan_in_sweep",
    "address_poisoning_zero",
    "address_poisoning_dust",
    "address_poisoning_fake_token",
    "peel_chain",
    "exploit_contract",
    "token_drain",
    "large_eth_drain",
)
ROLES = ("funding", "setup", "approval", "drain", "sweep", "poison", "hop", "peel", "exploit")

_REPO = Path(__file__).resolve().parents[2]

DEFAULT_PARAMS: dict[str, Any] = {
    "start_window": (0.1, 1.0),
    "fund_attackers": True,
    "funding_mix": {"tornado": 0.44, "exchange": 0.21, "fresh": 0.35},
    "funding_eth": (0.02, 0.5),
    "funding_lead_s": (60, 1800),
    "tornado_funding": "withdraw",
    "victims": (5, 30),
    "phishing_window_s": 3600,
    "drain_share": (0.5, 1.0),
    "drain_delay_s": (12, 600),
    "unlimited_share": 0.85,
    "increase_allowance_share": 0.2,
    "contract_spender_share": 0.25,
    "permit2_share": 0.2,
    "fan_in_sources": (10, 40),
    "fan_in_window_s": (60, 900),
    "fan_in_delay_s": (12, 300),
    "fan_in_funding_eth": (0.005, 0.2),
    "fan_in_token_share": 0.3,
    "fan_in_exchange_share": 0.5,
    "lookalike_prefix": None,
    "lookalike_suffix": None,
    "poison_delay_blocks": None,
    "zero_eth_share": 0.2,
    "dust_eth": (1e-6, 1e-4),
    "dust_token_share": 0.5,
    "peel_hops": (5, 15),
    "peel_hop_delay_s": (60, 1200),
    "peel_probability": 0.5,
    "peel_fraction": (0.01, 0.05),
    "peel_start_share": (0.6, 0.95),
    "tornado_withdrawals": (1, 3),
    "exploit_tornado_share": 1.0,
    "exploit_code_bytes": (4000, 16000),
    "exploit_calls": (1, 3),
    "exploit_tokens": (1, 4),
    "drain_tokens": (2, 5),
    "drain_spacing_s": (5, 180),
    "drain_amount_quantile": (0.9, 1.0),
    "drain_amount_factor": (1.0, 3.0),
    "drain_transfers": (2, 6),
    "drain_share_of_balance": (0.85, 0.98),
    "drain_tip_quantile": (0.9, 0.99),
    "drain_victim_balance_quantile": 0.75,
    "victim_max_txs": 100,
    "victim_max_nonce": 5000,
    "labels_dir": str(_REPO.parent / "shared" / "data" / "labels"),
}

ETH = 10**18
UINT256_MAX = 2**256 - 1
UINT160_MAX = 2**160 - 1
UINT48_MAX = 2**48 - 1

PERMIT2 = "0x000000000022d473030f116ddee9f6b43ac78ba3"
DAI = "0x6b175474e89094c44da98b954eedeac495271d0f"
# Tornado Cash ETH pools by denomination: on the OFAC SDN list
# (labels/ofac/sanctioned_addresses_ETH.txt) and tagged "Tornado.Cash: <n> ETH"
# in labels/etherscan-tags (the tests check both).
TORNADO_POOLS = {
    "0.1": "0x12d66f87a04a9e220743712ce6d9bb1b5616b8fc",
    "1": "0x47ce0c6ed5b0ce3d3a51fdb1c52dc66a7c3c2936",
    "10": "0x910cbd523d972eb0a6f4cae4618ad62622b39dbf",
    "100": "0xa160cdab225685da1d56aa342ad8841c3b53f291",
}
# Used only when the background has no ERC-20 transfer calls at all.
_FALLBACK_TOKENS = (
    "0xdac17f958d2ee523a2206206994597c13d831ec7",  # USDT
    "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",  # USDC
    DAI,
    "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",  # WETH
)

_SIGNATURES = {
    "transfer": ("transfer(address,uint256)", ("address", "uint256")),
    "transferFrom": ("transferFrom(address,address,uint256)", ("address", "address", "uint256")),
    "approve": ("approve(address,uint256)", ("address", "uint256")),
    "increaseAllowance": ("increaseAllowance(address,uint256)", ("address", "uint256")),
    "permit": ("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)",
               ("address", "address", "uint256", "uint256", "uint8", "bytes32", "bytes32")),
    "dai_permit": ("permit(address,address,uint256,uint256,bool,uint8,bytes32,bytes32)",
                   ("address", "address", "uint256", "uint256", "bool", "uint8", "bytes32", "bytes32")),
    "permit2_permit": ("permit(address,((address,uint160,uint48,uint48),address,uint256),bytes)",
                       ("address", "((address,uint160,uint48,uint48),address,uint256)", "bytes")),
    "permit2_transferFrom": ("transferFrom(address,address,uint160,address)",
                             ("address", "address", "uint160", "address")),
    "aggregate": ("aggregate((address,bytes)[])", ("(address,bytes)[]",)),
    "tornado_withdraw": ("withdraw(bytes,bytes32,bytes32,address,address,uint256,uint256)",
                         ("bytes", "bytes32", "bytes32", "address", "address", "uint256", "uint256")),
}
# name -> (signature, selector "0x........", argument types). "exploit" has no
# fixed selector: each exploit contract gets a random one, with these arguments.
ABI: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    name: (sig, "0x" + function_signature_to_4byte_selector(sig).hex(), types)
    for name, (sig, types) in _SIGNATURES.items()
}
ABI["exploit"] = ("<unknown>(address,address[],uint256[])", None, ("address", "address[]", "uint256[]"))

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
APPROVAL_TOPIC = "0x" + keccak(text="Approval(address,address,uint256)").hex()
_WITHDRAWAL_TOPIC = "0x" + keccak(text="Withdrawal(address,bytes32,address,uint256)").hex()

# Poison-Hunter (labels/poison-hunter/phishing_transfers_sample.csv): per
# poisoning type, (leading, trailing) hex characters the look-alike
# (`attacker`) shares with the imitated counterparty (`similar_norm`), with
# their counts among the 50 rows of that type, and the rows' block_distance
# (blocks between the victim's real transfer and the poisoning). The tests
# recompute both from the file.
_POISON_AFFIXES = {
    "zero": ((3, 5, 21), (3, 4, 6), (4, 4, 5), (8, 6, 5), (7, 6, 4), (3, 6, 3), (2, 5, 2), (2, 6, 1),
             (8, 7, 1), (9, 6, 1), (7, 7, 1)),
    "dust": ((2, 7, 31), (4, 4, 7), (0, 7, 6), (1, 7, 3), (2, 3, 1), (2, 1, 1), (3, 7, 1)),
    "fake": ((3, 5, 13), (8, 6, 9), (4, 4, 9), (3, 4, 9), (4, 5, 3), (9, 6, 3), (8, 7, 2), (5, 4, 1),
             (8, 8, 1)),
}
_POISON_DELAY_BLOCKS = {
    "zero": (2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 7, 7, 7,
             7, 8, 16, 26, 27, 38, 55, 107, 116, 120, 122, 210, 341, 497, 1697, 1851, 1970, 2383),
    "dust": (4, 4, 7, 8, 9, 9, 9, 10, 11, 11, 14, 18, 22, 23, 24, 24, 24, 24, 24, 25, 25, 25, 26, 26, 26,
             26, 27, 30, 31, 33, 36, 52, 54, 56, 73, 75, 84, 92, 117, 133, 141, 745, 2288, 3169, 3901,
             5053, 5948, 6208, 6405, 6889),
    "fake": (1, 1, 2, 2, 9, 20, 24, 37, 38, 50, 54, 57, 78, 87, 89, 90, 104, 106, 127, 141, 150, 150, 150,
             153, 154, 156, 156, 161, 180, 195, 223, 227, 250, 257, 1120, 1144, 14401, 24882, 24882,
             28546, 50053, 129844, 160480, 254115, 275744, 316139, 319658, 358988, 410047, 432007),
}
_POISON_TYPE = {
    "address_poisoning_zero": "zero",
    "address_poisoning_dust": "dust",
    "address_poisoning_fake_token": "fake",
}

# Gas of a call relative to an ERC-20 transfer, when the background has no
# calls of that selector to copy limits from (mainnet gas used: transfer ~50k,
# approve ~46k, transferFrom ~60k, permit ~80k, Permit2 permit ~70k).
_GAS_FACTOR = {"approve": 0.9, "increaseAllowance": 0.9, "transferFrom": 1.2, "permit": 1.6,
               "dai_permit": 1.6, "permit2_permit": 1.5, "permit2_transferFrom": 1.3, "aggregate": 1.8}
_SECONDS_PER_ROW = 0.08  # a background without blocks: ~12.5 tx/s


# -- helpers ------------------------------------------------------------------------------


def _lower(value) -> str | None:
    return value.lower() if isinstance(value, str) else None


def _word_address(data: str, i: int) -> str:
    return "0x" + data[10 + 64 * i + 24: 10 + 64 * (i + 1)]


def _word_uint(data: str, i: int) -> int:
    return int(data[10 + 64 * i: 10 + 64 * (i + 1)], 16)


def _calldata(name: str, *args) -> str:
    _, selector, types = ABI[name]
    return selector + encode(list(types), list(args)).hex()


def _pad(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


def _transfer_log(token: str, sender: str, recipient: str, amount: int) -> dict:
    return {"address": token, "topics": [TRANSFER_TOPIC, _pad(sender), _pad(recipient)], "data": f"0x{amount:064x}"}


def _approval_log(token: str, owner: str, spender: str, amount: int) -> dict:
    return {"address": token, "topics": [APPROVAL_TOPIC, _pad(owner), _pad(spender)], "data": f"0x{amount:064x}"}


def create_address(sender: str, nonce: int) -> str:
    """The address of the contract `sender` creates with `nonce`: keccak(rlp([sender, nonce]))[12:]."""
    return "0x" + keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:].hex()


def _quantile(sorted_values: Sequence[float], q: float):
    if not sorted_values:
        raise ValueError("no values")
    return sorted_values[min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))]


def episodes(txs: Iterable[dict]) -> dict[str, list[dict]]:
    """Planted transactions grouped by episode id, in stream order."""
    out: dict[str, list[dict]] = defaultdict(list)
    for tx in txs:
        if tx.get("episode") is not None:
            out[tx["episode"]].append(tx)
    return dict(out)


# -- what the background offers ----------------------------------------------------------


@dataclass
class _Tally:
    """One pass over a background's rows: the counts and lists `Background` keeps or derives its own from."""

    addresses: set = field(default_factory=set)
    contracts: set = field(default_factory=set)
    sender_count: Counter = field(default_factory=Counter)
    first_send: dict = field(default_factory=dict)  # sender -> first position
    token_count: Counter = field(default_factory=Counter)
    token_amounts: dict = field(default_factory=lambda: defaultdict(list))
    token_first: dict = field(default_factory=lambda: defaultdict(dict))  # sender -> token -> first position
    eth_pairs: list = field(default_factory=list)  # (pos, V, C, wei)
    token_pairs: list = field(default_factory=list)  # (pos, V, C, token, amount)
    inbound: Counter = field(default_factory=Counter)
    max_out: Counter = field(default_factory=Counter)
    max_nonce: Counter = field(default_factory=Counter)
    plain_recipients: dict = field(default_factory=lambda: defaultdict(set))
    plain_sent: Counter = field(default_factory=Counter)
    callers: dict = field(default_factory=lambda: defaultdict(set))
    gas_by_selector: dict = field(default_factory=lambda: defaultdict(list))
    gas_all: list = field(default_factory=list)
    fee_rows: list = field(default_factory=list)
    tips: list = field(default_factory=list)
    legacy_prices: list = field(default_factory=list)  # (pos, gasPrice)
    creation_prefixes: Counter = field(default_factory=Counter)
    receipts: bool = False
    logs: bool = False

    def add(self, i: int, r: dict) -> None:
        sender, to = _lower(r.get("from")), _lower(r.get("to"))
        data = r.get("input") or "0x"
        data = data.lower() if isinstance(data, str) else "0x"
        value = _int(r.get("value")) or 0
        gas = _int(r.get("gas"))
        if sender:
            self.addresses.add(sender)
            self.sender_count[sender] += 1
            self.first_send.setdefault(sender, i)
            self.max_out[sender] = max(self.max_out[sender], value)
            self.max_nonce[sender] = max(self.max_nonce[sender], _int(r.get("nonce")) or 0)
        if to:
            self.addresses.add(to)
            self.inbound[to] += value
        created = _lower(r.get("contractAddress"))
        if created:
            self.addresses.add(created)
            self.contracts.add(created)
        if gas:
            self.gas_all.append(gas)
        selector = data[:10] if len(data) >= 10 else "0x"
        if gas and (to is not None or selector == "0x"):
            self.gas_by_selector[selector].append(gas)
        if to is None:
            if len(data) > 12:
                self.creation_prefixes[data[2:12]] += 1
        elif len(data) >= 10:
            self._call(i, sender, to, data, selector)
        elif value > 0 and sender and to != sender:
            self.plain_recipients[to].add(sender)
            self.plain_sent[sender] += 1
            self.eth_pairs.append((i, sender, to, value))
        self._fee(i, r)
        if "gasUsed" in r:
            self.receipts = True
        if "logs" in r:
            self.logs = True

    def _call(self, i: int, sender: str | None, to: str, data: str, selector: str) -> None:
        """A contract call: its caller, calldata addresses of token calls, ERC-20 transfers."""
        self.contracts.add(to)
        self.callers[to].add(sender)
        if selector in ("0xa9059cbb", "0x23b872dd", "0x095ea7b3") and len(data) >= 138:
            try:
                words = [_word_address(data, 0)]
                if selector == "0x23b872dd" and len(data) >= 202:
                    words.append(_word_address(data, 1))
                self.addresses.update(words)
            except ValueError:
                pass
        if selector == "0xa9059cbb" and len(data) >= 138:
            try:
                recipient, amount = _word_address(data, 0), _word_uint(data, 1)
            except ValueError:
                recipient, amount = None, 0
            if recipient:
                self.token_count[to] += 1
                if amount > 0:
                    self.token_amounts[to].append(amount)
                    self.token_pairs.append((i, sender, recipient, to, amount))
                self.token_first[sender].setdefault(to, i)

    def _fee(self, i: int, r: dict) -> None:
        """Rows a planted transaction may copy its fee style from; tips (EIP-1559) or legacy gas prices."""
        if _is_fee_row(r):
            self.fee_rows.append(i)
            tip = _int(r.get("maxPriorityFeePerGas"))
            if tip is not None and "maxFeePerGas" in r:
                self.tips.append(tip)
            elif _int(r.get("gasPrice")) is not None:
                self.legacy_prices.append((i, _int(r.get("gasPrice"))))


class Background:
    """What a background offers the scenarios (its clock, blocks, tokens, victims, fees), no randomness.

    `plant` builds one from a list; build it once and pass it instead to plant
    the same background many times (seeds, params) without the analysis
    (about 1 s for the 20,000 rows of 2017). The rows must not change after.
    `labels_dir` holds etherscan-tags (exchange addresses); None: none.
    """

    def __init__(self, rows: list[dict], labels_dir: str | Path | None = DEFAULT_PARAMS["labels_dir"]):
        rows = list(rows)
        self.rows = rows
        self.n = len(rows)
        if self.n == 0:
            raise ValueError("the background is empty")
        blocks = self._set_clock(rows)
        self._set_blocks(blocks)
        self.hashes = {_lower(r.get("hash")) for r in rows}
        tally = _Tally()
        for i, r in enumerate(rows):
            tally.add(i, r)
        self._keep(tally)
        self._set_services(tally, _tagged_exchanges(labels_dir))
        self._set_victim_order(tally)

    def _set_clock(self, rows: list[dict]) -> list[int | None]:
        """The clock (`timestamp`, `block` or `row`) and each row's time on it, never decreasing; the block numbers."""
        stamps = [_int(r.get("blockTimestamp")) for r in rows]
        blocks = [_int(r.get("blockNumber")) for r in rows]
        self.has_blocks = all(b is not None for b in blocks)
        if all(s is not None for s in stamps):
            self.clock = "timestamp"
            raw = [float(s) for s in stamps]
        elif self.has_blocks:
            self.clock = "block"
            raw = [12.0 * b for b in blocks]
        else:
            self.clock = "row"
            raw = [i * _SECONDS_PER_ROW for i in range(self.n)]
        times, latest = [], -math.inf
        for t in raw:
            latest = max(latest, t)
            times.append(latest)
        self.times = times
        return blocks

    def _set_blocks(self, blocks: list[int | None]) -> None:
        """Blocks: runs of equal blockNumber (each row alone without blocks), and the time per block."""
        n, times = self.n, self.times
        groups: list[tuple[int, int]] = []
        group_of = [0] * n
        start = 0
        for i in range(1, n + 1):
            if i == n or not self.has_blocks or blocks[i] != blocks[start]:
                groups.append((start, i))
                for j in range(start, i):
                    group_of[j] = len(groups) - 1
                start = i
        self.groups, self.group_of = groups, group_of
        if self.has_blocks and len(groups) > 1 and blocks[-1] > blocks[0]:
            self.block_time = max(1.0, (times[-1] - times[0]) / (blocks[-1] - blocks[0]))
        else:
            self.block_time = 12.0

    def _keep(self, tally: _Tally) -> None:
        """What the scenarios look up, from the pass over the rows."""
        contracts = tally.contracts
        self.addresses, self.contracts = tally.addresses, contracts
        self.sender_count, self.max_nonce = tally.sender_count, tally.max_nonce
        self.gas_by_selector, self.fee_rows = tally.gas_by_selector, tally.fee_rows
        self.receipts, self.logs = tally.receipts, tally.logs
        self.tips = sorted(tally.tips)
        self.legacy_prices = tally.legacy_prices
        self.gas_sorted = sorted(tally.gas_all) or [21000]
        prefixes = tally.creation_prefixes
        self.creation_prefix = prefixes.most_common(1)[0][0] if prefixes else "6080604052"
        # Only addresses that receive no calls count as counterparties and victims.
        self.eth_pairs = [p for p in tally.eth_pairs if p[2] not in contracts and p[1] not in contracts]
        self.token_pairs = [p for p in tally.token_pairs if p[2] not in contracts and p[2] != p[1]]
        token_count, token_amounts = tally.token_count, tally.token_amounts
        tokens = [t for t, _ in token_count.most_common()]
        self.tokens = tokens or list(_FALLBACK_TOKENS)
        self.token_weights = [token_count[t] for t in tokens] or [1] * len(_FALLBACK_TOKENS)
        self.token_amounts = {t: sorted(v) for t, v in token_amounts.items()}
        self.all_token_amounts = sorted(a for v in token_amounts.values() for a in v)
        self.token_first = tally.token_first
        self.balance = {a: max(tally.inbound[a], tally.max_out[a]) for a in tally.first_send}

    def _set_services(self, tally: _Tally, exchanges: frozenset[str]) -> None:
        """Exchanges (tagged, else the busiest hubs), protocol contracts, and who is never a victim."""
        seen_exchanges = Counter()
        for r in self.rows:
            for a in (_lower(r.get("from")), _lower(r.get("to"))):
                if a in exchanges:
                    seen_exchanges[a] += 1
        plain_recipients = tally.plain_recipients
        busiest = sorted(plain_recipients, key=lambda a: (-len(plain_recipients[a]), a))
        hubs = [a for a in busiest[:10] if len(plain_recipients[a]) >= 3]
        self.exchange_recipients = [a for a, _ in seen_exchanges.most_common()] or hubs
        self.exchange_senders = [a for a, _ in seen_exchanges.most_common() if tally.sender_count[a] > 0]
        if not self.exchange_senders:
            self.exchange_senders = [a for a, c in tally.plain_sent.most_common(5) if c >= 10]
        tokens_set, callers = set(self.tokens), tally.callers
        protocols = sorted((a for a in callers if a not in tokens_set), key=lambda a: (-len(callers[a]), a))
        self.protocols = protocols[:5]
        self.excluded = set(exchanges) | tally.contracts

    def _set_victim_order(self, tally: _Tally) -> None:
        """Senders and token holders by their first background row (victims need history before the episode)."""
        order = sorted(tally.first_send.items(), key=lambda kv: kv[1])
        self.sender_first_pos = [p for _, p in order]
        self.sender_by_first = [a for a, _ in order]
        holders = sorted(((min(t.values()), a) for a, t in tally.token_first.items()), key=lambda x: x[0])
        self.holder_first_pos = [p for p, _ in holders]
        self.holders_by_first = [a for _, a in holders]

    def unix(self, t: float) -> int:
        """Unix time of a point on the background's clock (for deadlines in calldata)."""
        if self.clock == "timestamp":
            return int(t)
        if self.clock == "block":  # the Merge: block 15,537,394 at 1,663,224,179, 12 s slots
            return max(1_438_269_973, int(1_663_224_179 + t - 12 * 15_537_394))
        return int(1_700_000_000 + t)

    def time_of(self, pos: int) -> float:
        return self.times[min(max(pos, 0), self.n - 1)]

    def pos_at(self, t: float) -> int:
        """Number of rows whose time is <= t."""
        return bisect.bisect_right(self.times, t)


def _tagged_exchanges(labels_dir: Path | None) -> frozenset[str]:
    if labels_dir is None:
        return frozenset()
    return _read_exchanges(str(Path(labels_dir) / "etherscan-tags" / "etherscan_tags.csv.gz"))


@functools.lru_cache(maxsize=4)
def _read_exchanges(path: str) -> frozenset[str]:
    if not Path(path).is_file():
        return frozenset()
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return frozenset(row["address"].strip().lower() for row in csv.DictReader(f)
                         if row.get("family") == "exchange")


# -- one episode's transactions before placement -----------------------------------------


@dataclass
class _Draft:
    t: float
    sender: str
    to: str | None
    value: int = 0
    data: str = "0x"
    gas: int = 21000
    role: str = ""
    logs: list = field(default_factory=list)
    fee: str = "normal"              # "high": large_eth_drain's tip
    contract_address: str | None = None
    sweep: int | None = None         # value = sweep - fee paid - a remainder of a few gwei's worth
    after: int = 0                   # insert after this many background rows at least
    gas_used: int | None = None
    owner_balance: int | None = None  # the token left to its owner: the ingester's ownerTokenBalance


@dataclass
class _Phish:
    """One phishing episode's setting: permit or approval, its spender, collector and senders."""

    permit: bool
    permit2: bool
    contract: bool  # the spender is a drainer contract called by `accomplice`
    spender: str
    collector: str
    accomplice: str | None
    relayer: str  # sends the permits: the spender or a fresh relayer


class _Kind:
    """Builds the episodes of one kind from its own random stream."""

    def __init__(self, kind: str, bg: Background, params: dict, seed: int, taken: set[str]):
        self.kind, self.bg, self.p = kind, bg, params
        self.rng = random.Random(f"anomaly_stream.scenarios:{seed}:{kind}")
        self.taken = taken  # addresses and hashes this call already made up (any kind)
        self.nonce_start: dict[str, int] = {}
        self.used_victims: set[str] = set()
        self.scale = 1.0  # the current episode's time compression (see window)
        self._pairs: tuple[list, list] | None = None
        self._candidates()

    # draws
    def draw(self, name: str, integer: bool = False):
        value = self.p[name]
        if isinstance(value, (tuple, list)):
            lo, hi = value
            return self.rng.randint(int(lo), int(hi)) if integer else self.rng.uniform(lo, hi)
        return int(value) if integer else value

    def hi(self, name: str) -> float:
        value = self.p[name]
        return max(value) if isinstance(value, (tuple, list)) else value

    def chance(self, name: str) -> bool:
        return self.rng.random() < self.p[name]

    def fresh(self) -> str:
        """A random address that appears nowhere in the background and was not made up before."""
        return self._unique(160, self.bg.addresses)

    def fresh_hash(self) -> str:
        return self._unique(256, self.bg.hashes)

    def _unique(self, bits: int, used: set) -> str:
        while True:
            value = f"0x{self.rng.getrandbits(bits):0{bits // 4}x}"
            if self._claim(value, used):
                return value

    def _claim(self, value: str, used: set) -> bool:
        """Take `value` for this call unless the background (`used`) or this call already has it."""
        if value in used or value in self.taken:
            return False
        self.taken.add(value)
        return True

    def window(self, duration: float) -> tuple[float, float]:
        """An episode start time and the factor compressing its time scale to fit."""
        bg = self.bg
        lo, hi = self.p["start_window"]
        first = min(bg.n - 1, int(lo * bg.n))
        last = max(first, min(bg.n - 1, int(hi * bg.n) - 1))
        span = bg.times[-1] - bg.times[first]
        scale = 1.0 if duration <= 0 or span >= 2 * duration else max(span, 0.0) / (2 * duration)
        # A uniformly drawn row (not time: a background of scattered blocks has long gaps)
        # among those leaving room for the episode.
        last = max(first, min(last, bg.pos_at(bg.times[-1] - duration * scale) - 1))
        self.scale = scale
        return bg.times[self.rng.randint(first, last)], scale

    def victim_ok(self, address: str) -> bool:
        """An ordinary background sender: no contract, exchange, bot or busy service."""
        return address in self.ordinary

    def _candidates(self) -> None:
        bg, p = self.bg, self.p
        self.ordinary = {a for a in bg.sender_count if a not in bg.excluded
                         and bg.sender_count[a] <= p["victim_max_txs"]
                         and bg.max_nonce.get(a, 0) <= p["victim_max_nonce"]}
        senders = [(pos, a) for pos, a in zip(bg.sender_first_pos, bg.sender_by_first) if a in self.ordinary]
        holders = [(pos, a) for pos, a in zip(bg.holder_first_pos, bg.holders_by_first) if a in self.ordinary]
        self.sender_pos, self.senders = [x for x, _ in senders], [a for _, a in senders]
        self.holder_pos, self.holders = [x for x, _ in holders], [a for _, a in holders]

    def senders_before(self, before: int) -> list[str]:
        return self.senders[: bisect.bisect_left(self.sender_pos, before)]

    def victims(self, before: int, n: int, holders_first: bool = True) -> list[str]:
        """Up to n distinct background senders with history before row `before`."""
        rng = self.rng
        holders = self.holders[: bisect.bisect_left(self.holder_pos, before)]
        senders = self.senders_before(before)
        chosen: list[str] = []
        for pool in ((holders, senders) if holders_first else (senders,)):
            fresh_pool = [a for a in pool if a not in self.used_victims and a not in chosen]
            stale = [a for a in pool if a in self.used_victims and a not in chosen]
            rng.shuffle(fresh_pool)
            rng.shuffle(stale)
            for a in fresh_pool + stale:
                if len(chosen) >= n:
                    break
                chosen.append(a)
            if len(chosen) >= n:
                break
        self.used_victims.update(chosen)
        return chosen

    def token(self, holder: str | None = None, before: int | None = None, exclude: Iterable[str] = ()) -> str:
        bg, rng = self.bg, self.rng
        exclude = set(exclude)
        if holder is not None:
            own = [t for t, p in sorted(bg.token_first.get(holder, {}).items()) if t not in exclude
                   and (before is None or p < before)]
            if own:
                return rng.choice(own)
        choices = [(t, w) for t, w in zip(bg.tokens, bg.token_weights) if t not in exclude]
        if not choices:
            return rng.choice(bg.tokens)
        return rng.choices([t for t, _ in choices], [w for _, w in choices])[0]

    def amount(self, token: str, q: tuple[float, float] = (0.3, 0.95)) -> int:
        values = self.bg.token_amounts.get(token) or self.bg.all_token_amounts
        if not values:
            return int(10 ** self.rng.uniform(19, 22))
        return max(1, _quantile(values, self.rng.uniform(*q)))

    def gas(self, name: str) -> int:
        """A gas limit copied from background calls of that kind."""
        bg, rng = self.bg, self.rng
        if name == "eth":
            pool = bg.gas_by_selector.get("0x") or [21000]
            return max(21000, rng.choice(pool))
        selector = ABI[name][1] if name in ABI else None
        pool = bg.gas_by_selector.get(selector, []) if selector else []
        if len(pool) >= 5:
            return rng.choice(pool)
        base = bg.gas_by_selector.get(ABI["transfer"][1]) or [60000]
        return int(rng.choice(base) * _GAS_FACTOR.get(name, 1.0))

    def big_gas(self) -> int:
        g = self.bg.gas_sorted
        top = max(g[-1], 1_000_000)
        return self.rng.randint(min(_quantile(g, 0.999), top), top)

    # funding of an attacker EOA before its first transaction
    def fund(self, address: str, first_t: float, amount: int | None = None, source: str | None = None) -> list[_Draft]:
        if not self.p["fund_attackers"] and source is None:
            return []
        rng = self.rng
        t = first_t - self.draw("funding_lead_s") * self.scale
        if source is None:
            mix = self.p["funding_mix"]
            source = rng.choices(list(mix), list(mix.values()))[0]
        if source == "exchange" and not self.bg.exchange_senders:
            source = "fresh"
        if source == "tornado":
            pool = "1" if rng.random() < 0.5 else "0.1"
            return self.tornado(address, t, pool)
        value = amount if amount is not None else int(self.draw("funding_eth") * ETH)
        if source == "exchange":
            sender = rng.choice(self.bg.exchange_senders)
        else:
            sender = self.fresh()
            self.nonce_start[sender] = int(rng.lognormvariate(3.0, 1.5))
        return [_Draft(t, sender, address, value, gas=self.gas("eth"), role="funding")]

    def tornado(self, recipient: str, t: float, pool: str) -> list[_Draft]:
        rng = self.rng
        address = TORNADO_POOLS[pool]
        denomination = int(float(pool) * ETH)
        if self.p["tornado_funding"] == "transfer":
            fee = int(denomination * rng.uniform(0.001, 0.005))
            return [_Draft(t, address, recipient, denomination - fee, gas=21000, role="funding")]
        relayer = self.fresh()
        self.nonce_start[relayer] = int(rng.lognormvariate(7.0, 1.0))
        fee = int(denomination * rng.uniform(0.001, 0.005))
        nullifier = rng.randbytes(32)
        data = _calldata("tornado_withdraw", rng.randbytes(256), rng.randbytes(32), nullifier,
                         recipient, relayer, fee, 0)
        gas = min(rng.randint(400_000, 600_000), max(self.bg.gas_sorted[-1], 400_000))
        logs = [{"address": address, "topics": [_WITHDRAWAL_TOPIC, _pad(relayer)],
                 "data": "0x" + encode(["address", "bytes32", "uint256"], [recipient, nullifier, fee]).hex()}]
        return [_Draft(t, relayer, address, 0, data, gas, "funding", logs, gas_used=int(gas * rng.uniform(0.6, 0.85)))]

    def first_funded(self, drafts: list[_Draft], senders: Iterable[str]) -> list[_Draft]:
        """Funding for each of `senders` before its first transaction in `drafts`."""
        out = []
        for sender in senders:
            first = min((d.t for d in drafts if d.sender == sender), default=None)
            if first is not None:
                out += self.fund(sender, first)
        return out

    def token_call(self, t, sender, token, name, args, role, logs, after=0) -> _Draft:
        return _Draft(t, sender, token, 0, _calldata(name, *args), self.gas(name), role, logs, after=after)

    # -- the kinds ---------------------------------------------------------------------

    def approval_phishing(self) -> list[_Draft] | None:
        return self._phishing(permit=False)

    def permit_phishing(self) -> list[_Draft] | None:
        return self._phishing(permit=True)

    def _phishing(self, permit: bool) -> list[_Draft] | None:
        rng, bg = self.rng, self.bg
        window = self.draw("phishing_window_s")
        t0, scale = self.window(window + self.hi("drain_delay_s"))
        before = bg.pos_at(t0)
        victims = self.victims(before, self.draw("victims", integer=True))
        if not victims:
            return None
        spender, collector = self.fresh(), self.fresh()
        permit2 = permit and self.chance("permit2_share")
        contract = not permit and self.chance("contract_spender_share")
        accomplice = self.fresh() if contract else None
        relayer = self.fresh() if permit and rng.random() < 0.5 else spender
        ph = _Phish(permit, permit2, contract, spender, collector, accomplice, relayer)
        share = self.draw("drain_share")
        times = sorted(t0 + rng.uniform(0, window) * scale for _ in victims)
        drained = [rng.random() < share for _ in victims]
        if not any(drained):
            drained[rng.randrange(len(victims))] = True
        drafts: list[_Draft] = []
        for victim, t, drain in zip(victims, times, drained):
            token = self.token(victim, before)
            drafts.append(self._grant(ph, t, victim, token))
            if drain:
                drafts.append(self._take(ph, t + self.draw("drain_delay_s") * scale, victim, token))
        drafts.sort(key=lambda d: d.t)
        attackers = {d.sender for d in drafts} - set(victims)
        return self.first_funded(drafts, sorted(attackers)) + drafts

    def _grant(self, ph: _Phish, t: float, victim: str, token: str) -> _Draft:
        """The victim's approval: approve or increaseAllowance, a permit, or a Permit2 permit."""
        rng = self.rng
        unlimited = self.chance("unlimited_share")
        allowance = UINT256_MAX if unlimited else self.amount(token, (0.9, 1.0)) * rng.randint(2, 1000)
        if not ph.permit:
            name = "increaseAllowance" if self.chance("increase_allowance_share") else "approve"
            if name == "increaseAllowance" and unlimited:
                allowance = 2**255  # what "infinite" looks like where the call adds to an allowance
            return self.token_call(t, victim, token, name, (ph.spender, allowance), "approval",
                                   [_approval_log(token, victim, ph.spender, allowance)])
        if ph.permit2:
            expiration = self.bg.unix(t) + rng.randint(86_400, 30 * 86_400)
            data = _calldata("permit2_permit", victim,
                             ((token, UINT160_MAX, min(expiration, UINT48_MAX), rng.randint(0, 5)),
                              ph.spender, expiration), rng.randbytes(65))
            return _Draft(t, ph.relayer, PERMIT2, 0, data, self.gas("permit2_permit"), "approval", [])
        deadline = UINT256_MAX if rng.random() < 0.3 else self.bg.unix(t) + rng.randint(3_600, 30 * 86_400)
        v, r, s = rng.choice((27, 28)), rng.randbytes(32), rng.randbytes(32)
        if token == DAI:
            args = (victim, ph.spender, rng.randint(0, 20), deadline, True, v, r, s)
            name, allowance = "dai_permit", UINT256_MAX
        else:
            args = (victim, ph.spender, allowance, deadline, v, r, s)
            name = "permit"
        return self.token_call(t, ph.relayer, token, name, args, "approval",
                               [_approval_log(token, victim, ph.spender, allowance)])

    def _take(self, ph: _Phish, t: float, victim: str, token: str) -> _Draft:
        """The drain: transferFrom by the spender, on Permit2, or through the drainer contract's aggregate."""
        amount = self.amount(token, (0.5, 0.99))
        logs = [_transfer_log(token, victim, ph.collector, amount)]
        if ph.permit2:
            data = _calldata("permit2_transferFrom", victim, ph.collector, min(amount, UINT160_MAX), token)
            return _Draft(t, ph.spender, PERMIT2, 0, data, self.gas("permit2_transferFrom"), "drain", logs)
        if ph.contract:
            inner = bytes.fromhex(_calldata("transferFrom", victim, ph.collector, amount)[2:])
            return _Draft(t, ph.accomplice, ph.spender, 0, _calldata("aggregate", [(token, inner)]),
                          self.gas("aggregate"), "drain", logs)
        return self.token_call(t, ph.spender, token, "transferFrom", (victim, ph.collector, amount), "drain", logs)

    def fan_in_sweep(self) -> list[_Draft] | None:
        rng, bg = self.rng, self.bg
        window = self.draw("fan_in_window_s")
        t0, scale = self.window(window + self.hi("fan_in_delay_s"))
        collector = self.fresh()
        exchange = bg.exchange_senders and self.chance("fan_in_exchange_share")
        if exchange:
            funder = rng.choice(bg.exchange_senders)
        else:
            funder = self.fresh()
            self.nonce_start[funder] = int(rng.lognormvariate(3.0, 1.5))
        drafts: list[_Draft] = []
        for _ in range(self.draw("fan_in_sources", integer=True)):
            source = self.fresh()
            t = t0 + rng.uniform(0, window) * scale
            value = int(self.draw("fan_in_funding_eth") * ETH)
            drafts.append(_Draft(t, funder, source, value, gas=self.gas("eth"), role="funding"))
            ts = t + self.draw("fan_in_delay_s") * scale
            if self.chance("fan_in_token_share"):
                token = self.token()
                amount = self.amount(token)
                drafts.append(self.token_call(ts, source, token, "transfer", (collector, amount), "sweep",
                                              [_transfer_log(token, source, collector, amount)]))
            else:
                drafts.append(_Draft(ts, source, collector, 0, gas=21000, role="sweep", sweep=value))
        drafts.sort(key=lambda d: d.t)
        if not exchange:
            drafts = self.first_funded(drafts, [funder]) + drafts
        return drafts

    def _poison_lengths(self, kind: str) -> tuple[int, int]:
        rng = self.rng
        prefix, suffix = self.p["lookalike_prefix"], self.p["lookalike_suffix"]
        if prefix is None or suffix is None:
            rows = _POISON_AFFIXES[kind]
            p, s, _ = rng.choices(rows, [c for _, _, c in rows])[0]
            prefix = p if prefix is None else prefix
            suffix = s if suffix is None else suffix
        pick = (lambda v: rng.randint(*v) if isinstance(v, (tuple, list)) else int(v))
        p, s = pick(prefix), pick(suffix)
        p, s = max(0, min(p, 38)), max(0, min(s, 38))
        if p + s > 38:
            s = 38 - p
        return p, s

    def lookalike(self, real: str, prefix: int, suffix: int) -> str:
        """An address sharing exactly `prefix` leading and `suffix` trailing hex characters with `real`."""
        body = real[2:]
        hexdigits = "0123456789abcdef"
        while True:
            chars = list(body)
            for i in range(prefix, 40 - suffix):
                chars[i] = self.rng.choice(hexdigits)
            chars[prefix] = self.rng.choice([c for c in hexdigits if c != body[prefix]])
            end = 39 - suffix
            if end != prefix:
                chars[end] = self.rng.choice([c for c in hexdigits if c != body[end]])
            address = "0x" + "".join(chars)
            if self._claim(address, self.bg.addresses):
                return address

    def _poisoning(self) -> list[_Draft] | None:
        bg = self.bg
        ptype = _POISON_TYPE[self.kind]
        span = bg.times[-1] - bg.times[0]
        self.scale = min(1.0, span / (2 * self.hi("funding_lead_s"))) if span > 0 else 0.0
        pair = self._poison_pair(ptype)
        if pair is None:
            return None
        pos, victim, real = pair[0], pair[1], pair[2]
        token = pair[3] if len(pair) == 5 else None
        paid = pair[4] if token else pair[3]
        self.used_victims.add(victim)
        prefix, suffix = self._poison_lengths(ptype)
        fake = self.lookalike(real, prefix, suffix)
        t = bg.time_of(pos) + self._poison_delay(ptype, pos) * bg.block_time
        if ptype == "zero":
            drafts = [self._poison_zero(t, pos + 1, victim, fake, token)]
        elif ptype == "dust":
            drafts = [self._poison_dust(t, pos + 1, victim, fake, token)]
        else:
            drafts = self._poison_fake_token(t, pos + 1, victim, fake, token, paid)
            if drafts is None:
                return None
        drafts.sort(key=lambda d: d.t)
        return self.first_funded(drafts, sorted({d.sender for d in drafts})) + drafts

    address_poisoning_zero = address_poisoning_dust = address_poisoning_fake_token = _poisoning

    def _poison_pair(self, ptype: str) -> tuple | None:
        """A background transfer V -> C in the start window (token or ETH as the type prefers), unused V first."""
        rng, bg = self.rng, self.bg
        lo, hi = self.p["start_window"]
        first, last = int(lo * bg.n), max(int(lo * bg.n) + 1, int(hi * bg.n))
        if self._pairs is None:
            def usable(x):
                return first <= x[0] < last and x[1] in self.ordinary

            self._pairs = ([x for x in bg.token_pairs if usable(x)], [x for x in bg.eth_pairs if usable(x)])
        token_pairs, eth_pairs = self._pairs
        prefer_tokens = ptype == "zero" or (ptype == "fake" and rng.random() < 0.7)
        pools = (token_pairs, eth_pairs) if prefer_tokens else (eth_pairs, token_pairs)
        pool = pools[0] or pools[1]
        if not pool:
            return None
        fresh_pairs = [x for x in pool if x[1] not in self.used_victims]
        return rng.choice(fresh_pairs or pool)

    def _poison_delay(self, ptype: str, pos: int) -> int:
        """Blocks from the victim's real transfer to the poisoning (empirical ones that fit before the end)."""
        rng, bg = self.rng, self.bg
        remaining = max(0, int((bg.times[-1] - bg.time_of(pos)) / bg.block_time))
        delay = self.p["poison_delay_blocks"]
        if delay is None:
            fits = [d for d in _POISON_DELAY_BLOCKS[ptype] if d <= remaining]
            return rng.choice(fits) if fits else rng.randint(0, remaining)
        return rng.randint(*delay) if isinstance(delay, (tuple, list)) else int(delay)

    def _poison_zero(self, t: float, after: int, victim: str, fake: str, token: str | None) -> _Draft:
        """A 0-ETH transfer from L to V, or a fresh sender's transferFrom(V, L, 0) on the token."""
        if self.chance("zero_eth_share"):
            return _Draft(t, fake, victim, 0, gas=self.gas("eth"), role="poison", after=after)
        attacker = self.fresh()
        token = token or self.token()
        return self.token_call(t, attacker, token, "transferFrom", (victim, fake, 0), "poison",
                               [_transfer_log(token, victim, fake, 0)], after)

    def _poison_dust(self, t: float, after: int, victim: str, fake: str, token: str | None) -> _Draft:
        """L sends V a dust amount of the token or of ETH."""
        rng, bg = self.rng, self.bg
        if self.chance("dust_token_share"):
            token = token or self.token()
            values = bg.token_amounts.get(token) or bg.all_token_amounts or [10**18]
            amount = max(1, int(_quantile(values, 0.5) * 10 ** rng.uniform(-6, -4)))
            return self.token_call(t, fake, token, "transfer", (victim, amount), "poison",
                                   [_transfer_log(token, fake, victim, amount)], after)
        lo_eth, hi_eth = self.p["dust_eth"]
        value = int(10 ** rng.uniform(math.log10(lo_eth), math.log10(hi_eth)) * ETH)
        return _Draft(t, fake, victim, value, gas=self.gas("eth"), role="poison", after=after)

    def _poison_fake_token(self, t: float, after: int, victim: str, fake: str, token: str | None,
                           paid: int) -> list[_Draft] | None:
        """A fresh deployer creates a fake token F; L calls F.transfer(V, amount)."""
        rng, bg = self.rng, self.bg
        deployer = self.fresh()
        contract = create_address(deployer, 0)
        if not self._claim(contract, bg.addresses):  # not in this universe
            return None
        code = rng.randint(2_000, 6_000)
        created_at = t - rng.uniform(60, 1800)
        creation = self.creation(created_at, deployer, code, contract)
        amount = paid if token else self.amount(self.token())
        transfer = _Draft(t, fake, contract, 0, _calldata("transfer", victim, amount),
                          self.gas("transfer"), "poison", [_transfer_log(contract, fake, victim, amount)],
                          after=after)
        return [creation, transfer]

    def creation(self, t: float, sender: str, code_bytes: int, contract: str) -> _Draft:
        rng = self.rng
        cap = max(self.bg.gas_sorted[-1], 1_000_000)
        code_bytes = max(200, min(code_bytes, (cap - 200_000) // 220))
        prefix = bytes.fromhex(self.bg.creation_prefix)
        data = "0x" + (prefix + rng.randbytes(code_bytes - len(prefix))).hex()
        needed = 53_000 + 16 * code_bytes + 200 * int(code_bytes * 0.9) + rng.randint(20_000, 150_000)
        gas = min(cap, int(needed * rng.uniform(1.05, 1.4)))
        return _Draft(t, sender, None, 0, data, gas, "setup", [], contract_address=contract,
                      gas_used=min(gas, needed))

    def peel_chain(self) -> list[_Draft] | None:
        rng, bg = self.rng, self.bg
        hops = self.draw("peel_hops", integer=True)
        t, scale = self.window((hops + 1) * (self.hi("peel_hop_delay_s") + 120))
        before = bg.pos_at(t)
        candidates = [a for a in self.senders_before(before) if bg.balance.get(a, 0) > 0]
        if not candidates:
            return None
        richest = sorted(candidates, key=lambda a: (-bg.balance[a], a))[: max(1, len(candidates) // 10)]
        fresh_rich = [a for a in richest if a not in self.used_victims]
        source = rng.choice(fresh_rich or richest)
        self.used_victims.add(source)
        exchanges = bg.exchange_recipients or [self.fresh()]
        amount = int(bg.balance[source] * self.draw("peel_start_share"))
        current = self.fresh()
        drafts = [_Draft(t, source, current, amount, gas=self.gas("eth"), role="hop")]
        for _ in range(hops):
            t += self.draw("peel_hop_delay_s") * scale
            if self.chance("peel_probability"):
                peel = int(amount * self.draw("peel_fraction"))
                drafts.append(_Draft(t, current, rng.choice(exchanges), peel, gas=21000, role="peel"))
                amount -= peel
                t += rng.uniform(5, 120) * scale
            nxt = self.fresh()
            forward = int(amount * rng.uniform(0.995, 0.999))
            drafts.append(_Draft(t, current, nxt, forward, gas=21000, role="hop"))
            current, amount = nxt, forward
        t += self.draw("peel_hop_delay_s") * scale
        drafts.append(_Draft(t, current, rng.choice(exchanges), int(amount * rng.uniform(0.995, 0.999)),
                             gas=21000, role="peel"))
        return drafts

    def exploit_contract(self) -> list[_Draft] | None:
        rng, bg = self.rng, self.bg
        n_calls = self.draw("exploit_calls", integer=True)
        n_funding = self.draw("tornado_withdrawals", integer=True)
        t, scale = self.window(n_funding * 600 + 7200 + n_calls * 600)
        attacker = self.fresh()
        contract = create_address(attacker, 0)
        if not self._claim(contract, bg.addresses):
            return None
        pool = "100" if rng.random() < 0.25 else "10"
        drafts: list[_Draft] = []
        share = self.p["exploit_tornado_share"]
        if share >= 1.0 or rng.random() < share:
            for _ in range(n_funding):
                drafts += self.tornado(attacker, t, pool)
                t += rng.uniform(30, 600) * scale
        else:
            source = "exchange" if rng.random() < 0.5 else "fresh"
            drafts += self.fund(attacker, t, n_funding * int(float(pool) * ETH), source)
        t += rng.uniform(600, 7200) * scale
        drafts.append(self.creation(t, attacker, self.draw("exploit_code_bytes", integer=True), contract))
        selector = rng.randbytes(4).hex()
        protocol = rng.choice(bg.protocols) if bg.protocols else self.fresh()
        for _ in range(n_calls):
            t += rng.uniform(12, 600) * scale
            tokens = []
            for _ in range(self.draw("exploit_tokens", integer=True)):
                tokens.append(self.token(exclude=tokens))
            tokens = list(dict.fromkeys(tokens))
            amounts = [self.amount(tk, (0.95, 1.0)) * rng.randint(10, 1000) for tk in tokens]
            data = "0x" + selector + encode(list(ABI["exploit"][2]), [protocol, tokens, amounts]).hex()
            logs = []
            for tk, amount in zip(tokens, amounts):
                logs += [_transfer_log(tk, protocol, contract, amount), _transfer_log(tk, contract, attacker, amount)]
            gas = self.big_gas()
            drafts.append(_Draft(t, attacker, contract, 0, data, gas, "exploit", logs,
                                 gas_used=int(gas * rng.uniform(0.3, 0.9))))
        return drafts

    def _spaced(self, count: str) -> tuple[int, float, float, int]:
        """`count` steps `drain_spacing_s` apart: their number, start time, time scale and start row."""
        n = self.draw(count, integer=True)
        t, scale = self.window(n * self.hi("drain_spacing_s"))
        return n, t, scale, self.bg.pos_at(t)

    def token_drain(self) -> list[_Draft] | None:
        rng, bg = self.rng, self.bg
        n, t, scale, before = self._spaced("drain_tokens")
        victims = self.victims(before, 1)
        if not victims:
            return None
        victim, thief = victims[0], self.fresh()
        tokens: list[str] = []
        own = sorted(t for t, p in bg.token_first.get(victim, {}).items() if p < before)
        rng.shuffle(own)
        tokens += own[:n]
        while len(tokens) < min(n, len(bg.tokens)):
            tokens.append(self.token(exclude=tokens))
        drafts = []
        for token in tokens:
            t += self.draw("drain_spacing_s") * scale
            amount = int(self.amount(token, self.p["drain_amount_quantile"]) * self.draw("drain_amount_factor"))
            draft = self.token_call(t, victim, token, "transfer", (thief, amount), "drain",
                                    [_transfer_log(token, victim, thief, amount)])
            draft.owner_balance = 0  # a drain takes the whole balance, whatever the trace saw of it
            drafts.append(draft)
        return drafts

    def large_eth_drain(self) -> list[_Draft] | None:
        rng, bg = self.rng, self.bg
        n, t, scale, before = self._spaced("drain_transfers")
        balances = sorted(v for v in bg.balance.values() if v > 0)
        if not balances:
            return None
        floor = _quantile(balances, self.p["drain_victim_balance_quantile"])
        pool = [a for a in self.senders_before(before) if bg.balance.get(a, 0) >= floor]
        if not pool:
            return None
        unused = [a for a in pool if a not in self.used_victims]
        victim = rng.choice(unused or pool)
        self.used_victims.add(victim)
        thief = self.fresh()
        total = int(bg.balance[victim] * self.draw("drain_share_of_balance"))
        weights = sorted((rng.random() + 0.05 for _ in range(n)), reverse=True)
        parts = [int(total * w / sum(weights)) for w in weights]
        drafts = []
        for part in parts:
            t += self.draw("drain_spacing_s") * scale
            drafts.append(_Draft(t, victim, thief, part, gas=self.gas("eth"), role="drain", fee="high"))
        return drafts


# -- placing drafts in the background -----------------------------------------------------


def _materialize(kb: _Kind, draft: _Draft, group: int, label: str, episode: str) -> dict:
    bg, rng = kb.bg, kb.rng
    b0, b1 = bg.groups[group]
    block_row = bg.rows[b0]
    template = _fee_template(kb, b0, b1)
    tx: dict[str, Any] = {"hash": kb.fresh_hash()}
    tx["from"] = draft.sender
    tx["to"] = draft.to
    for key in ("blockHash", "blockNumber", "blockTimestamp"):
        if block_row.get(key) is not None:
            tx[key] = block_row[key]
    if "transactionIndex" in block_row:
        tx["transactionIndex"] = "0x0"  # set in the final pass
    tx["nonce"] = "0x0"  # set in the final pass
    tx["gas"] = hex(draft.gas)
    effective = _set_fees(tx, kb, template, draft, b0)
    _set_signature(tx, template, rng)
    value = draft.value
    if draft.sweep is not None:
        remainder = rng.randint(0, 50) * effective
        value = max(0, draft.sweep - draft.gas * effective - remainder)
    tx["value"] = hex(value)
    tx["input"] = draft.data
    _set_receipt(tx, kb, template, draft, effective)
    if draft.owner_balance is not None:
        tx["ownerTokenBalance"] = hex(draft.owner_balance)
    tx["label"] = label
    tx["episode"] = episode
    tx["role"] = draft.role
    return tx


def _fee_template(kb: _Kind, b0: int, b1: int) -> dict:
    """A background row of the block (else one nearby) whose fee style and level a planted tx copies."""
    bg = kb.bg
    candidates = [i for i in range(b0, b1) if bg.fee_rows and _is_fee_row(bg.rows[i])]
    if not candidates and bg.fee_rows:
        k = bisect.bisect_left(bg.fee_rows, b0)
        near = bg.fee_rows[max(0, k - 5): k + 5]
        candidates = near or bg.fee_rows
    return bg.rows[kb.rng.choice(candidates)] if candidates else {"gasPrice": hex(20 * 10**9)}


def _set_fees(tx: dict, kb: _Kind, template: dict, draft: _Draft, b0: int) -> int:
    """The neighbour's fee fields (style and level; a high tip for fee="high"); returns the effective gas price."""
    bg, rng = kb.bg, kb.rng
    max_fee = _int(template.get("maxFeePerGas"))
    tip = _int(template.get("maxPriorityFeePerGas"))
    price = _int(template.get("gasPrice"))
    if max_fee is not None and tip is not None:
        base = (price - min(tip, price)) if price is not None else max(max_fee - tip, 0)
        if draft.fee == "high" and bg.tips:
            new_tip = _quantile(bg.tips, rng.uniform(*kb.p["drain_tip_quantile"]))
            max_fee = max(max_fee - tip + new_tip, new_tip)
            tip = new_tip
            if price is not None:
                price = min(max_fee, base + tip)
        tx["type"] = template.get("type", "0x2")
        tx["maxFeePerGas"], tx["maxPriorityFeePerGas"] = hex(max_fee), hex(tip)
        if price is not None:
            tx["gasPrice"] = hex(price)
        effective = price if price is not None else min(max_fee, base + tip)
    else:
        if price is None:
            price = 20 * 10**9
        if draft.fee == "high" and bg.legacy_prices:
            k = bisect.bisect_left(bg.legacy_prices, (b0, -1))
            window = sorted(p for _, p in bg.legacy_prices[max(0, k - 1000): k + 1000])
            price = _quantile(window, rng.uniform(*kb.p["drain_tip_quantile"]))
        if "type" in template:
            tx["type"] = template["type"]
        tx["gasPrice"] = hex(price)
        effective = price
    if "chainId" in template:
        tx["chainId"] = template["chainId"]
    if "accessList" in template and tx.get("type") not in (None, "0x0"):
        tx["accessList"] = []
    return effective


def _set_signature(tx: dict, template: dict, rng: random.Random) -> None:
    """Random v/yParity, r, s in the neighbour's style, when it has a signature."""
    if "r" not in template:
        return
    parity = rng.randint(0, 1)
    if "yParity" in template and tx.get("type") not in (None, "0x0"):
        tx["yParity"] = hex(parity)
        tx["v"] = hex(parity)
    else:
        tx["v"] = template.get("v", hex(27 + parity))
    tx["r"], tx["s"] = hex(rng.getrandbits(255) + 1), hex(rng.getrandbits(255) + 1)


def _set_receipt(tx: dict, kb: _Kind, template: dict, draft: _Draft, effective: int) -> None:
    """The receipt fields the neighbour has (gasUsed, status, effectiveGasPrice, contractAddress, logs)."""
    if "gasUsed" in template:
        if draft.gas_used is not None:
            used = draft.gas_used
        elif draft.data == "0x":
            used = 21000
        else:
            used = int(draft.gas * kb.rng.uniform(0.45, 0.85))
        tx["gasUsed"] = hex(max(21000, min(draft.gas, used)))
    if "status" in template:
        tx["status"] = "0x1"
    if "effectiveGasPrice" in template:
        tx["effectiveGasPrice"] = hex(effective)
    if "contractAddress" in template or (draft.to is None and kb.bg.receipts):
        tx["contractAddress"] = draft.contract_address
    if "logs" in template:
        tx["logs"] = list(draft.logs)


def _is_fee_row(row: dict) -> bool:
    return _int(row.get("type")) in (None, 0, 1, 2) and ("gasPrice" in row or "maxFeePerGas" in row)


def _resolve_params(params: dict | None) -> dict:
    merged = dict(DEFAULT_PARAMS)
    if params:
        unknown = set(params) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown scenario params: {sorted(unknown)}; see DEFAULT_PARAMS")
        merged.update(params)
    if merged["tornado_funding"] not in ("withdraw", "transfer"):
        raise ValueError("tornado_funding must be 'withdraw' or 'transfer'")
    return merged


def plant(
    background: list[dict] | Background,
    kinds: Sequence[str],
    seed: int,
    episodes_per_kind: int = 20,
    params: dict | None = None,
) -> list[dict]:
    """The background with `episodes_per_kind` episodes of each kind planted; see the module docstring.

    `background` may be a prepared `Background` (then `params["labels_dir"]` is
    the one it was built with).
    """
    if isinstance(kinds, str):
        kinds = [kinds]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; one of {', '.join(KINDS)}")
    if episodes_per_kind < 0:
        raise ValueError("episodes_per_kind must be >= 0")
    p = _resolve_params(params)
    if isinstance(background, Background):
        bg = background
    else:
        bg = Background(background, p["labels_dir"] or None)
    taken: set[str] = set()
    planted: list[tuple[tuple, dict, str | None]] = []
    nonce_start: dict[str, int] = {}
    sequence = 0
    for kind in dict.fromkeys(kinds):
        kb = _Kind(kind, bg, p, seed, taken)
        build: Callable[[], list[_Draft] | None] = getattr(kb, kind)
        made = 0
        for number in range(episodes_per_kind):
            drafts = build()
            if not drafts:
                continue
            drafts.sort(key=lambda d: d.t)  # stable: same-time steps keep the builder's order
            made += 1
            episode = f"{kind}-{number}"
            sequence += 1
            last_group, last_slot = 0, 0
            for step, draft in enumerate(drafts):
                j = max(bg.pos_at(draft.t) - 1, draft.after - 1, 0)
                group = max(bg.group_of[min(j, bg.n - 1)], last_group)
                b0, b1 = bg.groups[group]
                slot = kb.rng.randint(max(b0, draft.after), max(b1, draft.after)) if bg.has_blocks \
                    else max(j + 1, draft.after)
                if group == last_group:
                    slot = max(slot, last_slot)
                last_group, last_slot = group, slot
                tx = _materialize(kb, draft, group, kind, episode)
                planted.append(((slot, group, sequence, step), tx, draft.contract_address))
        if made < episodes_per_kind:
            log.warning("%s: planted %d of %d episodes (the background lacks material)", kind, made,
                        episodes_per_kind)
        nonce_start.update(kb.nonce_start)
    planted.sort(key=lambda x: x[0])
    return _merge(bg, planted, nonce_start)


def _merge(bg: Background, planted: list[tuple[tuple, dict, str | None]], nonce_start: dict[str, int]) -> list[dict]:
    out: list[dict] = []
    groups: list[int] = []
    created: dict[int, str] = {}  # id(tx) -> the contract address its creation assumed
    ours: set[int] = set()
    k = 0
    for i, row in enumerate(bg.rows):
        while k < len(planted) and planted[k][0][0] <= i:
            out.append(planted[k][1])
            groups.append(planted[k][0][1])
            k += 1
        out.append(row)
        groups.append(bg.group_of[i])
    for key, tx, _ in planted[k:]:
        out.append(tx)
        groups.append(key[1])
    for _, tx, contract in planted:
        ours.add(id(tx))
        if contract is not None:
            created[id(tx)] = contract

    # nonces: background rows as they are; planted ones continue their sender's count
    last: dict[str, int] = {}
    for tx in out:
        sender = tx["from"].lower() if isinstance(tx.get("from"), str) else None
        if id(tx) in ours:
            nonce = last[sender] + 1 if sender in last else nonce_start.get(sender, 0)
            if id(tx) in created and create_address(sender, nonce) != created[id(tx)]:
                raise AssertionError(f"{sender}: creation at nonce {nonce}, not the one its contract address assumed")
            tx["nonce"] = hex(nonce)
            last[sender] = nonce
        elif sender is not None:
            nonce = _int(tx.get("nonce"))
            if nonce is not None:
                last[sender] = nonce

    # transaction indices: consecutive within each block, background rows shifted past planted ones
    if bg.has_blocks and any("transactionIndex" in r for r in bg.rows):
        shift, current, next_index = 0, None, 0
        for pos, (tx, group) in enumerate(zip(out, groups)):
            if group != current:
                current, shift = group, 0
                next_index = _int(bg.rows[bg.groups[group][0]].get("transactionIndex")) or 0
            if id(tx) in ours:
                if "transactionIndex" in tx:
                    tx["transactionIndex"] = hex(next_index)
                next_index += 1
                shift += 1
                continue
            index = _int(tx.get("transactionIndex"))
            if index is None:
                continue
            if shift:
                tx = dict(tx)
                tx["transactionIndex"] = hex(index + shift)
                out[pos] = tx
            next_index = index + shift + 1
    return out
