"""Analysts' verdicts on a real two-replica deployment: written at one, held by both, acted on."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import orjson
import pytest

from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

from ..support import consume_all, deployment_env, keyed, produce, run, wait_balanced, wait_processed
from .test_detector import outlier

pytestmark = pytest.mark.integration
KEY = "feedback-test-key"


def post(worker, path: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(worker.url(path), data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_verdict_reaches_every_replica_silences_the_benign_and_counts_towards_precision(workers):
    env = deployment_env(api_write_key=KEY)
    a, b = workers(env), workers(env)
    a.wait_ready()
    b.wait_ready()
    wait_balanced([a, b])
    normal = TrafficGenerator(GeneratorConfig(seed=41, scenario_rates={})).take(6000)
    first = [outlier(900 + i) for i in range(4)]
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(normal[:5000] + first + normal[5000:])))
    wait_processed([a, b], 6004)
    flagged = [tx for tx in first if a.get(f"/api/v1/anomalies/{tx['hash']}")[0] == 200]
    assert len(flagged) >= 2, "the planted outliers must be flagged"
    benign, bad = flagged[0], flagged[1]

    path = f"/api/v1/anomalies/{benign['hash']}/feedback"
    verdict = orjson.dumps({"verdict": "false_positive", "note": "our market maker"})
    assert post(a, path, verdict, key=None)[0] == 401
    assert post(a, path, verdict, key="wrong")[0] == 401
    assert post(a, path, b'{"verdict": "meh"}')[0] == 400
    assert post(a, path, b"{not json")[0] == 400
    assert post(a, "/api/v1/anomalies/0x1234/feedback", verdict)[0] == 400
    assert post(a, "/api/v1/anomalies/0x" + "0" * 64 + "/feedback", verdict)[0] == 404
    status, body = post(a, path, verdict)
    assert status == 202 and body["addresses"] == [benign["from"]]
    assert post(b, f"/api/v1/anomalies/{bad['hash']}/feedback", b'{"verdict": "confirmed"}')[0] == 202

    deadline = time.monotonic() + 20
    while True:  # both replicas follow the feedback topic
        seen = [orjson.loads(w.get("/api/v1/stats")[1])["feedback"] for w in (a, b)]
        if all(s == {"confirmed": 1, "false_positive": 1, "precision": 0.5} for s in seen):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)
    assert all(w.metrics()["feedback_precision_ratio"] == 0.5 for w in (a, b))

    # Later outliers: the benign sender's are not flagged, the others' are.
    again = [{**outlier(950 + i), "from": benign["from"]} for i in range(3)]
    control = [outlier(960 + i) for i in range(3)]
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(again + control + normal[:500])))
    wait_processed([a, b], 6004 + 506)
    documents = {orjson.loads(r.value)["tx_hash"] for r in run(consume_all(env["KAFKA_ANOMALIES_TOPIC"]))}
    assert not documents & {tx["hash"] for tx in again}
    assert len(documents & {tx["hash"] for tx in control}) >= 2
    assert sum(w.metrics().get("anomalies_suppressed_total{perspective=sender}", 0) for w in (a, b)) >= 1
