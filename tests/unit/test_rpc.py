"""`RpcClient` batches against a fake provider: one batch path for one method or many."""

from __future__ import annotations

import pytest

from anomaly_stream.chain.rpc import RpcClient, RpcError
from anomaly_stream.metrics import ETH_RPC_LATENCY


class FakeProvider:
    def __init__(self, answer=None):
        self.answer = answer
        self.batches = []

    async def make_batch_request(self, calls):
        self.batches.append(list(calls))
        if self.answer is not None:
            return self.answer
        return [{"jsonrpc": "2.0", "id": i, "result": f"{method}:{params[0]}"}
                for i, (method, params) in enumerate(calls)]

    async def disconnect(self):
        pass


def client(provider: FakeProvider) -> RpcClient:
    rpc = RpcClient("http://127.0.0.1:1", timeout=1.0, max_attempts=1)
    rpc.provider = provider
    return rpc


def count(label: str) -> float:
    for metric in ETH_RPC_LATENCY.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("method") == label:
                return sample.value
    return 0.0


async def test_batch_is_batch_calls_over_one_method():
    provider = FakeProvider()
    rpc = client(provider)
    before = count("batch:eth_getCode")
    assert await rpc.batch("eth_getCode", [["0xa"], ["0xb"]]) == ["eth_getCode:0xa", "eth_getCode:0xb"]
    assert provider.batches == [[("eth_getCode", ["0xa"]), ("eth_getCode", ["0xb"])]]
    assert count("batch:eth_getCode") == before + 1


async def test_mixed_methods_count_as_batch():
    rpc = client(FakeProvider())
    before = count("batch")
    calls = [("eth_getBalance", ["0xa", "latest"]), ("eth_getCode", ["0xa", "latest"])]
    assert await rpc.batch_calls(calls) == ["eth_getBalance:0xa", "eth_getCode:0xa"]
    assert count("batch") == before + 1


async def test_an_empty_batch_asks_nothing():
    provider = FakeProvider()
    assert await client(provider).batch("eth_getCode", []) == []
    assert await client(provider).batch_calls([]) == []
    assert provider.batches == []


@pytest.mark.parametrize("answer, message", [
    ({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch too large"}}, "batch too large"),
    ([{"jsonrpc": "2.0", "id": 0, "result": "0x1"}], "1 answers to 2 requests"),
    ([{"id": 0, "result": "0x1"}, {"id": 1, "error": {"code": -32601, "message": "nope"}}], "nope"),
])
async def test_a_bad_batch_answer_is_an_rpc_error(answer, message):
    with pytest.raises(RpcError, match=message) as raised:
        await client(FakeProvider(answer)).batch("eth_getCode", [["0xa"], ["0xb"]])
    assert raised.value.method == "eth_getCode"


async def test_a_retry_log_names_the_error_not_the_url_and_its_key(monkeypatch):
    from aiohttp import web

    from anomaly_stream.chain import rpc as rpc_module

    logged = []

    class Log:  # whatever structlog's configuration in this session, see what is logged
        def warning(self, event, **fields):
            logged.append((event, fields))

    monkeypatch.setattr(rpc_module, "log", Log())

    async def refuse(request):
        return web.Response(status=503)

    server = web.Application()
    server.router.add_post("/v3/{key}", refuse)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    rpc = RpcClient(f"http://127.0.0.1:{port}/v3/s3cr3t-api-key", timeout=1.0, max_attempts=2)
    try:
        with pytest.raises(Exception):
            await rpc.call("eth_blockNumber", [])
    finally:
        await rpc.close()
        await runner.cleanup()
    assert [event for event, _ in logged] == ["rpc_retry"] and logged[0][1]["error"] == "ClientResponseError: HTTP 503"
    assert "s3cr3t" not in repr(logged)
