"""The notifier without Kafka: configuration, routing, dedup windows, backoff, signatures, Slack blocks,
and the agent tier (the Notifier over an in-memory sink, a dict as its table, a local HTTP server)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from anomaly_stream.detect.detector import Record
from anomaly_stream.notify import alerts, config
from anomaly_stream.notify.alerts import NEW, SUPPRESSED, UPDATE, Episode, TokenBucket, decide, route
from anomaly_stream.notify.config import ConfigError, Dedup, Retry
from anomaly_stream.notify.delivery import Delivery
from anomaly_stream.notify.notifier import Notifier
from anomaly_stream.stream.worker import MemorySink, Store
from tests.support import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "notify.example.toml"
SECRETS = {"NOTIFY_ONCALL_HMAC_KEY": "hmac-key-1", "NOTIFY_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x"}
ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20


def doc(alert_key="k1", detected_at=1000.0, severity="low", reasons=None, address=ALICE, **extra) -> dict:
    return {"schema": "anomaly_stream.anomaly/v2", "tx_hash": "0x" + "ab" * 32, "address": address,
            "perspective": "sender", "sender": address, "to": BOB, "counterparty": BOB, "score": 0.97,
            "threshold": 0.9, "severity": severity, "alert_key": alert_key, "detected_at": detected_at,
            "reasons": reasons if reasons is not None else [{"rule": "model", "perspective": "sender"}], **extra}


def parse(text: str, environ=None) -> config.NotifyConfig:
    import tomllib

    return config.parse(tomllib.loads(text), SECRETS if environ is None else environ)


MINIMAL = '[sinks.audit]\ntype = "log"\n[[rules]]\nsinks = ["audit"]\n'


# -- configuration --

def test_the_shipped_example_is_valid_and_keeps_secrets_out_of_its_repr():
    cfg = config.load(str(EXAMPLE), SECRETS)
    assert set(cfg.sinks) == {"oncall", "slack", "audit"}
    assert cfg.sinks["oncall"].secret == b"hmac-key-1"
    assert cfg.sinks["slack"].url == SECRETS["NOTIFY_SLACK_WEBHOOK_URL"]
    assert cfg.sinks["slack"].retry.max_attempts == 3 and cfg.sinks["oncall"].retry.max_attempts == 5
    assert "hmac-key-1" not in repr(cfg) and "hooks.slack.com" not in repr(cfg)


@pytest.mark.parametrize("text, key", [
    ('[sinks.a]\ntype = "pager"\n[[rules]]\nsinks = ["a"]\n', "sinks.a.type: unknown sink type 'pager'"),
    ('[sinks.a]\ntype = "webhook"\nurl = "ftp://x"\nsecret_env = "NOTIFY_ONCALL_HMAC_KEY"\n[[rules]]\nsinks = ["a"]\n',
     "sinks.a.url: must be an http:// or https:// URL"),
    ('[sinks.a]\ntype = "webhook"\nurl = "https://"\nsecret_env = "NOTIFY_ONCALL_HMAC_KEY"\n[[rules]]\nsinks = ["a"]\n',
     "sinks.a.url"),
    ('[sinks.a]\ntype = "webhook"\nurl = "https://h/x"\nsecret_env = "UNSET_VAR"\n[[rules]]\nsinks = ["a"]\n',
     "sinks.a.secret_env: environment variable UNSET_VAR is not set"),
    ('[sinks.a]\ntype = "webhook"\nurl = "https://h/x"\n[[rules]]\nsinks = ["a"]\n', "sinks.a.secret_env"),
    ('[sinks.a]\ntype = "slack"\nurl_env = "UNSET_VAR"\n[[rules]]\nsinks = ["a"]\n', "sinks.a.url_env"),
    (MINIMAL + 'min_severity = "critical"\n', "rules[0].min_severity: bad severity 'critical'"),
    ('[sinks.audit]\ntype = "log"\n[[rules]]\nsinks = ["nope"]\n', "rules[0].sinks: no sink named 'nope'"),
    ('[sinks.audit]\ntype = "log"\ncolour = "red"\n[[rules]]\nsinks = ["audit"]\n', "sinks.audit.colour: unknown key"),
    (MINIMAL + 'addresses = ["0x12"]\n', "rules[0].addresses"),
    ('[delivery]\nmax_attempts = 0\n' + MINIMAL, "delivery.max_attempts: must be a positive integer"),
    ('[dedup]\nwindow_seconds = 10\nttl_seconds = 5\n' + MINIMAL, "dedup.window_seconds"),
    ('[sinks.audit]\ntype = "log"\n', "rules: at least one"),
])
def test_bad_configuration_names_the_key(text, key):
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert key in str(err.value)


def test_a_bad_slack_url_is_refused_without_showing_it():
    text = '[sinks.s]\ntype = "slack"\nurl_env = "SLACK"\n[[rules]]\nsinks = ["s"]\n'
    with pytest.raises(ConfigError) as err:
        parse(text, {"SLACK": "not-a-url-secret-token"})
    assert "sinks.s.url_env" in str(err.value) and "secret-token" not in str(err.value)


def test_missing_or_unparsable_file():
    with pytest.raises(ConfigError, match="NOTIFY_CONFIG must name"):
        config.load("")
    with pytest.raises(ConfigError, match="No such file"):
        config.load("/nonexistent/notify.toml")


# -- routing --

def test_rules_route_by_severity_reasons_watchlists_and_addresses():
    cfg = config.load(str(EXAMPLE), SECRETS)
    assert route(cfg.rules, doc(severity="low")) == ["audit"]
    assert route(cfg.rules, doc(severity="high")) == ["audit", "oncall", "slack"]
    ofac = [{"rule": "watchlist", "list": "ofac", "address": BOB}]
    assert route(cfg.rules, doc(severity="medium", reasons=ofac)) == ["audit", "slack"]
    other = [{"rule": "watchlist", "list": "scams", "address": BOB}]
    assert route(cfg.rules, doc(severity="medium", reasons=other)) == ["audit"]
    treasury = "0x00000000219ab540356cbb839cbe05303d7705fa"
    look = [{"rule": "lookalike", "address": treasury.upper().replace("0X", "0x")}]
    assert route(cfg.rules, doc(severity="medium", reasons=look)) == ["audit", "oncall"]
    assert route(cfg.rules, doc(severity="medium", address=treasury)) == ["audit"]  # the model's: no


# -- deduplication --

def test_an_episode_of_twenty_alerts_once_then_one_update_a_window():
    dedup = Dedup(window_seconds=1.0, ttl_seconds=3600.0)
    episode, kinds = None, []
    for i in range(20):
        kind, episode = decide(episode, 3, 1000.0 + i * 0.25, dedup)
        kinds.append(kind)
    assert kinds[0] == NEW and kinds.count(NEW) == 1
    assert [i for i, k in enumerate(kinds) if k == UPDATE] == [4, 8, 12, 16]
    assert kinds.count(SUPPRESSED) == 15
    assert (episode.count, episode.updates, episode.notified_at, episode.partition) == (20, 4, 1004.0, 3)
    assert Episode.decode(episode.encode()) == episode


def test_a_quiet_key_starts_a_new_episode_after_the_ttl():
    dedup = Dedup(window_seconds=10.0, ttl_seconds=60.0)
    _, episode = decide(None, 0, 0.0, dedup)
    assert decide(episode, 0, 59.0, dedup)[0] == UPDATE
    kind, fresh = decide(episode, 0, 61.0, dedup)
    assert kind == NEW and fresh.count == 1


def test_update_alerts_carry_the_count_and_their_own_idempotency_key():
    dedup = Dedup(window_seconds=1.0, ttl_seconds=60.0)
    _, first = decide(None, 0, 0.0, dedup)
    assert alerts.idempotency_key(alerts.alert(doc(), NEW, first)) == "k1"
    kind, later = decide(first, 0, 5.0, dedup)
    update = alerts.alert(doc(detected_at=5.0), kind, later)
    assert (update["kind"], update["count"], update["update"]) == ("update", 2, 1)
    assert alerts.idempotency_key(update) == "k1:update:1"


# -- backoff, rate limit, signature, Slack --

def test_backoff_is_full_jitter_within_an_exponential_bound():
    retry = Retry(backoff_base_seconds=0.5, backoff_max_seconds=4.0)
    assert [alerts.backoff_delay(n, retry, lambda: 1.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert alerts.backoff_delay(3, retry, lambda: 0.0) == 0.0
    import random

    rng = random.Random(1)
    assert all(0 <= alerts.backoff_delay(n, retry, rng.random) <= min(4.0, 0.5 * 2 ** (n - 1)) for n in range(1, 30))


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.take() == pytest.approx(1.0)  # reserved in order
    now[0] = 10.0
    assert bucket.take() == 0.0


def test_signature_is_the_hmac_sha256_of_the_body():
    payload = alerts.body(alerts.alert(doc(), NEW, decide(None, 0, 0.0, Dedup())[1]))
    expected = "sha256=" + hmac.new(b"secret", payload, hashlib.sha256).hexdigest()
    assert alerts.signature(b"secret", payload) == expected
    assert alerts.verify(b"secret", payload, expected)
    assert not alerts.verify(b"other", payload, expected)
    assert not alerts.verify(b"secret", payload + b" ", expected)
    headers = alerts.webhook_headers(alerts.orjson.loads(payload), payload, b"secret")
    assert headers["X-Anomaly-Signature"] == expected and headers["Idempotency-Key"] == "k1"


def test_slack_blocks_show_severity_address_tx_link_reasons_and_count():
    reasons = [{"rule": "watchlist", "list": "<ofac>", "address": BOB}, {"rule": "lookalike", "imitates": "0x12…34"}]
    _, episode = decide(None, 0, 0.0, Dedup())
    message = alerts.slack_message(alerts.alert(doc(severity="high", reasons=reasons), NEW, episode),
                                   "https://etherscan.io")
    header, section, context = message["blocks"]
    assert header["type"] == "header" and "HIGH anomaly" in header["text"]["text"]
    text = "\n".join(f["text"] for f in section["fields"])
    assert f"<https://etherscan.io/tx/0x{'ab' * 32}|" in text
    assert f"<https://etherscan.io/address/{ALICE}|{ALICE}>" in text
    assert "watchlist (&lt;ofac&gt;), lookalike (0x12…34)" in text and "*Count*\n1 in this episode" in text
    assert "`k1`" in context["elements"][0]["text"] and message["text"].startswith("HIGH anomaly")


# -- delivery and the notifier over a local HTTP server --

@contextlib.asynccontextmanager
async def http_server():
    """A real HTTP server: /ok answers 200, /fail 500, /gone 404; every request is kept."""
    seen: list[tuple[str, dict, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.headers), await request.read()))
        return web.Response(status={"/ok": 200, "/fail": 500, "/gone": 404}[request.path])

    app = web.Application()
    app.router.add_post("/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


def webhook_config(base: str, path: str, **retry) -> config.NotifyConfig:
    retry_lines = "".join(f"{k} = {v}\n" for k, v in retry.items())
    text = (f'[sinks.hook]\ntype = "webhook"\nurl = "{base}/{path}"\nsecret_env = "NOTIFY_ONCALL_HMAC_KEY"\n'
            f"{retry_lines}[sinks.audit]\ntype = \"log\"\n[[rules]]\nsinks = [\"audit\", \"hook\"]\n"
            "[delivery]\ntimeout_seconds = 2\n[dedup]\nwindow_seconds = 1.0\n")
    return parse(text)


async def no_sleep(seconds: float) -> None:
    slept.append(seconds)


slept: list[float] = []


async def test_retries_are_bounded_by_attempts():
    async with http_server() as (base, seen):
        slept.clear()
        cfg = webhook_config(base, "fail", max_attempts=4, backoff_base_seconds=0.1, backoff_max_seconds=0.3)
        delivery = Delivery(cfg, sleep=no_sleep, rand=lambda: 1.0)
        await delivery.start()
        try:
            outcome = await delivery.deliver(cfg.sinks["hook"], alerts.alert(doc(), NEW, decide(None, 0, 0, Dedup())[1]))
        finally:
            await delivery.stop()
        assert (outcome.delivered, outcome.attempts, outcome.reason) == (False, 4, "http_500")
        assert len(seen) == 4 and slept == [0.1, 0.2, 0.3]
        path, headers, payload = seen[0]
        assert alerts.verify(b"hmac-key-1", payload, headers["X-Anomaly-Signature"])
        assert headers["Idempotency-Key"] == "k1"


async def test_retries_stop_at_the_deadline_and_a_4xx_is_permanent():
    async with http_server() as (base, seen):
        cfg = webhook_config(base, "fail", max_attempts=50, backoff_base_seconds=1.0, backoff_max_seconds=1.0,
                             max_total_seconds=2.5)
        now = [0.0]

        async def advance(seconds: float) -> None:
            now[0] += seconds

        delivery = Delivery(cfg, sleep=advance, rand=lambda: 1.0, clock=lambda: now[0])
        await delivery.start()
        message = alerts.alert(doc(), NEW, decide(None, 0, 0, Dedup())[1])
        try:
            outcome = await delivery.deliver(cfg.sinks["hook"], message)
            assert (outcome.delivered, outcome.attempts) == (False, 3)  # tries at 0, 1, 2; the next would pass 2.5
        finally:
            await delivery.stop()
        cfg = webhook_config(base, "gone")
        delivery = Delivery(cfg, sleep=advance)
        await delivery.start()
        try:
            outcome = await delivery.deliver(cfg.sinks["hook"], message)
        finally:
            await delivery.stop()
        assert (outcome.delivered, outcome.attempts, outcome.reason) == (False, 1, "http_404")


async def test_notifier_alerts_an_episode_once_and_dead_letters_what_fails():
    async with http_server() as (base, seen):
        cfg = webhook_config(base, "fail", max_attempts=2, backoff_base_seconds=0.001, backoff_max_seconds=0.001)
        sink, store = MemorySink(), Store({}, "dedup-changelog")
        delivery = Delivery(cfg)
        notifier = Notifier(cfg, sink, store, delivery, source_topic="anomalies", dlq_topic="notify-dlq",
                            clock=lambda: 1000.0)
        records = [Record(i, ALICE.encode(), orjson.dumps(doc(detected_at=1000.0 + i * 0.25)), 0.0) for i in range(8)]
        records.append(Record(8, b"x", b"not json", 0.0))
        await delivery.start()
        try:
            await notifier.handle(2, records)
        finally:
            await delivery.stop()
        episode = Episode.decode(store.data[b"k1"])
        assert (episode.count, episode.updates, episode.partition) == (8, 1, 2)  # new at 0, update at 1.0 s
        assert len(seen) == 4  # two alerts, two tries each
        dead = sink.on("notify-dlq")
        assert [m.headers["dlq-reason"] for m in dead] == [b"unreadable_anomaly", b"http_500", b"http_500"]
        assert dead[1].headers["dlq-sink"] == b"hook" and dead[1].headers["dlq-attempts"] == b"2"
        assert orjson.loads(dead[1].value)["kind"] == "new" and orjson.loads(dead[2].value)["kind"] == "update"
        assert [m.key for m in sink.on("dedup-changelog")] == [b"k1"] * 8
        # The TTL: an hour later the sweep forgets the episode, with a tombstone.
        notifier.clock = lambda: 1000.0 + cfg.dedup.ttl_seconds + 10
        await notifier.sweep(frozenset({2}))
        assert b"k1" not in store.data and sink.on("dedup-changelog")[-1].value is None


def test_the_command_refuses_a_bad_file_naming_the_key(tmp_path, monkeypatch, capsys):
    from anomaly_stream.__main__ import main

    bad = tmp_path / "notify.toml"
    bad.write_text('[sinks.a]\ntype = "pager"\n[[rules]]\nsinks = ["a"]\n')
    monkeypatch.setenv("NOTIFY_CONFIG", str(bad))
    assert main(["notify"]) == 2
    assert "sinks.a.type: unknown sink type 'pager'" in capsys.readouterr().err
    monkeypatch.delenv("NOTIFY_CONFIG")
    assert main(["notify"]) == 2
    assert "NOTIFY_CONFIG must name" in capsys.readouterr().err


def test_a_log_sink_is_not_rate_limited_unless_asked():
    cfg = parse(MINIMAL)
    assert cfg.sinks["audit"].rate_per_second is None and "audit" not in Delivery(cfg).buckets
    cfg = parse('[sinks.audit]\ntype = "log"\nrate_per_second = 2\n[[rules]]\nsinks = ["audit"]\n')
    assert Delivery(cfg).buckets["audit"].rate == 2
