"""What the ingester publishes: one message per transaction, always small enough for the topic."""

from __future__ import annotations

import orjson

from anomaly_stream.chain.ingest import MAX_MESSAGE_BYTES, encode_message
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
