"""The HTTP API on real workers, a real broker and real Redis servers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

from ..support import (deployment_env, free_port, keyed, produce, run, wait_balanced, wait_edges_settled,
                       wait_processed)

pytestmark = pytest.mark.integration


def json_get(worker, path: str) -> tuple[int, dict]:
    status, body = worker.get(path)
    return status, orjson.loads(body)


def feed(env, worker, n: int = 8000, seed: int = 4) -> list[dict]:
    txs = TrafficGenerator(GeneratorConfig(seed=seed)).take(n)
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(txs)))
    worker.wait_metric("transactions_processed_total", n)
    wait_edges_settled([worker])
    return txs


@pytest.fixture
def private_redis(tmp_path):
    """A Redis server of the test's own, so it can be killed without disturbing others."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp_path)]

    class Server:
        url = f"redis://127.0.0.1:{port}/0"
        proc = None

        def start(self):
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

        def kill(self):
            self.proc.kill()
            self.proc.wait()

    server = Server()
    server.start()
    yield server
    if server.proc.poll() is None:
        server.kill()


def test_readiness_follows_recovery_and_liveness_does_not(workers):
    env = deployment_env()
    first = workers(env)
    first.wait_ready()
    feed(env, first, 6000)
    first.kill()

    second = workers(env)
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            live = second.get("/health/live", timeout=1)[0]
            status, body = json_get(second, "/health/ready")
        except OSError:
            continue  # the web server is not listening yet
        assert live == 200
        seen.append((status, body.get("reason")))
        if status == 200:
            break
        time.sleep(0.05)
    assert seen[-1][0] == 200
    not_ready = [reason for status, reason in seen if status == 503]
    assert not_ready, "readiness must be 503 until the tables are recovered and partitions assigned"
    assert all(reason for reason in not_ready)
    # Recovered state is served: the profiles written by the killed worker.
    second.wait_metric("state_bounds_rebuilds_total", 1)
    status, health = json_get(second, "/health")
    assert status == 200 and health["address_profiles"] > 0


def test_metrics_exposition(workers):
    env = deployment_env(target_flag_rate=0.02, model_warmup_events=300)
    worker = workers(env)
    worker.wait_ready()
    txs = feed(env, worker)
    worker.get(f"/api/v1/addresses/{txs[0]['from']}")
    time.sleep(1.5)  # one bounds sweep sets the buffer gauge
    _, body = worker.get("/api/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in ("anomaly_buffer_size", "redis_cache_hit_rate", "kafka_consumer_lag", "http_requests",
                 "transactions_consumed", "transactions_processed", "transactions_dead_lettered",
                 "anomalies_published", "batch_processing_seconds", "anomaly_score",
                 "model_checkpoint_age_seconds"):
        assert name in families, name
    lag = {s.labels["partition"]: s.value for s in families["kafka_consumer_lag"].samples}
    assert set(lag) == {"0", "1", "2", "3"} and all(v >= 0 for v in lag.values())
    requests = [s for s in families["http_requests"].samples if s.name == "http_requests_total"]
    assert any(s.labels["route"] == "/api/v1/addresses/{address}" and s.labels["status"] == "200"
               for s in requests)
    assert 0 < families["anomaly_buffer_size"].samples[0].value <= 10_000


def test_any_replica_answers_any_query(workers):
    env = deployment_env(target_flag_rate=0.02, model_warmup_events=300, redis_url="redis://127.0.0.1:1/0")
    a = workers(env)
    a.wait_ready()
    b = workers(env)
    b.wait_ready()
    wait_balanced([a, b])
    txs = TrafficGenerator(GeneratorConfig(seed=8)).take(10_000)
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(txs)))
    wait_processed([a, b], len(txs))
    wait_edges_settled([a, b])
    owned = set(json_get(a, "/health")[1]["kafka"]["assigned_partitions"])
    assert owned and owned != {0, 1, 2, 3}, "the test needs partitions on both workers"

    senders = list(dict.fromkeys(tx["from"] for tx in txs[-400:]))[:40]
    partitions = set()
    for sender in senders:
        status_a, body_a = json_get(a, f"/api/v1/addresses/{sender.upper().replace('0X', '0x')}")
        status_b, body_b = json_get(b, f"/api/v1/addresses/{sender}")
        assert status_a == status_b == 200
        assert body_a["profile"] == body_b["profile"]
        partitions.add(body_a["partition"])
    assert partitions & owned and partitions - owned, "addresses owned by both workers were asked"

    listed_a, listed_b = all_pages(a, 500), all_pages(b, 500)
    assert listed_a and listed_a == listed_b
    # Each replica lists its active partitions only, not the standby copies it also holds.
    keys = [(d["tx_hash"], d["perspective"], d["address"]) for d in listed_a]
    assert len(keys) == len(set(keys)), "an anomaly listed twice"
    assert {d["source"]["partition"] for d in listed_a} == {0, 1, 2, 3}
    for document in listed_a[:10]:
        for worker in (a, b):
            status, found = json_get(worker, f"/api/v1/anomalies/{document['tx_hash']}")
            assert status == 200 and found["tx_hash"] == document["tx_hash"]
    stats = json_get(a, "/api/v1/stats")[1]
    assert stats["partitions_served"] == [0, 1, 2, 3] and stats["processed_total"] == len(txs)


def all_pages(worker, limit: int) -> list[dict]:
    """Every buffered anomaly, following next_cursor from the first page."""
    items, cursor = [], None
    while True:
        _, page = json_get(worker, f"/api/v1/anomalies?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_pagination_is_stable_and_filters_apply(workers):
    env = deployment_env(target_flag_rate=0.01, model_warmup_events=300)
    worker = workers(env)
    worker.wait_ready()
    feed(env, worker)
    everything = all_pages(worker, 500)
    pages = all_pages(worker, 7)
    assert len(everything) > 7
    assert [d["tx_hash"] for d in pages] == [d["tx_hash"] for d in everything]
    top = everything[0]
    _, by_address = json_get(worker, f"/api/v1/anomalies?address={top['address']}")
    assert by_address["items"] and all(d["address"] == top["address"] for d in by_address["items"])
    cut = sorted(d["score"] for d in everything)[len(everything) // 2]
    _, high = json_get(worker, f"/api/v1/anomalies?min_score={cut}&limit=500")
    assert high["items"] and all(d["score"] >= cut for d in high["items"])


@pytest.mark.parametrize("path,status", [
    ("/api/v1/addresses/0x12", 400),
    ("/api/v1/addresses/0x" + "g" * 40, 400),
    ("/api/v1/addresses/%0a0x" + "1" * 40, 400),
    ("/api/v1/addresses/0x" + "1" * 40, 404),
    ("/api/v1/anomalies/0x" + "1" * 63, 400),
    ("/api/v1/anomalies/0x" + "1" * 64, 404),
    ("/api/v1/anomalies?limit=0", 400),
    ("/api/v1/anomalies?limit=501", 400),
    ("/api/v1/anomalies?limit=1.5", 400),
    ("/api/v1/anomalies?min_score=nan", 400),
    ("/api/v1/anomalies?min_score=2", 400),
    ("/api/v1/anomalies?since=-1", 400),
    ("/api/v1/anomalies?cursor=abc", 400),
    ("/api/v1/anomalies?address=xyz", 400),
    ("/api/v2/anomalies", 404),
    # Faust's own table and router pages are off: they would serve table contents unauthenticated.
    ("/table/profiles/", 404),
    ("/router/", 404),
])
def test_bad_parameters_get_json_errors(workers, env, path, status):
    worker = workers(env)
    worker.wait_ready()
    got, body = worker.get(path)
    assert got == status
    assert "error" in orjson.loads(body)


def test_redis_outage_and_recovery(workers, private_redis):
    env = deployment_env(redis_url=private_redis.url, redis_cache_ttl_seconds=60)
    worker = workers(env)
    worker.wait_ready()
    txs = feed(env, worker, 4000)
    senders = list(dict.fromkeys(tx["from"] for tx in txs))[:20]
    for sender in senders * 2:
        assert worker.get(f"/api/v1/addresses/{sender}")[0] == 200
    m = worker.metrics()
    assert m["redis_cache_requests_total{result=hit}"] >= len(senders)
    assert m.get("redis_cache_errors_total{operation=get}", 0) == 0

    private_redis.kill()
    started = time.monotonic()
    for sender in senders:
        assert worker.get(f"/api/v1/addresses/{sender}")[0] == 200  # from the tables
    assert time.monotonic() - started < 5, "an outage must not cost every request a timeout"
    assert worker.get("/health/ready")[0] == 200
    _, health = json_get(worker, "/health")
    assert health["redis"]["reachable"] is False
    errors = sum(v for k, v in worker.metrics().items() if k.startswith("redis_cache_errors_total{"))
    assert errors >= 1
    more = TrafficGenerator(GeneratorConfig(seed=5)).take(2000)
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(more)))
    worker.wait_metric("transactions_processed_total", len(txs) + len(more))  # the stream never stalls

    private_redis.start()
    time.sleep(2.5)  # the cool-down after the last error
    hits_before = worker.metrics()["redis_cache_requests_total{result=hit}"]
    for sender in senders * 2:
        assert worker.get(f"/api/v1/addresses/{sender}")[0] == 200
    assert worker.metrics()["redis_cache_requests_total{result=hit}"] >= hits_before + len(senders)


def test_api_survives_schemathesis(workers, env):
    worker = workers(env)
    worker.wait_ready()
    feed(env, worker, 3000)
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "run", worker.url("/api/v1/openapi.json"), "--checks", "not_a_server_error",
         "--max-examples", "40", "--request-timeout", "10", "--generation-deterministic"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
