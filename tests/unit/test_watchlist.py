"""Watch-list parsers on the real published lists, and the stored value's round trips under hostile input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_stream.detect import watchlist
from anomaly_stream.detect.watchlist import Entry, Listing, decode_value, encode_value, merge, parse, parse_with_stats, remove

LABELS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "labels"
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

A1 = "0x" + "ab" * 20
A2 = "0x" + "cd" * 20


# --- the real lists -------------------------------------------------------------

# (file, format, entries, skipped, duplicates). Entries are distinct addresses; README counts
# rows, which are entries + duplicates (the Forta files list 521 addresses twice, in two cases).
REAL = [
    ("ofac/sanctioned_addresses_ETH.txt", "ofac", 152, 0, 0),
    ("ofac/sanctioned_addresses_USDC.txt", "ofac", 2, 0, 0),
    ("ofac/sanctioned_addresses_USDT.txt", "ofac", 8, 18, 0),  # 18 Tron addresses
    ("forta/etherscan_malicious_labels.csv", "forta", 7_259, 0, 521),  # README: 7,780
    ("forta/phishing_scams.csv", "forta", 6_205, 0, 521),  # README: 6,726
    ("forta/malicious_smart_contracts.csv", "forta", 719, 0, 34),  # README: 753
    ("scamsniffer/address.json", "scamsniffer", 2_530, 0, 0),
    ("poison-hunter/phishing_address_groundtruth.txt", "poison-hunter", 5_890, 0, 0),
]


@pytest.mark.parametrize("fmt_given", ["explicit", "auto"])
@pytest.mark.parametrize("name,fmt,count,skipped,duplicates", REAL)
def test_real_list_parses_to_its_published_count(name, fmt, count, skipped, duplicates, fmt_given):
    result = parse_with_stats(LABELS / name, "mine", fmt if fmt_given == "explicit" else "auto")
    assert (len(result.entries), result.skipped, result.duplicates) == (count, skipped, duplicates)
    addresses = [e.address for e in result.entries]
    assert len(set(addresses)) == count
    assert all(watchlist.normalize_address(a) == a and a.startswith("0x") and a == a.lower() for a in addresses)
    assert {e.list for e in result.entries} == {"mine"}


def test_forta_labels_name_the_actor_or_fall_back_to_the_category():
    contracts = {e.address: e.label for e in parse(LABELS / "forta/malicious_smart_contracts.csv", "forta")}
    assert contracts["0x04ae3226c80e8c04d35e6e56089345bdd06da6de"] == "Multichain Exploiter 10"
    # No contract tag: the creator's tag.
    assert contracts["0xc5ac25cfc2b8284e84ca47dad21cf1319f732c11"] == "xToken Exploiter"
    # Neither (a DeFiHackLabs write-up): its note.
    assert contracts["0xfd4dccd754eaaa8c9196998c5bb06a56df6a1d95"] == "20221017 Uerii Token - Access Control"
    assert all(contracts.values())
    labels = {e.address: e.label for e in parse(LABELS / "forta/etherscan_malicious_labels.csv", "forta")}
    assert labels["0x80d7bb18521acbef32d7906502ebe94928690e93"] == "Fake_Phishing1772"
    assert all(labels.values())  # the 7 rows with no wallet_tag have their data_source


def test_poison_hunter_benign_set_is_refused():
    with pytest.raises(ValueError, match="benign"):
        parse(LABELS / "poison-hunter/benign_addresses_on_etherscan.txt", "poison")
    with pytest.raises(ValueError, match="benign"):
        parse(LABELS / "poison-hunter/benign_addresses_on_etherscan.txt", "poison", "poison-hunter")


# --- users' own lists and garbage -------------------------------------------------

def test_plain_list_with_comments_header_and_garbage(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_bytes(
        b"address,comment\n"
        b"# our cold wallets\n"
        + A1.upper().replace("0X", "0x").encode() + b", cold wallet #2\n"
        b"0x" + b"cd" * 20 + b"\tHot  wallet\n"
        b"0x" + b"ef" * 20 + b"   # exchange\n"
        b'"0x' + b"12" * 20 + b'","Binance, hot",x\n'
        b"not an address\n0x123\n0x" + b"g" * 40 + b"\n\x00\xff\xfe junk\n"
        b"0x" + b"ab" * 20 + b",again\n"
        b"\n   \n"
        b"0x" + b"34" * 20 + b"\r\n"
    )
    result = parse_with_stats(path, "mine")
    assert result.entries == [
        Entry(A1, "mine", "cold wallet #2"),
        Entry(A2, "mine", "Hot  wallet"),
        Entry("0x" + "ef" * 20, "mine", "exchange"),
        Entry("0x" + "12" * 20, "mine", "Binance, hot, x"),
        Entry("0x" + "34" * 20, "mine", ""),
    ]
    assert (result.skipped, result.duplicates) == (4, 1)
    assert parse(path, "mine", "plain") == result.entries


def test_strict_line_formats_skip_commented_lines(tmp_path):
    path = tmp_path / "ofac.txt"
    path.write_text(f"{A1}\n{A2}, note\n\nTX5GV4DyfxNB3rPkzZJhmqZ1efVmL4rEqG\n")
    result = parse_with_stats(path, "ofac", "ofac")
    assert (result.entries, result.skipped) == ([Entry(A1, "ofac", "")], 2)


def test_scamsniffer_skips_non_addresses_and_rejects_non_arrays(tmp_path):
    path = tmp_path / "address.json"
    path.write_bytes(orjson.dumps([A1, 7, None, "0x12", A2.upper().replace("0X", "0x"), {"a": A1}]))
    result = parse_with_stats(path, "ss")
    assert ([e.address for e in result.entries], result.skipped) == ([A1, A2], 4)
    path.write_bytes(b'{"address": []}')
    with pytest.raises(ValueError):
        parse(path, "ss", "scamsniffer")
    path.write_bytes(b"[\"0x")
    with pytest.raises(ValueError):
        parse(path, "ss", "scamsniffer")


def test_forta_rows_without_a_valid_address_are_skipped(tmp_path):
    path = tmp_path / "phishing_scams.csv"
    path.write_text("address,etherscan_tag,etherscan_labels,is_contract\n"
                    f"{A1},Fake_Phishing1,phish-hack,False\n"
                    "0xnope,Fake_Phishing2,phish-hack,False\n"
                    f'{A2},"Tag, with comma",phish-hack,True\n'
                    ",,,\n")
    result = parse_with_stats(path, "forta")
    assert result.entries == [Entry(A1, "forta", "Fake_Phishing1"), Entry(A2, "forta", "Tag, with comma")]
    assert result.skipped == 2
    path.write_text(f"wallet,tag\n{A1},x\n")
    with pytest.raises(ValueError):
        parse(path, "forta", "forta")


def test_files_csv_cannot_read_raise_value_error(tmp_path):
    path = tmp_path / "phishing_scams.csv"
    path.write_bytes(b"address,etherscan_tag\n" + A1.encode() + b',"' + b"x" * (1 << 18) + b'"\n')
    with pytest.raises(ValueError):
        parse(path, "forta")
    path.write_bytes(A1.encode() + b',"' + b"x" * (1 << 18) + b'"\n')
    with pytest.raises(ValueError):
        parse(path, "mine", "plain")
    path.write_bytes(b"address,etherscan_tag\n" + A1.encode() + b",a\x00b\n\x00\n")
    assert parse(path, "forta") == [Entry(A1, "forta", "a\x00b")]


def test_bad_arguments(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text(A1)
    with pytest.raises(ValueError):
        parse(path, "x", "csv")
    with pytest.raises(ValueError):
        parse(path, "")
    with pytest.raises(ValueError):
        parse(path, "x" * 65)


def test_labels_are_bounded(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text(f"{A1}, {'x' * 10_000}\n")
    (entry,) = parse(path, "x")
    assert len(entry.label) == watchlist.MAX_LABEL
    assert decode_value(merge(None, entry, 1)) == {"x": Listing("x" * watchlist.MAX_LABEL, 1)}


# --- the stored value -------------------------------------------------------------

def test_merge_and_remove_round_trip():
    ofac = Entry(A1, "ofac", "")
    forta = Entry(A1, "forta", "Fake_Phishing1")
    one = merge(None, ofac, 100)
    assert orjson.loads(one) == {"lists": {"ofac": {"label": "", "added_at": 100}}}
    both = merge(one, forta, 200)
    assert decode_value(both) == {"ofac": Listing("", 100), "forta": Listing("Fake_Phishing1", 200)}
    assert watchlist.entries(A1.upper().replace("0X", "0x"), both) == [forta, ofac]
    # Reloading a list keeps when the address first went on it and takes the new label.
    relabelled = merge(both, forta._replace(label="Exploiter"), 999)
    assert decode_value(relabelled)["forta"] == Listing("Exploiter", 200)
    assert merge(both, forta, 999) == both  # unchanged values are the same bytes: the loader can skip them
    assert merge(merge(None, forta, 200), ofac, 100) == both  # and do not depend on the order of loading
    assert decode_value(remove(both, "forta")) == {"ofac": Listing("", 100)}
    assert remove(both, "absent") == both
    assert remove(remove(both, "forta"), "ofac") is None  # a tombstone
    assert remove(None, "ofac") is None
    assert decode_value(None) == {} and watchlist.entries(A1, None) == []


def test_encode_rejects_what_decode_would_reject():
    with pytest.raises(ValueError):
        encode_value({})
    with pytest.raises(ValueError):
        merge(None, Entry(A1, "", ""), 1)
    with pytest.raises(ValueError):
        watchlist.encode_key("0x12")
    assert watchlist.encode_key(A1.upper().replace("0X", "0x")) == A1.encode()


def test_stored_values_hold_only_their_own_bytes():
    raw = merge(None, Entry(A1, "ofac", ""), 1)
    assert type(raw) is bytes and len(raw) < 100


@pytest.mark.parametrize("raw", [
    b"", b"null", b"[]", b'"lists"', b"{}", b'{"lists": []}', b'{"lists": {}}', b'{"lists": null}',
    b'{"lists": {"ofac": "label"}}', b'{"lists": {"": {"label": "", "added_at": 1}}}',
    b'{"lists": {"ofac": {"label": 1, "added_at": 1}}}', b'{"lists": {"ofac": {"label": ""}}}',
    b'{"lists": {"ofac": {"label": "", "added_at": true}}}', b'{"lists": {"ofac": {"label": "", "added_at": -1}}}',
    b'{"lists": {"ofac": {"label": "", "added_at": 1.5}}}', b'{"lists": {"ofac": {"label": "", "added_at": 1e400}}}',
    b'{"lists": {"ofac": {"label": "", "added_at": 123456789012345678901234567890}}}',
    b"\xff\xfe", b'{"lists": {"\xff": {}}}', b"[" * 5000, b" " * (1 << 17),
    b'{"__class__": "os.system", "lists": {"ofac": {"label": "$(rm -rf /)", "added_at": "now"}}}',
])
def test_malformed_values_raise_value_error(raw):
    with pytest.raises(ValueError):
        decode_value(raw)


def test_non_bytes_values_raise_value_error():
    for raw in ("{}", 1, object()):
        with pytest.raises(ValueError):
            decode_value(raw)


list_names = st.text(min_size=1, max_size=watchlist.MAX_LIST_NAME)
labels = st.text(max_size=watchlist.MAX_LABEL)
times = st.integers(min_value=0, max_value=2**63 - 1)
values = st.dictionaries(list_names, st.builds(Listing, labels, times), min_size=1, max_size=6)
json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8)
json_any = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=12)


@FUZZ
@given(values)
def test_value_round_trip(value):
    assert decode_value(encode_value(value)) == value


@FUZZ
@given(values, list_names, labels, times)
def test_merge_then_remove_restores(value, name, label, added_at):
    raw = encode_value(value)
    merged = merge(raw, Entry(A1, name, label), added_at)
    assert decode_value(merged)[name].label == label
    if name in value:
        assert decode_value(merged)[name].added_at == value[name].added_at
    else:
        assert remove(merged, name) == raw


@FUZZ
@given(st.binary(max_size=256))
def test_hostile_bytes_raise_value_error_only(raw):
    try:
        result = decode_value(raw)
    except ValueError:
        return
    assert result and all(isinstance(v, Listing) for v in result.values())


@FUZZ
@given(values, st.lists(st.tuples(st.sampled_from(["lists", "label", "added_at", "x"]), json_any), max_size=3),
       st.integers(min_value=0, max_value=10))
def test_mutated_values_raise_value_error_only(value, mutations, cut):
    document = orjson.loads(encode_value(value))
    for key, replacement in mutations:
        lists = document["lists"]
        if key == "lists":
            document[key] = replacement
        elif isinstance(lists, dict) and lists and isinstance(first := next(iter(lists.values())), dict):
            first[key] = replacement
    raw = orjson.dumps(document)
    for candidate in (raw, raw[:-cut] if cut else raw):
        try:
            result = decode_value(candidate)
        except ValueError:
            continue
        assert all(isinstance(v.label, str) and type(v.added_at) is int for v in result.values())


def test_valid_record_accepts_only_what_the_command_writes():
    from anomaly_stream.detect.watchlist import valid_record

    value = watchlist.merge(None, watchlist.Entry("0x" + "ab" * 20, "ofac", "SDN"), 1)
    assert valid_record(b"0x" + b"ab" * 20, value)
    assert not valid_record(b"0x" + b"AB" * 20, value), "keys are lower case"
    assert not valid_record(b"not an address", value)
    assert not valid_record(b"0x" + b"ab" * 20, b'{"lists": {}}')
    assert not valid_record(b"\xff" * 42, value)
