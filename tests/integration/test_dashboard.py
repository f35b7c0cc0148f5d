"""The dashboard in a real browser (Debian's Chromium, driven by Selenium) on a real worker.

Generated traffic with planted attacks, plus payments to a watch-listed address
whose label is an HTML payload, go through a worker; the page must list exactly
what the API lists, filter it, open the detail view, and show the payload as text.
"""

from __future__ import annotations

import collections
import os
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from anomaly_stream.tools.generate import GeneratorConfig, TrafficGenerator

from ..support import deployment_env, keyed, produce, run, stack_module, wait_edges_settled, wait_until
from .test_feedback import KEY as FEEDBACK_KEY, post
from .test_watchlist import payments, wait_entries, watchlist_cli

pytestmark = pytest.mark.integration

PAYLOAD = '<img src=x onerror="document.title=1"><b>pwned</b>'
LISTED = "0x" + "5a" * 20


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Chromium and chromedriver, installed from Debian's packages by the stack's set-up when missing."""
    stack = stack_module()
    try:
        return stack.ensure_chromium()
    except stack.StackError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def row_key(d: dict) -> str:
    """The dashboard's key of an anomaly's row (dashboard.js, keyOf): one per side, per address on the receiving one."""
    return f"{d['tx_hash']}:sender" if d["perspective"] == "sender" else f"{d['tx_hash']}:{d['perspective']}:{d['address']}"


def api(worker, path: str) -> dict:
    status, body = worker.get(path)
    assert status == 200, body
    return orjson.loads(body)


def screenshot_dir(tmp_path: Path) -> Path:
    path = Path(os.environ.get("DASHBOARD_ARTIFACTS", tmp_path))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_dashboard_lists_filters_and_explains_the_flagged_anomalies(workers, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    env = deployment_env(target_flag_rate=0.01, model_warmup_events=300, api_write_key=FEEDBACK_KEY)
    worker = workers(env)
    worker.wait_ready()
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"{LISTED},{PAYLOAD}\n")
    watchlist_cli(env, "load", str(list_file), "--list", "incident-7")
    wait_entries([worker], 1)

    txs = TrafficGenerator(GeneratorConfig(seed=4)).take(4000)
    last = int(txs[-1]["blockTimestamp"], 16)
    hits = payments([LISTED] * 3, seed=5, t=last + 1)  # in the traffic's own time: profiles stay
    run(produce(env["KAFKA_INPUT_TOPIC"], keyed(txs + hits)))
    worker.wait_metric("transactions_processed_total", len(txs) + len(hits))
    wait_edges_settled([worker])

    (replica,) = api(worker, "/api/v1/stats")["replicas"]
    assert set(replica["lag"]) == {"0", "1", "2", "3"}
    for model in replica["models"]:  # what the model table and the score chart draw
        assert model["warm"] and model["seen"] > 0 and 0 < model["threshold"] < 1
        assert len(model["score_histogram"]) == 50 and abs(sum(model["score_histogram"]) - 1) < 1e-3
        assert model["checkpoint_age_seconds"] >= 0
    assert sum(m["flagged"] for m in replica["models"]) == worker.metrics()["anomalies_published_total"]

    items = api(worker, "/api/v1/anomalies?limit=500")["items"]
    assert 10 <= len(items) < 500, len(items)
    keys = {row_key(d) for d in items}
    hit = next(d for d in items if d["tx_hash"] == hits[0]["hash"] and d["perspective"] == "sender")

    # An analyst's verdict: the summary shows the precision it gives.
    assert post(worker, f"/api/v1/anomalies/{hit['tx_hash']}/feedback", b'{"verdict": "confirmed"}')[0] == 202
    wait_until(lambda: api(worker, "/api/v1/stats")["feedback"]["confirmed"] == 1, 20, "the verdict applied")

    with urllib.request.urlopen(worker.url("/dashboard"), timeout=5) as resp:
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]

    started = time.perf_counter()
    browser.get(worker.url("/dashboard"))
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.ID, "count").get_attribute("data-shown") is not None)
    populated = time.perf_counter() - started
    timing = browser.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return [n.domContentLoadedEventEnd, n.loadEventEnd, Number(document.body.dataset.loadedMs)];")
    print(f"\ndashboard load: DOMContentLoaded {timing[0]:.0f} ms, load {timing[1]:.0f} ms, first data "
          f"rendered {timing[2]:.0f} ms after navigation; {populated * 1000:.0f} ms from get() to a full table "
          f"of {len(items)} anomalies")

    def row_keys() -> set[str]:  # in one script: the poll may replace the rows between two calls
        return set(browser.execute_script(
            "return [...document.querySelectorAll('#anomalies tbody tr')].map(r => r.dataset.key);"))

    assert row_keys() == keys, "the table shows exactly the anomalies the API lists"

    # A whole address goes to the API as its filter: the rows narrow to that address's anomalies.
    address = collections.Counter(d["address"] for d in items).most_common(1)[0][0]
    expected = {row_key(d)
                for d in api(worker, f"/api/v1/anomalies?limit=500&address={address}")["items"]}
    assert 0 < len(expected) < len(items)
    browser.find_element(By.ID, "f-address").send_keys(address)
    wait.until(lambda d: row_keys() == expected)
    assert set(browser.execute_script(
        "return [...document.querySelectorAll('#anomalies tbody td.address')].map(c => c.textContent);")) == {address}
    browser.find_element(By.ID, "f-address").clear()
    browser.find_element(By.ID, "f-reset").click()
    wait.until(lambda d: row_keys() == keys)

    # Severity and reason are filtered in the page.
    high = {row_key(d) for d in items if d["severity"] == "high"}
    assert hit["severity"] == "high" and len(high) < len(items)
    Select(browser.find_element(By.ID, "f-severity")).select_by_value("high")
    wait.until(lambda d: row_keys() == high)
    Select(browser.find_element(By.ID, "f-severity")).select_by_value("")
    Select(browser.find_element(By.ID, "f-reason")).select_by_value("watchlist")
    listed = {row_key(d) for d in items
              if any(r["rule"] == "watchlist" for r in d["reasons"])}
    wait.until(lambda d: row_keys() == listed)
    assert f"{hit['tx_hash']}:sender" in listed

    # The detail view: the hash, Etherscan links, the reasons, the label as text only.
    browser.find_element(By.CSS_SELECTOR, f"#anomalies tr[data-key='{hit['tx_hash']}:sender']").click()
    wait.until(lambda d: d.find_element(By.ID, "detail").is_displayed())
    assert browser.find_element(By.ID, "detail-hash").text == hit["tx_hash"]
    link = browser.find_element(By.ID, "detail-etherscan")
    assert link.get_attribute("href") == f"https://etherscan.io/tx/{hit['tx_hash']}"
    hrefs = {a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#detail a")}
    assert f"https://etherscan.io/address/{hit['address']}" in hrefs
    assert f"https://etherscan.io/address/{LISTED}" in hrefs
    detail = browser.find_element(By.ID, "detail-body")
    assert PAYLOAD in detail.text, "the watch-list label is shown as it is, as text"
    assert not detail.find_elements(By.TAG_NAME, "img") and not detail.find_elements(By.TAG_NAME, "b")
    assert browser.title == "anomaly_stream dashboard"
    for row in hit["explanation"]:
        assert row["feature"] in detail.text
    wait.until(lambda d: "loading" not in d.find_element(By.ID, "detail-profile").text)
    assert "n_tx" in browser.find_element(By.ID, "detail-profile").text

    # The charts and the model table have been drawn from the polls.
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-throughput polyline"))
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-scores rect.bar")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-scores line.threshold")) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")) == 8  # 4 partitions, 2 perspectives
    assert browser.find_element(By.ID, "sum-precision").text.endswith("of 1")

    shot = screenshot_dir(tmp_path) / "dashboard.png"
    browser.save_screenshot(str(shot))
    print(f"dashboard screenshot: {shot}")
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
