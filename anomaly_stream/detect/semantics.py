"""What a transaction does with value: decoded from its calldata, without ABI files.

The calls decoded here are the ones that move tokens or grant someone the
right to move them. The grants matter most: PTXPhish (NDSS'25, see
/work/shared/data/README.md) finds that most payload phishing is an approval
(`approve`, `increaseAllowance`, EIP-2612 `permit`, `setApprovalForAll`)
granted to an address the victim never dealt with, so the detector needs the
spender, not just "a call to a token contract". A drained wallet then shows
`transferFrom`s by that spender, where the victim is the `owner`, not the
sender; address poisoning shows up as zero-value `transferFrom`s to a
look-alike `counterparty`.

Kinds (`Call.kind`):

- ``eth_transfer``: no calldata; `amount` is the value in wei.
- ``token_transfer``: ERC-20/721/1155 transfers, Permit2 transfers and a
  multicall's first `transferFrom`; `counterparty` is the recipient, `owner`
  the `from` named in the calldata.
- ``approval``: a grant (or revocation, `revoke`) of an allowance or of an
  operator; `counterparty` is the spender or operator.
- ``creation``: no `to`; `amount` is the value in wei.
- ``withdrawal``: a mixer's `withdraw(proof, root, nullifierHash,
  recipient, relayer, fee, refund)` (Tornado Cash's pools; the layout on
  any contract): the pool pays the recipient inside the call, so the
  top-level transaction is a relayer's 0-ETH call. `counterparty` is the
  recipient, `owner` the pool (`to`) whose funds it receives, `amount` the
  relayer's fee in wei. Funding provenance needs it: Forta saw 44% of the
  attacks of H1 2024 funded this way (../shared/data/README.md).
- ``call``: anything else, including a known selector whose arguments are
  not well-formed ABI (truncated, dirty address padding, a bool that is not
  0 or 1, non-hex): such a call reverts under Solidity's decoder, so it is
  not the transfer or approval it looks like. `amount` is the value in wei.

Whenever `token` is None, `amount` is wei. The decode is the caller's intent
read from calldata, without chain state: we do not know that `to` is a token
contract, nor the sender, so `owner` is set whenever the calldata names one
and the caller compares it with the sender. ERC-20 and ERC-721 share the
selectors of `transferFrom` and `approve`; for an ERC-721 the `amount` is then
the token id (and `approve(address(0), id)` is its revocation, hence revoke
also on a zero spender).

Share of each kind in the real mainnet traffic of ../shared/data/traffic:

    kind            2017 (19,999 tx)   2024 (3,591 tx)
    eth_transfer    83.3%              33.7%
    token_transfer   3.2%              13.8%
    approval         0.07%              7.5%
    creation         0.16%              0
    withdrawal       0 (Tornado: 2019)  0
    call            13.2%              45.0%

Every known selector in that traffic has well-formed arguments. Most of
"call" in 2024 is routers and bots (one unidentified selector, ac5288ad, to
one contract is 8% of all 2024 transactions). Value also moves or is granted
inside calls this module does not open: 73 of the 244 Uniswap Universal
Router `execute` calls carry a PERMIT2_PERMIT command, and Wyvern/Seaport
orders, WETH deposits and routers' multicalls are opaque here. Multicall's
`aggregate`, `tryAggregate` and `aggregate3` are opened for one thing: a
`transferFrom` inside, the contract spending an allowance granted to it (a
drainer contract emptied by its accomplice, `PULLED_BY_TO`); a batch without
one is a "call" with its method named (the real traffic has one, in the MEV
blocks: a reward claim). In 2017, 459 ETH payments carry stray data (the
byte 0x20, or 20 zero bytes): they are "call".

Cost: decode_call over all 31,450 real transactions, median of 7 passes,
2.8 us per transaction (1.7 us for an ETH transfer, 3.0 us for an unknown
selector, 8 us for an ERC-20 transfer or approve, 20 us for an ERC-1155
batch), on a shared 2-vCPU VM under load from other jobs, CPython 3.11 built
without PGO; `sum(range(1000))` took 55 us there at the time (26 us when the
VM was quiet). Hex is checked and converted once by bytes.fromhex, because
int(word, 16) also accepts signs, underscores, spaces and "0x".

Permit2 calls are decoded only when `to` is the canonical Permit2 contract
(`PERMIT2`): the argument layout is Permit2's, not a convention other
contracts share, so the same selector elsewhere means nothing we know.
"""

from __future__ import annotations

from typing import NamedTuple

KINDS = ("eth_transfer", "token_transfer", "approval", "creation", "withdrawal", "call")

PERMIT2 = "0x000000000022d473030f116ddee9f6b43ac78ba3"
ZERO_ADDRESS = "0x" + "0" * 40

# keccak256("Transfer(address,address,uint256)") and ("Approval(address,address,uint256)"),
# written out so that the hot path imports no hashing; the tests recompute them.
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
APPROVAL_TOPIC = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"
_TRANSFER_BODY, _APPROVAL_BODY = TRANSFER_TOPIC[2:], APPROVAL_TOPIC[2:]

# Wallets and dapps ask for 2**256-1 ("infinite"); anything from 2**255 up
# bounds nothing either, whatever its exact digits.
UNLIMITED = 2**255
UINT160_MAX = 2**160 - 1
UINT256_MAX = 2**256 - 1


class Call(NamedTuple):
    kind: str                  # one of KINDS
    method: str                # a name from the decoders below, "" for eth_transfer/creation/call
    counterparty: str | None   # recipient, spender or operator; else `to` (None for creation)
    owner: str | None          # the owner the calldata names (transferFrom's from, permit's owner)
    token: str | None          # token contract: `to`, or Permit2's token argument; None: amount is wei
    amount: int                # token amount, allowance or ERC-721 id; wei when token is None
    unlimited: bool            # allowance >= 2**255 (uint160 max on Permit2), or an operator grant
    revoke: bool               # sets an allowance or operator to nothing: not a grant


class TokenTransfer(NamedTuple):
    token: str
    sender: str
    recipient: str
    amount: int  # ERC-20 amount or ERC-721 token id


class TokenApproval(NamedTuple):
    token: str
    owner: str
    spender: str
    amount: int  # ERC-20 allowance or ERC-721 token id


_Z12 = bytes(12)  # left padding of an address or uint160 word
_Z26 = bytes(26)  # left padding of a uint48 word
_Z31 = bytes(31)  # left padding of a bool word
_fromhex = bytes.fromhex
_from_bytes = int.from_bytes
# NamedTuple's generated __new__ costs a Python frame per call, more than the
# whole decode of an ETH transfer; tuple.__new__ builds the same object.
_new = tuple.__new__


def _addr(raw: bytes, i: int) -> str:
    # Solidity's decoder reverts on dirty high bytes: such a word is no address.
    if not raw.startswith(_Z12, i):
        raise ValueError
    return "0x" + raw[i + 12:i + 32].hex()


def _uint(raw: bytes, i: int) -> int:
    return _from_bytes(raw[i:i + 32], "big")


def _uint160(raw: bytes, i: int) -> int:
    if not raw.startswith(_Z12, i):
        raise ValueError
    return _from_bytes(raw[i + 12:i + 32], "big")


def _bool(raw: bytes, i: int) -> bool:
    if not raw.startswith(_Z31, i) or raw[i + 31] > 1:
        raise ValueError
    return raw[i + 31] == 1


def _check_bytes(raw: bytes, head: int) -> None:
    # A `bytes` argument we do not read must still lie inside the calldata,
    # or the call reverts before doing anything.
    off = _uint(raw, head)
    if off + 32 > len(raw) or off + 32 + _uint(raw, off) > len(raw):
        raise ValueError


def _array(raw: bytes, head: int) -> tuple[int, int]:
    """(offset of the first element, length) of a uint256[] argument inside the calldata."""
    off = _uint(raw, head)
    if off + 32 > len(raw):
        raise ValueError
    n = _uint(raw, off)
    if off + 32 + 32 * n > len(raw):
        raise ValueError
    return off + 32, n


# Each decoder takes the lower-case `to` and the argument bytes (a static head
# at least as long as the table below says) and returns the Call's fields, or
# raises ValueError for arguments Solidity would reject.

def _transfer(to, raw):
    return ("token_transfer", "transfer", _addr(raw, 0), None, to, _uint(raw, 32), False, False)


def _transfer_from(to, raw):
    # Also ERC-721 transferFrom (same selector): the amount is then the token id.
    return ("token_transfer", "transferFrom", _addr(raw, 32), _addr(raw, 0), to,
            _uint(raw, 64), False, False)


def _approve(to, raw):
    spender, amount = _addr(raw, 0), _uint(raw, 32)
    return ("approval", "approve", spender, None, to, amount, amount >= UNLIMITED,
            amount == 0 or spender == ZERO_ADDRESS)


def _increase_allowance(to, raw):
    amount = _uint(raw, 32)
    return ("approval", "increaseAllowance", _addr(raw, 0), None, to, amount,
            amount >= UNLIMITED, False)


def _permit(to, raw):
    # EIP-2612 permit(owner, spender, value, deadline, v, r, s); v, r, s and
    # the deadline are not read, so not checked.
    amount = _uint(raw, 64)
    return ("approval", "permit", _addr(raw, 32), _addr(raw, 0), to, amount,
            amount >= UNLIMITED, amount == 0)


def _dai_permit(to, raw):
    # DAI-style permit(holder, spender, nonce, expiry, allowed, v, r, s): the
    # allowance becomes uint256 max or 0.
    allowed = _bool(raw, 128)
    return ("approval", "dai_permit", _addr(raw, 32), _addr(raw, 0), to,
            UINT256_MAX if allowed else 0, allowed, not allowed)


def _set_approval_for_all(to, raw):
    # An operator may move every token of the collection: reported like an
    # unlimited allowance so that one threshold fits all approvals.
    approved = _bool(raw, 32)
    return ("approval", "setApprovalForAll", _addr(raw, 0), None, to,
            UINT256_MAX if approved else 0, approved, not approved)


def _safe_transfer_721(to, raw):
    # The amount of an ERC-721 transfer is its token id, as for transferFrom.
    return ("token_transfer", "safeTransferFrom", _addr(raw, 32), _addr(raw, 0), to,
            _uint(raw, 64), False, False)


def _safe_transfer_721_data(to, raw):
    _check_bytes(raw, 96)
    return _safe_transfer_721(to, raw)


def _safe_transfer_1155(to, raw):
    _check_bytes(raw, 128)
    return ("token_transfer", "safeTransferFrom", _addr(raw, 32), _addr(raw, 0), to,
            _uint(raw, 96), False, False)


def _safe_batch_transfer_1155(to, raw):
    # The amount is the sum of the amounts (over different token ids, so a
    # size, not a price); the loop is bounded by the calldata's length.
    _, n_ids = _array(raw, 64)
    start, n = _array(raw, 96)
    if n != n_ids:  # ERC-1155 requires equal lengths: such a call reverts
        raise ValueError
    _check_bytes(raw, 128)
    total = 0
    for i in range(start, start + 32 * n, 32):
        total += _from_bytes(raw[i:i + 32], "big")
    return ("token_transfer", "safeBatchTransferFrom", _addr(raw, 32), _addr(raw, 0), to,
            total, False, False)


def _permit2_approve(to, raw):
    # approve(token, spender, uint160 amount, uint48 expiration)
    if to != PERMIT2 or not raw.startswith(_Z26, 96):
        raise ValueError
    amount = _uint160(raw, 64)
    return ("approval", "permit2_approve", _addr(raw, 32), None, _addr(raw, 0), amount,
            amount == UINT160_MAX, amount == 0)


def _permit2_permit(to, raw):
    # permit(owner, PermitSingle((token, amount, expiration, nonce), spender,
    # sigDeadline), signature): the tuple is static, so it sits inline.
    if to != PERMIT2 or not raw.startswith(_Z26, 96):
        raise ValueError
    _check_bytes(raw, 224)
    amount = _uint160(raw, 64)
    return ("approval", "permit2_permit", _addr(raw, 160), _addr(raw, 0), _addr(raw, 32), amount,
            amount == UINT160_MAX, amount == 0)


def _permit2_transfer_from(to, raw):
    # transferFrom(from, to, uint160 amount, token)
    if to != PERMIT2:
        raise ValueError
    return ("token_transfer", "permit2_transferFrom", _addr(raw, 32), _addr(raw, 0),
            _addr(raw, 96), _uint160(raw, 64), False, False)


def _permit2_permit_transfer_from(to, raw):
    # permitTransferFrom(((token, amount), nonce, deadline), (to, requestedAmount),
    # owner, signature): the amount is what is requested, at most the permitted one.
    if to != PERMIT2:
        raise ValueError
    _check_bytes(raw, 224)
    return ("token_transfer", "permit2_permitTransferFrom", _addr(raw, 128), _addr(raw, 192),
            _addr(raw, 0), _uint(raw, 160), False, False)


def _mixer_withdraw(to, raw):
    # withdraw(bytes proof, bytes32 root, bytes32 nullifierHash, address recipient,
    # address relayer, uint256 fee, uint256 refund)
    _check_bytes(raw, 0)
    _addr(raw, 128)
    return ("withdrawal", "mixer_withdraw", _addr(raw, 96), to, None, _uint(raw, 160), False, False)


def _inner_calls(raw: bytes, head: int, fields: int):
    """(target, calldata) of each element of the (address, ..., bytes)[] argument at `head`.

    Each element is a tuple of `fields` words, its target first and the
    offset of its calldata last; the number of elements is bounded by the
    calldata's length (`_array`).
    """
    start, n = _array(raw, head)
    for k in range(n):
        base = start + _uint(raw, start + 32 * k)
        if base + 32 * fields > len(raw):
            raise ValueError
        target = _addr(raw, base)
        off = base + _uint(raw, base + 32 * (fields - 1))
        end = off + 32 + _uint(raw, off) if off + 32 <= len(raw) else len(raw) + 1
        if end > len(raw):
            raise ValueError
        yield target, raw[off + 32:end]


# Calls a multicall makes that move an owner's tokens with the allowance granted to the multicall.
_PULLS = {bytes.fromhex("23b872dd"): _transfer_from, bytes.fromhex("42842e0e"): _safe_transfer_721}


def _multicall(method: str, head: int, fields: int):
    """A Multicall batch: the first call in it that pulls an owner's tokens, else a plain call.

    A drainer contract granted the victims' allowances is emptied by an
    accomplice calling its `aggregate([(token, transferFrom(victim,
    collector, amount))])`: the pull is made by the contract (`to`), with
    the allowance the victim granted to it (`PULLED_BY_TO`).
    """
    def decode(to, raw):
        if head:
            _bool(raw, 0)  # tryAggregate's requireSuccess
        for target, data in _inner_calls(raw, head, fields):
            pull = _PULLS.get(data[:4])
            if pull is not None and len(data) >= 100:
                _, _, recipient, owner, token, amount, _, _ = pull(target, data[4:])
                return ("token_transfer", "multicall_transferFrom", recipient, owner, token, amount, False, False)
        return ("call", method, to, None, None, None, False, False)  # decode_call puts in the value
    return decode


# Token transfers made by the called contract with its own allowance, not by the sender.
PULLED_BY_TO = frozenset({"multicall_transferFrom"})

# selector -> (signature, decoder, bytes of the static head it reads)
_DECODERS = {
    "a9059cbb": ("transfer(address,uint256)", _transfer, 64),
    "23b872dd": ("transferFrom(address,address,uint256)", _transfer_from, 96),
    "095ea7b3": ("approve(address,uint256)", _approve, 64),
    "39509351": ("increaseAllowance(address,uint256)", _increase_allowance, 64),
    "d505accf": ("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)", _permit, 224),
    "8fcbaf0c": ("permit(address,address,uint256,uint256,bool,uint8,bytes32,bytes32)", _dai_permit, 256),
    "a22cb465": ("setApprovalForAll(address,bool)", _set_approval_for_all, 64),
    "42842e0e": ("safeTransferFrom(address,address,uint256)", _safe_transfer_721, 96),
    "b88d4fde": ("safeTransferFrom(address,address,uint256,bytes)", _safe_transfer_721_data, 128),
    "f242432a": ("safeTransferFrom(address,address,uint256,uint256,bytes)", _safe_transfer_1155, 160),
    "2eb2c2d6": ("safeBatchTransferFrom(address,address,uint256[],uint256[],bytes)",
                 _safe_batch_transfer_1155, 160),
    "87517c45": ("approve(address,address,uint160,uint48)", _permit2_approve, 128),
    "2b67b570": ("permit(address,((address,uint160,uint48,uint48),address,uint256),bytes)",
                 _permit2_permit, 256),
    "36c78516": ("transferFrom(address,address,uint160,address)", _permit2_transfer_from, 128),
    "30f28b7a": ("permitTransferFrom(((address,uint256),uint256,uint256),(address,uint256),address,bytes)",
                 _permit2_permit_transfer_from, 256),
    "21a0adb6": ("withdraw(bytes,bytes32,bytes32,address,address,uint256,uint256)", _mixer_withdraw, 224),
    # Multicall (MakerDAO's, v2 and v3; the same ABI on any contract): calls (target, callData),
    # v2's (requireSuccess, calls), v3's (target, allowFailure, callData).
    "252dba42": ("aggregate((address,bytes)[])", _multicall("aggregate", 0, 2), 32),
    "bce38bd7": ("tryAggregate(bool,(address,bytes)[])", _multicall("tryAggregate", 32, 2), 64),
    "82ad56cb": ("aggregate3((address,bool,bytes)[])", _multicall("aggregate3", 0, 3), 32),
}
SIGNATURES = {sel: sig for sel, (sig, _, _) in _DECODERS.items()}
_DISPATCH = {sel: (fn, head) for sel, (_, fn, head) in _DECODERS.items()}


def decode_call(to: str | None, value_wei: int, data: str) -> Call:
    """Decode a transaction's calldata; never raises (see the module docstring)."""
    if not to:
        return _new(Call, ("creation", "", None, None, None, value_wei, False, False))
    to = to.lower()
    if not data or data == "0x" or data == "0X":
        return _new(Call, ("eth_transfer", "", to, None, None, value_wei, False, False))
    try:
        entry = _DISPATCH.get(data[2:10].lower()) if data[0] == "0" and data[1] in "xX" else None
        if entry is not None:
            decoder, head = entry
            # fromhex checks every character in C (int(word, 16) would take
            # "-", "_", spaces and "0x"); it skips whitespace, which the length
            # comparison catches. Trailing bytes are allowed, as Solidity
            # allows them: OpenSea appends a 4-byte tag to real transfers.
            raw = _fromhex(data[10:])
            if len(raw) >= head and 2 * len(raw) == len(data) - 10:
                fields = decoder(to, raw)
                if fields[5] is None:  # a call recognised that moves nothing we read: its value
                    fields = (*fields[:5], value_wei, False, False)
                return _new(Call, fields)
    except (ValueError, TypeError, IndexError):
        pass
    return _new(Call, ("call", "", to, None, None, value_wei, False, False))


def _hex_body(x) -> str | None:
    # JSON-RPC and ethereum-etl give "0x..." strings; web3.py gives HexBytes.
    if isinstance(x, str):
        return x[2:] if x[:2] in ("0x", "0X") else None
    if isinstance(x, (bytes, bytearray)):
        return x.hex()
    return None


def _event_words(log, topic0: str):
    """(emitter, the three argument words as bytes) of a 3-argument event, else None.

    As in ethereum-etl, indexed and non-indexed arguments are read in order
    from topics[1:] then data, so old tokens that index nothing (1 topic, 3 data
    words) and ERC-721 (4 topics, no data) both count.
    """
    try:
        if log.get("removed"):  # reorged out of the chain
            return None
        topics = log.get("topics")
        if isinstance(topics, str):  # ethereum-etl CSV: "0xddf2...,0x0000..."
            topics = topics.split(",")
        if not topics:
            return None
        first = _hex_body(topics[0])
        if first is None or first.lower() != topic0:
            return None
        parts = []
        for t in topics[1:]:
            body = _hex_body(t)
            if body is None or len(body) != 64:
                return None
            parts.append(body)
        data = log.get("data")
        body = _hex_body(data) if data else ""
        if body is None:
            return None
        parts.append(body)
        args = "".join(parts)
        emitter = _hex_body(log.get("address"))
        # fromhex skips whitespace: the lengths of text and bytes must agree.
        if len(args) != 192 or emitter is None or len(emitter) != 40:
            return None
        raw = _fromhex(args)
        if len(raw) != 96 or len(_fromhex(emitter)) != 20:
            return None
        return "0x" + emitter.lower(), raw
    except (ValueError, TypeError, AttributeError, IndexError):
        return None


def transfers_from_logs(logs) -> list[TokenTransfer]:
    """ERC-20 and ERC-721 Transfer events of receipt logs; malformed logs are skipped."""
    out = []
    for log in logs or ():
        ev = _event_words(log, _TRANSFER_BODY)
        if ev is None:
            continue
        token, raw = ev
        try:
            out.append(_new(TokenTransfer, (token, _addr(raw, 0), _addr(raw, 32), _uint(raw, 64))))
        except ValueError:
            continue
    return out


def approvals_from_logs(logs) -> list[TokenApproval]:
    """ERC-20 and ERC-721 Approval events (same signature) of receipt logs."""
    out = []
    for log in logs or ():
        ev = _event_words(log, _APPROVAL_BODY)
        if ev is None:
            continue
        token, raw = ev
        try:
            out.append(_new(TokenApproval, (token, _addr(raw, 0), _addr(raw, 32), _uint(raw, 64))))
        except ValueError:
            continue
    return out
