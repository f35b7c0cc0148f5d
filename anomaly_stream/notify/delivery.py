"""Sending one alert to one sink: rate limit, bounded retries, the outcome.

Webhooks and Slack go over one aiohttp client session, started and stopped
with the app. A timeout, a connection error, HTTP 408, 429 or 5xx is tried
again after a full-jitter backoff, at most `max_attempts` times and never
past `max_total_seconds`; any other 4xx is permanent. Failures are logged
by kind (`http_500`, `timeout`, `connection`) and never with the exception's
text, which can hold the URL (a Slack URL is a secret).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import aiohttp
import orjson
import structlog

from .. import metrics
from .alerts import TokenBucket, backoff_delay, body, log_fields, slack_message, webhook_headers
from .config import NotifyConfig, Sink

log = structlog.get_logger(__name__)
RETRIABLE_STATUS = (408, 429)


@dataclass(frozen=True)
class Outcome:
    sink: str
    delivered: bool
    attempts: int
    reason: str = ""  # why it failed: http_<status>, timeout, connection


class _Failed(Exception):
    def __init__(self, reason: str, retriable: bool):
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable


class Delivery:
    def __init__(self, config: NotifyConfig, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random):
        self.config = config
        self.clock, self.sleep, self.rand = clock, sleep, rand
        self.buckets = {name: TokenBucket(s.rate_per_second, s.burst, clock)
                        for name, s in config.sinks.items() if s.rate_per_second is not None}
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def deliver(self, sink: Sink, alert: dict) -> Outcome:
        retry = sink.retry
        started = self.clock()
        deadline = started + retry.max_total_seconds
        attempt = 0
        while True:
            attempt += 1
            bucket = self.buckets.get(sink.name)
            wait = bucket.take() if bucket is not None else 0.0
            if wait > 0:
                await self.sleep(wait)
            try:
                await self._send(sink, alert, max(0.001, min(retry.timeout_seconds, deadline - self.clock())))
                return self._done(sink, alert, Outcome(sink.name, True, attempt), started)
            except _Failed as exc:
                failure = exc
            delay = backoff_delay(attempt, retry, self.rand)
            if not failure.retriable or attempt >= retry.max_attempts or self.clock() + delay > deadline:
                return self._done(sink, alert, Outcome(sink.name, False, attempt, failure.reason), started)
            metrics.NOTIFY_RETRIES.labels(sink.name).inc()
            log.info("alert_retry", sink=sink.name, alert_key=alert["alert_key"], attempt=attempt,
                     reason=failure.reason, retry_in_seconds=round(delay, 3))
            await self.sleep(delay)

    def _done(self, sink: Sink, alert: dict, outcome: Outcome, started: float) -> Outcome:
        metrics.NOTIFY_DELIVERIES.labels(sink.name, "delivered" if outcome.delivered else "failed").inc()
        metrics.NOTIFY_DELIVERY_SECONDS.labels(sink.name).observe(self.clock() - started)
        if not outcome.delivered:
            log.warning("alert_undeliverable", sink=sink.name, alert_key=alert["alert_key"],
                        attempts=outcome.attempts, reason=outcome.reason)
        return outcome

    async def _send(self, sink: Sink, alert: dict, timeout: float) -> None:
        if sink.type == "log":
            log.info("alert", sink=sink.name, **log_fields(alert))
            return
        if sink.type == "webhook":
            payload = body(alert)
            headers = webhook_headers(alert, payload, sink.secret)
        else:  # slack
            payload = orjson.dumps(slack_message(alert, sink.explorer_url))
            headers = {"Content-Type": "application/json"}
        assert self.session is not None, "Delivery.start() first"
        try:
            async with self.session.post(sink.url, data=payload, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                await response.read()
                status = response.status
        except asyncio.TimeoutError:
            raise _Failed("timeout", True) from None
        except (aiohttp.ClientError, OSError):
            raise _Failed("connection", True) from None
        if 200 <= status < 300:
            return
        raise _Failed(f"http_{status}", status >= 500 or status in RETRIABLE_STATUS)
