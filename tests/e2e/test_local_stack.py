"""`make run` as a new user meets it: the whole pipeline as separate processes, searched from another terminal.

Kills, outages and concurrent workers are the chaos test's (tests/e2e/test_chaos.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import wait_for
from tests.support.stack import stack_settings

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "support_tickets.jsonl"


@pytest.mark.slow
def test_make_run_serves_search_until_ctrl_c(tmp_path: Path) -> None:
    """What a new user does: start the stack, search from another terminal, press Ctrl-C."""
    settings = stack_settings(tmp_path / "data", sample_data=SAMPLES)
    env = {
        "DATA_DIR": str(settings.data_dir),
        "REDIS_URL": settings.redis_url,
        "MONGO_URI": settings.mongo_uri,
        "EMBEDDING_URL": settings.embedding_url,
        "UPSERTER_URL": settings.upserter_url,
        "PRODUCER_METRICS_PORT": str(settings.producer_metrics_port),
        "EMBEDDER_METRICS_PORT": str(settings.embedder_metrics_port),
        "SAMPLE_DATA": str(SAMPLES),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    log = tmp_path / "make-run.log"
    with open(log, "wb") as output:
        run = subprocess.Popen(
            [sys.executable, "-m", "vecsync.localstack"], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: b"240 documents are searchable" in log.read_bytes(), timeout=400, what=f"make run (log {log})")
        vecsync = str(Path(sys.executable).parent / "vecsync")
        search = subprocess.run(
            [vecsync, "search", "I was charged twice and want my money back", "--limit", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert search.returncode == 0, search.stderr
        lines = [line for line in search.stdout.splitlines() if not line.startswith(" ")]
        assert len(lines) == 3
        assert any(word in lines[0].lower() for word in ("charge", "refund", "billed", "payment")), search.stdout
        status = subprocess.run([vecsync, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert "raw_document_changes / embedding_processors: length 240, lag 0, pending 0" in status.stdout
    finally:
        run.send_signal(signal.SIGINT)
        code = run.wait(120)
    assert code == 0, log.read_text()
    assert log.read_text().rstrip().endswith("Stopped.")
