"""JSON-RPC to an Ethereum node, shared by the ingester and the enricher."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import structlog
from web3 import AsyncHTTPProvider, AsyncWeb3  # imported up front: it takes a second or two

from ..metrics import ETH_RPC_ERRORS, ETH_RPC_LATENCY

log = structlog.get_logger(__name__)

RETRY_BASE_SECONDS = 0.2
RETRY_MAX_SECONDS = 10.0


class RpcError(Exception):
    """A JSON-RPC error object, or an unusable answer."""

    def __init__(self, method: str, error: dict | str):
        message = error.get("message", str(error)) if isinstance(error, dict) else error
        super().__init__(f"{method}: {message}")
        self.method = method
        self.code = error.get("code") if isinstance(error, dict) else None
        self.message = str(message)

    @property
    def method_missing(self) -> bool:
        text = self.message.lower()
        return self.code == -32601 or any(
            s in text for s in ("does not exist", "not available", "not supported", "method not found"))


def describe(exc: BaseException) -> str:
    """An error as a log may show it: its kind and HTTP status, never the URL (a hosted node's API key is in it)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: HTTP {exc.status}"
    if isinstance(exc, RpcError):
        return str(exc)
    return type(exc).__name__


class RpcClient:
    """Raw JSON-RPC through web3's async HTTP provider, with bounded retries.

    Retries (exponential backoff, full jitter, `Retry-After` honoured) cover
    timeouts, connection errors, HTTP 429/5xx and JSON-RPC error objects, except
    "method not found", which is permanent.
    """

    def __init__(self, url: str, timeout: float, max_attempts: int):
        provider = AsyncHTTPProvider(
            url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
            exception_retry_configuration=None,  # ours below: bounded, jittered, counted
        )
        self.w3 = AsyncWeb3(provider)
        self.provider = provider
        self.max_attempts = max_attempts

    async def close(self) -> None:
        await self.provider.disconnect()

    async def call(self, method: str, params: list):
        async def once():
            response = await self.provider.make_request(method, params)
            if response.get("error"):
                raise RpcError(method, response["error"])
            return response.get("result")

        return await self._retrying(method, once)

    async def batch(self, method: str, params_list: list[list]) -> list:
        """One JSON-RPC batch of the same method; results in request order."""
        return await self.batch_calls([(method, params) for params in params_list])

    async def batch_calls(self, calls: list[tuple[str, list]], errors_as_none: bool = False) -> list:
        """One JSON-RPC batch of (method, params) calls; results in request order.

        Timed and counted as `batch:<method>` when every call is the same method,
        as `batch` otherwise. With `errors_as_none`, a call answered with an
        error object (an eth_call that reverts) gives None and is not retried.
        """
        if not calls:
            return []
        uniform = len({method for method, _ in calls}) == 1
        name = calls[0][0] if uniform else "batch"

        async def once():
            responses = await self.provider.make_batch_request(calls)
            if not isinstance(responses, list):  # the node rejected the whole batch
                raise RpcError(name, isinstance(responses, dict) and responses.get("error") or "bad batch response")
            if len(responses) != len(calls):
                raise RpcError(name, f"{len(responses)} answers to {len(calls)} requests")
            if errors_as_none:
                return [None if response.get("error") else response.get("result") for response in responses]
            for response in responses:
                if response.get("error"):
                    raise RpcError(name, response["error"])
            return [response.get("result") for response in responses]

        return await self._retrying(f"batch:{name}" if uniform else "batch", once)

    async def _retrying(self, label: str, once):
        for attempt in range(1, self.max_attempts + 1):
            started = time.perf_counter()
            delay = None
            try:
                result = await once()
                ETH_RPC_LATENCY.labels(label).observe(time.perf_counter() - started)
                return result
            except RpcError as exc:
                ETH_RPC_ERRORS.labels(label, "rpc_error").inc()
                if exc.method_missing or attempt == self.max_attempts:
                    raise
                error = exc
            except aiohttp.ClientResponseError as exc:
                kind = "rate_limited" if exc.status == 429 else f"http_{exc.status // 100}xx"
                ETH_RPC_ERRORS.labels(label, kind).inc()
                if attempt == self.max_attempts or (400 <= exc.status < 500 and exc.status not in (408, 429)):
                    raise
                retry_after = (exc.headers or {}).get("Retry-After")
                if retry_after and retry_after.isdigit():
                    delay = min(float(retry_after), RETRY_MAX_SECONDS)
                error = exc
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
                kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connection"
                ETH_RPC_ERRORS.labels(label, kind).inc()
                if attempt == self.max_attempts:
                    raise
                error = exc
            if delay is None:
                delay = random.uniform(0, min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1)))
            log.warning("rpc_retry", method=label, attempt=attempt, max_attempts=self.max_attempts,
                        error=describe(error), retry_in_seconds=round(delay, 2))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")
