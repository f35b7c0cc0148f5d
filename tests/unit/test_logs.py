"""`setup_logging`, the one place logging is configured (in a child process: it is global)."""

from __future__ import annotations

import subprocess
import sys

import orjson

SCRIPT = """
import structlog
from anomaly_stream.logs import setup_logging
setup_logging("info", "json", handler={handler})
log = structlog.get_logger("anomaly_stream.chain.ingest")
log.debug("not_shown")
log.info("blocks_published", first_block=1, last_block=3)
"""


def run(handler: bool) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(handler=handler)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stderr


def test_a_command_without_faust_gets_json_events_with_fields():
    [line] = run(handler=True).splitlines()
    event = orjson.loads(line)
    assert event["event"] == "blocks_published" and event["level"] == "info"
    assert (event["first_block"], event["last_block"]) == (1, 3) and "timestamp" in event


def test_without_a_handler_info_events_are_left_to_faust():
    assert run(handler=False) == ""
