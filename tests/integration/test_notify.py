"""`anomaly-stream notify` on the real broker, delivering to a real HTTP receiver in the test.

The receiver fails (HTTP 500) the first two attempts of every alert key, and
one sink always fails. Anomaly documents (schema v2) go straight to the
anomalies topic: an episode of 20 with one alert key and single anomalies,
some of them look-alikes routed to the broken sink. The notifier is
SIGKILLed in the middle of a second wave and restarted.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter, defaultdict

import orjson
import pytest
from aiohttp import web

from anomaly_stream.notify.alerts import verify

from ..support import consume_all, free_port, produce, run, wait_until

pytestmark = pytest.mark.integration

SECRET = "test-hmac-key-3f9a"
SLACK_TOKEN = "T000/B000/slack-secret-7c1d"
WINDOW = 1.0  # dedup window, seconds
EPISODE = 20
ATTEMPTS_BROKEN = 3


class Receiver:
    """A real aiohttp server on a free port, in a thread of its own; it keeps every request."""

    def __init__(self):
        self.port = free_port()
        self.hook: list[tuple[dict, bytes, int]] = []  # headers, body, status answered
        self.slack: list[dict] = []
        self.broken = Counter()  # alert key -> attempts
        self.attempts = Counter()  # alert key -> attempts at the webhook
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()

    async def _hook(self, request: web.Request) -> web.Response:
        payload = await request.read()
        key = orjson.loads(payload)["alert_key"]
        self.attempts[key] += 1
        status = 500 if self.attempts[key] <= 2 else 200
        self.hook.append((dict(request.headers), payload, status))
        return web.Response(status=status)

    async def _broken(self, request: web.Request) -> web.Response:
        self.broken[orjson.loads(await request.read())["alert_key"]] += 1
        return web.Response(status=500)

    async def _slack(self, request: web.Request) -> web.Response:
        self.slack.append(orjson.loads(await request.read()))
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/broken", self._broken)
        app.router.add_post("/services/{token:.*}", self._slack)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.started.set()
        self.loop.run_forever()

    def __enter__(self) -> Receiver:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def delivered(self) -> dict[str, list[dict]]:
        """Alert key -> the alerts answered 200, in arrival order."""
        found = defaultdict(list)
        for headers, payload, status in list(self.hook):
            if status == 200:
                found[orjson.loads(payload)["alert_key"]].append({**orjson.loads(payload), "_headers": headers})
        return found


def anomaly(address: str, alert_key: str, detected_at: float, n: int, severity="low", rule="model") -> dict:
    reason = ({"rule": "model", "perspective": "sender", "score": 0.97, "threshold": 0.9} if rule == "model"
              else {"rule": rule, "role": "counterparty", "address": "0x" + "cd" * 20, "imitates": "0xcdcd…cdcd"})
    return {"schema": "anomaly_stream.anomaly/v2", "tx_hash": "0x" + hashlib.sha256(b"%d" % n).hexdigest(),
            "address": address, "perspective": "sender", "sender": address, "to": "0x" + "cd" * 20,
            "counterparty": "0x" + "cd" * 20, "kind": "eth_transfer", "method": None, "token": None,
            "token_amount": None, "value_wei": "1000000000000000000", "value_eth": 1.0, "gas_price_gwei": 30.0,
            "block_number": 19_000_000 + n, "event_time": detected_at, "detected_at": detected_at,
            "score": 0.97, "threshold": 0.9, "reasons": [reason], "severity": severity,
            "alert_key": alert_key, "explanation": [], "onchain": None,
            "source": {"partition": 0, "offset": n, "timestamp": detected_at}}


def address(i: int) -> str:
    return "0x" + f"{i:040x}"


def singles(start: int, count: int, at: float, lookalikes: int) -> list[dict]:
    return [anomaly(address(i), f"single-{i}", at, i, *(("high", "lookalike") if i - start < lookalikes else ()))
            for i in range(start, start + count)]


def keyed(docs: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(d["address"].encode(), orjson.dumps(d)) for d in docs]


def config_text(port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    return f"""
[delivery]
max_attempts = 4
backoff_base_seconds = 0.05
backoff_max_seconds = 0.2
max_total_seconds = 10
timeout_seconds = 2

[dedup]
window_seconds = {WINDOW}
ttl_seconds = 3600

[sinks.oncall]
type = "webhook"
url = "{base}/hook"
secret_env = "NOTIFY_TEST_HMAC_KEY"
rate_per_second = 15
burst = 5

[sinks.broken]
type = "webhook"
url = "{base}/broken"
secret_env = "NOTIFY_TEST_HMAC_KEY"
max_attempts = {ATTEMPTS_BROKEN}

[sinks.slack]
type = "slack"
url_env = "NOTIFY_TEST_SLACK_URL"

[sinks.audit]
type = "log"

[[rules]]
sinks = ["audit", "oncall"]

[[rules]]
min_severity = "high"
sinks = ["slack"]

[[rules]]
reasons = ["lookalike"]
sinks = ["broken"]
"""


def test_notify_delivers_retries_deduplicates_dead_letters_and_survives_sigkill(workers, env, tmp_path):
    with Receiver() as receiver:
        path = tmp_path / "notify.toml"
        path.write_text(config_text(receiver.port))
        env.update(NOTIFY_CONFIG=str(path), NOTIFY_TEST_HMAC_KEY=SECRET, LOG_FORMAT="json",
                   NOTIFY_TEST_SLACK_URL=f"http://127.0.0.1:{receiver.port}/services/{SLACK_TOKEN}")
        topic = env["KAFKA_ANOMALIES_TOPIC"]
        base = float(int(time.time()))
        # Wave 1: an episode of 20 anomalies 0.25 s apart (one alert key) and 12 single ones, 4 look-alikes.
        episode = [anomaly(address(999), "episode", base + i * 0.25, 1000 + i) for i in range(EPISODE)]
        wave1 = singles(0, 12, base, lookalikes=4)
        run(produce(topic, keyed(episode + wave1), create_partitions=4))
        notifier = workers(env, name="notify", command="notify")
        notifier.wait_ready(60)
        # The episode alerts once, then once a window: at 0, 1.0, 2.0, 3.0, 4.0 s of its detection time.
        wait_until(lambda: all(k in receiver.delivered() for k in [d["alert_key"] for d in wave1]) and
                 len(receiver.delivered().get("episode", [])) == 5, 30, "wave 1 delivered", interval=0.1)
        notifier.wait_metric("notify_dead_letters_total{sink=broken}", 4, timeout=20)
        first = notifier.metrics()
        assert first["notify_deduplicated_total"] == EPISODE - 5
        got = receiver.delivered()["episode"]
        assert [(a["kind"], a["count"], a["update"]) for a in got] == [
            ("new", 1, 0), ("update", 5, 1), ("update", 9, 2), ("update", 13, 3), ("update", 17, 4)]
        assert [a["_headers"]["Idempotency-Key"] for a in got] == ["episode"] + [f"episode:update:{n}" for n in (1, 2, 3, 4)]

        # Wave 2: 30 single anomalies and 3 more of the episode (inside its window: suppressed); SIGKILL
        # once some of them are delivered, produce the rest while it is down, restart.
        wave2 = singles(100, 30, base + 5, lookalikes=0)
        tail = [anomaly(address(999), "episode", base + 4.5 + i * 0.1, 1100 + i) for i in range(3)]
        run(produce(topic, keyed(wave2[:20] + tail)))
        wave2_keys = [d["alert_key"] for d in wave2]
        wait_until(lambda: sum(k in receiver.delivered() for k in wave2_keys) >= 4, 30, "wave 2 under way", interval=0.1)
        notifier.kill()
        in_flight = len(wave2_keys[:20]) - sum(k in receiver.delivered() for k in wave2_keys[:20])
        run(produce(topic, keyed(wave2[20:])))
        restarted = workers(env, name="notify", command="notify")
        restarted.wait_ready(60)
        wait_until(lambda: all(k in receiver.delivered() for k in wave2_keys), 40, "wave 2 delivered after restart", interval=0.1)
        time.sleep(1.5)  # what a duplicate would take to show up
        second = restarted.metrics()

    delivered = receiver.delivered()
    every_key = [d["alert_key"] for d in wave1 + wave2] + ["episode"]
    # Every alert key delivered; a key delivered twice (across the crash) carries the same Idempotency-Key.
    for key in every_key:
        news = [a for a in delivered[key] if a["kind"] == "new"]
        assert news, f"{key} never delivered"
        assert {a["_headers"]["Idempotency-Key"] for a in news} == {key}
    # The episode: one alert and its four updates, nothing more after the restart (the dedup table
    # came back from its changelog: the three late anomalies were suppressed, not a new alert).
    assert [a["kind"] for a in delivered["episode"]] == ["new"] + ["update"] * 4
    # Retried: each key's first two attempts were answered 500, then it got through.
    assert all(receiver.attempts[key] >= 3 for key in every_key if key != "episode")
    statuses = defaultdict(list)
    for headers, payload, status in receiver.hook:
        statuses[orjson.loads(payload)["alert_key"]].append(status)
        assert verify(SECRET.encode(), payload, headers["X-Anomaly-Signature"]), "bad signature"
        assert headers["Content-Type"] == "application/json"
    assert all(s[:3] == [500, 500, 200] for key, s in statuses.items() if key != "episode")
    # Slack got the high-severity ones (the look-alikes), with an etherscan link to the transaction.
    slack_txs = {b["text"].split("/tx/")[1].split("|")[0] for m in receiver.slack
                 for b in m["blocks"][1]["fields"] if "/tx/" in b["text"]}
    assert slack_txs == {d["tx_hash"] for d in wave1[:4]}
    # The always-failing sink: every look-alike alert tried 3 times, then dead-lettered with sink and reason.
    assert all(receiver.broken[d["alert_key"]] >= ATTEMPTS_BROKEN for d in wave1[:4])
    dead = run(consume_all(env.get("KAFKA_NOTIFY_DLQ_TOPIC") or f"{topic}-notify-dlq", idle=2.0, timeout=20))
    dlq = defaultdict(list)
    for record in dead:
        headers = dict(record.headers)
        dlq[orjson.loads(record.value)["alert_key"]].append(headers)
    assert set(dlq) == {d["alert_key"] for d in wave1[:4]}
    for entries in dlq.values():
        assert all(h["dlq-sink"] == b"broken" and h["dlq-reason"] == b"http_500"
                   and h["dlq-attempts"] == b"%d" % ATTEMPTS_BROKEN for h in entries)
    # No secret reaches a log.
    for process in (notifier, restarted):
        text = process.log_path.read_text()
        assert SECRET not in text and SLACK_TOKEN not in text

    def count(samples, prefix):
        return sum(v for k, v in samples.items() if k.startswith(prefix) and not k.startswith(prefix + "_created"))

    figures = {
        "webhook requests": len(receiver.hook), "webhook 200s": sum(s == 200 for _, _, s in receiver.hook),
        "slack messages": len(receiver.slack), "broken-sink attempts": sum(receiver.broken.values()),
        "dlq records": len(dead), "wave-2 keys in flight at SIGKILL": in_flight,
        "duplicate first alerts across the crash": sum(
            max(0, sum(a["kind"] == "new" for a in delivered[k]) - 1) for k in every_key),
    }
    for name, samples in (("before kill", first), ("after restart", second)):
        figures[name] = {m: count(samples, m) for m in (
            "notify_deliveries_total", "notify_retries_total", "notify_deduplicated_total",
            "notify_dead_letters_total")}
    print("notify figures:", figures)
