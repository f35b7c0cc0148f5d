"""Read the field's transaction exports into the project's input schema.

    read_transactions(path, fmt="auto") -> Iterator[dict]   # schema objects
    iter_records(path, fmt="auto") -> Iterator[bytes]       # what the worker consumes
    detect_format(path) -> str

`path` is a file or a folder (read recursively, files in sorted order, all of
one file set; in a folder only *.json, *.jsonl, *.ndjson and *.csv files, each
optionally gzipped, and no dotfiles). Gzip is recognised by its magic bytes.
The format is detected from the first file's content; `fmt` forces one.

Formats, and where they come from:

- "jsonl": one transaction object per line, already in the input schema
  (README "Input schema"): what `anomaly-stream generate --output` writes,
  and JSON lines of `eth_getTransactionByHash` results. Read as is, in file
  order; `iter_records` yields the raw lines unparsed, so a malformed line
  reaches the backtest as the worker would see it and is counted as a dead
  letter there (`read_transactions` raises ValueError on it instead: it has
  no object to give).
- "etl-csv": ethereum-etl `export_blocks_and_transactions` transactions CSV
  (github.com/blockchain-etl/ethereum-etl): hash, nonce, block_number,
  from_address, to_address, value, gas, gas_price, input, block_timestamp,
  max_fee_per_gas, ..., and receipt_* columns when it was run with receipts.
  Decimal strings; an empty cell is an absent field (an empty to_address is a
  contract creation).
- "etl-json": ethereum-etl `stream` (or JSON export) output: JSON lines with a
  "type" field of transaction, log, receipt, block or token_transfer, in one
  file or a folder (transactions.json, logs.json, blocks.json, ...). Logs are
  joined to their transaction by transaction_hash (`logs`, in log_index
  order; `[]` for a transaction without any when the set has logs at all),
  receipts likewise, block timestamps fill a missing block_timestamp.
  token_transfers are decoded Transfer logs and are not needed.
- "rpc": raw JSON-RPC output, JSON or JSON lines: an array of transaction
  objects, a block with full transactions (`eth_getBlockByNumber(n, true)`),
  a {"jsonrpc", "id", "result"} envelope of either, or arrays of these.
  Transaction objects pass through unchanged; a block's timestamp becomes
  `blockTimestamp`. A bare array of transactions (e.g. the 2024 mainnet
  files) carries no timestamp and none is invented: the backtest then falls
  back on its own clock.
- "mev": flashbots mev-inspect-py test blocks (github.com/flashbots/
  mev-inspect-py, tests/blocks/): {block_number, block_timestamp?, traces,
  receipts}. One transaction per transaction hash, from the top-level parity
  trace (trace_address == []) and the receipt:
    * from, to, value, input: the trace's action (`init` for a creation, whose
      `to` is null and whose `contractAddress` is the trace result's address).
    * gas: parity reports the gas left after the intrinsic cost, so the
      intrinsic cost (21000, +32000 for a creation, 4 per zero and 16 per
      non-zero calldata byte: all these blocks are past Istanbul) is added
      back. That is exact without an access list (checked on all 222
      transactions of block 12,914,944 against their full objects) and a
      lower bound with one; it is raised to gasUsed if below it.
    * gasPrice: the receipt's effective_gas_price (the tip is not known).
      A block saved without receipts gives no fee at all, and none is
      invented: such transactions lack gasPrice and dead-letter as
      missing_field (the three 2022 blocks in the shared data: 647 tx).
    * status: 0 when the top-level trace has an error, else 1 (a receipt's
      status wins when it has one; the two agree on all of block 12,914,944).
    * gasUsed and logs from the receipt; a gas_used of 2**64-1 (-1 as an
      unsigned 64-bit number, with a cumulative_gas_used of 0: 42 reverted
      transactions in the shared set) is a placeholder, not a measurement,
      and is left out.
    * nonce: the traces do not have it and the schema requires one, so it is
      "0x0", a placeholder: the detector does not use the nonce (features.py
      reads value, recipient, fees, calldata size and timing only), but
      nothing should read a nonce from this format.
  An older mev-inspect cache format that also stores the block (`data`,
  with full transaction objects and timestamp) and RPC receipts is read too;
  its full objects are preferred, and duplicate hashes across the files of a
  set are merged (the shared set holds two copies of two blocks).

Every format but jsonl is put in chain order: sorted by (blockNumber,
transactionIndex) when every transaction has a block number, else kept in
reading order. A block timestamp below an earlier block's is impossible on
chain and is dropped (the backtest then carries the previous time forward):
the shared mev set dates block 14,659,109 to February 2021. Quantities the
readers build are hex strings, as a node returns them; unknown fields (a
label column, ethereum-etl's item_id) pass through unchanged.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import orjson

from ..detect.semantics import decode_call

FORMATS = ("jsonl", "etl-csv", "etl-json", "rpc", "mev")
_SUFFIXES = {".json", ".jsonl", ".ndjson", ".csv"}
_ETL_KINDS = {"transaction", "log", "receipt", "block", "token_transfer", "trace", "contract", "token"}

log = logging.getLogger(__name__)

# ethereum-etl column -> schema field; the `True` ones are quantities.
_ETL_FIELDS: dict[str, tuple[str, bool]] = {
    "hash": ("hash", False),
    "nonce": ("nonce", True),
    "block_hash": ("blockHash", False),
    "block_number": ("blockNumber", True),
    "transaction_index": ("transactionIndex", True),
    "from_address": ("from", False),
    "to_address": ("to", False),
    "value": ("value", True),
    "gas": ("gas", True),
    "gas_price": ("gasPrice", True),
    "input": ("input", False),
    "block_timestamp": ("blockTimestamp", True),
    "max_fee_per_gas": ("maxFeePerGas", True),
    "max_priority_fee_per_gas": ("maxPriorityFeePerGas", True),
    "transaction_type": ("type", True),
    "max_fee_per_blob_gas": ("maxFeePerBlobGas", True),
    "receipt_cumulative_gas_used": ("cumulativeGasUsed", True),
    "receipt_gas_used": ("gasUsed", True),
    "receipt_contract_address": ("contractAddress", False),
    "receipt_root": ("root", False),
    "receipt_status": ("status", True),
    "receipt_effective_gas_price": ("effectiveGasPrice", True),
    "receipt_blob_gas_price": ("blobGasPrice", True),
    "receipt_blob_gas_used": ("blobGasUsed", True),
}
_ETL_FRAMING = {"type", "item_id", "item_timestamp"}  # the stream's envelope, not the transaction's
_RPC_QUANTITIES = {
    "nonce", "value", "gas", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "blockNumber", "transactionIndex",
}
_UNKNOWN_GAS_USED = 2**64 - 1  # mev-inspect's "-1" for some reverted transactions


# -- public API -------------------------------------------------------------------


def read_transactions(path: str | Path, fmt: str = "auto") -> Iterator[dict]:
    """Transactions in the input schema, in file order (jsonl) or chain order (the rest)."""
    files, fmt = _resolve(path, fmt)
    if fmt == "jsonl":
        return _read_jsonl(files)
    return iter(_chain_order(_READERS[fmt](files)))


def iter_records(path: str | Path, fmt: str = "auto") -> Iterator[bytes]:
    """Message bytes as the worker would consume them: feed to `backtest.replay_jsonl`.

    jsonl lines are yielded unparsed (blank lines skipped), so malformed ones
    become the backtest's dead letters; other formats are orjson-encoded.
    """
    files, fmt = _resolve(path, fmt)
    if fmt == "jsonl":
        return _jsonl_lines(files)
    return map(_dumps, _chain_order(_READERS[fmt](files)))


def with_trace_balances(txs: Iterable[dict]) -> list[dict]:
    """The transactions with `ownerTokenBalance` where the trace itself shows it, for files that lack it.

    The ingester reads the balance a token transfer left its owner from the
    node; an export has none (a transaction that has the field keeps it). This stand-in keeps a ledger of the trace's
    top-level token transfers (`semantics.decode_call`: transfer,
    transferFrom, ... that did not revert) and sets the field on a transfer
    whose owner the trace saw receive the token before, to what the ledger
    leaves it (never below 0: an owner that sends more than the trace saw it
    receive held the token from before, and gets no field). An owner with
    holdings from before the trace that the ledger puts at 0 is counted as
    emptied, so on real traffic this errs towards more one-transfer drains
    than a node would show (real 2017: 22 of the 187 transfers whose owner the
    trace saw receive the token empty it; 4 of them into an address never
    seen before: benchmarks/calibration.py, `balances.*`).
    """
    ledger: dict[tuple[str, str], int] = defaultdict(int)
    out = []
    for tx in txs:
        to = tx.get("to")
        value = _int(tx.get("value"))
        data = tx.get("input")
        if (isinstance(to, str) and isinstance(data, str) and value is not None and len(data) >= 10
                and _int(tx.get("status")) != 0 and "ownerTokenBalance" not in tx):
            call = decode_call(to.lower(), value, data)
            sender = tx.get("from")
            if call.kind == "token_transfer" and call.token is not None and isinstance(sender, str):
                owner = call.owner or sender.lower()
                key = (owner, call.token)
                if ledger.get(key, 0) > 0 and ledger[key] >= call.amount:
                    tx = {**tx, "ownerTokenBalance": hex(ledger[key] - call.amount)}
                ledger[key] = max(0, ledger.get(key, 0) - call.amount)
                if call.counterparty is not None:
                    ledger[(call.counterparty, call.token)] += call.amount
        out.append(tx)
    return out


def _resolve(path: str | Path, fmt: str) -> tuple[list[Path], str]:
    files = _files(path)
    if fmt == "auto":
        fmt = detect_format(files[0])
    elif fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of auto, {', '.join(FORMATS)}")
    return files, fmt


def detect_format(path: str | Path) -> str:
    """The format of a file set, from its first file's content (the name breaks ties)."""
    first = _files(path)[0]
    with _reading(first, "a transaction export"), _open(first) as f:
        line = b""
        while not line.strip():
            line = f.readline()
            if not line:
                raise ValueError(f"{first}: empty file")
        head = line.strip()
        if head[:1] == b"[":
            return "rpc"
        if head[:1] == b"{":
            try:
                obj = _loads(head)
            except ValueError:  # a pretty-printed or otherwise multi-line document
                obj = None
            if obj is None:
                try:
                    obj = _loads(line + f.read())
                except ValueError:
                    if first.name.removesuffix(".gz").endswith((".jsonl", ".ndjson")):
                        return "jsonl"  # a malformed first line of a line-delimited file
                    raise
                kind = "rpc" if isinstance(obj, list) else _kind_of_object(obj, first)
                return "rpc" if kind == "jsonl" else kind  # one pretty-printed transaction
            return _kind_of_object(obj, first)
        if b"hash" in head and b"from_address" in head and b"," in head:
            return "etl-csv"
    raise ValueError(f"{first}: not a transaction export this reader knows ({', '.join(FORMATS)})")


def _kind_of_object(obj: dict, path: Path) -> str:
    if "traces" in obj and "block_number" in obj:
        return "mev"
    if obj.get("type") in _ETL_KINDS:  # the schema's own `type` is a hex quantity
        return "etl-json"
    if "jsonrpc" in obj or "transactions" in obj:
        return "rpc"
    if "hash" in obj or "from" in obj:
        return "jsonl"
    raise ValueError(f"{path}: a JSON object that is no transaction, block or mev-inspect block")


# -- files ----------------------------------------------------------------------------


def _files(path: str | Path) -> list[Path]:
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and Path(p.name.removesuffix(".gz")).suffix.lower() in _SUFFIXES
    )
    if not files:
        raise ValueError(f"{root}: no .json/.jsonl/.ndjson/.csv files (optionally .gz) in this folder")
    return files


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


class _reading:
    """Re-raise a file's read or parse errors as one ValueError naming the file and format."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, (GeneratorExit, KeyboardInterrupt)):
            return False
        if isinstance(exc, ValueError) and str(self.path) in str(exc):
            return False
        if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError, OSError, EOFError, csv.Error)):
            what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyError) else f"missing key {exc}"
            raise ValueError(f"{self.path}: unreadable as {self.fmt} ({what})") from exc
        return False


def _loads(raw: bytes):
    """JSON, exactly: orjson turns integers past 64 bits into floats, so a float means a re-parse."""
    obj = orjson.loads(raw)
    return json.loads(raw) if _has_float(obj) else obj


def _has_float(obj) -> bool:
    stack = [obj]
    while stack:
        node = stack.pop()
        for value in node.values() if type(node) is dict else node if type(node) is list else ():
            kind = type(value)
            if kind is float:
                return True
            if kind is dict or kind is list:
                stack.append(value)
    return False


def _dumps(obj: dict) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # an integer past 64 bits passed through from the source
        return json.dumps(obj, separators=(",", ":")).encode()


def _json_lines(path: Path) -> Iterator[tuple[int, object]]:
    with _open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, _loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: malformed JSON ({exc})") from None


def _json_document(path: Path) -> list:
    """A JSON file (one document) or JSON lines, as a list of top-level values."""
    with _open(path) as f:
        data = f.read()
    try:
        return [_loads(data)]
    except ValueError:
        pass
    values = []
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            try:
                values.append(_loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: malformed JSON ({exc})") from None
    return values


# -- formats --------------------------------------------------------------------------


def _jsonl_lines(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        with _reading(path, "jsonl"), _open(path) as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield line


def _read_jsonl(files: list[Path]) -> Iterator[dict]:
    for path in files:
        with _reading(path, "jsonl"):
            for number, obj in _json_lines(path):
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{number}: a {type(obj).__name__}, not a transaction object")
                yield obj


def _hex(value):
    """A quantity as a node writes it; anything that is no integer passes unchanged for decode to judge."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return hex(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 80:
        return hex(int(value))
    return value


def _from_etl(columns: Iterable[str], values: Iterable) -> dict:
    """An ethereum-etl transaction (CSV row or JSON item) in the schema; None and '' are absent."""
    tx: dict = {}
    for column, value in zip(columns, values):
        mapped = _ETL_FIELDS.get(column)
        if mapped is None:
            tx[column] = value
        elif value is None or value == "":
            if column == "to_address":
                tx["to"] = None  # a contract creation
        elif not mapped[1]:
            tx[mapped[0]] = value
        elif type(value) is str and value.isdigit() and len(value) <= 80:  # the CSV's decimal strings
            tx[mapped[0]] = hex(int(value))
        else:
            tx[mapped[0]] = _hex(value)
    return tx


def _read_etl_csv(files: list[Path]) -> list[dict]:
    txs = []
    for path in files:
        with _reading(path, "etl-csv"), _open(path) as raw, io.TextIOWrapper(raw, "utf-8", newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if not header or "hash" not in header or "from_address" not in header:
                raise ValueError(f"{path}: not an ethereum-etl transactions CSV (no hash/from_address header)")
            for row in rows:
                if len(row) != len(header):
                    if not row:
                        continue
                    raise ValueError(f"{path}:{rows.line_num}: {len(row)} fields, the header has {len(header)}")
                txs.append(_from_etl(header, row))
    return txs


def _read_etl_json(files: list[Path]) -> list[dict]:
    items: dict[str, list[dict]] = defaultdict(list)
    for path in files:
        with _reading(path, "etl-json"):
            for number, item in _json_lines(path):
                kind = item.get("type") if isinstance(item, dict) else None
                if kind not in _ETL_KINDS:
                    raise ValueError(f"{path}:{number}: not an ethereum-etl item (type {kind!r})")
                items[kind].append(item)
    timestamps = {b.get("number"): b.get("timestamp") for b in items["block"]}
    receipts = {r.get("transaction_hash"): r for r in items["receipt"]}
    logs: dict[str, list[dict]] = defaultdict(list)
    for entry in sorted(items["log"], key=lambda e: (e.get("transaction_hash") or "", e.get("log_index") or 0)):
        logs[entry.get("transaction_hash")].append(
            {"address": entry.get("address"), "topics": entry.get("topics") or [], "data": entry.get("data")}
        )
    txs = []
    for item in items["transaction"]:
        row = {k: v for k, v in item.items() if k not in _ETL_FRAMING}
        receipt = receipts.get(item.get("hash"))
        if receipt is not None:
            for key in ("gas_used", "status", "contract_address", "cumulative_gas_used", "effective_gas_price"):
                if row.get(f"receipt_{key}") is None and receipt.get(key) is not None:
                    row[f"receipt_{key}"] = receipt[key]
        if row.get("block_timestamp") is None and timestamps.get(row.get("block_number")) is not None:
            row["block_timestamp"] = timestamps[row["block_number"]]
        tx = _from_etl(row.keys(), row.values())
        if items["log"]:
            tx["logs"] = logs.get(item.get("hash"), [])
        txs.append(tx)
    return txs


def _read_rpc(files: list[Path]) -> list[dict]:
    txs: list[dict] = []

    def walk(value, path: Path, block: dict | None = None) -> None:
        if isinstance(value, list):
            for v in value:
                walk(v, path, block)
        elif not isinstance(value, dict):
            raise ValueError(f"{path}: found {type(value).__name__} where a transaction or block was expected")
        elif "jsonrpc" in value or "result" in value or "error" in value:
            if value.get("error") is not None:
                raise ValueError(f"{path}: a JSON-RPC error response: {value['error']}")
            if value.get("result") is not None:  # null: no such block, no transactions
                walk(value["result"], path)
        elif "transactions" in value:
            for tx in value["transactions"]:
                if not isinstance(tx, dict):
                    raise ValueError(f"{path}: block {value.get('number')} lists transaction hashes only; "
                                     "fetch it with eth_getBlockByNumber(n, true)")
                walk(tx, path, value)
        elif "hash" in value or "from" in value:
            tx = dict(value)
            if block is not None:
                if "blockTimestamp" not in tx and block.get("timestamp") is not None:
                    tx["blockTimestamp"] = block["timestamp"]
                if tx.get("blockNumber") is None and block.get("number") is not None:
                    tx["blockNumber"] = block["number"]
            txs.append(tx)
        else:
            raise ValueError(f"{path}: an object that is no transaction, block or JSON-RPC response")

    for path in files:
        with _reading(path, "rpc"):
            walk(_json_document(path), path)
    return txs


def _intrinsic_gas(data: str, creation: bool) -> int:
    """The gas a transaction pays before execution (Istanbul onwards, no access list)."""
    payload = bytes.fromhex(data[2:])
    zeros = payload.count(0)
    return 21000 + (32000 if creation else 0) + 4 * zeros + 16 * (len(payload) - zeros)


def _mev_block(block: dict) -> list[dict]:
    number = block["block_number"]
    full = block.get("data") or {}  # the older cache format: the block itself
    timestamp = block.get("block_timestamp") or full.get("timestamp")
    receipts = block.get("receipts") or []
    if isinstance(receipts, dict):  # a JSON-RPC envelope
        receipts = receipts.get("result") or []
    by_hash = {r.get("transaction_hash") or r.get("transactionHash"): r for r in receipts}
    objects = {t["hash"]: t for t in full.get("transactions") or [] if isinstance(t, dict)}
    txs = []
    for trace in block["traces"]:
        tx_hash = trace.get("transaction_hash")
        if trace.get("trace_address") != [] or not tx_hash:
            continue  # a sub-call, or a block/uncle reward
        action = trace["action"]
        creation = trace.get("type") == "create"
        data = action.get("init" if creation else "input") or "0x"
        tx = {
            "hash": tx_hash,
            "from": action["from"],
            "to": None if creation else action.get("to"),
            "value": action.get("value"),
            "gas": hex(int(action["gas"], 16) + _intrinsic_gas(data, creation)),
            "input": data,
            "blockNumber": hex(number),
            "transactionIndex": hex(trace["transaction_position"]),
            "status": "0x0" if trace.get("error") else "0x1",
        }
        if creation and trace.get("result"):
            tx["contractAddress"] = trace["result"].get("address")
        if timestamp is not None:
            tx["blockTimestamp"] = _hex(timestamp)
        if tx_hash in objects:  # the real gas limit, nonce, fees, type
            tx.update({k: _hex(v) if k in _RPC_QUANTITIES else v for k, v in objects[tx_hash].items()})
        receipt = by_hash.get(tx_hash)
        if receipt is not None:
            gas_used = receipt.get("gas_used", receipt.get("gasUsed"))
            price = receipt.get("effective_gas_price", receipt.get("effectiveGasPrice"))
            if gas_used is not None and gas_used != _UNKNOWN_GAS_USED:
                tx["gasUsed"] = _hex(gas_used)
                if tx_hash not in objects and int(tx["gasUsed"], 16) > int(tx["gas"], 16):
                    tx["gas"] = tx["gasUsed"]  # e.g. an access list's cost; still a lower bound
            if price is not None and "gasPrice" not in tx:
                tx["gasPrice"] = _hex(price)
            if receipt.get("status") is not None:
                tx["status"] = _hex(receipt["status"])
            if isinstance(receipt.get("logs"), list):
                tx["logs"] = [{"address": e.get("address"), "topics": e.get("topics") or [], "data": e.get("data")}
                              for e in receipt["logs"]]
        if "gasPrice" not in tx and "maxFeePerGas" not in tx and block.get("base_fee_per_gas"):
            # Saved without receipts (3 of the 35 blocks): the block's base fee is
            # what every transaction paid at least. A lower bound, marked as such:
            # the fee features see no premium for these.
            tx["gasPrice"] = _hex(block["base_fee_per_gas"])
            tx["gasPriceEstimated"] = True
        txs.append(tx)
    return txs


def _read_mev(files: list[Path]) -> list[dict]:
    merged: dict[str, dict] = {}
    for path in files:
        with _reading(path, "mev"):
            for value in _json_document(path):
                for block in value if isinstance(value, list) else [value]:
                    if not isinstance(block, dict) or "traces" not in block:
                        raise ValueError(f"{path}: not a mev-inspect block (no traces)")
                    for tx in _mev_block(block):
                        seen = merged.get(tx["hash"])
                        if seen is None:
                            merged[tx["hash"]] = tx
                        elif "nonce" in tx and "nonce" not in seen:  # a full object beats a trace
                            merged[tx["hash"]] = {**seen, **tx}
                        else:
                            merged[tx["hash"]] = {**tx, **seen}
    for tx in merged.values():
        tx.setdefault("nonce", "0x0")  # placeholder: see the module docstring
    return list(merged.values())


_READERS: dict[str, Callable[[list[Path]], list[dict]]] = {
    "etl-csv": _read_etl_csv,
    "etl-json": _read_etl_json,
    "rpc": _read_rpc,
    "mev": _read_mev,
}


# -- chain order ----------------------------------------------------------------------


def _int(value) -> int | None:
    """An int, or a hex ("0x...") or decimal string, as an int; None for anything else (bools, junk)."""
    if type(value) is str and value[:2] == "0x":  # the common case first (tools.scenarios reads many)
        try:
            return int(value, 16)
        except ValueError:
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16) if value[:2] in ("0x", "0X") else int(value)
        except ValueError:
            return None
    return None


def _chain_order(txs: list[dict]) -> list[dict]:
    """Sort by (blockNumber, transactionIndex) when all have a block; drop impossible timestamps."""
    keys = [(_int(tx.get("blockNumber")), _int(tx.get("transactionIndex")) or 0) for tx in txs]
    if not all(block is not None for block, _ in keys):
        return txs
    order = sorted(range(len(txs)), key=keys.__getitem__)
    txs = [txs[i] for i in order]
    latest, dropped = None, set()
    for tx in txs:
        ts = _int(tx.get("blockTimestamp"))
        if ts is None:
            continue
        if latest is not None and ts < latest:
            del tx["blockTimestamp"]
            dropped.add(_int(tx["blockNumber"]))
        else:
            latest = ts
    if dropped:
        log.warning("dropped block timestamps earlier than a preceding block's: blocks %s", sorted(dropped))
    return txs
