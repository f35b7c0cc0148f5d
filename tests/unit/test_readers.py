"""Tests for the export readers (anomaly_stream.tools.readers) on the shared mainnet data.

Each file set in ../shared/data/traffic is read, orjson-encoded and run through
the worker's own `decode`; the counts and failure figures asserted here are
the measured ones (see the data README for what each set holds).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import orjson
import pytest

from anomaly_stream.detect.schema import InvalidTransaction, decode
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator
from anomaly_stream.tools.readers import detect_format, iter_records, read_transactions, with_trace_balances

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRAFFIC = DATA / "traffic"
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# The three 2022 mev-inspect blocks saved without receipts: their fee is the block's base fee (a lower bound).
MEV_BLOCKS_WITHOUT_RECEIPTS = {14621812, 14643923, 14685550}

# name -> (format, transactions, {dead-letter reason: count}) as measured.
SETS = {
    "mainnet-2017-ethereum-etl": ("etl-csv", 19_999, {}),
    "mainnet-2020-ethereum-etl-transactions.csv.gz": ("etl-csv", 199, {}),
    # README: ~7,400 tx in 35 distinct blocks; 7,363 distinct hashes once the two
    # duplicate block copies are merged. 647 of them are in receipt-less blocks.
    "mainnet-2020-22-mev-blocks": ("mev", 7_363, {}),
    "mainnet-2023-ethereum-etl": ("etl-json", 298, {}),
    "mainnet-2024-rpc-blocks": ("rpc", 3_591, {}),
}


@lru_cache(maxsize=None)
def records(name: str) -> tuple[bytes, ...]:
    return tuple(iter_records(TRAFFIC / name))


@lru_cache(maxsize=None)
def transactions(name: str) -> tuple[dict, ...]:
    return tuple(json.loads(r) for r in records(name))  # exact, as decode is


def failures(raws) -> Counter:
    reasons: Counter = Counter()
    for raw in raws:
        try:
            decode(raw)
        except InvalidTransaction as exc:
            reasons[exc.reason] += 1
    return reasons


def block(tx: dict) -> int:
    value = tx["blockNumber"]
    return value if isinstance(value, int) else int(value, 16)


# -- every shared file set, through the worker's decoder ----------------------------------


@pytest.mark.parametrize("name", list(SETS))
def test_each_file_set_reads_and_decodes(name):
    fmt, count, expected = SETS[name]
    raws = records(name)
    reasons = failures(raws)
    rate = sum(reasons.values()) / len(raws)
    print(f"{name}: {fmt}, {len(raws)} tx, {sum(reasons.values())} fail decode ({rate:.2%}) {dict(reasons)}")
    assert detect_format(TRAFFIC / name) == fmt
    assert len(raws) == count
    assert len({tx["hash"] for tx in transactions(name)}) == count
    assert dict(reasons) == expected
    assert rate < 0.01


def test_mev_blocks_without_receipts_pay_their_base_fee_marked_as_estimated():
    txs = transactions("mainnet-2020-22-mev-blocks")
    without = [tx for tx in txs if block(tx) in MEV_BLOCKS_WITHOUT_RECEIPTS]
    assert len(without) == 647 and all(tx.get("gasPriceEstimated") for tx in without)
    assert not any(tx.get("gasPriceEstimated") for tx in txs if block(tx) not in MEV_BLOCKS_WITHOUT_RECEIPTS)
    assert failures(records("mainnet-2020-22-mev-blocks")) == {}
    assert len({block(tx) for tx in txs}) == 35


def test_forcing_the_detected_format_gives_the_same_records():
    for name, (fmt, _, _) in SETS.items():
        if name != "mainnet-2017-ethereum-etl":  # the largest; auto vs forced is the same code path
            assert tuple(iter_records(TRAFFIC / name, fmt)) == records(name)


# -- ethereum-etl --------------------------------------------------------------------


def test_2017_csv_comes_out_in_chain_order():
    with gzip.open(TRAFFIC / "mainnet-2017-ethereum-etl" / "transactions.csv.gz", "rt") as f:
        next(f)
        raw_order = [(int(r.split(",")[3]), int(r.split(",")[4])) for r in f]
    assert raw_order != sorted(raw_order)  # the export workers interleaved the rows
    order = [(block(tx), int(tx["transactionIndex"], 16)) for tx in transactions("mainnet-2017-ethereum-etl")]
    assert order == sorted(raw_order)
    assert len(set(order)) == len(order)


def test_etl_csv_fields_map_to_the_schema():
    txs = transactions("mainnet-2017-ethereum-etl")
    (first,) = [tx for tx in txs if tx["hash"] == "0x5b4d26a7cda9a2547fc122688f656f3c5d152c876acf117b09f892f8e0e784a4"]
    assert first["from"] == "0x942c4bc02dc8986215adc1ba2d27723fd4a98a8b"
    assert first["value"] == hex(804264913889669500) and first["nonce"] == hex(37)
    assert first["gasPrice"] == hex(100_000_000_000) and first["blockTimestamp"] == hex(1488775107)
    assert first["type"] == "0x0" and "maxFeePerGas" not in first  # empty columns are absent
    creations = [tx for tx in txs if tx["to"] is None]
    assert len(creations) == 31 and all(decode(orjson.dumps(tx)).to is None for tx in creations)


def test_etl_csv_passes_unknown_columns_through(tmp_path):
    with gzip.open(TRAFFIC / "mainnet-2020-ethereum-etl-transactions.csv.gz", "rt") as f:
        lines = f.read().splitlines()[:4]
    labelled = [lines[0] + ",label"] + [line + ",phish" for line in lines[1:2]] + [line + "," for line in lines[2:]]
    path = tmp_path / "labelled.csv"
    path.write_text("\n".join(labelled) + "\n")
    txs = list(read_transactions(path))
    assert [tx["label"] for tx in txs] == ["phish", "", ""]


def test_2023_etl_json_joins_logs_and_receipts():
    txs = transactions("mainnet-2023-ethereum-etl")
    assert all("logs" in tx for tx in txs)
    assert sum(len(tx["logs"]) for tx in txs) == 681  # every line of logs.json
    with_transfers = [tx for tx in txs if any(e["topics"][:1] == [TRANSFER_TOPIC] for e in tx["logs"])]
    assert 0 < len(with_transfers) < len(txs)
    first = txs[0]
    assert first["hash"] == "0xeb107a40ba73a50c79a9f2026e902d758d1c5e5e211f7a7db1b294f88f118dd0"
    assert [set(e) for e in first["logs"]] == [{"address", "topics", "data"}] * len(first["logs"])
    assert first["logs"][0]["address"] == "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
    assert first["gasUsed"] == hex(85143) and first["status"] == "0x1"
    assert "type" not in first or first["type"] == "0x2"  # the stream's "transaction" tag is gone
    assert all("blockTimestamp" in tx for tx in txs)


def test_etl_json_timestamps_from_blocks_and_big_values_exact(tmp_path):
    value = 12345 * 10**18 + 1  # past 2**64: orjson alone would round it
    lines = [
        {"type": "block", "number": 5, "timestamp": 1_600_000_000},
        {"type": "transaction", "hash": "0x" + "ab" * 32, "nonce": 1, "transaction_index": 0,
         "from_address": "0x" + "11" * 20, "to_address": None, "value": value, "gas": 60000,
         "gas_price": 10**9, "input": "0x", "block_number": 5, "receipt_status": 0, "receipt_gas_used": 53000},
    ]
    (tmp_path / "stream.json").write_text("\n".join(json.dumps(line) for line in lines))
    (tx,) = read_transactions(tmp_path)
    assert tx["value"] == hex(value) and tx["to"] is None
    assert tx["blockTimestamp"] == hex(1_600_000_000) and tx["status"] == "0x0" and tx["gasUsed"] == hex(53000)
    assert "logs" not in tx  # the set has no logs: none claimed


# -- JSON-RPC -------------------------------------------------------------------------


def test_2024_rpc_passes_transactions_through_and_invents_no_timestamp():
    txs = transactions("mainnet-2024-rpc-blocks")
    assert not any("blockTimestamp" in tx for tx in txs)
    with gzip.open(TRAFFIC / "mainnet-2024-rpc-blocks" / "blk_19808000_19808004.json.gz") as f:
        original = json.load(f)
    assert txs[0] == original[0]  # unchanged, accessList and signature included
    assert [block(tx) for tx in txs] == sorted(block(tx) for tx in txs)
    assert {block(tx) for tx in txs} == set(range(19_808_000, 19_808_025))


def test_rpc_blocks_envelopes_and_arrays_of_them(tmp_path):
    sample = transactions("mainnet-2024-rpc-blocks")[:3]
    full_block = {"number": sample[0]["blockNumber"], "timestamp": "0x663a1c8b", "transactions": list(sample)}
    envelope = {"jsonrpc": "2.0", "id": 1, "result": full_block}
    (tmp_path / "block.json").write_text(json.dumps(full_block, indent=2))
    (tmp_path / "envelope.json").write_text(json.dumps(envelope))
    (tmp_path / "batch.json").write_text(json.dumps([envelope, {"jsonrpc": "2.0", "id": 2, "result": None}]))
    (tmp_path / "lines.jsonl").write_text(json.dumps(envelope) + "\n" + json.dumps(envelope) + "\n")
    for name, copies in (("block.json", 1), ("envelope.json", 1), ("batch.json", 1), ("lines.jsonl", 2)):
        assert detect_format(tmp_path / name) == "rpc"
        txs = list(read_transactions(tmp_path / name))
        assert len(txs) == 3 * copies
        assert all(tx["blockTimestamp"] == "0x663a1c8b" for tx in txs)
        assert {tx["hash"] for tx in txs} == {tx["hash"] for tx in sample}
    hashes_only = {**full_block, "transactions": [tx["hash"] for tx in sample]}
    (tmp_path / "hashes.json").write_text(json.dumps(hashes_only))
    with pytest.raises(ValueError, match=r"hashes\.json.*hashes only"):
        list(read_transactions(tmp_path / "hashes.json"))


# -- mev-inspect ----------------------------------------------------------------------


def test_mev_transactions_from_traces():
    txs = {tx["hash"]: tx for tx in transactions("mainnet-2020-22-mev-blocks")}
    # Block 12,914,944 is also stored in the older format with its full objects: those win.
    swap = txs["0xa5526f8bcc1c2b6a385a7dfea0a94d6e096f9a03d0eb9be53f1344b846e24b3a"]
    assert swap["nonce"] == hex(98) and swap["gas"] == hex(158317) and swap["gasPrice"] == hex(39815000000)
    assert swap["blockTimestamp"] == hex(1627482504) and swap["logs"][0]["topics"][0] == TRANSFER_TOPIC
    # Elsewhere the nonce is a documented placeholder and the fee the receipt's effective price.
    others = [tx for tx in txs.values() if block(tx) != 12914944]
    assert {tx["nonce"] for tx in others} == {"0x0"}
    assert all("gasPrice" in tx for tx in others if block(tx) not in MEV_BLOCKS_WITHOUT_RECEIPTS)
    assert {tx["status"] for tx in txs.values()} == {"0x0", "0x1"}  # from the trace's error, or the receipt
    assert not any(tx.get("gasUsed") == hex(2**64 - 1) for tx in txs.values())  # mev-inspect's "unknown"
    creations = [tx for tx in txs.values() if tx["to"] is None]
    assert creations and all(tx.get("contractAddress") for tx in creations)


def test_mev_gas_limit_rebuilt_from_trace_matches_the_full_objects():
    # 12914944.json is traces only; 12914994.json is the same block with full transactions.
    traces_only = TRAFFIC / "mainnet-2020-22-mev-blocks" / "12914944.json.gz"
    from_traces = {tx["hash"]: tx for tx in read_transactions(traces_only)}
    merged = {tx["hash"]: tx for tx in transactions("mainnet-2020-22-mev-blocks") if block(tx) == 12914944}
    assert len(from_traces) == len(merged) == 222
    assert all(tx["gas"] == merged[h]["gas"] for h, tx in from_traces.items())
    assert all(tx["status"] == merged[h]["status"] for h, tx in from_traces.items())


def test_mev_timestamps_kept_where_possible_and_never_backwards():
    txs = transactions("mainnet-2020-22-mev-blocks")
    stamped = {block(tx): int(tx["blockTimestamp"], 16) for tx in txs if "blockTimestamp" in tx}
    assert len(stamped) == 12  # 12 files carry one (one of them wrong), and the older copy of 12,914,944
    assert 14659109 not in stamped  # its file says February 2021, before the block before it
    assert list(stamped.values()) == sorted(stamped.values())


# -- jsonl: today's backtest format ----------------------------------------------------


def generated_lines(n: int = 30) -> list[bytes]:
    txs = TrafficGenerator(GeneratorConfig(seed=3)).take(n)
    txs[5]["label"] = "wallet_drain"
    lines = [orjson.dumps(tx) for tx in txs]
    lines[10], lines[11] = lines[11], lines[10]  # not in chain order: must stay as written
    return lines


def test_jsonl_round_trips_unchanged(tmp_path):
    lines = generated_lines()
    path = tmp_path / "traffic.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert detect_format(path) == "jsonl"
    assert list(iter_records(path)) == lines
    assert list(read_transactions(path)) == [orjson.loads(line) for line in lines]
    assert b"\n".join(iter_records(path)) + b"\n" == path.read_bytes()


def test_gzip_and_plain_read_the_same(tmp_path):
    lines = generated_lines()
    (tmp_path / "plain.jsonl").write_bytes(b"\n".join(lines))
    (tmp_path / "packed.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    (tmp_path / "packed.bin").write_bytes(gzip.compress(b"\n".join(lines)))  # known by content, not name
    assert list(iter_records(tmp_path / "plain.jsonl")) == list(iter_records(tmp_path / "packed.jsonl.gz"))
    assert list(iter_records(tmp_path / "packed.bin")) == lines
    plain_csv = tmp_path / "transactions.csv"
    plain_csv.write_bytes(gzip.decompress((TRAFFIC / "mainnet-2020-ethereum-etl-transactions.csv.gz").read_bytes()))
    assert tuple(iter_records(plain_csv)) == records("mainnet-2020-ethereum-etl-transactions.csv.gz")


def test_a_folder_is_read_recursively_in_sorted_order(tmp_path):
    lines = generated_lines()
    (tmp_path / "b").mkdir()
    (tmp_path / "a-part.jsonl").write_bytes(b"\n".join(lines[:10]))
    (tmp_path / "b" / "part-0.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines[10:20])))
    (tmp_path / "b" / "part-1.jsonl").write_bytes(b"\n".join(lines[20:]))
    (tmp_path / ".partial.jsonl").write_bytes(b"garbage")  # dotfiles and non-data files are skipped
    (tmp_path / "NOTES.md").write_text("not data")
    assert list(iter_records(tmp_path)) == lines


def test_a_malformed_jsonl_line_reaches_the_worker_as_a_dead_letter(tmp_path):
    lines = generated_lines(12)
    lines[2] = b'{"hash": "0xab", "from": '  # cut off mid-write
    path = tmp_path / "traffic.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    raws = list(iter_records(path))
    assert raws == lines  # passed through as bytes, the blank line dropped
    assert failures(raws) == {"malformed_json": 1}
    with pytest.raises(ValueError, match=r"traffic\.jsonl:3"):
        list(read_transactions(path))  # no object to give: a clear error instead


# -- malformed files of the other formats ----------------------------------------------


@pytest.mark.parametrize(
    "name, content, fmt",
    [
        ("short-row.csv", "hash,nonce,from_address,value\n0xab,1,0x11\n", "auto"),
        ("not-etl.csv", "a,b,c\n1,2,3\n", "etl-csv"),
        ("broken.json", '[{"hash": "0xab", "from": ', "rpc"),
        ("number.json", "[1, 2]", "rpc"),
        ("no-traces.json", '{"block_number": 1, "receipts": []}', "mev"),
        ("no-type.json", '{"type": "transaction", "hash": "0xab"}\n{"hash": "0xcd"}\n', "etl-json"),
        ("bad.json.gz", "", "auto"),
        ("mystery.json", '{"foo": 1}', "auto"),
    ],
)
def test_malformed_files_raise_value_error_naming_the_file(tmp_path, name, content, fmt):
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(b'{"hash": "0x"}\n')[:-12])  # truncated archive
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        list(iter_records(path, fmt))


def _token_tx(sender: str, recipient: str, amount: int, token: str = "0x" + "77" * 20, **fields) -> dict:
    data = "0xa9059cbb" + recipient[2:].rjust(64, "0") + hex(amount)[2:].rjust(64, "0")
    return {"hash": "0x" + "12" * 32, "from": sender, "to": token, "value": "0x0", "input": data, **fields}


def test_the_trace_ledger_gives_a_balance_only_where_the_trace_saw_the_holdings():
    a, b, c = ("0x" + d * 20 for d in ("aa", "bb", "cc"))
    rows = with_trace_balances([
        _token_tx(a, b, 10),                       # a held the token from before: no field
        _token_tx(b, c, 4),                        # b got 10 in the trace: 6 left
        _token_tx(b, c, 6, status="0x0"),          # reverted: moved nothing
        _token_tx(b, c, 6),                        # emptied
        _token_tx(c, a, 11),                       # more than c was seen to get: held from before
        _token_tx(c, a, 1, ownerTokenBalance="0x5"),  # a node's reading stays
        _token_tx(b, c, 1, token="0x" + "78" * 20),  # another token: nothing seen
        {"hash": "0x" + "34" * 32, "from": a, "to": b, "value": "0x5", "input": "0x"},
    ])
    assert [r.get("ownerTokenBalance") for r in rows] == [None, "0x6", None, "0x0", None, "0x5", None, None]
