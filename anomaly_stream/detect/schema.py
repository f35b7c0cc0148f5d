"""The input schema: one Ethereum transaction per Kafka message, as JSON.

The object is the transaction exactly as a JSON-RPC node returns it
(`eth_getBlockByNumber(n, true)`), plus the optional `blockTimestamp` and
receipt fields. Quantities may be hex strings ("0x1a") or decimal numbers.
`decode` turns raw bytes into a `Tx` or raises `InvalidTransaction` with a
short reason code (a metric label and the dead-letter header); nothing in
between is allowed to raise anything else.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

import orjson

_HEX_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}")
# Shared with the HTTP API (its parameters and its OpenAPI patterns).
ADDRESS_PATTERN = "0x[0-9a-fA-F]{40}"
HASH_PATTERN = "0x[0-9a-fA-F]{64}"
ADDRESS = re.compile(ADDRESS_PATTERN)
TX_HASH = re.compile(HASH_PATTERN)
_HEX_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_HEX_DIGITS = re.compile(r"0x[0-9a-fA-F]*")  # _HEX_DATA once the length is known to be even

WEI_PER_ETH = 10**18
WEI_PER_GWEI = 10**9
# Ranges past which a value is a producer bug, not a transaction: more ether
# than exists, more gas than any block holds, timestamps before the genesis
# block or after 2100.
MAX_VALUE_WEI = 10**9 * WEI_PER_ETH
MAX_GAS = 10**9
MAX_GAS_PRICE_WEI = 10**7 * WEI_PER_GWEI
MAX_NONCE = 2**64 - 1
MAX_BLOCK_NUMBER = 2**63 - 1
MIN_TIMESTAMP, MAX_TIMESTAMP = 1_438_269_973, 4_102_444_800
MAX_INPUT_BYTES = 1 << 20
MAX_UINT256 = 2**256 - 1

REASONS = (
    "malformed_json", "not_an_object", "missing_field", "bad_type",
    "bad_hex", "bad_address", "out_of_range", "inconsistent",
)


class InvalidTransaction(ValueError):
    """The message is not a transaction we can score; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _InexactNumber(Exception):
    """orjson turned an integer above 2**64-1 into a float: parse the message exactly."""


class Tx(NamedTuple):
    """A validated transaction: plain data, addresses in lower case, amounts in wei."""

    hash: str
    sender: str
    to: str | None
    value_wei: int
    gas: int
    gas_price_wei: int
    priority_fee_wei: int
    nonce: int
    input_bytes: int
    selector: str | None
    input: str  # the calldata as received (hex); semantics.decode_call reads it
    block_number: int | None
    block_timestamp: int | None
    gas_used: int | None
    status: int | None
    # The token balance left to the owner of a token transfer (its `from`) at the end of the block,
    # as the ingester read it (`ownerTokenBalance`, an eth_call of balanceOf); None: not read.
    owner_token_balance: int | None = None


def decode(raw: bytes) -> Tx:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidTransaction("malformed_json", str(exc)[:120]) from None
    if not isinstance(obj, dict):
        raise InvalidTransaction("not_an_object", type(obj).__name__)
    try:
        return validate(obj)
    except _InexactNumber:
        # Rare: a quantity above 2**64-1 written as a JSON number. The standard
        # library parses big integers exactly, at ten times orjson's cost; a
        # number that is a float there too (1e20) is no quantity.
        try:
            return validate(json.loads(raw))
        except _InexactNumber:
            raise InvalidTransaction("bad_type", "a quantity written as a float") from None


def validate(obj: dict) -> Tx:
    """The validated `Tx` of a parsed message, or InvalidTransaction with the first rule it breaks.

    Two paths with one outcome. `_fast` accepts only messages every rule
    accepts (quantities as "0x" hex strings of at most 64 digits, lower- or
    mixed-case addresses and hashes, well-formed input) and builds the same
    `Tx`; it gives up (None) on anything else, and `_validate_exact` then
    goes through the rules one by one, in order, for the reason code
    (or the decimal and JSON-number quantities it also accepts).
    """
    tx = _fast(obj)
    return tx if tx is not None else _validate_exact(obj)


_new = tuple.__new__  # NamedTuple's generated __new__ costs a Python frame per call
_QUANTITY_FIELDS = ("value", "gas", "nonce", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas",
                    "gasUsed", "status", "blockTimestamp", "blockNumber", "ownerTokenBalance")
# The quantities present, joined by "|": each must be `_HEX_QUANTITY`. A value
# holding "|" itself could pass as two, but then fails int() below.
_HEX_QUANTITIES = re.compile(r"0x[0-9a-fA-F]{1,64}(?:\|0x[0-9a-fA-F]{1,64})*")


def _fast(obj: dict) -> Tx | None:
    """`_validate_exact`'s Tx for a message every rule accepts, with hex quantities; None otherwise."""
    get = obj.get
    raws = list(map(get, _QUANTITY_FIELDS))
    value, gas, nonce, gas_price, max_fee, tip, gas_used, status, timestamp, block, balance = raws
    try:
        # TypeError: a quantity that is no string (a JSON number, for `_validate_exact`).
        if value is None or gas is None or nonce is None or not _HEX_QUANTITIES.fullmatch(
                "|".join(filter(None, raws))):
            return None
        value, gas, nonce = int(value, 16), int(gas, 16), int(nonce, 16)
        if gas_price is not None:
            gas_price = int(gas_price, 16)
        if max_fee is not None:
            max_fee = int(max_fee, 16)
        if tip is not None:
            tip = int(tip, 16)
        if gas_used is not None:
            gas_used = int(gas_used, 16)
        if status is not None:
            status = int(status, 16)
        if timestamp is not None:
            timestamp = int(timestamp, 16)
        if block is not None:
            block = int(block, 16)
        if balance is not None:
            balance = int(balance, 16)
    except (TypeError, ValueError):
        return None
    if (value > MAX_VALUE_WEI or gas > MAX_GAS or nonce > MAX_NONCE
            or (gas_price is not None and gas_price > MAX_GAS_PRICE_WEI)
            or (max_fee is not None and max_fee > MAX_GAS_PRICE_WEI)
            or (tip is not None and (tip > MAX_GAS_PRICE_WEI or (max_fee is not None and tip > max_fee)))
            or (gas_used is not None and gas_used > gas)
            or (status is not None and status > 1)
            or (timestamp is not None and not MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP)
            or (block is not None and block > MAX_BLOCK_NUMBER)):
        return None
    if gas_price is None:
        if max_fee is None:
            return None
        gas_price = max_fee
    sender, to, tx_hash, data = get("from"), get("to"), get("hash"), get("input", "0x")
    if (type(sender) is not str or not ADDRESS.fullmatch(sender)
            or (to is not None and (type(to) is not str or not ADDRESS.fullmatch(to)))
            or type(tx_hash) is not str or not TX_HASH.fullmatch(tx_hash)
            or type(data) is not str or len(data) > 2 + 2 * MAX_INPUT_BYTES or len(data) & 1
            or not _HEX_DIGITS.fullmatch(data)):
        return None
    return _new(Tx, (
        tx_hash.lower(), sender.lower(), None if to is None else to.lower(), value, gas, gas_price,
        tip or 0, nonce, (len(data) - 2) // 2, data[:10].lower() if len(data) >= 10 else None, data,
        block, timestamp, gas_used, status, balance,
    ))


def _validate_exact(obj: dict) -> Tx:
    sender = _address(obj, "from")
    to = _address(obj, "to", optional=True)
    value = _quantity(obj, "value", MAX_VALUE_WEI)
    gas = _quantity(obj, "gas", MAX_GAS)
    gas_price = _quantity(obj, "gasPrice", MAX_GAS_PRICE_WEI, optional=True)
    max_fee = _quantity(obj, "maxFeePerGas", MAX_GAS_PRICE_WEI, optional=True)
    tip = _quantity(obj, "maxPriorityFeePerGas", MAX_GAS_PRICE_WEI, optional=True)
    if gas_price is None:
        if max_fee is None:
            raise InvalidTransaction("missing_field", "gasPrice or maxFeePerGas")
        gas_price = max_fee
    if tip is not None and max_fee is not None and tip > max_fee:
        raise InvalidTransaction("inconsistent", "maxPriorityFeePerGas > maxFeePerGas")
    data = obj.get("input", "0x")
    if not isinstance(data, str):
        raise InvalidTransaction("bad_type", "input")
    if len(data) > 2 + 2 * MAX_INPUT_BYTES:
        raise InvalidTransaction("out_of_range", "input")
    if not _HEX_DATA.fullmatch(data):
        raise InvalidTransaction("bad_hex", "input")
    gas_used = _quantity(obj, "gasUsed", MAX_GAS, optional=True)
    if gas_used is not None and gas_used > gas:
        raise InvalidTransaction("inconsistent", "gasUsed > gas")
    status = _quantity(obj, "status", 1, optional=True)
    timestamp = _quantity(obj, "blockTimestamp", MAX_TIMESTAMP, optional=True)
    if timestamp is not None and timestamp < MIN_TIMESTAMP:
        raise InvalidTransaction("out_of_range", "blockTimestamp")
    tx_hash = obj.get("hash")
    if not isinstance(tx_hash, str):
        raise InvalidTransaction("missing_field" if tx_hash is None else "bad_type", "hash")
    if not TX_HASH.fullmatch(tx_hash):
        raise InvalidTransaction("bad_hex", "hash")
    return Tx(
        hash=tx_hash.lower(),
        sender=sender,
        to=to,
        value_wei=value,
        gas=gas,
        gas_price_wei=gas_price,
        priority_fee_wei=tip or 0,
        nonce=_quantity(obj, "nonce", MAX_NONCE),
        input_bytes=(len(data) - 2) // 2,
        selector=data[:10].lower() if len(data) >= 10 else None,
        input=data,
        block_number=_quantity(obj, "blockNumber", MAX_BLOCK_NUMBER, optional=True),
        block_timestamp=timestamp,
        gas_used=gas_used,
        status=status,
        owner_token_balance=_quantity(obj, "ownerTokenBalance", MAX_UINT256, optional=True),
    )


def _quantity(obj: dict, field: str, maximum: int, optional: bool = False) -> int | None:
    raw = obj.get(field)
    if raw is None:
        if optional:
            return None
        raise InvalidTransaction("missing_field", field)
    if isinstance(raw, str):
        if raw[:2] == "0x":
            if not _HEX_QUANTITY.fullmatch(raw):
                raise InvalidTransaction("bad_hex", field)
            value = int(raw, 16)
        elif raw.isascii() and raw.isdigit() and len(raw) <= 80:
            value = int(raw)
        else:
            raise InvalidTransaction("bad_hex", field)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float) and raw.is_integer() and raw >= 2**64:
        raise _InexactNumber
    else:
        raise InvalidTransaction("bad_type", field)
    if value < 0 or value > maximum:
        raise InvalidTransaction("out_of_range", field)
    return value


def _address(obj: dict, field: str, optional: bool = False) -> str | None:
    raw = obj.get(field)
    if raw is None:
        if optional:
            return None
        raise InvalidTransaction("missing_field", field)
    if not isinstance(raw, str):
        raise InvalidTransaction("bad_type", field)
    if not ADDRESS.fullmatch(raw):
        raise InvalidTransaction("bad_address", field)
    return raw.lower()
