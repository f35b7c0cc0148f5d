"""`anomaly-stream ingest` against a real ganache node, with real Kafka transactions.

The stack's ganache (STACK_ETH_PORT) is shared with other tests, so these tests
only assert on their own transactions and on block ranges they read back from
the chain. The reorg test reverts the chain, so it runs its own private ganache
(the stack's pinned install) instead of disturbing the shared one.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from web3 import HTTPProvider, Web3

from anomaly_stream.detect.schema import validate

from ..support import REPO, consume_all, free_port, run, deployment_env

pytestmark = pytest.mark.integration

ETH_URL = f"http://127.0.0.1:{os.environ.get('STACK_ETH_PORT', '18545')}"
REVERTING_INIT_CODE = "0x60006000fd"  # PUSH1 0 PUSH1 0 REVERT: a creation that fails (status 0)
RETURNING_INIT_CODE = "0x600a600c600039600a6000f3602a60005260206000f3"  # deploys a 10-byte contract
# that answers every call with the word 42 (a balanceOf of 42, a transfer that succeeds);
REVERTING_RUNTIME_INIT_CODE = "0x6005600c60003960056000f360006000fd"  # this one reverts every call


class Ingester:
    """One `anomaly-stream ingest` process with its own metrics port."""

    def __init__(self, env: dict[str, str], log_dir: Path, eth_url: str = ETH_URL):
        self.port = free_port()
        self.env = {
            **os.environ, **env, "ETH_RPC_URL": eth_url, "INGEST_METRICS_PORT": str(self.port),
            "WEB_HOST": "127.0.0.1", "INGEST_POLL_INTERVAL_SECONDS": "0.1",
        }
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self, *args: str) -> Ingester:
        self.runs += 1
        self.log_path = self.log_dir / f"ingest-{self.port}-{self.runs}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anomaly_stream", "ingest", *args],
            env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, cwd=REPO,
        )
        return self

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                body = resp.read().decode()
        except OSError:
            return {}
        return {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples
                if not s.labels}  # fmt: skip

    def wait_metric(self, name: str, at_least: float, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"ingester exited {self.proc.returncode}: {tail}")
            value = self.metrics().get(name, 0.0)
            if value >= at_least:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{name} = {value} < {at_least}; see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture
def ingesters(stack, tmp_path):
    started: list[Ingester] = []

    def make(env: dict[str, str], eth_url: str = ETH_URL) -> Ingester:
        ingester = Ingester(env, tmp_path, eth_url)
        started.append(ingester)
        return ingester

    yield make
    for ingester in started:
        ingester.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def w3(stack) -> Web3:
    return Web3(HTTPProvider(ETH_URL))


def ingest_env(**overrides) -> dict[str, str]:
    return deployment_env(**{"ingest_confirmations": 0, "ingest_batch_blocks": 3, **overrides})


def send(w3: Web3, sender: int, to: int | None = 1, value: int = 10**15, data: str | None = None) -> str:
    accounts = w3.eth.accounts
    # Explicit EIP-1559 fees, as a wallet sets them: ganache's own defaults give a 1 gwei tip
    # above maxFeePerGas once the base fee drops below 1 gwei, which the schema rejects.
    tx = {"from": accounts[sender], "value": value, "maxFeePerGas": 5 * 10**9, "maxPriorityFeePerGas": 10**9}
    if to is not None:
        tx["to"] = accounts[to]
    if data is not None:
        tx["data"], tx["gas"] = data, 200_000
    return w3.eth.send_transaction(tx).to_0x_hex()


def chain_txs(w3: Web3, first: int, last: int) -> list[str]:
    return [tx.to_0x_hex() for n in range(first, last + 1)
            for tx in w3.eth.get_block(n)["transactions"]]  # fmt: skip


def messages(topic: str, expect: int | None = None) -> list:
    return run(consume_all(topic, expect=expect, idle=1.5, timeout=30))


def test_ingests_blocks_in_the_documented_schema(ingesters, w3):
    first = w3.eth.block_number + 1
    ours = [send(w3, 2, 3), send(w3, 3, 2, value=0)]
    created = send(w3, 2, None, value=0, data=RETURNING_INIT_CODE)
    failed = send(w3, 3, None, value=0, data=REVERTING_INIT_CODE)
    w3.provider.make_request("miner_stop", [])  # several transactions in one block
    try:
        ours += [send(w3, 4, 5, value=i + 1) for i in range(3)]
        w3.provider.make_request("evm_mine", [])
    finally:
        w3.provider.make_request("miner_start", [])
    last = w3.eth.block_number
    expected = chain_txs(w3, first, last)
    assert set(ours + [created, failed]) <= set(expected)

    env = ingest_env()
    ingester = ingesters(env).start("--from-block", str(first), "--to-block", str(last))
    assert ingester.wait() == 0, ingester.log_path.read_text()[-2000:]
    records = messages(env["KAFKA_INPUT_TOPIC"], expect=len(expected))
    assert sorted(orjson.loads(r.value)["hash"] for r in records) == sorted(expected)
    by_hash = {}
    for record in records:  # the shared chain may hold other tests' transactions too
        obj = orjson.loads(record.value)
        assert record.key == obj["from"].encode() and obj["from"] == obj["from"].lower()
        assert first <= int(obj["blockNumber"], 16) <= last
        by_hash[obj["hash"]] = obj
    for tx_hash in ours + [created, failed]:
        obj = by_hash[tx_hash]
        tx = validate(obj)  # the detector's own validation accepts the message
        assert obj["value"].startswith("0x") and obj["gas"].startswith("0x")
        assert tx.block_timestamp is not None and tx.gas_used is not None and tx.status is not None
    receipt = w3.eth.get_transaction_receipt(created)
    assert by_hash[created]["contractAddress"] == receipt["contractAddress"].lower()
    assert by_hash[created]["status"] == "0x1" and by_hash[failed]["status"] == "0x0"
    assert by_hash[ours[0]]["contractAddress"] is None
    multi = [by_hash[h]["blockNumber"] for h in ours[2:]]
    assert len(set(multi)) == 1  # the three transactions of one block
    assert [by_hash[h]["transactionIndex"] for h in ours[2:]] == ["0x0", "0x1", "0x2"]
    checkpoints = messages(f"{env['KAFKA_INPUT_TOPIC']}-ingest-checkpoint", expect=1)
    cp = orjson.loads(checkpoints[-1].value)
    assert cp["number"] == last and cp["hash"] == w3.eth.get_block(last)["hash"].to_0x_hex()


def test_a_token_transfer_carries_the_balance_its_owner_was_left(ingesters, w3):
    first = w3.eth.block_number + 1
    token, broken = (w3.eth.get_transaction_receipt(send(w3, 2, None, value=0, data=code))["contractAddress"]
                     for code in (RETURNING_INIT_CODE, REVERTING_RUNTIME_INIT_CODE))
    transfer = "0xa9059cbb" + w3.eth.accounts[5][2:].lower().rjust(64, "0") + hex(5)[2:].rjust(64, "0")
    accounts = w3.eth.accounts
    fees = {"from": accounts[3], "value": 0, "maxFeePerGas": 5 * 10**9, "maxPriorityFeePerGas": 10**9,
            "data": transfer, "gas": 100_000}
    paid = w3.eth.send_transaction({**fees, "to": token}).to_0x_hex()
    refused = w3.eth.send_transaction({**fees, "to": broken}).to_0x_hex()
    plain = send(w3, 3, 4)
    last = w3.eth.block_number
    env = ingest_env()
    ingester = ingesters(env).start("--from-block", str(first), "--to-block", str(last))
    assert ingester.wait() == 0, ingester.log_path.read_text()[-2000:]
    by_hash = {orjson.loads(r.value)["hash"]: orjson.loads(r.value)
               for r in messages(env["KAFKA_INPUT_TOPIC"], expect=len(chain_txs(w3, first, last)))}
    assert by_hash[paid]["ownerTokenBalance"] == "0x2a", "balanceOf(sender) at the block: the contract's 42"
    assert validate(by_hash[paid]).owner_token_balance == 42
    assert by_hash[refused]["status"] == "0x0" and "ownerTokenBalance" not in by_hash[refused], "nothing moved"
    assert "ownerTokenBalance" not in by_hash[plain], "no token transfer"


def test_sigkill_and_restart_leave_no_gap_and_no_duplicate(ingesters, w3):
    env = ingest_env(ingest_confirmations=1, ingest_batch_blocks=2)
    first = w3.eth.block_number + 1
    sent: list[str] = []
    done = threading.Event()

    def traffic():
        for i in range(120):
            sent.append(send(w3, 6 + i % 4, 10 + i % 3, value=i + 1))
            time.sleep(0.03)
        done.set()

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    ingester = ingesters(env).start("--from-block", str(first))
    for kill_after in (8, 30):  # two SIGKILLs mid-stream, at different points
        ingester.wait_metric("ingest_blocks_published_total", kill_after)
        ingester.kill()
        ingester.start()  # resumes from the checkpoint
    done.wait(30)
    sender.join()
    w3.provider.make_request("evm_mine", [])  # one more block confirms the last one
    last = w3.eth.block_number - 1
    expected = chain_txs(w3, first, last)
    assert set(sent) <= set(expected)
    records = messages(env["KAFKA_INPUT_TOPIC"], expect=len(expected))
    hashes = [orjson.loads(r.value)["hash"] for r in records]
    duplicates = [h for h, n in collections.Counter(hashes).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} duplicated transactions"
    assert sorted(hashes) == sorted(expected)  # no gap: every transaction of the range, once
    blocks = sorted({int(orjson.loads(r.value)["blockNumber"], 16) for r in records})
    assert blocks[0] == first and blocks[-1] == last


def test_from_block_backfill_then_follow(ingesters, w3):
    first = w3.eth.block_number + 1
    backfilled = [send(w3, 11, 12, value=i + 1) for i in range(4)]
    middle = w3.eth.block_number
    env = ingest_env()
    ingester = ingesters(env).start("--from-block", str(first), "--to-block", str(middle))
    assert ingester.wait() == 0
    followed = [send(w3, 12, 11, value=i + 1) for i in range(3)]
    last = w3.eth.block_number
    ingester.start("--to-block", str(last))  # no --from-block: continues after the checkpoint
    assert ingester.wait() == 0
    expected = chain_txs(w3, first, last)
    assert set(backfilled + followed) <= set(expected)
    hashes = [orjson.loads(r.value)["hash"] for r in messages(env["KAFKA_INPUT_TOPIC"], expect=len(expected))]
    assert sorted(hashes) == sorted(expected)


@pytest.fixture
def private_ganache(stack, tmp_path):
    """A ganache of our own (the stack's install), so reverting the chain disturbs nobody."""
    spec = importlib.util.spec_from_file_location("stack", REPO / "deploy" / "local" / "stack.py")
    stack_module = sys.modules.setdefault("stack", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(stack_module)
    binary = stack_module.Config.from_env().ganache_bin
    port = free_port()
    proc = subprocess.Popen(
        ["node", str(binary), "--server.host", "127.0.0.1", "--server.port", str(port),
         "--wallet.deterministic", "--chain.chainId", "1337", "--logging.quiet"],
        stdout=open(tmp_path / "ganache.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    chain = Web3(HTTPProvider(url))
    deadline = time.monotonic() + 30
    while True:
        try:
            chain.eth.block_number
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)
    yield url, chain
    proc.terminate()
    proc.wait(timeout=10)


def test_reorgs(private_ganache, ingesters):  # ingesters stop before their node
    url, chain = private_ganache
    rpc = chain.provider.make_request

    # 1. Depth 0: published blocks get orphaned. The ingester notices at the first new block
    #    whose parent is not what it published, walks back to the fork point and republishes
    #    the canonical blocks; what it published from the orphaned ones stays.
    fork = chain.eth.block_number
    snapshot = rpc("evm_snapshot", [])["result"]
    orphaned = [send(chain, 1, 2, value=i + 1) for i in range(3)]
    orphaned_hashes = {n: chain.eth.get_block(n)["hash"].to_0x_hex() for n in range(fork + 1, fork + 4)}
    env = ingest_env()
    ingester = ingesters(env, url).start("--from-block", str(fork + 1))
    ingester.wait_metric("ingest_blocks_published_total", 3)
    assert rpc("evm_revert", [snapshot])["result"] is True
    assert chain.eth.block_number == fork
    canonical = [send(chain, 3, 4, value=i + 7) for i in range(4)]  # a longer chain of other txs
    ingester.wait_metric("ingest_reorgs_total", 1)
    ingester.wait_metric("ingest_blocks_published_total", 7)
    records = messages(env["KAFKA_INPUT_TOPIC"], expect=7)
    by_hash = {orjson.loads(r.value)["hash"]: r for r in records}
    assert sorted(by_hash) == sorted(orphaned + canonical) and len(records) == 7
    assert ingester.metrics()["ingest_orphaned_blocks_total"] == 3
    for tx_hash in canonical:
        record = by_hash[tx_hash]
        number = int(orjson.loads(record.value)["blockNumber"], 16)
        assert orjson.loads(record.value)["blockHash"] == chain.eth.get_block(number)["hash"].to_0x_hex()
        headers = dict(record.headers)
        if number in orphaned_hashes:  # replaces a published, orphaned block
            assert headers["eth-reorg-replaces"].decode() == orphaned_hashes[number]
        else:
            assert "eth-reorg-replaces" not in headers
    cp = orjson.loads(messages(f"{env['KAFKA_INPUT_TOPIC']}-ingest-checkpoint")[-1].value)
    assert cp["hash"] == chain.eth.get_block(fork + 4)["hash"].to_0x_hex()
    ingester.kill(signal.SIGTERM)

    # 2. Depth 2: a reorg within the confirmation depth is never visible downstream.
    fork = chain.eth.block_number
    env = ingest_env(ingest_confirmations=2)
    ingester = ingesters(env, url).start("--from-block", str(fork + 1))
    snapshot = rpc("evm_snapshot", [])["result"]
    unconfirmed = [send(chain, 5, 6, value=i + 1) for i in range(2)]
    ingester.wait_metric("eth_blocks_behind_head", 2)  # it has seen the two blocks, published neither
    assert rpc("evm_revert", [snapshot])["result"] is True
    canonical = [send(chain, 7, 8, value=i + 1) for i in range(4)]
    ingester.wait_metric("ingest_blocks_published_total", 2)
    hashes = sorted(orjson.loads(r.value)["hash"] for r in messages(env["KAFKA_INPUT_TOPIC"], expect=2))
    assert hashes == sorted(canonical[:2]) and not set(hashes) & set(unconfirmed)
    assert ingester.metrics().get("ingest_reorgs_total", 0) == 0


async def test_rpc_retries_rate_limits_errors_and_timeouts(stack):
    """A proxy in front of ganache answers 429, then 503, then stalls past the timeout, then forwards."""
    import aiohttp
    from aiohttp import web

    from anomaly_stream.metrics import ETH_RPC_ERRORS
    from anomaly_stream.chain.rpc import RpcClient

    faults = ["429", "503", "stall", "rpc_error"]

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = faults.pop(0) if faults else None
        if fault == "429":
            return web.Response(status=429, headers={"Retry-After": "0"})
        if fault == "503":
            return web.Response(status=503)
        if fault == "stall":
            await asyncio.sleep(2)
        if fault == "rpc_error":
            error = {"code": -32000, "message": "busy"}
            return web.json_response({"jsonrpc": "2.0", "id": 0, "error": error})
        async with aiohttp.ClientSession() as session:
            async with session.post(ETH_URL, data=body, headers={"Content-Type": "application/json"}) as resp:
                return web.Response(body=await resp.read(), content_type="application/json")

    runner = web.AppRunner(web.Application())
    runner.app.router.add_post("/", handle)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    before = {kind: ETH_RPC_ERRORS.labels("eth_blockNumber", kind)._value.get()
              for kind in ("rate_limited", "http_5xx", "timeout", "rpc_error")}  # fmt: skip
    rpc = RpcClient(f"http://127.0.0.1:{port}", timeout=0.5, max_attempts=6)
    try:
        started = time.monotonic()
        head = int(await rpc.call("eth_blockNumber", []), 16)
        assert head >= 0 and not faults and time.monotonic() - started < 5
        for kind, value in before.items():
            assert ETH_RPC_ERRORS.labels("eth_blockNumber", kind)._value.get() == value + 1, kind
        faults.extend(["503"] * 3)  # more failures than attempts: the error surfaces
        rpc.max_attempts = 2
        with pytest.raises(aiohttp.ClientResponseError):
            await rpc.call("eth_blockNumber", [])
    finally:
        await rpc.close()
        await runner.cleanup()
