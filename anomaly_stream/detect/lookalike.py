"""Address poisoning: a new counterparty that imitates a real one.

A poisoner generates an address whose first and last hex characters equal
those of an address the victim really deals with, sends the victim a
zero-value, dust or fake-token transfer from it, and waits for the victim to
copy the look-alike out of their history (Forta's address-poisoning bot and
Poison-Hunter, CCS'24, key on the same resemblance). Wallets show an address
as its first and last few characters, which is all the attacker has to match.

Why PREFIX = 2 and SUFFIX = 4 (hex characters after 0x), measured on
shared/data (tests/unit/test_lookalike.py asserts these counts):

Recall: poison-hunter/phishing_transfers_sample.csv, 150 real poisoning
transfers (50 zero-value, 50 dust, 50 fake-token), look-alike ``attacker``
against the imitated ``similar_norm``. Transfers caught when at least p
leading and s trailing characters must match:

    p \\ s    2    3    4    5    6    7
    0       150  149  148  111   72   46
    1       144  143  142  105   66   40
    2       141  140  139  102   63   37
    3       105  105  105   68   31    6
    4        52   52   52   30   27    5

  Leading characters shared: 0:6 1:3 2:36 3:53 4:24 5:1 7:5 8:18 9:4;
  trailing: 1:1 3:1 4:37 5:39 6:26 7:45 8:1. Total (prefix + suffix), the
  figure Poison-Hunter reports: 3:1 5:1 7:23 8:59 9:38 10:1 13:4 14:15 15:7
  16:1 (median 8; 120 of 150 match 7-9 characters). The file's last,
  unnamed column agrees with this total on 135 of the 150 rows. Recall
  >= 0.9 (135 transfers) leaves p <= 2 with s <= 4.

False matches: honest traffic, each sender's 16 most recent distinct
counterparties; a new counterparty counts when it looks alike one of them.

    traffic                       new cps  pairs   (0,4) (1,3) (1,4) (2,3) (2,4)
    2017 ethereum-etl, per sender  10,930  151,410    2     2     0     0     0
    2017, both directions          21,931  241,694    2     5     0     1     0
    2024 RPC blocks, per sender       866    4,726    1     0     0     0     0
    2024, both directions           2,737   22,561  5(4)  4(4)  4(4)  4(4)  4(4)

  ("pairs": comparisons made.) Honest addresses collide at the rate of
  random ones, pairs x 16^-(p+s): at (0,2) 590 observed for 591 expected,
  (0,3) 41 for 37, (1,3) 2 for 2.3 in 2017 per sender; among all 59.5M
  pairs of the 10,905 addresses of 2017, (1,4) 58 for 56.7 and (2,4) 3 for
  3.5. So no vanity-prefix clustering spoils it, and (1,4) and (2,4), both
  at 0 observed, differ by the factor 16 the model predicts: at 16M
  comparisons a day (1M new counterparties, 16 each) about 15 false alerts
  a day for (1,4), 1 for (2,4), for 3 more transfers of the 150 caught.
  The (4) in the 2024 row: four hits that hold at every threshold up to
  (4,6) are real poisoning, not false matches: a victim pays an address,
  and 4-18 blocks later a look-alike sharing 4 leading and 6-7 trailing
  characters sends the victim 0 ETH; one address
  (0x8c642c4bb50bcafa0c867e1a8dd7c89203699a52) funded all four look-alikes.
  Only the incoming direction sees them, so a detector should compare both
  the senders and the recipients of an address's transactions against its
  history.

The 11 of 150 missed at (2, 4): six share no leading character at all
(suffix 7), three share one, two share fewer than four trailing ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PREFIX = 2
SUFFIX = 4

_HEX40 = re.compile(r"[0-9a-f]{40}")


def _hex(address: str) -> str | None:
    text = address.strip().lower() if isinstance(address, str) else ""
    if text.startswith("0x"):
        text = text[2:]
    return text if _HEX40.fullmatch(text) else None


def shared_affixes(a: str, b: str) -> tuple[int, int]:
    """How many leading and trailing hex characters (after 0x) two addresses share; (0, 0) if either is not an address."""
    x, y = _hex(a), _hex(b)
    if x is None or y is None:
        return 0, 0
    lead = 0
    while lead < 40 and x[lead] == y[lead]:
        lead += 1
    if lead == 40:
        return 40, 40
    trail = 0
    while x[39 - trail] == y[39 - trail]:
        trail += 1
    return lead, trail


def _check(prefix: int, suffix: int) -> None:
    # With nothing to match every address would look like every other.
    if prefix < 0 or suffix < 0 or prefix + suffix == 0:
        raise ValueError("prefix and suffix are >= 0 and not both 0")


def looks_alike(a: str, b: str, prefix: int = PREFIX, suffix: int = SUFFIX) -> bool:
    """Two different addresses that share at least `prefix` leading and `suffix` trailing hex characters."""
    _check(prefix, suffix)
    lead, trail = shared_affixes(a, b)
    return lead < 40 and lead >= prefix and trail >= suffix


def find_lookalike(candidate: str, known: Iterable[str], prefix: int = PREFIX, suffix: int = SUFFIX) -> str | None:
    """The address in `known` that `candidate` imitates, or None.

    `candidate` may itself be in `known` (a poisoner that already sent the
    victim dust is in the victim's history when the victim pays it): it is
    still compared with the others. Among several look-alikes the one sharing
    the most characters is the likelier target.
    """
    _check(prefix, suffix)
    if _hex(candidate) is None:
        return None
    best, best_shared = None, -1
    for address in known:
        lead, trail = shared_affixes(candidate, address)
        if lead < 40 and lead >= prefix and trail >= suffix and lead + trail > best_shared:
            best, best_shared = address, lead + trail
    return best


# -- the compact form kept in address profiles ---------------------------------
# A profile remembers its recent counterparties as 16-character digests: the
# first 6, 4 from the middle (hex characters 17-20) and the last 6, 16 bytes
# instead of 42 each. The middle part matters: 27 of Poison-Hunter's 150
# real look-alikes share 6+ leading AND 6+ trailing characters with their
# target (fake tokens matching 8+6, vanity-generated), so a first-and-last-6
# digest made look-alike and target the same digest, and the rule skipped
# them as "the same address". No real poisoner matches more than 9 leading
# or 8 trailing characters (the table above), so the middle four are the
# random ones: two different addresses with one digest need a 64-bit match.
# PREFIX, SUFFIX and SUFFIX_ALONE must stay within 6.
DIGEST_HALF = 6
DIGEST_MIDDLE = slice(2 + 16, 2 + 20)
# A second resemblance: the last SUFFIX_ALONE characters with any prefix.
# Poison-Hunter's 150: nine of the 11 missed at (2, 4) share no or one
# leading character but 7 trailing ones; (2, 4) or (0, 6) catches 148 of
# 150. Its false matches per pair are 16^-6, as for (2, 4) (honest
# addresses collide at the random rate, above): the union doubles about one
# false alert a day at 16M comparisons to about two.
SUFFIX_ALONE = 6
assert PREFIX <= DIGEST_HALF and SUFFIX <= SUFFIX_ALONE <= DIGEST_HALF
DIGEST_LENGTH = 2 * DIGEST_HALF + 4


def digest(address: str) -> str:
    return address[2:2 + DIGEST_HALF] + address[DIGEST_MIDDLE] + address[-DIGEST_HALF:]


def imitated(candidate: str, known: Iterable[str]) -> str | None:
    """The digest in `known` that the digest `candidate` imitates, or None."""
    head, tail, tail_alone = candidate[:PREFIX], candidate[-SUFFIX:], candidate[-SUFFIX_ALONE:]
    for d in known:
        # Both resemblances end in the last SUFFIX characters: almost every digest fails there.
        if d.endswith(tail) and d != candidate and (d.startswith(head) or d.endswith(tail_alone)):
            return d
    return None
