"""A service that cannot start says why in one line and exits 2, instead of a traceback and a restart loop."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tests.support.servers import BIN


@pytest.mark.parametrize("service", ["vecsync-producer", "vecsync-embedder-worker", "vecsync-upserter"])
def test_a_metrics_port_held_by_another_program_is_a_configuration_error(
    service: str, redis_url: str, tmp_path: object
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(port),
            "DATA_DIR": str(tmp_path),
        }
        done = subprocess.run([str(BIN / service)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"METRICS_PORT {port} on 127.0.0.1 is in use" in done.stderr
    assert "Traceback" not in done.stderr
