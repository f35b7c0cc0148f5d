"""Watch-lists: parsers for the public address lists, and the value one address has in a compacted topic.

Parsers turn a list file into `Entry`s (address in lower case, the list name
the user gave, the source's label). Formats, as published (copies in
`shared/data/labels/`):

- ``ofac``: 0xB10C/ofac-sanctioned-digital-currency-addresses, one address a
  line, EIP-55 mixed case. The USDT file also holds Tron addresses; they are
  not Ethereum addresses and are counted as skipped.
- ``forta``: forta-network/labelled-datasets CSVs. The address column is
  ``banned_address`` (etherscan_malicious_labels.csv), ``address``
  (phishing_scams.csv) or ``contract_address`` (malicious_smart_contracts.csv;
  the creator column is not read: the file lists contracts, and a creator is
  often a deployer account shared with honest work).
- ``scamsniffer``: scamsniffer/scam-database ``blacklist/address.json``, a
  JSON array of address strings.
- ``poison-hunter``: DS2L/Poison-Hunter ``phishing_address_groundtruth.txt``,
  one address a line. Its ``benign_addresses_on_etherscan.txt`` is the benign
  control set and is refused, so it cannot become a watch-list by mistake.
- ``plain``: a user's own list, one address a line with an optional comment
  after a comma, a tab or blanks (``0xabc..., cold wallet``), ``#`` comment
  lines, and an optional ``address,...`` header line. The comment becomes the
  label.

Within one file an address is kept once (the Forta files hold 521 addresses
twice, once checksummed and once in lower case, sometimes with different tags):
the first non-empty label wins and the rest are counted as duplicates, since
one list gives an address one label in the stored value.

The stored value. The watch-list topic is compacted and keyed by the address
(lower-case ASCII), so one key must hold every list an address is on:
``{"lists": {"ofac": {"label": "", "added_at": 1727395200}, "forta": {...}}}``.
`merge` and `remove` are the only writers; `remove` of the last list returns
None, which the producer sends as a tombstone. Keys are sorted so that an
unchanged value encodes to the same bytes and a loader can skip the write.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import orjson

from .features import compact

FORMATS = ("auto", "ofac", "forta", "scamsniffer", "poison-hunter", "plain")

_ADDRESS = re.compile(r"0x[0-9a-f]{40}")
# Address column, then the label columns in order of preference: a tag names
# the actor ("Multichain Exploiter 10"), the category ("phish-hack") is the
# fallback when Etherscan gave it no name, and the 44 contracts taken from
# exploit write-ups have only their note ("20221017 Uerii Token - Access Control").
_FORTA_COLUMNS = {
    "banned_address": ("wallet_tag", "data_source"),
    "address": ("etherscan_tag", "etherscan_labels"),
    "contract_address": ("contract_tag", "contract_creator_tag", "contract_creator_etherscan_label", "notes"),
}
_BENIGN_CONTROL_SET = "benign_addresses_on_etherscan.txt"
# Address token, then the comment after a comma, blanks, a tab or "#".
_PLAIN_LINE = re.compile(r"([^\s,#]*)[\s,#]*(.*)", re.DOTALL)
MAX_LABEL = 200  # a user's comment column can be anything; values stay small
MAX_LIST_NAME = 64
MAX_VALUE_BYTES = 1 << 16  # ~300 lists: far more than any deployment; bounds what a hostile value costs


class Entry(NamedTuple):
    address: str  # 0x + 40 lower-case hex
    list: str  # the list name the user gave ("ofac")
    label: str  # the source's tag or category, a plain list's comment, else ""


class Listing(NamedTuple):
    label: str
    added_at: int  # unix seconds when the address first went on this list


class ParseResult(NamedTuple):
    entries: list[Entry]
    skipped: int  # lines or rows that hold no valid Ethereum address
    duplicates: int  # addresses seen again in the same file


def normalize_address(text: str) -> str | None:
    """The lower-case address, or None if `text` is not 0x + 40 hex (either case)."""
    text = text.strip().lower()
    return text if _ADDRESS.fullmatch(text) else None


def parse(path: str | Path, list_name: str, fmt: str = "auto") -> list[Entry]:
    return parse_with_stats(path, list_name, fmt).entries


def parse_with_stats(path: str | Path, list_name: str, fmt: str = "auto") -> ParseResult:
    """Parse a list file; raises ValueError for an unknown format or a file that is not in it."""
    path = Path(path)
    _check_list_name(list_name)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt in ("auto", "poison-hunter") and path.name == _BENIGN_CONTROL_SET:
        raise ValueError(f"{path.name} is Poison-Hunter's benign control set, not a watch-list")
    # Lists come from anywhere; a stray byte should cost one line, not the file.
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    if fmt == "auto":
        fmt = _sniff(text)
    if fmt == "scamsniffer":
        rows = _scamsniffer(text)
    elif fmt == "forta":
        rows = _forta(text)
    elif fmt == "plain":
        rows = _plain(text)
    else:  # ofac, poison-hunter: one address a line and nothing else
        rows = ((line.strip(), "") for line in text.splitlines() if line.strip())
    try:
        return _collect(rows, list_name)
    except csv.Error as exc:  # a field past csv's size limit: the file is not a list
        raise ValueError(f"{path.name}: {exc}") from None


def _sniff(text: str) -> str:
    head = text.lstrip()
    if head.startswith("["):
        return "scamsniffer"
    header = {name.strip().lower() for name in next(csv.reader([head.split("\n", 1)[0]]), [])}
    # "address" alone is also how a user's own CSV starts: Forta's header has its tag column too.
    if any(column in header and labels[0] in header for column, labels in _FORTA_COLUMNS.items()):
        return "forta"
    # OFAC and Poison-Hunter files are plain lists that happen to have no comments.
    return "plain"


def _collect(rows, list_name: str) -> ParseResult:
    labels: dict[str, str] = {}
    skipped = duplicates = 0
    for raw_address, label in rows:
        address = normalize_address(raw_address)
        if address is None:
            skipped += 1
            continue
        label = label.strip()[:MAX_LABEL]
        if address in labels:
            duplicates += 1
            if not labels[address]:
                labels[address] = label
        else:
            labels[address] = label
    return ParseResult([Entry(a, list_name, lab) for a, lab in labels.items()], skipped, duplicates)


def _scamsniffer(text: str):
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a JSON array of addresses: {exc}") from None
    if not isinstance(document, list):
        raise ValueError("not a JSON array of addresses")
    return ((item, "") if isinstance(item, str) else ("", "") for item in document)


def _forta(text: str):
    reader = csv.DictReader(io.StringIO(text))
    fields = {name.strip().lower(): name for name in reader.fieldnames or ()}
    column = next((c for c in _FORTA_COLUMNS if c in fields), None)
    if column is None:
        raise ValueError(f"no Forta address column ({', '.join(_FORTA_COLUMNS)}) in the header")
    label_columns = [fields[c] for c in _FORTA_COLUMNS[column] if c in fields]
    for row in reader:
        label = next((row[c] for c in label_columns if row.get(c)), "")
        yield row.get(fields[column]) or "", label


def _plain(text: str):
    header_possible = True
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        address, rest = _PLAIN_LINE.fullmatch(line).groups()
        address = address.strip('"')
        if rest.startswith('"'):  # a quoted CSV comment may hold commas of its own
            rest = ", ".join(field.strip() for field in next(csv.reader([rest])) if field.strip())
        if header_possible and address.lower() == "address":
            header_possible = False
            continue
        header_possible = False
        yield address, rest.rstrip(", \t")


def _check_list_name(list_name: str) -> None:
    if not isinstance(list_name, str) or not 0 < len(list_name) <= MAX_LIST_NAME:
        raise ValueError(f"a list name is 1-{MAX_LIST_NAME} characters")


# --- the value stored under an address -------------------------------------

def encode_key(address: str) -> bytes:
    normalized = normalize_address(address)
    if normalized is None:
        raise ValueError(f"not an address: {address!r}")
    return normalized.encode("ascii")


def encode_value(lists: Mapping[str, Listing]) -> bytes:
    if not lists:
        raise ValueError("an address on no list is a tombstone (None), not a value")
    document = {"lists": {name: {"label": listing.label, "added_at": listing.added_at}
                          for name, listing in lists.items()}}
    return compact(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))


def decode_value(raw: bytes | None) -> dict[str, Listing]:
    """The lists an address is on; {} for a tombstone. Anything malformed raises ValueError.

    Unknown keys are ignored, so that a field a newer writer adds does not
    make older readers drop the address from every list.
    """
    if raw is None:
        return {}
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ValueError(f"a value is bytes, not {type(raw).__name__}")
    if len(raw) > MAX_VALUE_BYTES:
        raise ValueError("value too large")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("lists"), dict):
        raise ValueError('a value is {"lists": {...}}')
    lists = document["lists"]
    if not lists:
        raise ValueError("empty lists: an address on no list is a tombstone")
    out: dict[str, Listing] = {}
    for name, listing in lists.items():
        if not 0 < len(name) <= MAX_LIST_NAME or not isinstance(listing, dict):
            raise ValueError(f"bad list entry {name[:MAX_LIST_NAME]!r}")
        label, added_at = listing.get("label"), listing.get("added_at")
        if not isinstance(label, str) or len(label) > MAX_LABEL:
            raise ValueError(f"bad label in list {name!r}")
        # bool is an int in Python; true/false would be a producer bug, not a time.
        if type(added_at) is not int or added_at < 0:
            raise ValueError(f"bad added_at in list {name!r}")
        out[name] = Listing(label, added_at)
    return out


def merge(raw: bytes | None, entry: Entry, added_at: int) -> bytes:
    """The value after putting `entry` on its list.

    Reloading a list must not make an old entry look new, so an address
    already on the list keeps its added_at and only takes the new label.
    """
    _check_list_name(entry.list)
    lists = decode_value(raw)
    previous = lists.get(entry.list)
    lists[entry.list] = Listing(entry.label[:MAX_LABEL], previous.added_at if previous else added_at)
    return encode_value(lists)


def remove(raw: bytes | None, list_name: str) -> bytes | None:
    """The value after taking the address off `list_name`; None (a tombstone) when no list remains."""
    lists = decode_value(raw)
    lists.pop(list_name, None)
    return encode_value(lists) if lists else None


def entries(address: str, raw: bytes | None) -> list[Entry]:
    """The stored value of `address` as Entries, by list name."""
    normalized = encode_key(address).decode("ascii")
    return [Entry(normalized, name, listing.label) for name, listing in sorted(decode_value(raw).items())]


def valid_record(key: bytes, value: bytes) -> bool:
    """A watchlist topic record as `anomaly-stream watchlist` writes it: an address key, a valid value."""
    try:
        return normalize_address(key.decode("ascii")) == key.decode("ascii") and bool(decode_value(value))
    except (UnicodeDecodeError, ValueError):
        return False
