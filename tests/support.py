"""Helpers for tests and benchmarks that run real worker processes on the local stack."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
KAFKA = f"127.0.0.1:{os.environ.get('STACK_KAFKA_PORT', '19092')}"
# The stack's SCRAM-SHA-512 listener (deploy/local/stack.py) and where `up` keeps its password.
SASL_KAFKA = f"127.0.0.1:{os.environ.get('STACK_KAFKA_SASL_PORT', '19094')}"
SASL_PASSWORD_FILE = Path(os.environ.get("STACK_DIR") or REPO / ".stack").resolve() / "kafka" / "sasl-password"
REDIS_URL = f"redis://127.0.0.1:{os.environ.get('STACK_REDIS_PORT', '16379')}/0"


def stack_module():
    """deploy/local/stack.py as a module (stdlib only: it is not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stack", REPO / "deploy" / "local" / "stack.py")
    module = sys.modules.setdefault("stack", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def deployment_env(**overrides) -> dict[str, str]:
    """Settings for one isolated deployment: its own topics, group and state dir."""
    name = unique("as")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "REDIS_URL": REDIS_URL,
        "APP_ID": name,
        "KAFKA_INPUT_TOPIC": f"{name}-transactions",
        "KAFKA_ANOMALIES_TOPIC": f"{name}-anomalies",
        "KAFKA_WATCHLIST_TOPIC": f"{name}-watchlist",
        "KAFKA_FEEDBACK_TOPIC": f"{name}-feedback",
        "KAFKA_INPUT_PARTITIONS": "4",
        "KAFKA_SESSION_TIMEOUT_SECONDS": "6",
        "KAFKA_HEARTBEAT_INTERVAL_SECONDS": "1",
        "COMMIT_INTERVAL_SECONDS": "0.5",
        "STATE_SWEEP_INTERVAL_SECONDS": "1",
        "MODEL_WARMUP_EVENTS": "500",
        # A threshold holds for a whole batch and the first after warm-up is 1.0: with
        # 5,000-record fetches a test's whole backlog can be one batch per partition.
        "KAFKA_MAX_POLL_RECORDS": "500",
        "DATA_DIR": f"/tmp/{name}",
        "LOG_FORMAT": "console",
    }
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


def sasl_env(password: str | None = None) -> dict[str, str]:
    """Settings of a client of the stack's SCRAM listener; the stack's password unless one is given."""
    if password is None:
        assert SASL_PASSWORD_FILE.exists(), f"{SASL_PASSWORD_FILE} missing: the stack predates its SASL listener"
        password = SASL_PASSWORD_FILE.read_text().strip()
    return {"KAFKA_BOOTSTRAP_SERVERS": SASL_KAFKA, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "anomaly-stream",
            "KAFKA_SASL_PASSWORD": password}


def connection(env: dict[str, str] | None) -> dict:
    """aiokafka's bootstrap_servers and security options: the stack's PLAINTEXT listener, or `env`'s."""
    if env is None:
        return {"bootstrap_servers": KAFKA}
    from anomaly_stream.settings import Settings
    from anomaly_stream.stream.kafka import client_options

    settings = Settings.from_env(env)
    return {"bootstrap_servers": settings.kafka_bootstrap_servers, **client_options(settings)}


class WorkerProcess:
    """One `anomaly-stream worker` process (or another Faust command: `notify`) with its own web port."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "worker", command: str = "worker"):
        self.command = command
        self.port = free_port()
        self.env = {**os.environ, **env, "WEB_PORT": str(self.port), "WEB_HOST": "127.0.0.1"}
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anomaly_stream", self.command],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if self.get("/health/ready", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"worker not ready after {timeout}s; see {self.log_path}")

    def metrics(self) -> dict[str, float]:
        """Metric samples by name (labels joined into the name), parsed, not grepped."""
        _, body = self.get("/api/metrics")
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def wait_metric(self, name: str, at_least: float, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            try:
                value = self.metrics().get(name, 0.0)
            except OSError:
                value = 0.0
            if value >= at_least:
                return value
            time.sleep(0.2)
        try:
            counts = {k: v for k, v in self.metrics().items() if k.startswith(("transactions_", "model_events"))}
        except OSError:
            counts = {}
        raise TimeoutError(f"{name} = {value} < {at_least} after {timeout}s; {counts}; see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


async def produce(topic: str, messages, create_partitions: int | None = None, env: dict | None = None) -> None:
    """Send (key, value) pairs, or (key, value, partition), and wait until the broker has them all
    (through `env`'s listener if given)."""
    from aiokafka import AIOKafkaProducer

    if create_partitions:
        await create_topic(topic, create_partitions, env)
    producer = AIOKafkaProducer(linger_ms=10, **connection(env))
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=partition[0] if partition else None)
                   for key, value, *partition in messages]
        await producer.flush()
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def create_topic(topic: str, partitions: int, env: dict | None = None) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**connection(env))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def consume_all(topic: str, expect: int | None = None, idle: float = 3.0, timeout: float = 60.0,
                      env: dict | None = None):
    """Every record of a topic from the beginning, until `expect` arrived or it goes idle."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, auto_offset_reset="earliest",
        enable_auto_commit=False, isolation_level="read_committed", **connection(env),
    )
    await consumer.start()
    records = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
                last_new = time.monotonic()
            if expect is not None and len(records) >= expect:
                break
            if expect is None and time.monotonic() - last_new > idle:
                break
    finally:
        await consumer.stop()
    return records


def wait_edges_settled(workers, timeout: float = 60.0) -> None:
    """The receiving side follows the input through the edges topic: wait until it stops moving."""
    deadline = time.monotonic() + timeout
    edges = -1.0
    while time.monotonic() < deadline:
        now = sum(w.metrics().get("edges_processed_total", 0.0) for w in workers)
        if now == edges:
            return
        edges = now
        time.sleep(2.0)
    raise AssertionError("the edges topic never settled")


def wait_processed(workers, n: int, timeout: float = 60.0) -> None:
    """Until the workers together have scored n transactions (a worker busy with a batch may not answer)."""
    wait_until(lambda: sum(w.metrics().get("transactions_processed_total", 0.0) for w in workers) >= n,
               timeout, f"{n} transactions processed")


def wait_balanced(workers, timeout: float = 60.0) -> None:
    """Until every worker is ready and holds input partitions: the rebalance is over."""
    wait_until(lambda: all(w.get("/health/ready")[0] == 200 and
                           orjson.loads(w.get("/health")[1])["kafka"]["assigned_partitions"] for w in workers),
               timeout, "the workers balanced")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll until `predicate()` holds (an OSError counts as not yet: a process still starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def keyed(txs) -> list[tuple[bytes, bytes]]:
    return [(tx["from"].encode(), orjson.dumps(tx)) for tx in txs]


def run(coro):
    return asyncio.run(coro)
