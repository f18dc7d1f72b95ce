"""The embedder-worker during a model change (vecsync.reindex), against real Redis and an embedding-api stand-in of
two models: the entries for the served collection and for the one being built, the snapshot's entries, and the
count of the snapshot's documents embedded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.service import Embedder
from embedder_worker.settings import EmbedderSettings
from tests.support.fake_api import FakeApi
from vecsync import reindex
from vecsync.constants import APPLIED_TEXT_KEY
from vecsync.consumer import StreamConsumer
from vecsync.documents import point_id, text_fingerprint, text_sha256
from vecsync.errors import ConfigurationError
from vecsync.messages import DocumentChange, EmbeddedDocument
from vecsync.stream_stats import stream_stats

STAGE1, STAGE2, GROUP = "raw_document_changes", "embedded_documents", "embedding_processors"
SOURCE = "app.documents"
ALIAS = "documents"  # QDRANT_COLLECTION's default
# The models the stand-in serves, and the size of each one's vectors; its default names itself "default-384".
DIMS = {"model-a": 384, "model-b": 256}
DEFAULT_MODEL = "default-384"


class TwoModelApi(FakeApi):
    """Answers POST /encode_batch with vectors of the size of the model the request names (384 when it names none),
    and GET /v1/models with its default model; keeps every request as FakeApi does."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = self._answer

    def _answer(self, method: str, path: str, body: Any) -> tuple[int, object]:
        if method == "GET":
            return 200, {"data": [{"id": DEFAULT_MODEL}]}
        model = body.get("model")
        if model is not None and model not in DIMS:
            return 404, {"detail": f"model {model} is not served"}
        size = DIMS.get(model, 384)
        vectors = [[float(len(text) % 7 + 1)] * size for text in body["texts"]]
        return 200, {"embeddings": vectors, "model": model or DEFAULT_MODEL}

    def embedding_requests(self) -> list[dict[str, Any]]:
        return [body for method, path, body in self.requests if method == "POST" and isinstance(body, dict)]


@pytest.fixture
def api() -> Iterator[TwoModelApi]:
    served = TwoModelApi()
    yield served
    served.close()


def embedder(redis_client: redis.Redis, redis_url: str, api: FakeApi, tmp_path: Path) -> StreamConsumer:
    settings = EmbedderSettings(
        redis_url=redis_url,
        embedding_url=api.url,
        consumer_name="embedder-1",
        data_dir=tmp_path,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        block_ms=50,
    )
    client = EmbeddingClient.from_settings(settings)
    return StreamConsumer(
        redis_client,
        stage="embedder",
        stream=STAGE1,
        group=GROUP,
        handler=Embedder(settings, client, redis_client).handle,
        settings=settings,
        probe=client.probe,
    )


def add_change(client: redis.Redis, mongo_id: str, text: str | None, build: str | None = None) -> None:
    document = {"subject": text} if text is not None else None
    change = DocumentChange("upsert" if text is not None else "delete", SOURCE, mongo_id, 1.0, document, build=build)
    client.xadd(STAGE1, change.to_fields())


def outputs(client: redis.Redis) -> list[EmbeddedDocument]:
    return [EmbeddedDocument.from_fields(fields) for _id, fields in client.xrange(STAGE2)]


def by_collection(client: redis.Redis) -> dict[str | None, EmbeddedDocument]:
    written = outputs(client)
    found = {document.collection: document for document in written}
    assert len(found) == len(written), f"two entries for one collection: {written}"
    return found


def served_and_building(client: redis.Redis) -> reindex.Reindex:
    """``documents`` serves itself (adopted) with model-a, and a change to model-b (256 dimensions) is building."""
    serving = reindex.Serving(ALIAS, "model-a", 384, alias=ALIAS)
    reindex.write_serving(client, serving)
    return reindex.start(client, ALIAS, model="model-b", dim=256, serving=serving)


def dropped_count() -> float:
    return REGISTRY.get_sample_value("vecsync_embedder_build_entries_dropped_total") or 0.0


def test_without_records_entries_and_requests_are_as_before_model_changes(
    redis_client: redis.Redis, redis_url: str, api: TwoModelApi, tmp_path: Path
) -> None:
    add_change(redis_client, "doc", "a text of the one collection")
    add_change(redis_client, "gone", None)
    embedder(redis_client, redis_url, api, tmp_path).run(drain=True)
    written = {document.mongo_id: document for document in outputs(redis_client)}
    assert sorted(written) == ["doc", "gone"]
    assert all(document.collection is None for document in written.values())
    assert "collection" not in dict(redis_client.xrange(STAGE2)[0][1])
    doc = written["doc"]
    assert doc.op == "upsert" and doc.vector is not None and len(doc.vector) == 384
    assert doc.payload is not None and doc.payload["model"] == DEFAULT_MODEL
    assert written["gone"].op == "delete"
    assert [body for body in api.embedding_requests() if "model" in body] == []
    assert all("model" not in body for body in api.chunk_requests)


def test_a_live_change_while_building_makes_an_entry_for_each_collection_with_its_own_model(
    redis_client: redis.Redis, redis_url: str, api: TwoModelApi, tmp_path: Path
) -> None:
    change = served_and_building(redis_client)
    # The served collection holds this text already: its entry is payload-only, the new collection's is embedded.
    text = "a text that documents holds already"
    redis_client.hset(APPLIED_TEXT_KEY, point_id(SOURCE, "doc"), text_fingerprint(text_sha256(text), "model-a"))
    add_change(redis_client, "doc", text)
    add_change(redis_client, "new", "a new text")
    embedder(redis_client, redis_url, api, tmp_path).run(drain=True)

    written = outputs(redis_client)
    assert [(document.mongo_id, document.collection) for document in written] == [
        ("doc", ALIAS),
        ("doc", change.collection),
        ("new", ALIAS),
        ("new", change.collection),
    ]
    served_doc, built_doc, served_new, built_new = written
    assert served_doc.op == "payload" and served_doc.payload is not None
    assert served_doc.payload["model"] == "model-a"
    assert built_doc.op == "upsert" and built_doc.vector is not None and len(built_doc.vector) == 256
    assert built_doc.payload is not None and built_doc.payload["model"] == "model-b"
    assert served_new.vector is not None and len(served_new.vector) == 384
    assert built_new.vector is not None and len(built_new.vector) == 256
    assert served_doc.version == built_doc.version and served_doc.source == built_doc.source == SOURCE
    # Each collection's texts were chunked and embedded by its own model; only new's text by model-a.
    assert [(body["model"], body["texts"]) for body in api.embedding_requests()] == [
        ("model-a", ["a new text"]),
        ("model-b", [text, "a new text"]),
    ]
    assert sorted(body["model"] for body in api.chunk_requests) == ["model-a", "model-b"]
    # Live changes are not the snapshot: nothing is counted.
    current = reindex.read_reindex(redis_client, ALIAS)
    assert current is not None and current.embedded == 0


def test_a_delete_while_building_makes_a_delete_for_each_collection(
    redis_client: redis.Redis, redis_url: str, api: TwoModelApi, tmp_path: Path
) -> None:
    change = served_and_building(redis_client)
    add_change(redis_client, "gone", None)
    embedder(redis_client, redis_url, api, tmp_path).run(drain=True)
    written = by_collection(redis_client)
    assert sorted(written) == sorted([ALIAS, change.collection])
    assert all(document.op == "delete" and document.mongo_id == "gone" for document in written.values())
    assert api.embedding_requests() == []


def test_a_snapshot_change_is_embedded_for_the_new_collection_alone_and_counted(
    redis_client: redis.Redis, redis_url: str, api: TwoModelApi, tmp_path: Path
) -> None:
    change = served_and_building(redis_client)
    for n in range(3):
        add_change(redis_client, f"doc-{n}", f"snapshot text {n}", build=change.collection)
    consumer = embedder(redis_client, redis_url, api, tmp_path)
    consumer.run(drain=True)
    written = outputs(redis_client)
    assert [document.collection for document in written] == [change.collection] * 3
    assert all(document.vector is not None and len(document.vector) == 256 for document in written)
    assert {body["model"] for body in api.embedding_requests()} == {"model-b"}
    counted = reindex.read_reindex(redis_client, ALIAS)
    assert counted is not None and counted.embedded == 3 and counted.progress_at >= change.progress_at

    add_change(redis_client, "doc-3", "snapshot text 3", build=change.collection)
    consumer.run(drain=True)
    counted = reindex.read_reindex(redis_client, ALIAS)
    assert counted is not None and counted.embedded == 4


def test_a_snapshot_change_for_the_served_collection_is_embedded_for_it_alone(
    redis_client: redis.Redis, redis_url: str, api: TwoModelApi, tmp_path: Path
) -> None:
    served_and_building(redis_client)
    add_change(redis_client, "doc", "a text for the served collection", build=ALIAS)
    embedder(redis_client, redis_url, api, tmp_path).run(drain=True)
    [written] = outputs(redis_client)
    assert written.collection == ALIAS and written.vector is not None and len(written.vector) == 384
    counted = reindex.read_reindex(redis_client, ALIAS)
    assert counted is not None and counted.embedded == 0


def test_a_snapshot_change_of_an_aborted_change_is_acknowledged_without_output(
    redis_client: redis.Redis, redis_url: str, api: TwoModelApi, tmp_path: Path
) -> None:
    change = served_and_building(redis_client)
    assert reindex.end(redis_client, ALIAS, change.number, reindex.Phase.ABORTED)
    dropped = dropped_count()
    add_change(redis_client, "old", "a snapshot text of the aborted change", build=change.collection)
    add_change(redis_client, "live", "a live change")
    embedder(redis_client, redis_url, api, tmp_path).run(drain=True)
    [written] = outputs(redis_client)
    assert written.mongo_id == "live" and written.collection == ALIAS
    assert dropped_count() == dropped + 1
    stats = stream_stats(redis_client, STAGE1, GROUP)
    assert stats.pending == 0 and stats.lag == 0
    assert redis_client.xlen(STAGE1 + ":dlq") == 0
    counted = reindex.read_reindex(redis_client, ALIAS)
    assert counted is not None and counted.embedded == 0


def test_after_the_switch_live_changes_go_to_the_new_collection_alone(
    redis_client: redis.Redis, redis_url: str, api: TwoModelApi, tmp_path: Path
) -> None:
    change = served_and_building(redis_client)
    assert reindex.end(redis_client, ALIAS, change.number, reindex.Phase.SWITCHED)
    reindex.write_serving(redis_client, reindex.Serving(change.collection, "model-b", 256, alias=ALIAS))
    add_change(redis_client, "doc", "a text after the switch")
    embedder(redis_client, redis_url, api, tmp_path).run(drain=True)
    [written] = outputs(redis_client)
    assert written.collection == change.collection
    assert written.vector is not None and len(written.vector) == 256
    assert written.payload is not None and written.payload["model"] == "model-b"


def test_vectors_of_another_size_than_the_collection_records_are_a_misconfiguration(api: TwoModelApi) -> None:
    client = EmbeddingClient(api.url, dim=384, timeout_s=5)
    assert len(client.embed(["a text"], model="model-b", dim=256)[0]) == 256
    assert client.model == "model-b"
    with pytest.raises(ConfigurationError, match="vectors of 256 dimensions, but the collection"):
        client.embed(["a text"], model="model-b", dim=384)
    with pytest.raises(ConfigurationError, match="EMBEDDING_DIM is 384"):
        client.embed(["a text"], model="model-b")
    assert [body.get("model") for body in api.embedding_requests()] == ["model-b"] * 3


def test_openai_style_requests_name_the_collections_model_else_the_configured_one() -> None:
    api = FakeApi()
    api.answer = lambda _method, _path, body: (200, {"data": [{"index": 0, "embedding": [1.0, 2.0]}]})
    try:
        client = EmbeddingClient(api.url, dim=2, timeout_s=5, style="openai", configured_model="configured")
        client.embed(["a"])
        client.embed(["a"], model="model-b")
        assert [body["model"] for _method, _path, body in api.requests] == ["configured", "model-b"]  # type: ignore[index]
        assert client.model == "model-b"
    finally:
        api.close()
    assert EmbeddingClient.from_settings(EmbedderSettings()).configured_model == "all-MiniLM-L6-v2"
    assert EmbeddingClient.from_settings(EmbedderSettings(embedding_model="m")).configured_model == "m"
