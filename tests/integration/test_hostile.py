"""Hostile input against a real worker, broker and Redis: nothing lost, nothing wiped, no 5xx, alive.

What an attacker who can reach the input topic, a changelog or the HTTP port
would try (issue 12): forged and corrupt model checkpoints, blocks from the
far future and the far past, deep JSON with huge integers, a producer that
partitions by CRC32 (librdkafka's default) instead of murmur2, a client that
claims to be a replica, writes without the key, a replica that dies while a
listing asks it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import zlib

import orjson
import pytest

from anomaly_stream.stream.worker import kafka_partition
from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

from ..support import consume_all, deployment_env, keyed, produce, run, wait_balanced
from .test_feedback import post

pytestmark = pytest.mark.integration
PARTITIONS = 4


READ = {"Authorization": "Bearer read-secret"}


def get(worker, path: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(worker.url(path), headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def shifted(tx: dict, **fields) -> tuple[bytes, bytes]:
    return tx["from"].encode(), orjson.dumps({**tx, "hash": "0x" + "%064x" % (int(tx["hash"], 16) ^ 1), **fields})


def test_hostile_input_is_dead_lettered_or_set_right_and_nothing_is_wiped(workers):
    env = deployment_env(api_peer_key="peer-secret", api_read_key="read-secret", api_write_key="write-secret",
                         model_checkpoint_key="ckpt-secret", address_state_ttl_seconds=3600)
    # Checkpoints someone else wrote, for partitions 0 and 1: garbage in the format's clothes, a pickle.
    changelog = f"{env['APP_ID']}-model-checkpoints-changelog"
    forged = [(b"0", b"APMC\x00\x03garbage", 0), (b"1", b"\x80\x04\x95cos\nsystem\n", 1)]
    run(produce(changelog, forged, create_partitions=PARTITIONS))
    worker = workers(env)
    worker.wait_ready()

    normal = TrafficGenerator(GeneratorConfig(seed=51, scenario_rates={})).take(4000)
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(normal[:3000])))
    worker.wait_metric("transactions_processed_total", 3000)
    early = list(dict.fromkeys(tx["from"] for tx in normal[:300]))[:20]

    # A producer whose partitioner is CRC32: each of these senders lands off its murmur2 partition.
    misplaced = [tx for tx in normal[3000:] if zlib.crc32(tx["from"].encode()) % PARTITIONS
                 != kafka_partition(tx["from"].encode(), PARTITIONS)][:200]
    crc = [(tx["from"].encode(), orjson.dumps(tx), zlib.crc32(tx["from"].encode()) % PARTITIONS) for tx in misplaced]
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    big = orjson.dumps({**normal[0], "hash": "0x" + "ee" * 32}).replace(b'"value":"', b'"value":' + b"9" * 5000 + b',"v":"')
    hostile = [
        shifted(normal[1], blockTimestamp=hex(4_102_444_000)),  # 2100: would move the watermark
        shifted(normal[2], blockTimestamp=hex(1_000_000_000)),  # 2001: before Ethereum
        (b"deep", deep), (b"big", big),
    ]
    run(produce(env["KAFKA_INPUT_TOPIC"], hostile + crc))
    m = worker.wait_metric("transactions_rekeyed_total", len(crc))
    worker.wait_metric("transactions_processed_total", 3000 + len(crc))
    m = worker.metrics()
    dead = {k: v for k, v in m.items() if k.startswith("transactions_dead_lettered_total{")}
    assert sum(dead.values()) == len(hostile), dead
    assert dead.get("transactions_dead_lettered_total{reason=out_of_range}") == 2
    assert m["model_checkpoints_rejected_total{reason=forged}"] == 2, "both, and the worker lives"
    dlq = run(consume_all(f"{env['KAFKA_INPUT_TOPIC']}-dlq", expect=len(hostile)))
    assert len(dlq) == len(hostile) and all(dict(r.headers)["dlq-reason"] for r in dlq)

    # Nothing wiped: sweeps ran after the block from 2100; the early senders are all still known,
    # and the misplaced ones were scored in their home partitions.
    time.sleep(3 * float(env["STATE_SWEEP_INTERVAL_SECONDS"]))
    for sender in early + [tx["from"] for tx in misplaced[:20]]:
        status, _ = get(worker, f"/api/v1/addresses/{sender}", READ)
        assert status == 200, sender

    # HTTP: no read key, a wrong one, a forged hop header, a write without the key; never a 5xx.
    assert get(worker, "/api/v1/anomalies")[0] == 401
    assert get(worker, "/api/v1/anomalies", {"Authorization": "Bearer write-secre"})[0] == 401
    status, body = get(worker, "/api/v1/anomalies", {**READ, "X-Anomaly-Stream-Hop": "1"})
    assert status == 401 and "Hop" in body["error"], "an unsigned hop header is not believed"
    assert get(worker, "/api/v1/anomalies", READ)[0] == 200
    assert post(worker, f"/api/v1/anomalies/0x{'ab' * 32}/feedback", b'{"verdict": "false_positive"}', key=None)[0] == 401
    m = worker.metrics()
    # (Readiness answers 503 while the worker starts: that is its job, not an error.)
    assert not {k: v for k, v in m.items() if k.startswith("http_requests_total{") and ",status=5" in k
                and "route=/api/v1" in k}
    assert worker.proc.poll() is None


def test_a_listing_answers_without_a_dead_replica_and_says_what_is_missing(workers):
    env = deployment_env(kafka_session_timeout_seconds=30, kafka_heartbeat_interval_seconds=1,
                         api_read_key="read-secret", api_peer_key="peer-secret")
    a, b = workers(env), workers(env)
    a.wait_ready()
    b.wait_ready()
    wait_balanced([a, b])
    status, listing = get(a, "/api/v1/anomalies", READ)
    assert status == 200 and listing["partial"] is False, "the replicas let each other in"
    b_partitions = orjson.loads(b.get("/health")[1])["kafka"]["assigned_partitions"]
    b.kill()  # the group still lists it until its session times out
    started = time.monotonic()
    status, listing = get(a, "/api/v1/anomalies", READ)
    elapsed = time.monotonic() - started
    assert status == 200 and listing["partial"] is True
    assert listing["missing_partitions"] == sorted(b_partitions) and elapsed < 7, (listing, elapsed)
