"""Credentials: a service given wrong ones stops at start with a clear message that does not echo them."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.servers import BIN, Server, free_port, start_redis, wait_for

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_redis(tmp_path_factory.mktemp("secured-redis"), "--requirepass", PASSWORD)
    yield server
    server.stop()


def worker(redis_url: str, tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "METRICS_PORT": str(port), "BACKOFF_MAX_S": "1"}
    process = subprocess.Popen(
        [str(BIN / "vecsync-embedder-worker")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return process, port


@pytest.mark.parametrize("credentials", [":wrong-password@", ""], ids=["wrong password", "no password"])
def test_wrong_redis_credentials_stop_the_service_at_start(
    secured_redis: Server, tmp_path: Path, credentials: str
) -> None:
    process, _port = worker(f"redis://{credentials}127.0.0.1:{secured_redis.port}/0", tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert "Redis refused the credentials in REDIS_URL" in output
    assert "wrong-password" not in output, "a secret was logged"


def test_the_right_password_works_and_is_never_logged(secured_redis: Server, tmp_path: Path) -> None:
    process, port = worker(f"redis://:{PASSWORD}@127.0.0.1:{secured_redis.port}/0", tmp_path)
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, what="a healthy worker")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert PASSWORD not in output
    assert "redis://:***@127.0.0.1" in output
