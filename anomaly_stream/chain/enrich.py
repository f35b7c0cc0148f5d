"""On-chain facts for flagged transactions, fetched over JSON-RPC through the cache.

For each anomaly the sender's balance and whether the counterparty is a
contract (its code size) are added as `onchain`. Facts go through the Redis
read-through cache (`ENRICH_CACHE_TTL_SECONDS`), so a repeated address costs
no RPC call. Enrichment never blocks an anomaly for long: one batch's lookups
share `ENRICH_TIMEOUT_SECONDS`, a failure leaves `onchain` null and counts in
`enrichment_total{result}`, and after a failure the node is left alone for a
cool-down so a dead node costs the stream nothing.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog

from .. import metrics
from ..cooldown import CoolDown
from ..serve.cache import Cache
from .rpc import RpcClient
from ..detect.schema import WEI_PER_ETH
from ..settings import Settings

log = structlog.get_logger(__name__)
COOL_DOWN_SECONDS = 5.0


class Enricher:
    def __init__(self, settings: Settings, cache: Cache):
        self.enabled = bool(settings.enrich_onchain)
        self.timeout = settings.enrich_timeout_seconds
        self.ttl = settings.enrich_cache_ttl_seconds
        self.cache = cache
        self.url = settings.eth_rpc_url
        self._rpc: RpcClient | None = None
        self.cool_down = CoolDown(COOL_DOWN_SECONDS)

    @property
    def rpc(self) -> RpcClient:
        if self._rpc is None:  # built on first use, inside the running loop
            self._rpc = RpcClient(self.url, self.timeout, max_attempts=1)
        return self._rpc

    async def stop(self) -> None:
        if self._rpc is not None:
            await self._rpc.close()
            self._rpc = None

    async def enrich(self, documents: list[dict]) -> None:
        """Add `onchain` to every document, in place; null where facts were not to be had."""
        for document in documents:
            document["onchain"] = None
        if not self.enabled or not documents:
            return
        if not self.cool_down.allows():
            metrics.ENRICHMENT.labels("skipped").inc(len(documents))
            return
        # The sender and the counterparty whatever the perspective: a receiver-side
        # anomaly is about its counterparty, and its facts say who paid it.
        addresses = sorted({d["sender"] for d in documents} | {_counterparty(d) for d in documents} - {None})
        try:
            found = await asyncio.wait_for(
                asyncio.gather(*(self.facts(a) for a in addresses)), self.timeout)
        except Exception as exc:  # noqa: BLE001 - whatever the node did, the anomaly goes out
            self.cool_down.failed()
            metrics.ENRICHMENT.labels("error").inc(len(documents))
            log.warning("enrichment_failed", error=type(exc).__name__, retry_in_seconds=self.cool_down.seconds)
            return
        self.cool_down.succeeded()
        facts = dict(zip(addresses, found))
        for document in documents:
            sender, to = facts[document["sender"]], facts.get(_counterparty(document))
            document["onchain"] = {
                "sender_balance_eth": int(sender["balance_wei"]) / WEI_PER_ETH,
                "counterparty_is_contract": None if to is None else to["code_size"] > 0,
                "counterparty_code_size": None if to is None else to["code_size"],
            }
        metrics.ENRICHMENT.labels("ok").inc(len(documents))

    async def facts(self, address: str) -> dict:
        async def load() -> bytes:
            balance, code = await self.rpc.batch_calls(
                [("eth_getBalance", [address, "latest"]), ("eth_getCode", [address, "latest"])])
            return orjson.dumps({"balance_wei": str(int(balance, 16)), "code_size": (len(code) - 2) // 2})

        return orjson.loads(await self.cache.get_or_load("onchain", address, load, ttl=self.ttl))


def _counterparty(document: dict) -> str | None:
    return document.get("counterparty") or document.get("to")
