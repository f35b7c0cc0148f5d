"""The Redis read-through cache in front of the query views.

Redis is optional at run time. Every call is bounded by `REDIS_TIMEOUT_SECONDS`;
any failure counts in `redis_cache_errors_total`, the caller gets the value
from its loader (the tables), and Redis is left alone for a short cool-down
so an outage costs requests no timeouts. After the cool-down the next request
tries again: the cache comes back by itself.

Keys are `<REDIS_KEY_PREFIX>:<kind>:<id>`, where `id` is always an address or
a hash already validated by the view (never raw user input).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import redis.asyncio as redis
import structlog

from .. import metrics
from ..cooldown import CoolDown
from ..settings import Settings

log = structlog.get_logger(__name__)
COOL_DOWN_SECONDS = 2.0
# A look-up that found nothing is remembered this long (an empty value), so a
# client asking again and again for a hash that is nowhere does not make every
# replica scan its buffer each time; invalidate() clears it like any entry.
MISS_TTL_SECONDS = 2.0

Loader = Callable[[], Awaitable[bytes | None]]


class Cache:
    def __init__(self, settings: Settings):
        self.prefix = settings.redis_key_prefix
        self.ttl = settings.redis_cache_ttl_seconds
        self.timeout = settings.redis_timeout_seconds
        self.cool_down = CoolDown(COOL_DOWN_SECONDS, probe=True)
        self.hits = self.misses = self.errors = 0
        self.settings = settings
        self.client: redis.Redis | None = None  # built by start(), inside the running loop
        self._loading: dict[str, asyncio.Future] = {}  # key -> the load in progress, which callers share

    async def start(self) -> None:
        self.client = self._connect(self.settings)

    async def stop(self) -> None:
        """Close the pool; a Redis that does not answer the close is let go (a shutdown must go on)."""
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.aclose()
            except (redis.RedisError, OSError) as exc:
                log.warning("redis_close_failed", error=type(exc).__name__)

    @staticmethod
    def _connect(s: Settings) -> redis.Redis:
        """The client connects on first use, so a missing Redis is no start-up error."""
        url = s.redis_url
        if s.redis_ssl and url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
        # A blocking pool: a burst of look-ups beyond REDIS_MAX_CONNECTIONS waits for a
        # connection (up to the timeout) instead of failing at once with
        # MaxConnectionsError, which put the cache in its cool-down in a test's burst.
        pool = redis.BlockingConnectionPool.from_url(
            url, password=s.redis_password or None, max_connections=s.redis_max_connections,
            timeout=s.redis_timeout_seconds,
            socket_timeout=s.redis_timeout_seconds, socket_connect_timeout=s.redis_timeout_seconds,
        )
        return redis.Redis.from_pool(pool)

    def _may_call(self) -> bool:
        """Closed: yes. Cooling down: no. Cool-down over: one call probes for the others."""
        return self.client is not None and self.cool_down.allows()

    def key(self, kind: str, ident: str) -> str:
        return f"{self.prefix}:{kind}:{ident}"

    async def get_or_load(self, kind: str, ident: str, loader: Loader, ttl: float | None = None) -> bytes | None:
        """The cached value, else the loader's (None: not found); concurrent callers of one key share one load."""
        key = self.key(kind, ident)
        cached = await self._call("get", self.client.get(key)) if self._may_call() else None
        self._count(cached is not None)
        if cached is not None:
            return cached or None  # b"": a recent miss
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        self._loading[key] = loading = asyncio.get_running_loop().create_future()
        try:
            value = await loader()
        except BaseException as exc:
            loading.set_exception(exc)
            loading.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise
        else:
            loading.set_result(value)
        finally:
            del self._loading[key]
        if self._may_call():
            px = int((ttl or self.ttl) * 1000) if value is not None else int(MISS_TTL_SECONDS * 1000)
            await self._call("set", self.client.set(key, value or b"", px=px))
        return value

    def _count(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        metrics.REDIS_CACHE_REQUESTS.labels("hit" if hit else "miss").inc()
        metrics.REDIS_CACHE_HIT_RATE.set(self.hits / (self.hits + self.misses))

    async def invalidate(self, kind: str, idents: list[str]) -> None:
        if idents and self._may_call():
            await self._call("delete", self.client.delete(*(self.key(kind, i) for i in idents)))

    async def ping(self) -> bool:
        return self.client is not None and bool(await self._call("ping", self.client.ping()))

    async def _call(self, operation: str, awaitable):
        try:
            result = await asyncio.wait_for(awaitable, self.timeout)
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            self.errors += 1
            metrics.REDIS_CACHE_ERRORS.labels(operation).inc()
            if self.cool_down.failed():
                log.warning("redis_unavailable", operation=operation, error=type(exc).__name__,
                            retry_in_seconds=self.cool_down.seconds)
            return None
        self.cool_down.succeeded()
        return result
