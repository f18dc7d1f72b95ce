"""The embedder-worker against the embedding-api app served over HTTP: texts the model fails on, a broken model, and
the model each vector comes from."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
import uvicorn

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.settings import EmbedderSettings
from embedding_api.app import create_app
from embedding_api.backends import HashEncoder
from embedding_api.settings import EmbeddingApiSettings
from tests.support.embedder import embedder
from tests.support.pipeline import Pipeline
from tests.support.servers import free_port, wait_for
from vecsync.constants import APPLIED_TEXT_KEY
from vecsync.documents import point_id, text_fingerprint, text_sha256
from vecsync.errors import TransientError
from vecsync.messages import DocumentChange, EmbeddedDocument
from vecsync.stream_stats import stream_stats

STAGE1, STAGE2, GROUP = "raw_document_changes", "embedded_documents", "embedding_processors"
SOURCE = "app.documents"
MODEL_ERROR = "ValueError: the model cannot read this text"


class ScriptedEncoder(HashEncoder):
    """The hash encoder, failing on every model call that holds ``fail_on``, or on every call while ``broken``."""

    def __init__(self) -> None:
        super().__init__(384)
        self.fail_on: str | None = None
        self.broken = False
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.fail_on in texts:
            raise ValueError("the model cannot read this text")
        return super().encode(texts)


@dataclass
class ServedApi:
    url: str
    encoder: ScriptedEncoder


@pytest.fixture
def api() -> Iterator[ServedApi]:
    encoder = ScriptedEncoder()
    port = free_port()
    config = uvicorn.Config(
        create_app(EmbeddingApiSettings(), encoder), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="embedding-api", daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the embedding-api app")
    yield ServedApi(f"http://127.0.0.1:{port}", encoder)
    server.should_exit = True
    thread.join(10)


def add_change(client: redis.Redis, mongo_id: str, text: str) -> None:
    client.xadd(STAGE1, DocumentChange("upsert", SOURCE, mongo_id, 1.0, {"subject": text}).to_fields())


def outputs(client: redis.Redis) -> dict[str, EmbeddedDocument]:
    return {doc.mongo_id: doc for doc in (EmbeddedDocument.from_fields(f) for _id, f in client.xrange(STAGE2))}


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(STAGE1 + ":dlq")]


def test_a_text_the_model_fails_on_is_dead_lettered_and_the_rest_of_its_batch_flows(
    redis_client: redis.Redis, redis_url: str, api: ServedApi, tmp_path: Path
) -> None:
    api.encoder.fail_on = "poison"
    good = {f"good-{n}": f"a good text number {n}" for n in range(6)}
    for mongo_id, text in list(good.items())[:3]:
        add_change(redis_client, mongo_id, text)
    add_change(redis_client, "poisoned", "poison")
    for mongo_id, text in list(good.items())[3:]:
        add_change(redis_client, mongo_id, text)

    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    [letter] = dead_letters(redis_client)
    assert json.loads(letter["fields"])["mongo_id"] == "poisoned"
    assert MODEL_ERROR in letter["error"] and "embedding-api" in letter["error"]
    written = outputs(redis_client)
    assert sorted(written) == sorted(good)
    assert all(doc.op == "upsert" and doc.vector is not None for doc in written.values())
    stats = stream_stats(redis_client, STAGE1, GROUP)
    assert stats.pending == 0 and stats.lag == 0
    # The whole batch was one request (merged with the poison text), then the rest of it was one more: no entry of
    # the batch went through the consumer loop's entry-by-entry retry.
    texts = list(good.values())
    assert api.encoder.calls[0] == [*texts[:3], "poison", *texts[3:]]
    assert api.encoder.calls[-1] == texts


def test_a_model_that_fails_on_everything_is_retried_and_dead_letters_nothing(
    redis_client: redis.Redis, redis_url: str, api: ServedApi, tmp_path: Path
) -> None:
    api.encoder.broken = True
    with pytest.raises(TransientError, match="503"):
        EmbeddingClient(api.url, dim=384, timeout_s=10).embed(["a text", "another text"])
    for n in range(3):
        add_change(redis_client, f"doc-{n}", f"text {n}")
    consumer = embedder(redis_client, redis_url, api.url, tmp_path)
    thread = threading.Thread(target=consumer.run, kwargs={"drain": True})
    thread.start()
    calls = len(api.encoder.calls)
    try:
        wait_for(lambda: len(api.encoder.calls) >= calls + 6, what="the worker retrying the broken model")
    finally:
        consumer.stop()
        thread.join(10)
    assert dead_letters(redis_client) == []
    assert outputs(redis_client) == {}
    assert stream_stats(redis_client, STAGE1, GROUP).pending == 3, "the changes wait in the stream"


def test_the_payload_names_the_model_the_embedding_api_reported(pipeline: Pipeline) -> None:
    pipeline.collection.insert_one({"_id": "doc", "subject": "which model embedded me?"})
    pipeline.drain()
    assert EmbedderSettings().embedding_model != "hash-384"
    assert pipeline.points()["doc"]["model"] == "hash-384"


@pytest.mark.parametrize(
    ("stored_model", "expected_op"),
    [("all-MiniLM-L6-v2", "upsert"), ("hash-384", "payload")],
)
def test_an_unchanged_text_is_skipped_only_when_the_same_model_embedded_it(
    redis_client: redis.Redis, redis_url: str, api: ServedApi, tmp_path: Path, stored_model: str, expected_op: str
) -> None:
    text = "the same text as before"
    fingerprint = text_fingerprint(text_sha256(text), stored_model)
    redis_client.hset(APPLIED_TEXT_KEY, point_id(SOURCE, "doc"), fingerprint)
    add_change(redis_client, "doc", text)
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)
    written = outputs(redis_client)["doc"]
    assert written.op == expected_op
    assert written.payload is not None and written.payload["model"] == "hash-384"


def test_a_reply_from_another_model_than_the_gate_assumed_decides_the_batch_again(
    redis_client: redis.Redis, redis_url: str, api: ServedApi, tmp_path: Path
) -> None:
    api.encoder.name = "model-a"
    consumer = embedder(redis_client, redis_url, api.url, tmp_path, embedding_model="model-a")
    redis_client.hset(APPLIED_TEXT_KEY, point_id(SOURCE, "kept"), text_fingerprint(text_sha256("kept text"), "model-a"))
    add_change(redis_client, "first", "a text embedded while model-a served")
    consumer.run(drain=True)
    # The embedding-api restarts with another model; the worker learns it only from the next reply.
    api.encoder.name = "model-b"
    add_change(redis_client, "kept", "kept text")
    add_change(redis_client, "new", "a new text")
    consumer.run(drain=True)
    written = outputs(redis_client)
    assert written["first"].payload is not None and written["first"].payload["model"] == "model-a"
    for mongo_id in ("kept", "new"):
        assert written[mongo_id].op == "upsert", f"{mongo_id} must be embedded by model-b, not kept as model-a's"
        assert written[mongo_id].payload is not None and written[mongo_id].payload["model"] == "model-b"
    assert redis_client.xlen(STAGE2) == 3
    assert dead_letters(redis_client) == []
