"""Tests for decoding and validating input transactions (anomaly_stream.detect.schema)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator
from anomaly_stream.detect.schema import (
    MAX_GAS,
    MAX_VALUE_WEI,
    MIN_TIMESTAMP,
    REASONS,
    InvalidTransaction,
    Tx,
    decode,
)

SENDER = "0x" + "ab" * 20
RECIPIENT = "0x" + "cd" * 20
HASH = "0x" + "12" * 32


def base_tx(**changes) -> dict:
    tx = {
        "hash": HASH,
        "from": SENDER,
        "to": RECIPIENT,
        "value": "0x0",
        "gas": "0x5208",
        "gasPrice": "0x3b9aca00",
        "nonce": "0x1",
        "input": "0x",
    }
    tx.update(changes)
    return {k: v for k, v in tx.items() if v is not _DROP}


_DROP = object()


def raw(obj) -> bytes:
    # stdlib json: unlike orjson it can write integers above 64 bits.
    return json.dumps(obj).encode()


def reason_of(payload: bytes) -> str:
    with pytest.raises(InvalidTransaction) as info:
        decode(payload)
    assert info.value.reason in REASONS
    return info.value.reason


@pytest.fixture(scope="module")
def generated() -> list[dict]:
    return TrafficGenerator(GeneratorConfig(seed=11)).take(3_000)


# -- valid input --------------------------------------------------------------


def test_generated_transactions_decode_to_matching_tx(generated):
    for obj in generated:
        tx = decode(orjson.dumps(obj))
        assert isinstance(tx, Tx)
        assert tx.hash == obj["hash"].lower()
        assert tx.sender == obj["from"].lower()
        assert tx.to == (obj["to"].lower() if obj["to"] else None)
        assert tx.value_wei == int(obj["value"], 16)
        assert tx.gas == int(obj["gas"], 16)
        assert tx.gas_price_wei == int(obj["gasPrice"], 16)
        assert tx.nonce == int(obj["nonce"], 16)
        assert tx.input_bytes == (len(obj["input"]) - 2) // 2
        assert tx.block_number == int(obj["blockNumber"], 16)
        assert tx.block_timestamp == int(obj["blockTimestamp"], 16)
        assert tx.gas_used == int(obj["gasUsed"], 16)
        assert tx.status == int(obj["status"], 16)
        if "maxPriorityFeePerGas" in obj:
            assert tx.priority_fee_wei == int(obj["maxPriorityFeePerGas"], 16)
        else:
            assert tx.priority_fee_wei == 0


def test_the_label_key_is_ignored(generated):
    obj = dict(generated[0], label="wallet_drain")
    assert decode(orjson.dumps(obj)) == decode(orjson.dumps(dict(obj, label=None)))


@pytest.mark.parametrize("quantity", ["0x1a", "0x1A", "26", 26, "0x001a", "000026"])
def test_hex_and_decimal_quantities_are_accepted(quantity):
    tx = decode(raw(base_tx(value=quantity, nonce=quantity)))
    assert tx.value_wei == 26
    assert tx.nonce == 26


def test_zero_quantities():
    tx = decode(raw(base_tx(value=0, nonce="0")))
    assert tx.value_wei == 0 and tx.nonce == 0


def test_quantity_bounds_are_inclusive():
    tx = decode(raw(base_tx(value=hex(MAX_VALUE_WEI), gas=MAX_GAS)))
    assert tx.value_wei == MAX_VALUE_WEI
    assert tx.gas == MAX_GAS


def test_value_above_64_bits_as_decimal_string_is_accepted():
    tx = decode(raw(base_tx(value=str(20 * 10**18))))
    assert tx.value_wei == 20 * 10**18


def test_value_above_64_bits_as_json_number_is_accepted():
    tx = decode(raw(base_tx(value=20 * 10**18)))
    assert tx.value_wei == 20 * 10**18


def test_eip1559_without_gas_price_uses_max_fee():
    obj = base_tx(gasPrice=_DROP, maxFeePerGas="0x2540be400", maxPriorityFeePerGas="0x77359400")
    tx = decode(raw(obj))
    assert tx.gas_price_wei == 10 * 10**9
    assert tx.priority_fee_wei == 2 * 10**9


def test_gas_price_wins_over_max_fee_when_both_given():
    obj = base_tx(gasPrice="0x3b9aca00", maxFeePerGas="0x2540be400", maxPriorityFeePerGas="0x1")
    assert decode(raw(obj)).gas_price_wei == 10**9


def test_addresses_and_hash_are_lowercased():
    obj = base_tx(**{"from": "0x" + "AbCdEf0123" * 4, "to": "0x" + "FEDCBA9876" * 4, "hash": "0x" + "AB" * 32})
    tx = decode(raw(obj))
    assert tx.sender == "0x" + "abcdef0123" * 4
    assert tx.to == "0x" + "fedcba9876" * 4
    assert tx.hash == "0x" + "ab" * 32


@pytest.mark.parametrize("to", [None, _DROP])
def test_contract_creation_has_no_recipient(to):
    tx = decode(raw(base_tx(to=to, input="0x6080604052" + "00" * 100)))
    assert tx.to is None
    assert tx.input_bytes == 105
    assert tx.selector == "0x60806040"


def test_selector_is_the_first_four_bytes_lowercased():
    tx = decode(raw(base_tx(input="0xA9059CBB" + "00" * 64)))
    assert tx.selector == "0xa9059cbb"
    assert tx.input_bytes == 68


@pytest.mark.parametrize("data, selector, size", [("0x", None, 0), ("0xabcdef", None, 3), ("0x12345678", "0x12345678", 4)])
def test_short_input_has_no_selector(data, selector, size):
    tx = decode(raw(base_tx(input=data)))
    assert tx.selector == selector
    assert tx.input_bytes == size


def test_missing_input_means_empty_calldata():
    tx = decode(raw(base_tx(input=_DROP)))
    assert tx.input_bytes == 0 and tx.selector is None


def test_optional_receipt_fields_absent_are_none():
    tx = decode(raw(base_tx()))
    assert (tx.block_number, tx.block_timestamp, tx.gas_used, tx.status) == (None, None, None, None)


@pytest.mark.parametrize("balance, expected", [("0x0", 0), ("0x" + "f" * 64, 2**256 - 1), (str(2**255), 2**255),
                                               (_DROP, None)])
def test_the_ingesters_token_balance_is_read_up_to_uint256(balance, expected):
    assert decode(raw(base_tx(ownerTokenBalance=balance))).owner_token_balance == expected


@pytest.mark.parametrize("balance, reason", [("0x1" + "0" * 64, "bad_hex"), (str(2**256), "out_of_range"),
                                             ("0xzz", "bad_hex"), (-1, "out_of_range"), (True, "bad_type")])
def test_a_bad_token_balance_is_rejected_with_its_reason(balance, reason):
    with pytest.raises(InvalidTransaction) as err:
        decode(raw(base_tx(ownerTokenBalance=balance)))
    assert err.value.reason == reason and "ownerTokenBalance" in err.value.detail


def test_decode_accepts_str_as_well_as_bytes():
    assert decode(json.dumps(base_tx())) == decode(raw(base_tx()))


# -- each reason code ---------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"{", b"not json", b"\xff\xfe", b'{"from": }', b"[1e400]"])
def test_malformed_json(payload):
    assert reason_of(payload) == "malformed_json"


@pytest.mark.parametrize("payload", [b"[]", b"[1, 2]", b"1", b'"0x1"', b"null", b"true"])
def test_not_an_object(payload):
    assert reason_of(payload) == "not_an_object"


@pytest.mark.parametrize("field", ["from", "hash", "gas", "value", "nonce"])
def test_missing_required_field(field):
    with pytest.raises(InvalidTransaction) as info:
        decode(raw(base_tx(**{field: _DROP})))
    assert info.value.reason == "missing_field"
    assert field in info.value.detail


@pytest.mark.parametrize("field", ["from", "hash", "gas", "value"])
def test_null_required_field_is_missing(field):
    assert reason_of(raw(base_tx(**{field: None}))) == "missing_field"


def test_missing_both_gas_price_and_max_fee():
    assert reason_of(raw(base_tx(gasPrice=_DROP))) == "missing_field"


@pytest.mark.parametrize(
    "field, value",
    [
        ("value", True), ("value", False), ("value", 1.5), ("value", 1.0), ("gas", [21000]),
        ("gas", {"v": 1}), ("nonce", 0.0), ("gasPrice", True), ("from", 123), ("to", False),
        ("to", ["0x" + "00" * 20]), ("hash", 12), ("input", 0), ("input", None), ("gasUsed", 1.5),
    ],
)
def test_bad_type(field, value):
    assert reason_of(raw(base_tx(**{field: value}))) == "bad_type"


@pytest.mark.parametrize(
    "field, value",
    [
        ("value", "0xZZ"), ("value", "0x"), ("value", "-1"), ("value", "1e3"), ("value", " 26"),
        ("value", "0X1a"), ("value", "٢٦"), ("gas", "0x" + "f" * 65), ("nonce", "ten"),
        ("input", "0xabc"), ("input", "abcd"), ("input", "0xzz"), ("hash", "0x1234"),
        ("hash", "0x" + "g" * 64),
    ],
)
def test_bad_hex(field, value):
    assert reason_of(raw(base_tx(**{field: value}))) == "bad_hex"


@pytest.mark.parametrize(
    "field, value",
    [
        ("from", "0x1234"), ("from", "0x" + "ab" * 21), ("from", "ab" * 20 + "0x"),
        ("from", "0x" + "zz" * 20), ("to", "0x" + "ab" * 19), ("to", ""),
    ],
)
def test_bad_address(field, value):
    assert reason_of(raw(base_tx(**{field: value}))) == "bad_address"


@pytest.mark.parametrize(
    "field, value",
    [
        ("value", -1), ("value", hex(MAX_VALUE_WEI + 1)), ("value", str(MAX_VALUE_WEI + 1)),
        ("gas", MAX_GAS + 1), ("gasPrice", "0x" + "f" * 40), ("status", 2),
        ("blockTimestamp", MIN_TIMESTAMP - 1), ("blockTimestamp", 4_102_444_801), ("nonce", str(2**64)),
    ],
)
def test_out_of_range(field, value):
    assert reason_of(raw(base_tx(**{field: value}))) == "out_of_range"


def test_calldata_over_one_mib_is_out_of_range():
    assert reason_of(raw(base_tx(input="0x" + "00" * ((1 << 20) + 1)))) == "out_of_range"
    assert decode(raw(base_tx(input="0x" + "00" * (1 << 20)))).input_bytes == 1 << 20


def test_overlong_decimal_string_is_refused_before_conversion():
    assert reason_of(raw(base_tx(value="1" * 81))) == "bad_hex"


def test_inconsistent_gas_used_above_gas_limit():
    assert reason_of(raw(base_tx(gas=21000, gasUsed=21001))) == "inconsistent"
    assert decode(raw(base_tx(gas=21000, gasUsed=21000))).gas_used == 21000


def test_inconsistent_tip_above_max_fee():
    obj = base_tx(gasPrice=_DROP, maxFeePerGas=100, maxPriorityFeePerGas=101)
    assert reason_of(raw(obj)) == "inconsistent"
    obj = base_tx(gasPrice=_DROP, maxFeePerGas=100, maxPriorityFeePerGas=100)
    assert decode(raw(obj)).priority_fee_wei == 100


def test_every_reason_code_is_reachable():
    payloads = [
        b"{", b"[]", raw(base_tx(hash=_DROP)), raw(base_tx(value=1.5)), raw(base_tx(value="0xZZ")),
        raw(base_tx(to="0x12")), raw(base_tx(value=-1)), raw(base_tx(gas=1, gasUsed=2)),
    ]
    assert sorted(reason_of(p) for p in payloads) == sorted(REASONS)


def test_invalid_transaction_is_a_value_error_with_reason_and_detail():
    with pytest.raises(ValueError) as info:
        decode(raw(base_tx(gas="0xZZ")))
    assert info.value.reason == "bad_hex"
    assert info.value.detail == "gas"
    assert str(info.value) == "bad_hex: gas"


# -- properties ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["0x", "0x0", "0x1a", "26", "0xZZ", SENDER, HASH, "0x" + "f" * 64, "-1"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "hash", "from", "to", "value", "gas", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas",
    "nonce", "input", "gasUsed", "status", "blockTimestamp", "blockNumber",
]
QUICK = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_is_invalid(payload: bytes) -> None:
    try:
        tx = decode(payload)
    except InvalidTransaction as exc:
        assert exc.reason in REASONS
    else:
        assert isinstance(tx, Tx)


@QUICK
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_invalid_transaction(payload):
    decodes_or_is_invalid(payload)


@QUICK
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=14))
def test_arbitrary_json_objects_only_raise_invalid_transaction(obj):
    decodes_or_is_invalid(raw(obj))


@QUICK
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))
def test_valid_transaction_with_arbitrary_fields_replaced(changes):
    decodes_or_is_invalid(raw(base_tx(**changes)))
