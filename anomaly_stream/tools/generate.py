"""Synthetic Ethereum transaction stream with labelled attack episodes.

The detector consumes transactions in the shape an Ethereum node returns from
``eth_getBlockByNumber(n, true)`` merged with the matching receipt fields
(``gasUsed``, ``status``, ``contractAddress``), and for a token transfer the
ingester's ``ownerTokenBalance``.  This module produces exactly that shape so the detector can be developed, tested and benchmarked without a
node, and so its precision/recall can be measured: every transaction carries
one extra key, ``label``, which is ``None`` for ordinary traffic and the
scenario name for injected attack traffic.  The detector must ignore it.

Ordinary traffic is shaped after what makes mainnet hard to model:

* Sender and recipient activity is Zipf-like: a handful of addresses (exchange
  hot wallets, bots) send a large share of transactions, most addresses are
  seen once or never.
* Values are log-normal in ETH, and most contract calls move no ETH at all.
* The base fee follows a slow random walk between 5 and 60 gwei, and each
  sender adds a tip of 0.01-3 gwei, so "normal" gas prices drift over time.
* Transactions go either to externally owned accounts (plain transfers, 21000
  gas) or to token/DEX contracts with real 4-byte selectors, plausible gas
  limits and gasUsed/gas ratios, and an occasional failed call.
* Per-sender nonces increase by exactly one; blocks are 12 s of event time
  apart and hold ~150 transactions at the default rate.

Attack episodes (see ``SCENARIOS``) start with a configurable probability after
each ordinary transaction and may span several transactions spread over a
few seconds of event time, interleaved with ordinary traffic.

Time is event time only: the generator never sleeps, it just stamps blocks
and timestamps as if transactions arrived at ``tx_per_second``.

Fields deliberately left out because nothing downstream uses them: signature
values (``v``, ``r``, ``s``, ``yParity``), ``blockHash`` and ``accessList``.
Contract addresses of creations are random rather than derived with Keccak,
which the standard library does not provide.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect
from dataclasses import dataclass, field
from functools import partial
from itertools import count, islice
from typing import Any, Callable, Iterator

__all__ = [
    "DEFAULT_SCENARIO_RATES",
    "SCENARIOS",
    "GeneratorConfig",
    "TrafficGenerator",
]

SCENARIOS: tuple[str, ...] = (
    "wallet_drain",
    "dusting",
    "address_poisoning",
    "gas_price_spike",
    "dormant_large_transfer",
    "contract_creation_burst",
)

# Probability, per ordinary transaction, that an episode of each scenario
# starts.  Multi-transaction scenarios get lower rates so that every scenario
# contributes roughly the same number of labelled transactions and about 1% of
# the whole stream is labelled (see GeneratorConfig.expected_labelled_fraction).
DEFAULT_SCENARIO_RATES: dict[str, float] = {
    "wallet_drain": 1.0e-4,
    "dusting": 5.0e-5,
    "address_poisoning": 2.0e-3,
    "gas_price_spike": 2.0e-3,
    "dormant_large_transfer": 2.0e-3,
    "contract_creation_burst": 1.5e-4,
}

# Episode sizes are drawn uniformly from these inclusive ranges.
_DRAIN_TXS = (5, 20)
_DUST_TXS = (10, 50)
_CREATION_TXS = (5, 15)
_MEAN_EPISODE_LENGTH = {
    "wallet_drain": sum(_DRAIN_TXS) / 2,
    "dusting": sum(_DUST_TXS) / 2,
    "address_poisoning": 1.0,
    "gas_price_spike": 1.0,
    "dormant_large_transfer": 1.0,
    "contract_creation_burst": sum(_CREATION_TXS) / 2,
}

BLOCK_TIME = 12  # seconds between blocks since the Merge
_WEI_PER_ETH = 1e18
_WEI_PER_GWEI = 1e9

# Base fee random walk: log-space step per block, reflected into the bounds.
_BASE_FEE_BOUNDS_GWEI = (5.0, 60.0)
_BASE_FEE_STEP_SIGMA = 0.02
_TIP_BOUNDS_GWEI = (0.01, 3.0)
_EIP1559_SHARE = 0.85

# Zipf-Mandelbrot weights 1 / (rank + q) ** s.  With 20k addresses the busiest
# sender gets ~2% of traffic and the top 100 about 40%.
_ADDRESS_ZIPF = (1.1, 10.0)
_CONTRACT_ZIPF = (1.2, 2.0)
_FRESH_RECIPIENT_SHARE = 0.05  # plain transfers to never-seen addresses
# Token transfers that move all their sender held of the token (the message's
# ownerTokenBalance is 0, as the ingester reads it; the rest leave some):
# real 2017, 22 of the 186 transfers whose owner the trace saw receive the
# token (readers.with_trace_balances; 1 of 67 in the MEV blocks, 6 of 12 in 2024's five minutes).
_EMPTYING_SHARE = 22 / 186
_CALL_FAILURE_RATE = 0.015

# Mix of ordinary transaction kinds, as cumulative thresholds on one uniform
# draw: plain ETH transfer, ERC-20 transfer, approve, token swap, ETH swap,
# other contract call, and the remainder contract creations.
_P_TRANSFER = 0.38
_P_TOKEN_TRANSFER = _P_TRANSFER + 0.25
_P_APPROVE = _P_TOKEN_TRANSFER + 0.07
_P_SWAP_TOKENS = _P_APPROVE + 0.12
_P_SWAP_ETH = _P_SWAP_TOKENS + 0.06
_P_OTHER_CALL = _P_SWAP_ETH + 0.118

_SEL_TRANSFER = "a9059cbb"  # transfer(address,uint256)
_SEL_APPROVE = "095ea7b3"  # approve(address,uint256)
_SEL_SWAP_TOKENS = "38ed1739"  # swapExactTokensForTokens(...)
_SEL_SWAP_ETH = "7ff36ab5"  # swapExactETHForTokens(...)
_OTHER_SELECTORS = (
    "23b872dd",  # transferFrom(address,address,uint256)
    "2e1a7d4d",  # withdraw(uint256)
    "d0e30db0",  # deposit()
    "3593564c",  # execute(bytes,bytes[],uint256) (Uniswap universal router)
    "a22cb465",  # setApprovalForAll(address,bool)
    "1249c58b",  # mint()
)
_MAX_UINT256 = (1 << 256) - 1
_ADDRESS_PAD = "0" * 24  # left padding of an address to a 32-byte ABI word
_CREATION_PREFIX = "6080604052"  # solc bytecode preamble

# The most used mainnet contracts lead the popularity ranking so that traffic
# looks familiar; the rest of each pool is random.
_KNOWN_TOKENS = (
    "0xdac17f958d2ee523a2206206994597c13d831ec7",  # USDT
    "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",  # USDC
    "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",  # WETH
    "0x6b175474e89094c44da98b954eedeac495271d0f",  # DAI
)
_KNOWN_ROUTERS = (
    "0x7a250d5630b4cf539739df2c5dacb4c659f2488d",  # Uniswap V2 router
    "0xd9e1ce17f2641f24ae83637ab66a2cca9c378b9f",  # SushiSwap router
)
_N_TOKENS = 400
_N_OTHER_CONTRACTS = 200
_PAIR_MEMORY = 4096  # recent EOA->EOA transfers remembered for victim choice


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of a generated stream; equal configs give equal streams.

    ``scenario_rates`` maps scenario names to the probability that an episode
    of that scenario starts after an ordinary transaction.  Scenarios missing
    from the mapping are disabled, so ``{}`` gives purely ordinary traffic.
    The rates must sum to at most 1 because at most one episode starts per
    ordinary transaction.
    """

    seed: int = 42
    n_addresses: int = 20_000
    tx_per_second: float = 12.5
    start_time: int = 1_700_000_000
    start_block: int = 18_570_000
    chain_id: int = 1
    scenario_rates: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_SCENARIO_RATES)
    )

    def __post_init__(self) -> None:
        if self.n_addresses < 2:
            raise ValueError("n_addresses must be at least 2")
        if not self.tx_per_second > 0:
            raise ValueError("tx_per_second must be positive")
        unknown = set(self.scenario_rates) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenarios: {sorted(unknown)}")
        if any(not 0.0 <= r <= 1.0 for r in self.scenario_rates.values()):
            raise ValueError("scenario rates must lie in [0, 1]")
        if sum(self.scenario_rates.values()) > 1.0:
            raise ValueError("scenario rates must sum to at most 1")

    def expected_labelled_fraction(self) -> float:
        """Long-run share of labelled transactions implied by the rates.

        Each ordinary transaction spawns on average ``R = sum(rate * mean
        episode length)`` labelled ones, so labelled / total = R / (1 + R).
        Episodes that need history (a victim's past transfers) are skipped
        until the stream has some, which lowers the share slightly at first.
        """
        r = sum(
            rate * _MEAN_EPISODE_LENGTH[name]
            for name, rate in self.scenario_rates.items()
        )
        return r / (1.0 + r)


def _zipf_cumulative(n: int, exponent: float, offset: float) -> list[float]:
    """Cumulative Zipf-Mandelbrot weights, for O(log n) sampling by bisect."""
    total = 0.0
    cumulative = []
    for rank in range(1, n + 1):
        total += 1.0 / (rank + offset) ** exponent
        cumulative.append(total)
    return cumulative


class TrafficGenerator:
    """An endless, deterministic stream of transaction dicts.

    Iterating the generator and calling ``take`` consume the same stream, so
    ``take(5) + take(5)`` equals ``take(10)`` of a fresh generator.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        self.config = config = config or GeneratorConfig()
        self._rng = rng = random.Random(config.seed)
        # Its own stream, so the balances leave the rest of the traffic as it was.
        self._balance_rng = random.Random(f"{config.seed}:balances")
        self._chain_id_hex = hex(config.chain_id)

        # Address pools are built once so a transaction costs only lookups.
        self._addresses = [self._fresh_address() for _ in range(config.n_addresses)]
        self._address_cum = _zipf_cumulative(config.n_addresses, *_ADDRESS_ZIPF)
        self._tokens = list(_KNOWN_TOKENS) + [
            self._fresh_address() for _ in range(_N_TOKENS - len(_KNOWN_TOKENS))
        ]
        self._token_cum = _zipf_cumulative(_N_TOKENS, *_CONTRACT_ZIPF)
        self._routers = _KNOWN_ROUTERS
        self._other_contracts = [
            self._fresh_address() for _ in range(_N_OTHER_CONTRACTS)
        ]
        self._other_cum = _zipf_cumulative(_N_OTHER_CONTRACTS, *_CONTRACT_ZIPF)

        # Next nonce per sender.  Pool addresses get a pre-stream history on
        # first use; attacker accounts are registered explicitly.
        self._nonces: dict[str, int] = {}
        # Ring of recent ordinary (sender, recipient) plain transfers: victims
        # of draining and poisoning must be addresses with a normal history.
        self._pairs: list[tuple[str, str]] = []
        self._pairs_written = 0

        self._block = -1
        self._tx_index = 0
        self._block_number_hex = ""
        self._block_time_hex = ""
        low, high = _BASE_FEE_BOUNDS_GWEI
        self._base_fee = math.exp(rng.uniform(math.log(low), math.log(high)))

        self._pending: list[tuple[float, int, Callable[[float], dict]]] = []
        self._sequence = count()
        self._starters = self._episode_starters()
        self._stream = self._generate()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._stream

    def take(self, n: int) -> list[dict[str, Any]]:
        """Return the next ``n`` transactions of the stream."""
        return list(islice(self._stream, n))

    # -- stream --------------------------------------------------------------

    def _episode_starters(self) -> list[tuple[float, Callable[[float], None]]]:
        """Cumulative rate thresholds so one uniform draw picks an episode."""
        starters = []
        cumulative = 0.0
        for name in SCENARIOS:
            rate = self.config.scenario_rates.get(name, 0.0)
            if rate > 0.0:
                cumulative += rate
                starters.append((cumulative, getattr(self, f"_start_{name}")))
        return starters

    def _generate(self) -> Iterator[dict[str, Any]]:
        """Merge Poisson-arriving ordinary traffic with scheduled episodes.

        Episode transactions wait in a heap keyed by event time and are emitted
        as soon as the next ordinary arrival is later, which keeps the stream
        ordered by time while letting episodes interleave with normal traffic.
        """
        rate = self.config.tx_per_second
        expovariate = self._rng.expovariate
        uniform01 = self._rng.random
        pending = self._pending
        starters = self._starters
        total_rate = starters[-1][0] if starters else 0.0
        next_arrival = expovariate(rate)
        while True:
            if pending and pending[0][0] <= next_arrival:
                at, _, build = heapq.heappop(pending)
                yield build(at)
                continue
            now = next_arrival
            next_arrival = now + expovariate(rate)
            yield self._ordinary_tx(now)
            draw = uniform01()
            if draw < total_rate:
                for threshold, start in starters:
                    if draw < threshold:
                        start(now)
                        break

    def _schedule(self, at: float, build: Callable[[float], dict]) -> None:
        heapq.heappush(self._pending, (at, next(self._sequence), build))

    # -- building blocks -----------------------------------------------------

    def _fresh_address(self) -> str:
        return f"0x{self._rng.getrandbits(160):040x}"

    def _new_sender(self, nonce: int = 0) -> str:
        """A never-seen account whose next nonce is ``nonce``."""
        address = self._fresh_address()
        self._nonces[address] = nonce
        return address

    def _pool_address(self) -> str:
        cum = self._address_cum
        return self._addresses[bisect(cum, self._rng.random() * cum[-1])]

    def _token(self) -> str:
        cum = self._token_cum
        return self._tokens[bisect(cum, self._rng.random() * cum[-1])]

    def _router(self) -> str:
        """Uniswap takes most of the router traffic, as on mainnet."""
        return self._routers[0 if self._rng.random() < 0.7 else 1]

    def _remember_pair(self, sender: str, recipient: str) -> None:
        if len(self._pairs) < _PAIR_MEMORY:
            self._pairs.append((sender, recipient))
        else:
            self._pairs[self._pairs_written % _PAIR_MEMORY] = (sender, recipient)
        self._pairs_written += 1

    def _enter_block(self, block: int) -> None:
        """Advance the base-fee walk one step per block and reset the index."""
        gauss = self._rng.gauss
        log_low, log_high = (math.log(b) for b in _BASE_FEE_BOUNDS_GWEI)
        log_fee = math.log(self._base_fee)
        for _ in range(block - self._block):
            log_fee += gauss(0.0, _BASE_FEE_STEP_SIGMA)
            if log_fee < log_low:
                log_fee = 2 * log_low - log_fee
            elif log_fee > log_high:
                log_fee = 2 * log_high - log_fee
        self._base_fee = math.exp(log_fee)
        self._block = block
        self._tx_index = 0
        self._block_number_hex = hex(self.config.start_block + block)
        self._block_time_hex = hex(self.config.start_time + block * BLOCK_TIME)

    def _emit(
        self,
        at: float,
        sender: str,
        to: str | None,
        value: int,
        data: str,
        gas: int,
        gas_used: int,
        label: str | None,
        *,
        status: str = "0x1",
        tip_gwei: float | None = None,
        price_multiplier: float = 1.0,
        contract_address: str | None = None,
    ) -> dict[str, Any]:
        """Stamp block, nonce, fees and hash on a transaction and return it.

        ``price_multiplier`` scales the effective gas price relative to what an
        ordinary sender would pay in this block; the excess goes to the tip,
        as it does when a real sender overbids.
        """
        rng = self._rng
        block = int(at // BLOCK_TIME)
        if block != self._block:
            self._enter_block(block)
        index = self._tx_index
        self._tx_index = index + 1

        nonces = self._nonces
        nonce = nonces.get(sender)
        if nonce is None:
            nonce = int(rng.lognormvariate(3.0, 2.0))
        nonces[sender] = nonce + 1

        base = self._base_fee
        if tip_gwei is None:
            low, high = _TIP_BOUNDS_GWEI
            tip_gwei = low * (high / low) ** rng.random()
        if price_multiplier != 1.0:
            tip_gwei = price_multiplier * (base + tip_gwei) - base
        eip1559 = rng.random() < _EIP1559_SHARE

        tx: dict[str, Any] = {
            "hash": f"0x{rng.getrandbits(256):064x}",
            "from": sender,
            "to": to,
            "nonce": hex(nonce),
            "gas": hex(gas),
            "value": hex(value),
            "blockNumber": self._block_number_hex,
            "transactionIndex": hex(index),
            "type": "0x2" if eip1559 else "0x0",
            "chainId": self._chain_id_hex,
            "gasPrice": hex(int((base + tip_gwei) * _WEI_PER_GWEI)),
        }
        if eip1559:
            # Wallets cap the fee at a multiple of the current base fee; the
            # effective price is base + tip because the cap is never binding.
            headroom = 1.1 + rng.random()
            tx["maxFeePerGas"] = hex(int((base * headroom + tip_gwei) * _WEI_PER_GWEI))
            tx["maxPriorityFeePerGas"] = hex(int(tip_gwei * _WEI_PER_GWEI))
        tx["input"] = data
        tx["blockTimestamp"] = self._block_time_hex
        tx["gasUsed"] = hex(gas_used)
        tx["status"] = status
        tx["contractAddress"] = contract_address
        tx["label"] = label
        return tx

    def _call(
        self,
        at: float,
        sender: str,
        to: str,
        value: int,
        data: str,
        gas_used: int,
        label: str | None,
        price_multiplier: float,
    ) -> dict[str, Any]:
        """A contract call: gas limit padded above usage, rare reverts."""
        rng = self._rng
        gas = int(gas_used / (0.6 + 0.35 * rng.random()))
        status = "0x1"
        if rng.random() < _CALL_FAILURE_RATE:
            # A revert stops execution early but still pays the 21000 base.
            status = "0x0"
            gas_used = 21_000 + int((gas_used - 21_000) * rng.random())
        return self._emit(
            at, sender, to, value, data, gas, gas_used, label,
            status=status, price_multiplier=price_multiplier,
        )

    def _creation(
        self,
        at: float,
        sender: str,
        code_bytes: int,
        label: str | None,
        price_multiplier: float = 1.0,
    ) -> dict[str, Any]:
        """Deploy ``code_bytes`` of init code; gas grows with code size."""
        rng = self._rng
        body_bytes = code_bytes - len(_CREATION_PREFIX) // 2
        data = f"0x{_CREATION_PREFIX}{rng.getrandbits(body_bytes * 8):0{body_bytes * 2}x}"
        gas_used = 53_000 + 16 * code_bytes + 160 * code_bytes + rng.randint(20_000, 200_000)
        gas = int(gas_used / (0.7 + 0.25 * rng.random()))
        return self._emit(
            at, sender, None, 0, data, gas, gas_used, label,
            price_multiplier=price_multiplier, contract_address=self._fresh_address(),
        )

    # -- ordinary traffic ----------------------------------------------------

    def _ordinary_tx(
        self, at: float, label: str | None = None, price_multiplier: float = 1.0
    ) -> dict[str, Any]:
        """One transaction of the ordinary mix (see the ``_P_*`` thresholds)."""
        rng = self._rng
        sender = self._pool_address()
        kind = rng.random()
        if kind < _P_TRANSFER:
            if rng.random() < _FRESH_RECIPIENT_SHARE:
                to = self._fresh_address()
            else:
                to = self._pool_address()
            if label is None:
                self._remember_pair(sender, to)
            value = int(rng.lognormvariate(-2.3, 2.0) * _WEI_PER_ETH)
            return self._emit(
                at, sender, to, value, "0x", 21_000, 21_000, label,
                price_multiplier=price_multiplier,
            )
        if kind < _P_TOKEN_TRANSFER:
            amount = int(rng.lognormvariate(4.6, 2.5) * _WEI_PER_ETH)
            data = f"0x{_SEL_TRANSFER}{_ADDRESS_PAD}{self._pool_address()[2:]}{amount:064x}"
            tx = self._call(
                at, sender, self._token(), 0, data,
                rng.randint(34_000, 65_000), label, price_multiplier,
            )
            if tx["status"] == "0x1":
                left = self._balance_rng
                tx["ownerTokenBalance"] = "0x0" if left.random() < _EMPTYING_SHARE else hex(
                    max(1, int(amount * left.lognormvariate(0.0, 2.0))))
            return tx
        if kind < _P_APPROVE:
            amount = _MAX_UINT256 if rng.random() < 0.7 else int(
                rng.lognormvariate(6.0, 2.0) * _WEI_PER_ETH
            )
            spender = self._router()
            data = f"0x{_SEL_APPROVE}{_ADDRESS_PAD}{spender[2:]}{amount:064x}"
            return self._call(
                at, sender, self._token(), 0, data,
                rng.randint(44_000, 48_000), label, price_multiplier,
            )
        if kind < _P_SWAP_ETH:
            deadline = self.config.start_time + int(at) + 1_200
            path = f"{2:064x}{_ADDRESS_PAD}{self._token()[2:]}{_ADDRESS_PAD}{self._token()[2:]}"
            recipient = f"{_ADDRESS_PAD}{sender[2:]}"
            if kind < _P_SWAP_TOKENS:
                amount_in = int(rng.lognormvariate(4.6, 2.5) * _WEI_PER_ETH)
                amount_out = int(amount_in * rng.random())
                data = (
                    f"0x{_SEL_SWAP_TOKENS}{amount_in:064x}{amount_out:064x}"
                    f"{0xA0:064x}{recipient}{deadline:064x}{path}"
                )
                value = 0
            else:
                value = int(rng.lognormvariate(-1.6, 1.5) * _WEI_PER_ETH)
                amount_out = int(rng.lognormvariate(4.6, 2.5) * _WEI_PER_ETH)
                data = (
                    f"0x{_SEL_SWAP_ETH}{amount_out:064x}{0x80:064x}"
                    f"{recipient}{deadline:064x}{path}"
                )
            return self._call(
                at, sender, self._router(), value, data,
                rng.randint(100_000, 250_000), label, price_multiplier,
            )
        if kind < _P_OTHER_CALL:
            cum = self._other_cum
            to = self._other_contracts[bisect(cum, rng.random() * cum[-1])]
            words = rng.randint(0, 4)
            arguments = f"{rng.getrandbits(256 * words):0{64 * words}x}" if words else ""
            data = f"0x{rng.choice(_OTHER_SELECTORS)}{arguments}"
            value = 0
            if rng.random() < 0.2:
                value = int(rng.lognormvariate(-2.3, 2.0) * _WEI_PER_ETH)
            return self._call(
                at, sender, to, value, data,
                rng.randint(40_000, 300_000), label, price_multiplier,
            )
        return self._creation(
            at, sender, rng.randint(1_000, 12_000), label, price_multiplier
        )

    # -- attack episodes -----------------------------------------------------
    # Each _start_<scenario>(now) schedules the episode's transactions at or
    # after ``now``.  Builders run at emission time so that nonces, blocks and
    # fees reflect the moment the transaction is actually emitted.

    def _start_wallet_drain(self, now: float) -> None:
        """A compromised wallet empties itself to a fresh address in seconds.

        The victim is a recent ordinary sender.  The drained balance is split
        largest-first over the burst, and the attacker overbids on tips to get
        in before the owner can react.
        """
        if not self._pairs:
            return
        rng = self._rng
        victim = rng.choice(self._pairs)[0]
        drainer = self._fresh_address()
        size = rng.randint(*_DRAIN_TXS)
        balance = rng.lognormvariate(math.log(30.0), 1.0)
        shares = sorted((rng.expovariate(1.0) for _ in range(size)), reverse=True)
        total = sum(shares)
        at = now
        for share in shares:
            at += rng.uniform(0.2, 3.0)
            value = int(balance * share / total * _WEI_PER_ETH)
            tip = rng.uniform(5.0, 50.0)
            self._schedule(at, partial(
                self._plain_transfer, sender=victim, to=drainer, value=value,
                label="wallet_drain", tip_gwei=tip,
            ))

    def _start_dusting(self, now: float) -> None:
        """One new account sprays 1e-9..1e-6 ETH at many fresh addresses."""
        rng = self._rng
        duster = self._new_sender()
        at = now
        for _ in range(rng.randint(*_DUST_TXS)):
            at += rng.uniform(0.1, 1.0)
            value = int(10 ** rng.uniform(-9.0, -6.0) * _WEI_PER_ETH)
            self._schedule(at, partial(
                self._plain_transfer, sender=duster, to=self._fresh_address(),
                value=value, label="dusting",
            ))

    def _start_address_poisoning(self, now: float) -> None:
        """Plant a look-alike of a recent counterparty in the victim's history.

        Wallets abbreviate addresses to their first and last few characters,
        so a victim copying "the address I paid last time" from the history
        may pick the attacker's address instead.  The attacker reacts to the
        most recent plain transfer with a zero or dust transfer to its sender.
        """
        if not self._pairs:
            return
        rng = self._rng
        victim, counterparty = self._pairs[(self._pairs_written - 1) % _PAIR_MEMORY]
        look_alike = f"0x{counterparty[2:6]}{rng.getrandbits(128):032x}{counterparty[-4:]}"
        self._nonces[look_alike] = 0
        value = 0 if rng.random() < 0.6 else int(10 ** rng.uniform(-9.0, -6.0) * _WEI_PER_ETH)
        self._schedule(now + rng.uniform(1.0, 30.0), partial(
            self._plain_transfer, sender=look_alike, to=victim, value=value,
            label="address_poisoning",
        ))

    def _start_gas_price_spike(self, now: float) -> None:
        """An otherwise ordinary transaction paying 20-100x the going price."""
        multiplier = self._rng.uniform(20.0, 100.0)
        self._schedule(now, partial(
            self._ordinary_tx, label="gas_price_spike", price_multiplier=multiplier,
        ))

    def _start_dormant_large_transfer(self, now: float) -> None:
        """An account silent for the whole stream suddenly moves 100-10k ETH.

        Half are brand-new accounts (nonce 0); the other half have a nonce
        from activity before the stream began.
        """
        rng = self._rng
        nonce = 0 if rng.random() < 0.5 else rng.randint(1, 300)
        sender = self._new_sender(nonce)
        to = self._fresh_address() if rng.random() < 0.3 else self._pool_address()
        value = int(10 ** rng.uniform(2.0, 4.0) * _WEI_PER_ETH)
        self._schedule(now, partial(
            self._plain_transfer, sender=sender, to=to, value=value,
            label="dormant_large_transfer",
        ))

    def _start_contract_creation_burst(self, now: float) -> None:
        """A new deployer creates 5-15 large contracts within seconds."""
        rng = self._rng
        deployer = self._new_sender()
        at = now
        for _ in range(rng.randint(*_CREATION_TXS)):
            at += rng.uniform(0.5, 4.0)
            self._schedule(at, partial(
                self._creation, sender=deployer, code_bytes=rng.randint(2_000, 24_000),
                label="contract_creation_burst",
            ))

    def _plain_transfer(
        self,
        at: float,
        *,
        sender: str,
        to: str,
        value: int,
        label: str,
        tip_gwei: float | None = None,
    ) -> dict[str, Any]:
        return self._emit(
            at, sender, to, value, "0x", 21_000, 21_000, label, tip_gwei=tip_gwei,
        )
