"""What the notifier decides, as plain functions over plain data: routing, deduplication, messages.

No Kafka and no HTTP here (`delivery` sends, `notifier` runs it over a
partition's records), so every decision is unit-tested on its own.

Deduplication, per `alert_key` (one episode: same address, perspective and
leading rule, see detector.alert_key): the episode's first anomaly is an
alert (`new`); a later one is an `update` carrying the episode's count when
at least `dedup.window_seconds` passed since the last alert of the key, and
is suppressed otherwise; a key quiet for `dedup.ttl_seconds` starts over.
Time is the anomaly's `detected_at`, not the notifier's clock, so a replay
after a crash, or a backlog read late, decides the same way. 20 anomalies of
one episode within a window page once; spread over an hour with a 10-minute
window, they page at most 7 times (the first and an update a window).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import orjson

from .config import SEVERITIES, Dedup, Retry, Rule

ALERT_SCHEMA = "anomaly_stream.alert/v1"
NEW, UPDATE, SUPPRESSED = "new", "update", "suppressed"
RANK = {s: i for i, s in enumerate(SEVERITIES)}
WATCHLIST_RULES = ("watchlist", "funded_by_watchlist")
SIGNATURE_HEADER = "X-Anomaly-Signature"


# -- routing --

def named_addresses(doc: dict) -> set[str]:
    """Every address the anomaly names: its subject, both ends, and those its reasons name."""
    found = {doc.get(k) for k in ("address", "sender", "to", "counterparty")}
    found |= {r.get("address") for r in doc.get("reasons", ())}
    return {a.lower() for a in found if isinstance(a, str)}


def matches(rule: Rule, doc: dict) -> bool:
    if rule.min_severity is not None and RANK.get(doc.get("severity"), -1) < RANK[rule.min_severity]:
        return False
    reasons = doc.get("reasons", ())
    if rule.reasons is not None and not any(r.get("rule") in rule.reasons for r in reasons):
        return False
    if rule.watchlists is not None and not any(
            r.get("rule") in WATCHLIST_RULES and r.get("list") in rule.watchlists for r in reasons):
        return False
    if rule.addresses is not None and not rule.addresses & named_addresses(doc):
        return False
    return True


def route(rules: Iterable[Rule], doc: dict) -> list[str]:
    """The sinks of every rule the anomaly matches, each once, in the order the rules name them."""
    sinks: dict[str, None] = {}
    for rule in rules:
        if matches(rule, doc):
            sinks.update(dict.fromkeys(rule.sinks))
    return list(sinks)


# -- deduplication --

@dataclass(frozen=True)
class Episode:
    """What the dedup table holds per alert key (`partition` and `last_seen` locate it for the TTL)."""

    partition: int
    first_seen: float
    last_seen: float
    count: int  # anomalies of the episode seen
    notified_at: float  # detected_at of the last alert delivered
    updates: int  # updates delivered after the first alert

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def decode(cls, raw: bytes) -> Episode:
        return cls(**orjson.loads(raw))


def decide(episode: Episode | None, partition: int, at: float, dedup: Dedup) -> tuple[str, Episode]:
    """new, update or suppressed, and the episode as it stands after this anomaly (detected `at`)."""
    if episode is None or at - episode.last_seen > dedup.ttl_seconds:
        return NEW, Episode(partition, at, at, 1, at, 0)
    seen = replace(episode, partition=partition, last_seen=max(episode.last_seen, at), count=episode.count + 1)
    if at - episode.notified_at >= dedup.window_seconds:
        return UPDATE, replace(seen, notified_at=at, updates=episode.updates + 1)
    return SUPPRESSED, seen


# -- the messages --

def alert(doc: dict, kind: str, episode: Episode) -> dict:
    """The alert a sink delivers: the anomaly that raised it, and where its episode stands."""
    return {
        "schema": ALERT_SCHEMA, "alert_key": doc["alert_key"], "kind": kind,
        "count": episode.count, "update": episode.updates,
        "first_seen": episode.first_seen, "last_seen": episode.last_seen,
        "severity": doc.get("severity"), "address": doc.get("address"), "perspective": doc.get("perspective"),
        "tx_hash": doc.get("tx_hash"), "score": doc.get("score"), "threshold": doc.get("threshold"),
        "reasons": doc.get("reasons", []), "anomaly": doc,
    }


def idempotency_key(alert: dict) -> str:
    """The alert key for the first alert; updates are distinct deliveries of the same episode."""
    return alert["alert_key"] if alert["kind"] == NEW else f"{alert['alert_key']}:update:{alert['update']}"


def body(alert: dict) -> bytes:
    return orjson.dumps(alert, option=orjson.OPT_SORT_KEYS)


def signature(secret: bytes, payload: bytes) -> str:
    return "sha256=" + hmac.new(secret, payload, hashlib.sha256).hexdigest()


def verify(secret: bytes, payload: bytes, header: str) -> bool:
    """What a receiver checks: the header is the HMAC-SHA256 of the exact body bytes."""
    return hmac.compare_digest(signature(secret, payload), header)


def webhook_headers(alert: dict, payload: bytes, secret: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, payload),
            "Idempotency-Key": idempotency_key(alert), "X-Alert-Kind": alert["kind"]}


def _escape(text: str) -> str:
    """Slack mrkdwn's three control characters, in text that came from the data."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _reason(r: dict) -> str:
    detail = r.get("list") or r.get("imitates") or r.get("perspective")
    return _escape(f"{r.get('rule')} ({detail})" if detail else str(r.get("rule")))


EMOJI = {"high": ":rotating_light:", "medium": ":warning:", "low": ":information_source:"}


def slack_message(alert: dict, explorer_url: str) -> dict:
    """A Slack incoming-webhook message in Block Kit: severity, address, tx link, reasons, count."""
    severity, address, tx = alert["severity"] or "low", alert["address"] or "", alert["tx_hash"] or ""
    title = f"{severity.upper()} anomaly" + (f" (update {alert['update']})" if alert["kind"] == UPDATE else "")
    reasons = ", ".join(dict.fromkeys(_reason(r) for r in alert["reasons"])) or "model"
    fields = [
        f"*Severity*\n{severity}",
        f"*Address*\n<{explorer_url}/address/{address}|{address}>",
        f"*Transaction*\n<{explorer_url}/tx/{tx}|{tx[:10]}…{tx[-6:]}>",
        f"*Reasons*\n{reasons}",
        f"*Count*\n{alert['count']} in this episode",
        f"*Score*\n{alert['score']} (threshold {alert['threshold']})",
    ]
    return {
        "text": f"{title}: {address} ({reasons})",  # the notification's fallback text
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"{EMOJI.get(severity, '')} {title}".strip(),
                                        "emoji": True}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text":
                f"{_escape(str(alert['perspective']))} perspective · alert key `{alert['alert_key']}`"}]},
        ],
    }


def log_fields(alert: dict) -> dict:
    """The log sink's event fields."""
    return {"alert_key": alert["alert_key"], "kind": alert["kind"], "count": alert["count"],
            "severity": alert["severity"], "address": alert["address"], "tx_hash": alert["tx_hash"],
            "reasons": [r.get("rule") for r in alert["reasons"]]}


# -- pacing --

def backoff_delay(attempt: int, retry: Retry, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^(attempt-1))] after the attempt-th failure."""
    return rand() * min(retry.backoff_max_seconds, retry.backoff_base_seconds * 2 ** (attempt - 1))


class TokenBucket:
    """`rate` deliveries a second on average, `burst` at once; `take` reserves one and says how long to wait."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> float:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1.0  # reserved even when it must wait: callers queue in order
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
