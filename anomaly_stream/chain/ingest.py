"""`anomaly-stream ingest`: follow an Ethereum node, publish confirmed transactions.

    anomaly-stream ingest [--from-block N] [--to-block M]

Reads blocks with full transactions (`eth_getBlockByNumber(n, true)`) and their
receipts over JSON-RPC (web3's AsyncHTTPProvider, raw requests so the objects
stay in wire form: hex quantities, lower-case addresses) and produces one
message per transaction to the input topic, keyed by the sender, in the schema
of `schema.py`: the node's transaction object plus `blockTimestamp` from the
block and `gasUsed`, `status`, `contractAddress` from the receipt, and for a
successful token transfer (`semantics.decode_call`) `ownerTokenBalance`: the
balance of the token its owner (the `from` of the move) holds at the end of the
block, an `eth_call` of `balanceOf` at that block (`fetch_token_balances`).
A drain takes everything, a payment seldom does: the detector's one-transfer
drain rule reads it (`flows`). The read is best effort: a token whose
balanceOf reverts or a node that does not answer leaves the field out
(`ingest_token_balances_total{result}`), and ingestion goes on.

Confirmation depth. Only blocks at or below `head - INGEST_CONFIRMATIONS` are
published, so a reorg shallower than the depth is never seen downstream: the
orphaned blocks were never published, the canonical ones are.

Exactly once, resumable. Each batch of blocks is one Kafka transaction that
holds the batch's transactions and, last, a checkpoint record (the last block's
number and hash and the hashes of the last KEEP_HASHES published blocks) in a
compacted topic keyed by chain id. A crash anywhere leaves either all of the
batch or none of it visible to read_committed consumers; on start the
transactional producer fences and aborts the dead process's open transaction,
then the checkpoint is read back, and ingestion continues at the next block:
no gap and no duplicate.

Reorgs deeper than the depth. Before publishing block n its parentHash is
compared with the hash we published for n-1. On a mismatch the ingester stops
publishing forward (the batch is not produced), counts the reorg
(`ingest_reorgs_total`), logs the orphaned blocks, and walks back through the
kept hashes to the newest block still on the canonical chain (the fork point).
What was published from the orphaned blocks stays in the topic (Kafka is
append-only; nothing from them is ever published again); the canonical
replacement blocks after the fork point are then published in full, each of
their messages with an `eth-reorg-replaces` header naming the orphaned block
hash at that height, so a consumer can tell replacements apart. A transaction
that was in an orphaned block and is re-included in the canonical chain is
therefore published twice (same hash, different block). A fork point older
than the kept hashes stops the ingester with an error (exit code 3): that
needs an operator, and `--from-block` to restart from a chosen block.

Without a checkpoint and without `--from-block` ingestion starts at the current
confirmed head. `--from-block` overrides the checkpoint (a backfill republishes
what was published before); `--to-block` stops after that block.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time
from dataclasses import dataclass, field

import aiohttp
import orjson
import structlog
from prometheus_client import start_http_server

from ..metrics import (
    ETH_BLOCKS_BEHIND_HEAD,
    INGEST_BLOCKS_PUBLISHED,
    INGEST_INPUTS_TRUNCATED,
    INGEST_ORPHANED_BLOCKS,
    INGEST_REORGS,
    INGEST_TOKEN_BALANCES,
    INGEST_TRANSACTIONS_PUBLISHED,
)
from ..detect.semantics import decode_call
from .rpc import RpcClient, RpcError, describe
from ..settings import Settings

log = structlog.get_logger(__name__)

KEEP_HASHES = 256  # published block hashes kept (and checkpointed) to find a fork point
RECEIPT_CHUNK = 100  # receipts per JSON-RPC batch when the node has no eth_getBlockReceipts
EXIT_DEEP_REORG = 3
# The input topic's max.message.bytes is 1 MiB (deploy/k8s/20-kafka-topics.yaml, Kafka's
# default): a message a little under it leaves room for the key, headers and batch framing.
MAX_MESSAGE_BYTES = 1_000_000
NODE_RETRY_MAX_SECONDS = 30.0  # between steps that failed on the node, after RpcClient's own retries
BALANCE_OF = "0x70a08231"  # balanceOf(address)
_HEX_WORD = re.compile(r"0x[0-9a-fA-F]{64}")


class DeepReorg(Exception):
    """The fork point is older than every kept hash."""


@dataclass
class Position:
    """Where ingestion stands: the next block to publish and the hashes already published."""

    next_block: int
    recent: list[tuple[int, str]] = field(default_factory=list)  # (number, hash), oldest first
    replaces: dict[int, str] = field(default_factory=dict)  # height -> orphaned hash, after a reorg

    def checkpoint(self, chain_id: int) -> bytes:
        number, block_hash = self.recent[-1]
        return orjson.dumps({
            "chain_id": chain_id, "number": number, "hash": block_hash,
            "recent": self.recent, "written_at": time.time(),
        })

    @classmethod
    def from_checkpoint(cls, raw: bytes) -> Position:
        value = orjson.loads(raw)
        recent = [(int(n), str(h)) for n, h in value["recent"]]
        return cls(next_block=int(value["number"]) + 1, recent=recent)


def to_message(tx: dict, block: dict, receipt: dict, balances: dict | None = None) -> dict:
    """The documented input schema: the node's transaction plus block time, receipt fields and
    the token balance its transfer left (`balances`, by transaction hash: `fetch_token_balances`)."""
    msg = dict(tx)
    msg["from"] = tx["from"].lower()
    if tx.get("to"):
        msg["to"] = tx["to"].lower()
    msg["blockTimestamp"] = block["timestamp"]
    msg["gasUsed"] = receipt["gasUsed"]
    if receipt.get("status") is not None:  # pre-Byzantium receipts have a root instead
        msg["status"] = receipt["status"]
    contract = receipt.get("contractAddress")
    msg["contractAddress"] = contract.lower() if contract else None
    balance = (balances or {}).get(tx["hash"])
    if balance is not None:
        msg["ownerTokenBalance"] = balance
    return msg


def uint256(result) -> str | None:
    """An eth_call's answer as a hex quantity if it is one 32-byte word (a balanceOf's uint256), else None."""
    if isinstance(result, str) and len(result) == 66 and _HEX_WORD.fullmatch(result):
        return hex(int(result, 16))
    return None


def balance_read(tx: dict, block: dict, receipt: dict) -> tuple[str, str, str] | None:
    """(block number, token, owner) of a successful token transfer, whose balance the ingester reads."""
    if receipt.get("status") == "0x0" or not tx.get("to"):
        return None
    try:
        call = decode_call(tx["to"].lower(), int(tx.get("value") or "0x0", 16), tx.get("input") or "0x")
    except (TypeError, ValueError):
        return None
    if call.kind != "token_transfer" or call.token is None:
        return None
    return block["number"], call.token, call.owner or tx["from"].lower()


def encode_message(msg: dict) -> bytes:
    """The message as published. Calldata that would not fit the topic (a creation's init code
    or a rollup batch can reach 1.8 MB: 30M gas at 16 per byte, twice that in hex) is cut to fit,
    the selector and hundreds of KB kept, and `inputTruncatedFrom` gives its length in bytes:
    one such transaction put the ingester in a crash loop on its block."""
    value = orjson.dumps(msg)
    if len(value) <= MAX_MESSAGE_BYTES:
        return value
    data = msg.get("input") or "0x"
    keep = max(2, len(data) - (len(value) - MAX_MESSAGE_BYTES) - 64) & ~1  # whole bytes after "0x"
    INGEST_INPUTS_TRUNCATED.inc()
    return orjson.dumps({**msg, "input": data[:keep], "inputTruncatedFrom": (len(data) - 2) // 2})


class Ingester:
    def __init__(self, settings: Settings, rpc: RpcClient):
        self.settings = settings
        self.rpc = rpc
        self.depth = settings.ingest_confirmations
        self.topic = settings.kafka_input_topic
        self.checkpoint_topic = settings.ingest_checkpoint_topic or f"{self.topic}-ingest-checkpoint"
        self.block_receipts: bool | None = None  # None: not probed yet
        self.receipt_slots = asyncio.Semaphore(settings.ingest_rpc_concurrency)
        self.stopping = asyncio.Event()
        self.producer = None
        self.chain_id = 0

    # ----------------------------------------------------------------- Kafka

    async def start_kafka(self) -> None:
        from aiokafka import AIOKafkaProducer

        from ..stream.kafka import client_options

        await self._create_topics()
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, **client_options(self.settings),
            # Stable per deployment and chain: a restarted ingester fences its dead
            # predecessor and aborts the transaction it left open.
            transactional_id=f"{self.settings.app_id}-ingest-{self.topic}-{self.chain_id}",
            enable_idempotence=True, acks="all",
            linger_ms=self.settings.kafka_producer_linger_ms, max_batch_size=256 * 1024,
        )
        await self.producer.start()

    async def _create_topics(self) -> None:
        from ..stream.kafka import client_options
        from ..stream.topics import admin_client, create_topic, ensure_topics

        await ensure_topics(self.settings)  # the input topic, with the configured partition count
        async with admin_client(self.settings.kafka_bootstrap_servers, **client_options(self.settings)) as admin:
            await create_topic(admin, self.checkpoint_topic, 1, self.settings.kafka_topic_replication_factor,
                               configs={"cleanup.policy": "compact"})

    async def read_checkpoint(self) -> Position | None:
        """The last committed checkpoint for this chain (read_committed, to the stable end)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from ..stream.kafka import client_options

        tp = TopicPartition(self.checkpoint_topic, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, **client_options(self.settings),
            enable_auto_commit=False, isolation_level="read_committed",
        )
        await consumer.start()
        last = None
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            key = str(self.chain_id).encode()
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.key == key:
                        last = record.value
        finally:
            await consumer.stop()
        return Position.from_checkpoint(last) if last else None

    async def publish(self, pos: Position, blocks: list[dict], receipts: list[list[dict]],
                      balances: dict | None = None) -> None:
        """One Kafka transaction: every transaction of the blocks, then the checkpoint."""
        sent = 0
        async with self.producer.transaction():
            for block, block_receipts in zip(blocks, receipts):
                number = int(block["number"], 16)
                orphan = pos.replaces.get(number)
                headers = [("eth-reorg-replaces", orphan.encode())] if orphan else None
                for tx, receipt in zip(block["transactions"], block_receipts):
                    msg = to_message(tx, block, receipt, balances)
                    await self.producer.send(self.topic, encode_message(msg), key=msg["from"].encode(),
                                             headers=headers)  # fmt: skip
                    sent += 1
                pos.recent.append((number, block["hash"]))
            del pos.recent[:-KEEP_HASHES]
            await self.producer.send(self.checkpoint_topic, pos.checkpoint(self.chain_id),
                                     key=str(self.chain_id).encode())  # fmt: skip
        pos.next_block = pos.recent[-1][0] + 1
        for number, _ in pos.recent[-len(blocks):]:
            pos.replaces.pop(number, None)
        INGEST_BLOCKS_PUBLISHED.inc(len(blocks))
        INGEST_TRANSACTIONS_PUBLISHED.inc(sent)

    # ----------------------------------------------------------------- chain

    async def head(self) -> int:
        return int(await self.rpc.call("eth_blockNumber", []), 16)

    async def fetch_blocks(self, first: int, last: int) -> list[dict]:
        numbers = list(range(first, last + 1))
        blocks = await self.rpc.batch("eth_getBlockByNumber", [[hex(n), True] for n in numbers])
        # A node behind a load balancer (or a chain that just shrank) may not have them all yet.
        linked = []
        for n, block in zip(numbers, blocks):
            if block is None or int(block["number"], 16) != n:
                break
            if linked and block["parentHash"] != linked[-1]["hash"]:
                break  # the head moved under the batch: the rest comes next round
            linked.append(block)
        return linked

    async def fetch_receipts(self, blocks: list[dict]) -> list[list[dict]] | None:
        """Receipts per block, in transaction order; None if they do not match the blocks (reorg)."""
        with_txs = [b for b in blocks if b["transactions"]]
        by_hash: dict[str, list[dict]] = {}
        if with_txs and self.block_receipts is not False:
            try:
                results = await self.rpc.batch("eth_getBlockReceipts", [[b["hash"]] for b in with_txs])
                self.block_receipts = True
                for block, receipts in zip(with_txs, results):
                    by_hash[block["hash"]] = receipts or []
            except RpcError as exc:
                if not exc.method_missing:
                    raise
                self.block_receipts = False
                log.info("block_receipts_unsupported", fallback="eth_getTransactionReceipt")
        if with_txs and self.block_receipts is False:
            hashes = [tx["hash"] for b in with_txs for tx in b["transactions"]]
            chunks = [hashes[i:i + RECEIPT_CHUNK] for i in range(0, len(hashes), RECEIPT_CHUNK)]

            async def chunk_receipts(chunk):
                async with self.receipt_slots:
                    return await self.rpc.batch("eth_getTransactionReceipt", [[h] for h in chunk])

            results = [r for part in await asyncio.gather(*map(chunk_receipts, chunks)) for r in part]
            flat = iter(results)
            for block in with_txs:
                by_hash[block["hash"]] = [next(flat) for _ in block["transactions"]]
        out = []
        for block in blocks:
            receipts = by_hash.get(block["hash"], [])
            if len(receipts) != len(block["transactions"]) or any(
                r is None or r["blockHash"] != block["hash"] or r["transactionHash"] != tx["hash"]
                for r, tx in zip(receipts, block["transactions"])
            ):
                return None
            out.append(receipts)
        return out

    async def fetch_token_balances(self, blocks: list[dict], receipts: list[list[dict]]) -> dict:
        """Transaction hash -> the balance as hex, for every token transfer of the blocks; best effort."""
        wanted = {tx["hash"]: key for block, block_receipts in zip(blocks, receipts)
                  for tx, receipt in zip(block["transactions"], block_receipts)
                  if (key := balance_read(tx, block, receipt)) is not None}
        reads = sorted(set(wanted.values()))
        calls = [("eth_call", [{"to": token, "data": BALANCE_OF + owner[2:].rjust(64, "0")}, number])
                 for number, token, owner in reads]
        chunks = [calls[i:i + RECEIPT_CHUNK] for i in range(0, len(calls), RECEIPT_CHUNK)]

        async def chunk_balances(chunk):
            async with self.receipt_slots:
                return await self.rpc.batch_calls(chunk, errors_as_none=True)

        try:
            results = [r for part in await asyncio.gather(*map(chunk_balances, chunks)) for r in part]
        except (RpcError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            INGEST_TOKEN_BALANCES.labels("failed").inc(len(reads))
            log.warning("token_balances_not_read", error=describe(exc), transfers=len(reads))
            return {}
        balances = {key: balance for key, result in zip(reads, results) if (balance := uint256(result)) is not None}
        INGEST_TOKEN_BALANCES.labels("read").inc(len(balances))
        INGEST_TOKEN_BALANCES.labels("unreadable").inc(len(reads) - len(balances))
        return {tx_hash: balances[key] for tx_hash, key in wanted.items() if key in balances}

    async def find_fork_point(self, pos: Position) -> int:
        """Newest kept block still canonical; drops the orphaned ones from `pos`."""
        numbers = [n for n, _ in pos.recent]
        canonical = await self.rpc.batch("eth_getBlockByNumber", [[hex(n), False] for n in numbers])
        for i in range(len(numbers) - 1, -1, -1):
            block = canonical[i]
            if block is not None and block["hash"] == pos.recent[i][1]:
                orphaned = pos.recent[i + 1:]
                pos.recent = pos.recent[:i + 1]
                pos.replaces.update(orphaned)
                pos.next_block = numbers[i] + 1
                INGEST_ORPHANED_BLOCKS.inc(len(orphaned))
                log.error("reorg_past_confirmations", confirmations=self.depth, fork_point=numbers[i],
                          orphaned=orphaned, republish_from=pos.next_block)  # fmt: skip
                return numbers[i]
        raise DeepReorg(f"no kept block hash (blocks {numbers[0]}..{numbers[-1]}) is canonical any more")

    # ----------------------------------------------------------------- loop

    async def start_position(self, from_block: int | None) -> Position:
        if from_block is not None:
            log.info("ingest_start", next_block=from_block, reason="--from-block (the checkpoint is ignored)")
            return await self.fresh_position(from_block)
        pos = await self.read_checkpoint()
        if pos:
            log.info("ingest_start", next_block=pos.next_block, reason="checkpoint",
                     checkpoint_block=pos.recent[-1][0], checkpoint_hash=pos.recent[-1][1])
            return pos
        start = max(await self.head() - self.depth, 0)
        log.info("ingest_start", next_block=start, reason="no checkpoint: the confirmed head", chain_id=self.chain_id)
        return await self.fresh_position(start)

    async def fresh_position(self, start: int) -> Position:
        """Start at `start`, knowing its parent's hash so a reorg back to the parent has a fork point."""
        pos = Position(next_block=start)
        if start > 0:
            parent = await self.rpc.call("eth_getBlockByNumber", [hex(start - 1), False])
            if parent:
                pos.recent.append((start - 1, parent["hash"]))
        return pos

    async def run(self, from_block: int | None = None, to_block: int | None = None) -> int:
        self.chain_id = int(await self.rpc.call("eth_chainId", []), 16)
        await self.start_kafka()
        try:
            pos = await self.start_position(from_block)
            log.info("ingesting", chain_id=self.chain_id, topic=self.topic, checkpoint_topic=self.checkpoint_topic,
                     confirmations=self.depth)  # fmt: skip
            failures = 0
            while not self.stopping.is_set():
                if to_block is not None and pos.next_block > to_block:
                    log.info("ingest_to_block_reached", to_block=to_block)
                    break
                try:
                    progressed = await self.step(pos, to_block)
                    failures = 0
                except (RpcError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    # The node is down or answers garbage: RpcClient retried; wait and try the
                    # same blocks again rather than exit into a restart loop.
                    failures += 1
                    delay = min(NODE_RETRY_MAX_SECONDS, self.settings.ingest_poll_interval_seconds * 2 ** failures)
                    log.warning("ingest_step_failed", error=describe(exc), next_block=pos.next_block,
                                retry_in_seconds=delay)
                    await self._sleep(delay)
                    continue
                if not progressed:
                    await self._sleep(self.settings.ingest_poll_interval_seconds)
        except DeepReorg as exc:
            log.error("ingest_stopped", error=str(exc), hint="restart with --from-block after checking the chain")
            return EXIT_DEEP_REORG
        finally:
            await self.producer.stop()
        return 0

    async def step(self, pos: Position, to_block: int | None) -> bool:
        """Publish the next batch if one is confirmed; False when there was nothing to do."""
        head = await self.head()
        ETH_BLOCKS_BEHIND_HEAD.set(max(head - (pos.next_block - 1), 0))
        target = head - self.depth
        if to_block is not None:
            target = min(target, to_block)
        if pos.next_block > target:
            return False
        last = min(target, pos.next_block + self.settings.ingest_batch_blocks - 1)
        blocks = await self.fetch_blocks(pos.next_block, last)
        if not blocks:
            return False
        parent = pos.recent[-1] if pos.recent else None
        if parent and parent[0] == pos.next_block - 1 and blocks[0]["parentHash"] != parent[1]:
            INGEST_REORGS.inc()
            await self.find_fork_point(pos)
            return True  # nothing of this batch is published; the next step starts at the fork
        receipts = await self.fetch_receipts(blocks)
        if receipts is None:
            log.warning("receipts_mismatch_refetching", first_block=pos.next_block, last_block=last)
            return False
        await self.publish(pos, blocks, receipts, await self.fetch_token_balances(blocks, receipts))
        ETH_BLOCKS_BEHIND_HEAD.set(max(head - (pos.next_block - 1), 0))
        log.debug("blocks_published", first_block=int(blocks[0]["number"], 16), last_block=pos.next_block - 1)
        return True

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass


async def run_ingest(settings: Settings, from_block: int | None, to_block: int | None) -> int:
    rpc = RpcClient(settings.eth_rpc_url, settings.eth_rpc_timeout_seconds, settings.eth_rpc_max_attempts)
    ingester = Ingester(settings, rpc)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ingester.stopping.set)
    try:
        return await ingester.run(from_block, to_block)
    finally:
        await rpc.close()


def main(settings: Settings, args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="anomaly-stream ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-block", type=int, default=None,
                        help="start here, ignoring the checkpoint (backfill)")
    parser.add_argument("--to-block", type=int, default=None, help="stop after publishing this block")
    opts = parser.parse_args(args)
    if opts.from_block is not None and opts.from_block < 0:
        parser.error("--from-block must be >= 0")
    if settings.ingest_metrics_port:
        start_http_server(settings.ingest_metrics_port, addr=settings.web_host)
    return asyncio.run(run_ingest(settings, opts.from_block, opts.to_block))
