"""Entries that fail their batch-mates: one that kills its worker, one that a dependency fails on forever while it
serves every other input. Only the culprit is dead-lettered; an outage still dead-letters nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support import crashing_worker
from tests.support.crashing_worker import CRASH_EXIT, GROUP, OUT, STREAM
from tests.support.fake_api import FakeApi
from tests.support.pipeline import Pipeline
from tests.support.servers import wait_for
from vecsync.consumer import StreamConsumer
from vecsync.messages import DocumentChange

STAGE1, STAGE2 = "raw_document_changes", "embedded_documents"

ROOT = Path(__file__).resolve().parents[2]


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(STREAM + ":dlq")]


@pytest.mark.parametrize("same_name", [True, False], ids=["restarted", "replaced"])
def test_an_entry_that_kills_its_worker_is_dead_lettered_alone(
    redis_client: redis.Redis, redis_url: str, same_name: bool
) -> None:
    values = [f"good-{n}" for n in range(20)] + ["poison"] + [f"good-{n}" for n in range(20, 63)]
    for value in values:
        redis_client.xadd(STREAM, {"value": value})
    exits = []
    for run in range(3 * crashing_worker.MAX_DELIVERIES):
        name = "worker" if same_name else f"worker-{run}"
        command = [sys.executable, "-m", "tests.support.crashing_worker", redis_url, name]
        exits.append(subprocess.run(command, cwd=ROOT, timeout=60, capture_output=True).returncode)
        if exits[-1] == 0 and int(redis_client.xpending(STREAM, GROUP)["pending"]) == 0:
            break
        assert exits[-1] in (0, CRASH_EXIT), exits
    assert exits.count(CRASH_EXIT) == crashing_worker.MAX_DELIVERIES
    [letter] = dead_letters(redis_client)
    assert json.loads(letter["fields"]) == {"value": "poison"}
    written = sorted(fields["value"] for _id, fields in redis_client.xrange(OUT))
    assert written == sorted(value for value in values if value != "poison"), "each batch-mate reached the next stage"


# One input that a dependency fails on "transiently" forever ------------------------------------------------------

POISON = "the text this embedding-api fails on"


class Embeddings:
    """An embedding-api that fails every request holding POISON (500, or a reset connection), and every request
    while it is ``down``; it answers the others with vectors of the configured size."""

    def __init__(self, failure: str) -> None:
        self.failure = failure
        self.down = False
        self.api = FakeApi()
        self.api.answer = self.answer

    def answer(self, _method: str, _path: str, body: object) -> tuple[int, object] | None:
        texts = body["texts"] if isinstance(body, dict) else []
        if self.down:
            return 503, {"detail": "The model is not ready: loading."}
        if POISON in texts:
            return None if self.failure == "reset" else (500, {"detail": "The model failed on this batch: boom"})
        return 200, {"embeddings": [[0.5] * 384 for _ in texts], "model": "scripted"}


@pytest.fixture(params=["500", "reset"])
def embeddings(request: pytest.FixtureRequest) -> Iterator[Embeddings]:
    made = Embeddings(request.param)
    yield made
    made.api.close()


def add_changes(pipeline: Pipeline, texts: list[str]) -> None:
    for n, text in enumerate(texts):
        change = DocumentChange("upsert", pipeline.source, f"doc-{n}", 1.0, {"subject": text})
        pipeline.redis_client.xadd(STAGE1, change.to_fields())  # type: ignore[arg-type]


def stage1_letters(pipeline: Pipeline) -> list[dict[str, str]]:
    return [fields for _id, fields in pipeline.redis_client.xrange(STAGE1 + ":dlq")]


@pytest.fixture
def run_embedder() -> Iterator[Callable[[StreamConsumer], StreamConsumer]]:
    loops: list[tuple[StreamConsumer, threading.Thread]] = []

    def start(loop: StreamConsumer) -> StreamConsumer:
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        loops.append((loop, thread))
        return loop

    yield start
    for loop, thread in loops:
        loop.stop()
        thread.join(10)


def test_one_text_the_api_fails_on_while_it_serves_the_others_is_dead_lettered_alone(
    pipeline: Pipeline, embeddings: Embeddings, run_embedder: Callable[[StreamConsumer], StreamConsumer]
) -> None:
    texts = [f"a good text number {n}" for n in range(10)]
    texts.insert(4, POISON)
    add_changes(pipeline, texts)
    pipeline.embedding_url = embeddings.api.url
    run_embedder(pipeline.embedder_consumer())
    wait_for(
        lambda: pipeline.redis_client.xlen(STAGE2) == 10 and len(stage1_letters(pipeline)) == 1,
        timeout=30,
        what="the batch-mates to pass and the poison to be dead-lettered",
    )
    [letter] = stage1_letters(pipeline)
    assert json.loads(letter["fields"])["mongo_id"] == "doc-4"
    expected = "boom" if embeddings.failure == "500" else "unreachable"
    assert expected in letter["error"] and "served" in letter["error"], letter["error"]
    assert int(pipeline.redis_client.xpending(STAGE1, "embedding_processors")["pending"]) == 0


def test_an_outage_dead_letters_nothing_even_with_a_poison_text_waiting(
    pipeline: Pipeline, embeddings: Embeddings, run_embedder: Callable[[StreamConsumer], StreamConsumer]
) -> None:
    embeddings.down = True
    texts = [f"a good text number {n}" for n in range(10)]
    texts.insert(4, POISON)
    add_changes(pipeline, texts)
    pipeline.embedding_url = embeddings.api.url
    # Down for many times CLAIM_IDLE_MS x MAX_DELIVERIES, with a second worker idle beside the first.
    settings = {"claim_idle_ms": 100, "max_deliveries": 2}
    run_embedder(pipeline.embedder_consumer(**settings))
    run_embedder(pipeline.embedder_consumer(consumer_name="embedder-2", **settings))
    wait_for(lambda: len(embeddings.api.requests) > 20, timeout=30, what="the workers retrying through the outage")
    time.sleep(20 * 100 * 2 / 1000)
    assert stage1_letters(pipeline) == [], "an outage dead-letters nothing"
    assert pipeline.redis_client.xlen(STAGE2) == 0
    embeddings.down = False
    wait_for(
        lambda: pipeline.redis_client.xlen(STAGE2) == 10 and len(stage1_letters(pipeline)) == 1,
        timeout=30,
        what="the backlog to drain once the embedding-api is back",
    )
    [letter] = stage1_letters(pipeline)
    assert json.loads(letter["fields"])["mongo_id"] == "doc-4"
