"""A misconfiguration is not poison: when every entry would fail alike (a model of another size than EMBEDDING_DIM,
a URL or API style that answers 404, a refused key), the stage pauses with its entries, says why in its log, its
/healthz and its metrics, dead-letters nothing, and resumes by itself once the cause is gone."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.fake_api import FakeApi
from tests.support.pipeline import Pipeline
from tests.support.redis_acl import least_privilege_clients
from tests.support.servers import BIN, free_port, start_embedding_api, wait_for
from vecsync import metrics
from vecsync.consumer import StreamConsumer
from vecsync.messages import EmbeddedDocument
from vecsync.stream_stats import stream_stats

STAGE1, STAGE2, GROUP = "raw_document_changes", "embedded_documents", "embedding_processors"


def dead_letters(pipeline: Pipeline) -> int:
    return int(pipeline.redis_client.xlen(STAGE1 + ":dlq") + pipeline.redis_client.xlen(STAGE2 + ":dlq"))


class Running:
    """Consumers run in threads until the test ends, as deployed stages run."""

    def __init__(self) -> None:
        self.loops: list[tuple[StreamConsumer, threading.Thread]] = []

    def start(self, loop: StreamConsumer) -> StreamConsumer:
        thread = threading.Thread(target=loop.run, name=loop.stage, daemon=True)
        thread.start()
        self.loops.append((loop, thread))
        return loop

    def stop(self) -> None:
        for loop, _thread in self.loops:
            loop.stop()
        for _loop, thread in self.loops:
            thread.join(10)


@pytest.fixture
def running() -> Iterator[Running]:
    stages = Running()
    yield stages
    stages.stop()


def healthz(port: int) -> tuple[int, str]:
    response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    return response.status_code, response.text


def test_a_model_of_another_size_pauses_the_worker_until_the_embedding_api_is_right(
    pipeline: Pipeline, running: Running, tmp_path: Path
) -> None:
    port = free_port()
    api = start_embedding_api(tmp_path / "api", "hash", port, EMBEDDING_DIM="768")
    metrics_port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": pipeline.redis_url,
        "METRICS_PORT": str(metrics_port),
        "EMBEDDING_URL": f"http://127.0.0.1:{port}",
        "BACKOFF_INITIAL_S": "0.05",
        "BACKOFF_MAX_S": "0.2",
        "CONSUMER_NAME": "embedder-1",
    }
    worker = subprocess.Popen(
        [str(BIN / "vecsync-embedder-worker")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        pipeline.collection.insert_many([{"_id": f"doc-{n}", "subject": f"text {n}"} for n in range(20)])
        pipeline.run_producer()
        running.start(pipeline.upserter_consumer())

        wait_for(lambda: "paused" in healthz(metrics_port)[1], timeout=60, what="the worker to pause")
        status, body = healthz(metrics_port)
        assert status == 200, "a paused worker is alive: it keeps its entries and retries"
        assert "768" in body and "EMBEDDING_DIM" in body
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
        assert 'vecsync_consumer_paused{group="embedding_processors",stage="embedder"' in scraped
        assert dead_letters(pipeline) == 0
        stats = stream_stats(pipeline.redis_client, STAGE1, GROUP)
        assert stats.pending + (stats.lag or 0) == 20, "the changes wait in the stream"

        # The embedding-api comes back with a model of the configured size; the worker keeps running throughout.
        api.stop()
        api = start_embedding_api(tmp_path / "api", "hash", port)
        wait_for(lambda: pipeline.drained() and len(pipeline.points()) == 20, timeout=60, what="the backlog to drain")
        wait_for(lambda: "paused" not in healthz(metrics_port)[1], timeout=10, what="the worker to resume")
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
        api.stop()
    assert dead_letters(pipeline) == 0
    paused_lines = [line for line in output.splitlines() if "paused" in line]
    assert paused_lines, output
    assert "768 dimensions" in paused_lines[0] and "EMBEDDING_DIM is 384" in paused_lines[0], paused_lines[0]
    assert any("resumed" in line for line in output.splitlines()), output


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    yield api
    api.close()


def paused(consumer: StreamConsumer) -> float:
    return float(metrics.CONSUMER_PAUSED.labels(**consumer._labels)._value.get())


@pytest.mark.parametrize(
    ("status", "named"),
    [(404, "EMBEDDING_URL"), (405, "EMBEDDING_API_STYLE"), (401, "EMBEDDING_API_KEY"), (403, "EMBEDDING_API_KEY")],
)
def test_a_wrong_url_or_a_refused_key_pauses_the_worker_until_it_is_answered(
    pipeline: Pipeline, running: Running, fake_api: FakeApi, status: int, named: str
) -> None:
    fake_api.status, fake_api.body = status, {"detail": "Not Found" if status == 404 else "no"}
    pipeline.embedding_url = fake_api.url
    pipeline.collection.insert_many([{"_id": f"doc-{n}", "subject": f"text {n}"} for n in range(3)])
    pipeline.run_producer()
    embedder = running.start(pipeline.embedder_consumer())
    wait_for(lambda: embedder.paused, timeout=10, what="the worker to pause")
    assert named in (embedder.paused or "") and str(status) in (embedder.paused or "")
    assert paused(embedder) == 1
    assert dead_letters(pipeline) == 0
    fake_api.status, fake_api.body = 200, {"embeddings": [[0.1] * 384] * 3}
    wait_for(lambda: pipeline.redis_client.xlen(STAGE2) == 3, timeout=10, what="the worker to resume")
    wait_for(lambda: embedder.paused is None, timeout=10, what="the pause to end")
    assert paused(embedder) == 0
    assert dead_letters(pipeline) == 0


def stage2_upsert(pipeline: Pipeline, mongo_id: str, version: str, dim: int) -> None:
    payload = {"mongo_id": mongo_id, "text": f"text of {mongo_id}"}
    document = EmbeddedDocument("upsert", pipeline.source, mongo_id, 1.0, version, [0.1] * dim, payload)
    pipeline.redis_client.xadd(STAGE2, document.to_fields())  # type: ignore[arg-type]


def test_vectors_of_another_size_than_the_collection_pause_the_upserter_until_newer_ones_fit(
    pipeline: Pipeline, running: Running
) -> None:
    # The embedder-workers ran with EMBEDDING_DIM=768 and a 768-dimension model; the upserters' collection has 384.
    for n in range(5):
        stage2_upsert(pipeline, f"doc-{n}", f"{n + 1}-0", 768)
    upserter = running.start(pipeline.upserter_consumer())
    wait_for(lambda: upserter.paused, timeout=10, what="the upserter to pause")
    reason = upserter.paused or ""
    assert "768 dimensions" in reason and "holds 384" in reason and "EMBEDDING_DIM" in reason, reason
    assert dead_letters(pipeline) == 0
    assert pipeline.store.count() == 0

    # The embedder-workers are set right again: the changes they embed from now on fit the collection. The entries
    # made at the old size can never be written: they are dead-lettered, to be replayed (embedded again).
    stage2_upsert(pipeline, "doc-new", "10-0", 384)
    wait_for(lambda: "doc-new" in pipeline.points(), timeout=10, what="the newer entry to be written")
    wait_for(lambda: upserter.paused is None, timeout=10, what="the pause to end")
    letters = [fields for _id, fields in pipeline.redis_client.xrange(STAGE2 + ":dlq")]
    assert len(letters) == 5
    assert all("768 dimensions" in letter["error"] and "replay" in letter["error"] for letter in letters)


def test_a_command_the_services_redis_user_may_not_run_pauses_the_stage_until_it_may(
    pipeline: Pipeline, running: Running
) -> None:
    """An ACL that lacks a command (one written for an older release, say) refuses it for every entry alike: the
    stage pauses with its entries rather than move the backlog to the dead-letter stream, names the refusal, and
    resumes once the user may run it."""
    with least_privilege_clients(pipeline.redis_client, pipeline.redis_url) as clients:
        pipeline.redis_client.execute_command("ACL", "SETUSER", "vecsync-embedder", "-hgetall")
        pipeline.collection.insert_many([{"_id": f"doc-{n}", "subject": f"text {n}"} for n in range(3)])
        pipeline.run_producer()
        embedder = running.start(dataclasses.replace(pipeline, redis_client=clients["embedder"]).embedder_consumer())
        wait_for(lambda: embedder.paused, timeout=10, what="the worker to pause")
        assert "hgetall" in (embedder.paused or "") and "docs/security.md" in (embedder.paused or "")
        assert paused(embedder) == 1
        assert dead_letters(pipeline) == 0
        pipeline.redis_client.execute_command("ACL", "SETUSER", "vecsync-embedder", "+hgetall")
        wait_for(lambda: pipeline.redis_client.xlen(STAGE2) == 3, timeout=10, what="the worker to resume")
        wait_for(lambda: embedder.paused is None, timeout=10, what="the pause to end")
        running.stop()
    assert dead_letters(pipeline) == 0
