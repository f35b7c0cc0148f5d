"""The notifier's TOML file (`NOTIFY_CONFIG`): sinks, routing rules, retries, deduplication.

Read once at start-up and validated whole: every error names the key at
fault (`sinks.oncall.url`, `rules[2].min_severity`). Secrets (a webhook's
HMAC key, a Slack webhook URL) are never in the file: the file names the
environment variables that hold them (`secret_env`, `url_env`), and the
values live only in `Sink` fields that are left out of its repr.
See deploy/notify.example.toml.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

SEVERITIES = ("low", "medium", "high")
SINK_TYPES = ("webhook", "slack", "log")


class ConfigError(ValueError):
    """The notifier's configuration has a value it cannot run with."""


@dataclass(frozen=True)
class Retry:
    """Bounded tries per alert and sink: exponential backoff with full jitter, and a deadline."""

    max_attempts: int = 5
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    max_total_seconds: float = 120.0
    timeout_seconds: float = 10.0  # one HTTP request


@dataclass(frozen=True)
class Dedup:
    """An alert key's first anomaly is delivered; then at most one update (with the count) a window."""

    window_seconds: float = 600.0
    ttl_seconds: float = 6 * 3600.0  # quiet this long: the next anomaly opens a new episode


@dataclass(frozen=True)
class Sink:
    name: str
    type: str
    url: str = field(default="", repr=False)  # a Slack URL is a secret
    secret: bytes = field(default=b"", repr=False)  # the webhook's HMAC key
    rate_per_second: float | None = 5.0  # None: no limit (a log sink's default)
    burst: int = 10
    explorer_url: str = "https://etherscan.io"
    retry: Retry = Retry()


@dataclass(frozen=True)
class Rule:
    """Every condition given must hold; within a list, any item. No condition: every anomaly."""

    name: str
    sinks: tuple[str, ...]
    min_severity: str | None = None
    reasons: frozenset[str] | None = None  # reason rule names: model, watchlist, lookalike, ...
    watchlists: frozenset[str] | None = None  # list names a watchlist reason named
    addresses: frozenset[str] | None = None  # lower-case; any address the anomaly names


@dataclass(frozen=True)
class NotifyConfig:
    sinks: dict[str, Sink]
    rules: tuple[Rule, ...]
    dedup: Dedup = Dedup()
    retry: Retry = Retry()


def load(path: str, environ: Mapping[str, str] | None = None) -> NotifyConfig:
    if not path:
        raise ConfigError("NOTIFY_CONFIG must name the notifier's TOML file (see deploy/notify.example.toml)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"NOTIFY_CONFIG {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"NOTIFY_CONFIG {path!r} is not valid TOML: {exc}") from None
    return parse(data, os.environ if environ is None else environ)


def parse(data: Mapping[str, Any], environ: Mapping[str, str]) -> NotifyConfig:
    _only(data, "", {"delivery", "dedup", "sinks", "rules"})
    retry = _retry(_table(data, "delivery"), "delivery", Retry())
    dedup_table = _table(data, "dedup")
    _only(dedup_table, "dedup", {"window_seconds", "ttl_seconds"})
    dedup = Dedup(**{k: _number(dedup_table, "dedup", k, getattr(Dedup(), k)) for k in ("window_seconds", "ttl_seconds")})
    if dedup.window_seconds > dedup.ttl_seconds:
        raise ConfigError("dedup.window_seconds must not exceed dedup.ttl_seconds")
    sinks_table = _table(data, "sinks")
    if not sinks_table:
        raise ConfigError("sinks: at least one sink is needed ([sinks.NAME] with a type)")
    sinks = {name: _sink(name, _table(sinks_table, name, "sinks"), environ, retry) for name in sinks_table}
    rules_list = data.get("rules", [])
    if not isinstance(rules_list, list) or not rules_list or not all(isinstance(r, dict) for r in rules_list):
        raise ConfigError("rules: at least one [[rules]] table is needed")
    rules = tuple(_rule(i, r, sinks) for i, r in enumerate(rules_list))
    return NotifyConfig(sinks, rules, dedup, retry)


def _sink(name: str, table: Mapping[str, Any], environ: Mapping[str, str], retry: Retry) -> Sink:
    where = f"sinks.{name}"
    kind = table.get("type")
    if kind not in SINK_TYPES:
        raise ConfigError(f"{where}.type: unknown sink type {kind!r} (one of {', '.join(SINK_TYPES)})")
    allowed = {"type", "rate_per_second", "burst", *Retry.__dataclass_fields__}
    allowed |= {"webhook": {"url", "secret_env"}, "slack": {"url_env", "explorer_url"}, "log": set()}[kind]
    _only(table, where, allowed)
    values: dict[str, Any] = {"name": name, "type": kind, "retry": _retry(table, where, retry)}
    unlimited = kind == "log" and "rate_per_second" not in table
    values["rate_per_second"] = None if unlimited else _number(table, where, "rate_per_second", Sink.rate_per_second)
    values["burst"] = int(_number(table, where, "burst", Sink.burst, integer=True))
    if kind == "webhook":
        values["url"] = _url(table.get("url"), f"{where}.url")
        values["secret"] = _secret(table, where, "secret_env", environ).encode()
    elif kind == "slack":
        values["url"] = _url(_secret(table, where, "url_env", environ), f"{where}.url_env", show=False)
        values["explorer_url"] = _url(table.get("explorer_url", Sink.explorer_url), f"{where}.explorer_url")
    return Sink(**values)


def _rule(i: int, table: Mapping[str, Any], sinks: Mapping[str, Sink]) -> Rule:
    where = f"rules[{i}]"
    _only(table, where, {"name", "sinks", "min_severity", "reasons", "watchlists", "addresses"})
    names = table.get("sinks")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}.sinks: a non-empty list of sink names is needed")
    for n in names:
        if n not in sinks:
            raise ConfigError(f"{where}.sinks: no sink named {n!r} (sinks: {', '.join(sorted(sinks))})")
    severity = table.get("min_severity")
    if severity is not None and severity not in SEVERITIES:
        raise ConfigError(f"{where}.min_severity: bad severity {severity!r} (one of {', '.join(SEVERITIES)})")
    addresses = _strings(table, where, "addresses")
    if addresses is not None:
        bad = [a for a in addresses if not (len(a) == 42 and a[:2] == "0x" and _hex(a[2:]))]
        if bad:
            raise ConfigError(f"{where}.addresses: not a 0x-prefixed 20-byte hex address: {bad[0]!r}")
        addresses = frozenset(a.lower() for a in addresses)
    return Rule(
        name=str(table.get("name", where)), sinks=tuple(dict.fromkeys(names)), min_severity=severity,
        reasons=_strings(table, where, "reasons"), watchlists=_strings(table, where, "watchlists"),
        addresses=addresses)


def _retry(table: Mapping[str, Any], where: str, default: Retry) -> Retry:
    if where == "delivery":
        _only(table, where, set(Retry.__dataclass_fields__))
    retry = Retry(**{
        name: _number(table, where, name, getattr(default, name), integer=name == "max_attempts")
        for name in Retry.__dataclass_fields__})
    return Retry(**{**retry.__dict__, "max_attempts": int(retry.max_attempts)})


def _table(data: Mapping[str, Any], key: str, parent: str = "") -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{parent + '.' if parent else ''}{key}: must be a table")
    return value


def _only(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _number(table: Mapping[str, Any], where: str, key: str, default: float, integer: bool = False) -> float:
    value = table.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}.{key}: must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def _strings(table: Mapping[str, Any], where: str, key: str) -> frozenset[str] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key}: must be a non-empty list of strings")
    return frozenset(value)


def _secret(table: Mapping[str, Any], where: str, key: str, environ: Mapping[str, str]) -> str:
    name = table.get(key)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.{key}: must name the environment variable holding the secret")
    value = environ.get(name, "")
    if not value:
        raise ConfigError(f"{where}.{key}: environment variable {name} is not set")
    return value


def _url(value: Any, where: str, show: bool = True) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f", got {value!r}" if show else " (its value is a secret, not shown)"
        raise ConfigError(f"{where}: must be an http:// or https:// URL with a host{shown}")
    return value.rstrip("/") if where.endswith("explorer_url") else value


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
