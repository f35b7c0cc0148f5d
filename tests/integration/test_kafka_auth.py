"""Authenticated Kafka on the real broker: the stack's SCRAM-SHA-512 listener (deploy/local/stack.py).

A worker configured entirely for the SASL listener runs the whole pipeline
through it; a wrong password or no credentials at all get nothing in or out.
The PLAINTEXT listener of the same broker serves as the unauthenticated
observer (offsets, record counts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

from ..support import KAFKA, REPO, SASL_KAFKA, consume_all, create_topic, keyed, produce, run, sasl_env

pytestmark = pytest.mark.integration

LISTED = "0x" + "5a" * 20


async def committed_offsets(group: str) -> dict:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        return await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()


async def record_count(topic: str) -> int:
    """Records in a topic (0 if it does not exist), read without credentials on the PLAINTEXT listener."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return 0
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def test_a_worker_runs_entirely_through_the_scram_listener(workers, env, tmp_path):
    sasl = sasl_env()
    env = {**env, **sasl}
    worker = workers(env)
    worker.wait_ready()
    # The watchlist command through the same listener: a listed recipient is flagged whatever the model says.
    path = tmp_path / "list.txt"
    path.write_text(f"{LISTED},auth test\n")
    loaded = subprocess.run([sys.executable, "-m", "anomaly_stream", "watchlist", "load", str(path), "--list", "auth"],
                            cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    deadline = time.monotonic() + 30
    while worker.metrics().get("watchlist_entries") != 1:
        assert time.monotonic() < deadline, "the worker never read the watch-list through SASL"
        time.sleep(0.3)

    txs = TrafficGenerator(GeneratorConfig(seed=21)).take(3000)
    listed = {tx["hash"] for tx in txs[::100]}
    txs = [dict(tx, to=LISTED) if tx["hash"] in listed else tx for tx in txs]
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(txs), env=sasl))
    worker.wait_metric("transactions_processed_total", len(txs))

    records = run(consume_all(env["KAFKA_ANOMALIES_TOPIC"], env=sasl))
    flagged = {orjson.loads(r.value)["tx_hash"] for r in records}
    assert listed <= flagged, f"{len(listed - flagged)} of {len(listed)} watch-listed payments not published"
    # Its consumer group committed through the SASL listener too.
    offsets = run(committed_offsets(env["APP_ID"]))
    input_offsets = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == env["KAFKA_INPUT_TOPIC"]}
    assert len(input_offsets) == 4 and sum(input_offsets.values()) >= len(txs)
    assert sasl["KAFKA_SASL_PASSWORD"] not in worker.log_path.read_text(), "the password was logged"


def test_a_worker_with_a_wrong_password_is_refused_and_consumes_nothing(workers, env):
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(TrafficGenerator(GeneratorConfig(seed=22)).take(200)),
                create_partitions=4))  # waiting input, through the PLAINTEXT listener
    worker = workers({**env, **sasl_env(password="not-the-password")})
    try:
        code = worker.proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        code = None
    log = worker.log_path.read_text()
    assert code not in (None, 0), f"the worker kept running with a wrong password; see {worker.log_path}"
    assert "SaslAuthenticationFailed" in log and "invalid credentials" in log, log[-3000:]
    assert run(committed_offsets(env["APP_ID"])) == {}
    # It created nothing either: only the topic produced above exists of this deployment's.
    assert run(record_count(env["KAFKA_ANOMALIES_TOPIC"])) == 0


def test_a_client_without_credentials_cannot_produce_to_the_sasl_port(stack, env):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    topic = env["KAFKA_INPUT_TOPIC"]
    run(create_topic(topic, 1))

    async def attempt(**options) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=SASL_KAFKA, request_timeout_ms=5000, **options)
        try:
            await producer.start()
            await producer.send_and_wait(topic, b"unauthenticated")
        finally:
            await producer.stop()

    with pytest.raises(KafkaConnectionError):
        run(attempt())
    wrong = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
             "sasl_plain_username": "anomaly-stream", "sasl_plain_password": "guess"}
    with pytest.raises(KafkaConnectionError):
        run(attempt(**wrong))
    assert run(record_count(topic)) == 0
