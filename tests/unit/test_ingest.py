"""What the ingester publishes: one message per transaction, always small enough for the topic."""

from __future__ import annotations

import orjson

import pytest

from anomaly_stream.chain.ingest import MAX_MESSAGE_BYTES, balance_read, encode_message, to_message, uint256
from anomaly_stream.detect.schema import decode


def message(input_hex: str) -> dict:
    return {"hash": "0x" + "ab" * 32, "from": "0x" + "11" * 20, "to": None, "value": "0x0", "gas": hex(29_000_000),
            "gasPrice": hex(30 * 10**9), "nonce": "0x1", "input": input_hex, "blockTimestamp": hex(1_700_000_000)}


def test_a_message_that_fits_goes_as_it_is():
    msg = message("0xa9059cbb" + "00" * 64)
    assert encode_message(msg) == orjson.dumps(msg)


def test_calldata_too_big_for_the_topic_is_cut_to_fit_and_says_so():
    init_code = "0x60806040" + "5b" * 1_200_000  # 1.2 MB of init code: 2.4 MB of hex
    raw = encode_message(message(init_code))
    assert len(raw) <= MAX_MESSAGE_BYTES
    published = orjson.loads(raw)
    assert published["inputTruncatedFrom"] == (len(init_code) - 2) // 2
    assert init_code.startswith(published["input"]) and len(published["input"]) % 2 == 0
    tx = decode(raw)  # the worker accepts it, selector and all
    assert tx.selector == "0x60806040" and tx.input_bytes > 400_000


TOKEN = "0xdac17f958d2ee523a2206206994597c13d831ec7"
BLOCK = {"number": "0x10", "timestamp": hex(1_700_000_000)}


def word(x) -> str:
    return (x[2:] if isinstance(x, str) else hex(x)[2:]).rjust(64, "0")


def test_a_token_transfer_reads_its_owners_balance_at_the_block():
    sender, owner, recipient = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20
    transfer = {**message("0xa9059cbb" + word(recipient) + word(5)), "to": TOKEN}
    pull = {**message("0x23b872dd" + word(owner) + word(recipient) + word(5)), "to": TOKEN}
    ok, failed = {"gasUsed": "0x1", "status": "0x1"}, {"gasUsed": "0x1", "status": "0x0"}
    assert balance_read(transfer, BLOCK, ok) == ("0x10", TOKEN, sender)
    assert balance_read(pull, BLOCK, ok) == ("0x10", TOKEN, owner), "transferFrom: the owner it moves from"
    assert balance_read(transfer, BLOCK, failed) is None, "a reverted transfer moved nothing"
    assert balance_read({**message("0x"), "to": recipient, "value": "0x5"}, BLOCK, ok) is None
    msg = to_message(transfer, BLOCK, ok, {transfer["hash"]: "0x0"})
    assert msg["ownerTokenBalance"] == "0x0" and decode(orjson.dumps(msg)).owner_token_balance == 0
    assert "ownerTokenBalance" not in to_message(transfer, BLOCK, ok, {})


@pytest.mark.parametrize("result, expected", [("0x" + "0" * 62 + "2a", "0x2a"), ("0x" + "0" * 64, "0x0"),
                                              (None, None), ("0x", None), ("0x" + "0" * 128, None),
                                              ("0x" + "g" * 64, None), (42, None)])
def test_only_one_word_is_a_balance(result, expected):
    assert uint256(result) == expected
