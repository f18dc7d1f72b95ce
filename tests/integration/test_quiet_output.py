"""What the services write where an operator looks: only their own metrics and log lines that carry meaning.

Noise hides real messages (issue 13, item 10): a /metrics page full of pipeline families that never get a value, and
dozens of library INFO lines and tracer warnings on the first onnx-int8 start. The MongoDB stand-in's log written
twice is the local stack's and is checked in tests/e2e/test_local_stack.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from tests.support.servers import BIN, Server, free_port, wait_for


def test_the_embedding_api_exports_only_its_own_metric_families(hash_api: Server) -> None:
    requests.post(f"http://127.0.0.1:{hash_api.port}/encode", json={"text": "hello"}, timeout=10).raise_for_status()
    text = requests.get(f"http://127.0.0.1:{hash_api.port}/metrics", timeout=10).text
    families = set(re.findall(r"^# TYPE (vecsync_\w+)", text, flags=re.MULTILINE))
    assert "vecsync_embedding_requests_total" in families
    assert {name for name in families if not name.startswith("vecsync_embedding_")} == set()
    assert "process_resident_memory_bytes" in text  # the process's own figures stay


@pytest.mark.slow
def test_the_first_onnx_int8_start_logs_what_it_does_and_no_library_chatter(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "EMBEDDING_BACKEND": "onnx-int8",
        "ONNX_CACHE_DIR": str(tmp_path / "onnx-cache"),  # empty: this start exports and quantises the model
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DEVICE": "cpu",
    }
    log = tmp_path / "embedding.log"
    server = Server([str(BIN / "vecsync-embedding-api")], port, log=log, env=env).start(timeout=120)
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok, timeout=300, what="ready")
    finally:
        server.stop()
    lines = log.read_text().splitlines()
    assert any("Exporting" in line for line in lines) and any("Quantising" in line for line in lines), lines
    chatter = [
        line
        for line in lines
        if "TracerWarning" in line
        or "Loading weights" in line
        or re.search(r" (INFO|WARNING) (root|fusion_base|onnx_model\w*|sentence_transformers[\w.]*):", line)
    ]
    assert chatter == []
    # What is left: uvicorn's start, the export and quantisation, one line per loaded model copy, and shutdown.
    assert len(lines) <= 15, "\n".join(lines)
