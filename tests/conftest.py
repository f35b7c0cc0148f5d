"""Fixtures: the local stack for integration tests, and per-test worker factories.

Integration tests use the running stack (`make up`), starting it when absent;
a stack that will not start fails the session loudly, it is never skipped.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .support import REPO, WorkerProcess, deployment_env

STACK = [sys.executable, str(REPO / "deploy" / "local" / "stack.py")]


@pytest.fixture(scope="session")
def stack():
    started = subprocess.run([*STACK, "status"], capture_output=True).returncode != 0
    if started:
        subprocess.run([*STACK, "up"], check=True)
    yield
    if started:
        subprocess.run([*STACK, "down"], check=True)


@pytest.fixture
def workers(stack, tmp_path):
    """Factory: `workers(env)` starts a worker process (`command="notify"`: a notifier); all are killed after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], name: str = "worker", command: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path, name=f"{name}{len(started)}", command=command).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for worker in started:
        if worker.proc.returncode not in (0, -15, -9, None):
            print(worker.log_path.read_text()[-3000:])


@pytest.fixture
def env():
    return deployment_env()
