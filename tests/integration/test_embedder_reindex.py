"""The embedder-worker during a model change (vecsync.reindex): which collections each change is embedded for, with
which model and of which size, against real Redis and an embedding-api stand-in of two models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from embedder_worker.embedding_client import EmbeddingClient
from tests.support.embedder import embedder
from tests.support.models_api import ModelsApi, ServedModel
from vecsync import reindex
from vecsync.constants import APPLIED_TEXT_KEY
from vecsync.documents import point_id, text_fingerprint, text_sha256
from vecsync.errors import ConfigurationError
from vecsync.messages import DocumentChange, EmbeddedDocument
from vecsync.stream_stats import stream_stats

STAGE1, STAGE2, GROUP = "raw_document_changes", "embedded_documents", "embedding_processors"
SOURCE = "app.documents"
NAME = "documents"  # QDRANT_COLLECTION's default: the name the records are about
SERVED = ServedModel("hash-384", 384, window=256)
NEW = ServedModel("hash-256", 256, window=16)  # a small window: a text of 20 words is two chunks of it, one of SERVED
LONG_TEXT = " ".join(f"word{n}" for n in range(20))


@pytest.fixture
def api() -> Iterator[ModelsApi]:
    served = ModelsApi(SERVED, NEW)
    yield served
    served.close()


def building(client: redis.Redis, *, served_model: str | None = SERVED.name) -> reindex.Reindex:
    """The records of a name that serves ``documents`` and builds ``documents-v1`` with the new model beside it."""
    serving = reindex.Serving(NAME, served_model, SERVED.dim if served_model else None, alias=NAME)
    reindex.write_serving(client, serving)
    change = reindex.start(client, NAME, model=NEW.name, dim=NEW.dim, serving=serving)
    assert change.collection == "documents-v1"
    return change


def add(client: redis.Redis, mongo_id: str, text: str, *, build: str | None = None, op: str = "upsert") -> str:
    document = {"subject": text} if op == "upsert" else None
    change = DocumentChange(op, SOURCE, mongo_id, 1.0, document, build=build)  # type: ignore[arg-type]
    return str(client.xadd(STAGE1, change.to_fields()))


def outputs(client: redis.Redis) -> list[tuple[dict[str, str], EmbeddedDocument]]:
    return [(fields, EmbeddedDocument.from_fields(fields)) for _id, fields in client.xrange(STAGE2)]


def by_collection(client: redis.Redis) -> dict[tuple[str, str | None], EmbeddedDocument]:
    written = outputs(client)
    found = {(doc.mongo_id, doc.collection): doc for _fields, doc in written}
    assert len(found) == len(written), "one entry per document and collection"
    return found


def dropped() -> float:
    return REGISTRY.get_sample_value("vecsync_embedder_build_entries_dropped_total") or 0.0


def test_nothing_recorded_writes_entries_as_before_model_changes(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    version = add(redis_client, "doc", "a text before any model change")
    add(redis_client, "gone", "", op="delete")
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    (fields, doc), (deleted_fields, deleted) = outputs(redis_client)
    assert sorted(fields) == ["changed_at", "mongo_id", "op", "payload", "source", "v", "vector", "version"]
    assert doc.op == "upsert" and doc.version == version and doc.collection is None
    assert doc.vector == api.vector(SERVED.name, "a text before any model change")
    assert doc.payload is not None and doc.payload["model"] == SERVED.name
    assert sorted(deleted_fields) == ["changed_at", "mongo_id", "op", "source", "v", "version"]
    assert deleted.op == "delete" and deleted.mongo_id == "gone"
    # The requests name no model: the embedding-api's default answers, as before.
    assert api.bodies("/encode_batch") == [{"texts": ["a text before any model change"], "encoding_format": "base64"}]
    assert all("model" not in body for body in api.bodies("/chunk"))


def test_a_live_change_during_a_build_is_embedded_for_both_collections_each_by_its_model(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    building(redis_client)
    # The served collection holds this text already: payload-only there, but the new collection has no point yet.
    kept = "a text the served collection holds"
    redis_client.hset(APPLIED_TEXT_KEY, point_id(SOURCE, "kept"), text_fingerprint(text_sha256(kept), SERVED.name))
    versions = {"kept": add(redis_client, "kept", kept), "long": add(redis_client, "long", LONG_TEXT)}
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    written = by_collection(redis_client)
    assert sorted(written) == [
        ("kept", "documents"),
        ("kept", "documents-v1"),
        ("long", "documents"),
        ("long", "documents-v1"),
    ]
    for (mongo_id, _collection), doc in written.items():
        assert doc.version == versions[mongo_id] and doc.source == SOURCE

    assert written["kept", "documents"].op == "payload"
    new_kept = written["kept", "documents-v1"]
    assert new_kept.op == "upsert" and new_kept.vector == api.vector(NEW.name, kept)
    assert new_kept.payload is not None and new_kept.payload["model"] == NEW.name

    served_long, new_long = written["long", "documents"], written["long", "documents-v1"]
    assert served_long.vector == api.vector(SERVED.name, LONG_TEXT) and not served_long.chunks
    assert served_long.payload is not None and served_long.payload["model"] == SERVED.name
    # Chunked by the new model's window, each chunk embedded by it, of its size.
    assert len(new_long.chunks) > 1 and new_long.payload is not None and new_long.payload["model"] == NEW.name
    assert [chunk.vector for chunk in new_long.chunks] == [api.vector(NEW.name, c.text) for c in new_long.chunks]
    assert {len(vector) for vector in new_long.vectors()} == {NEW.dim}

    # Each request names its model: the served one for the served collection, the new one for the new collection.
    embedded = api.bodies("/encode_batch")
    assert {body["model"] for body in embedded} == {SERVED.name, NEW.name}
    assert [body["texts"] for body in embedded if body["model"] == SERVED.name] == [[LONG_TEXT]]
    assert {body["model"] for body in api.bodies("/chunk")} == {SERVED.name, NEW.name}
    assert stream_stats(redis_client, STAGE1, GROUP).pending == 0
    # Live changes are not the snapshot: the build's progress counts none of them.
    change = reindex.read_reindex(redis_client, NAME)
    assert change is not None and change.embedded == 0


def test_a_served_collection_without_a_recorded_model_is_embedded_by_the_default_one(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    building(redis_client, served_model=None)
    add(redis_client, "doc", "a text")
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    written = by_collection(redis_client)
    assert written["doc", "documents"].vector == api.vector(SERVED.name, "a text")
    assert written["doc", "documents-v1"].vector == api.vector(NEW.name, "a text")
    assert sorted(body.get("model", "(none)") for body in api.bodies("/encode_batch")) == ["(none)", NEW.name]


def test_a_delete_during_a_build_deletes_from_both_collections(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    building(redis_client)
    version = add(redis_client, "gone", "", op="delete")
    add(redis_client, "emptied", "")  # a document left without text must have no point either
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    written = by_collection(redis_client)
    assert sorted(written) == [
        ("emptied", "documents"),
        ("emptied", "documents-v1"),
        ("gone", "documents"),
        ("gone", "documents-v1"),
    ]
    assert all(doc.op == "delete" for doc in written.values())
    assert written["gone", "documents-v1"].version == version
    assert api.bodies("/encode_batch") == []


def test_a_snapshot_entry_is_embedded_for_the_collection_it_names_alone_and_counted(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    change = building(redis_client)
    for n in range(3):
        add(redis_client, f"snap-{n}", f"snapshot text {n}", build=change.collection)
    add(redis_client, "served-snap", "a snapshot of the served collection", build=NAME)
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    written = by_collection(redis_client)
    assert sorted(written) == [("served-snap", "documents")] + [(f"snap-{n}", "documents-v1") for n in range(3)]
    for n in range(3):
        doc = written[f"snap-{n}", "documents-v1"]
        assert doc.op == "upsert" and doc.vector == api.vector(NEW.name, f"snapshot text {n}")
        assert doc.vector is not None and len(doc.vector) == NEW.dim
    served = written["served-snap", "documents"].vector
    assert served is not None and len(served) == SERVED.dim
    after = reindex.read_reindex(redis_client, NAME)
    assert after is not None and after.embedded == 3, "the snapshot documents embedded for the new collection"
    assert after.progress_at >= change.progress_at


def test_a_snapshot_entry_older_than_a_live_change_of_its_document_hides_nothing_from_the_served_collection(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    change = building(redis_client)
    live = add(redis_client, "doc", "the live change")
    snapshot = add(redis_client, "doc", "the snapshot read after it", build=change.collection)
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    written = by_collection(redis_client)
    assert sorted(written) == [("doc", "documents"), ("doc", "documents-v1")]
    assert written["doc", "documents"].version == live
    assert written["doc", "documents"].vector == api.vector(SERVED.name, "the live change")
    assert written["doc", "documents-v1"].version == snapshot, "the newest change of the document for each"
    after = reindex.read_reindex(redis_client, NAME)
    assert after is not None and after.embedded == 1


@pytest.mark.parametrize("phase", [reindex.Phase.ABORTED, reindex.Phase.FAILED])
def test_snapshot_entries_of_an_ended_change_are_dropped(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path, phase: reindex.Phase
) -> None:
    change = building(redis_client)
    assert reindex.end(redis_client, NAME, change.number, phase)
    before = dropped()
    add(redis_client, "snap", "a snapshot text of the ended change", build=change.collection)
    add(redis_client, "old", "a snapshot text of a change before it", build="documents-v0")
    add(redis_client, "live", "a live change")
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    written = by_collection(redis_client)
    assert sorted(written) == [("live", "documents")], "live changes go to the served collection alone"
    assert dropped() == before + 2
    stats = stream_stats(redis_client, STAGE1, GROUP)
    assert stats.pending == 0 and stats.lag == 0, "dropped entries are acknowledged"
    assert redis_client.xlen(STAGE1 + ":dlq") == 0
    after = reindex.read_reindex(redis_client, NAME)
    assert after is not None and after.embedded == 0
    assert {body.get("model") for body in api.bodies("/encode_batch")} == {SERVED.name}


def test_after_the_switch_changes_are_embedded_for_the_new_collection_alone(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    change = building(redis_client)
    assert reindex.end(redis_client, NAME, change.number, reindex.Phase.SWITCHED)
    reindex.write_serving(redis_client, reindex.Serving(change.collection, NEW.name, NEW.dim, alias=NAME))
    add(redis_client, "late-snap", "a snapshot entry handled after the switch", build=change.collection)
    add(redis_client, "live", "a live change after the switch")
    embedder(redis_client, redis_url, api.url, tmp_path).run(drain=True)

    written = by_collection(redis_client)
    assert sorted(written) == [("late-snap", "documents-v1"), ("live", "documents-v1")]
    assert all(doc.vector is not None and len(doc.vector) == NEW.dim for doc in written.values())
    assert {body["model"] for body in api.bodies("/encode_batch")} == {NEW.name}


def test_openai_style_requests_name_each_collection_s_model(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    building(redis_client)
    add(redis_client, "doc", "a text")
    embedder(redis_client, redis_url, api.url, tmp_path, embedding_api_style="openai").run(drain=True)

    written = by_collection(redis_client)
    assert written["doc", "documents"].vector == api.vector(SERVED.name, "a text")
    assert written["doc", "documents-v1"].vector == api.vector(NEW.name, "a text")
    assert sorted(body["model"] for body in api.bodies("/v1/embeddings")) == sorted([SERVED.name, NEW.name])


def test_openai_style_requests_name_embedding_model_while_nothing_is_recorded(
    redis_client: redis.Redis, redis_url: str, api: ModelsApi, tmp_path: Path
) -> None:
    add(redis_client, "doc", "a text")
    consumer = embedder(
        redis_client, redis_url, api.url, tmp_path, embedding_api_style="openai", embedding_model="hash-384"
    )
    consumer.run(drain=True)

    [(fields, doc)] = outputs(redis_client)
    assert "collection" not in fields and doc.vector == api.vector(SERVED.name, "a text")
    assert [body["model"] for body in api.bodies("/v1/embeddings")] == [SERVED.name]


def test_vectors_of_another_size_than_the_collection_records_are_a_configuration_error(api: ModelsApi) -> None:
    client = EmbeddingClient(api.url, dim=384, timeout_s=5)
    assert len(client.embed(["a"], model=NEW.name, dim=NEW.dim)[0]) == NEW.dim
    with pytest.raises(ConfigurationError, match="records vectors of 300"):
        client.embed(["a"], model=NEW.name, dim=300)
    with pytest.raises(ConfigurationError, match="does not serve"):
        client.embed(["a"], model="no-such-model")
    # A request naming a model leaves the default model, which the skip-unchanged gate assumes, as it was.
    assert client.current_model() == SERVED.name
