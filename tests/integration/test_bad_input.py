"""The bad-input catalogue: each case flows through correctly or lands in a DLQ with a reason, and the stream
keeps flowing (a good document written after each bad one always arrives)."""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, ObjectId
from qdrant_client import QdrantClient

from tests.support.fake_api import FakeApi
from tests.support.pipeline import Pipeline
from vecsync.documents import point_id
from vecsync.errors import ConfigurationError
from vecsync.messages import DocumentChange
from vecsync.store.embedded import EmbeddedStore
from vecsync.store.server import ServerStore

STAGE1, STAGE2 = "raw_document_changes", "embedded_documents"


def letters(pipeline: Pipeline, stream: str) -> list[dict[str, str]]:
    return [fields for _id, fields in pipeline.redis_client.xrange(stream + ":dlq")]


def insert_then_canary(pipeline: Pipeline, *documents: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Insert the documents after the snapshot, then a good one; drain; the canary proves nothing is blocked."""
    pipeline.run_producer()
    for document in documents:
        pipeline.collection.insert_one(document)
    pipeline.collection.insert_one({"_id": "canary", "subject": "still flowing"})
    pipeline.drain()
    points = pipeline.points()
    assert "canary" in points, "a bad document blocked the stream"
    return points


def test_no_text_null_and_non_string_values_get_no_point(pipeline: Pipeline) -> None:
    points = insert_then_canary(
        pipeline,
        {"_id": "none", "owner": "A"},
        {"_id": "nulls", "subject": None, "content": None},
        {"_id": "numbers", "subject": 42, "content": {"nested": "object"}},
    )
    assert {"none", "nulls", "numbers"}.isdisjoint(points)
    assert letters(pipeline, STAGE1) == [] and letters(pipeline, STAGE2) == []


def test_a_10_mb_text_is_chunked_up_to_max_document_chars(pipeline: Pipeline) -> None:
    insert_then_canary(pipeline, {"_id": "huge", "subject": "big", "content": "word " * 2_000_000})
    chunks = pipeline.chunks_of("huge")
    assert all(chunk["truncated"] for chunk in chunks)
    assert chunks[0]["text"].startswith("big\n\nword word")
    assert chunks[-1]["chunk_span"][1] <= 500_000 < chunks[-1]["chunk_span"][1] + 5
    assert len(chunks) == chunks[0]["chunk_count"] > 400


def test_without_chunking_a_10_mb_text_is_cut_to_max_text_chars(pipeline: Pipeline) -> None:
    pipeline.overrides["chunk_tokens"] = 0
    points = insert_then_canary(pipeline, {"_id": "huge", "subject": "big", "content": "word " * 2_000_000})
    assert len(points["huge"]["text"]) == 8192
    assert points["huge"]["text"].startswith("big\n\nword word")
    assert points["huge"]["truncated"] is True and points["canary"]["truncated"] is False


def test_deeply_nested_documents(pipeline: Pipeline) -> None:
    pipeline.overrides["text_fields"] = ["subject", "a.a.a.a.a.a.a.a.a.a.title"]
    nested: dict[str, Any] = {"title": "at depth ten"}
    for _ in range(10):
        nested = {"a": nested}
    deep = nested
    for _ in range(70):  # far deeper than any field we read
        deep = {"a": deep, "x": 1}
    points = insert_then_canary(pipeline, {"_id": "deep", "subject": "deep", **nested, "deeper": deep})
    assert points["deep"]["text"] == "deep\n\nat depth ten"


def test_an_array_where_a_string_was_expected(pipeline: Pipeline) -> None:
    points = insert_then_canary(pipeline, {"_id": "arr", "subject": ["not", "a", "string"], "content": "kept"})
    assert points["arr"]["text"] == "kept"


def test_lone_surrogates_and_invalid_utf8_in_hand_written_entries(pipeline: Pipeline) -> None:
    client = pipeline.redis_client
    surrogate = DocumentChange("upsert", pipeline.source, "surrogate", 1.0, {"subject": "a\ud800b"})
    fields = surrogate.to_fields()
    fields["doc"] = fields["doc"].encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    client.xadd(STAGE1, {**surrogate.to_fields(), "doc": '{"subject": "a\\ud800b"}'})
    raw = DocumentChange("upsert", pipeline.source, "invalid-utf8", 1.0, {"subject": "x"}).to_fields()
    client.xadd(STAGE1, {**raw, "doc": b'{"subject": "caf\xe9"}'})  # latin-1, not UTF-8
    points = insert_then_canary(pipeline)
    assert points["surrogate"]["text"] == "a?b"
    assert points["invalid-utf8"]["text"] == "caf\ufffd"


def test_binary_fields_become_base64_in_the_payload(pipeline: Pipeline) -> None:
    pipeline.overrides["payload_fields"] = ["blob", "subject"]
    points = insert_then_canary(pipeline, {"_id": "bin", "subject": "s", "blob": Binary(b"\x00\xff\x10")})
    assert points["bin"]["blob"] == "AP8Q"


def test_dates_before_1970_and_after_2100(pipeline: Pipeline) -> None:
    pipeline.overrides["payload_fields"] = ["date", "later"]
    points = insert_then_canary(
        pipeline,
        {
            "_id": "dates",
            "subject": "s",
            "date": datetime.datetime(1901, 2, 3, 4, 5, 6),
            "later": datetime.datetime(2150, 1, 1),
        },
    )
    assert points["dates"]["date"] == "1901-02-03T04:05:06Z"
    assert points["dates"]["later"] == "2150-01-01T00:00:00Z"


def test_id_types_through_snapshot_and_change_stream(pipeline: Pipeline) -> None:
    oid, uid = ObjectId(), Binary.from_uuid(uuid.UUID(int=9))
    # Every _id type arrives through the snapshot (a scan).
    pipeline.collection.insert_many(
        [{"_id": key, "subject": f"snap {n}"} for n, key in enumerate([oid, "s", 7, uid, {"k": 1}])]
    )
    pipeline.drain()
    points = pipeline.points()
    assert {str(oid), "s", '{"$numberInt": "7"}', '{"k": {"$numberInt": "1"}}'} <= set(points)
    # The stand-in returns a UUID _id as plain bytes, so its id string is the Binary's; the point is there.
    assert sorted(p["text"] for p in points.values()) == [f"snap {n}" for n in range(5)]
    # Through the change stream, each id either flows or is dead-lettered with a reason.
    oid2 = ObjectId()
    insert_then_canary(
        pipeline,
        {"_id": oid2, "subject": "oid"},
        {"_id": "s2", "subject": "str"},
        {"_id": 8, "subject": "int"},
        {"_id": {"k": 2}, "subject": "embedded document"},
    )
    points = pipeline.points()
    assert {str(oid2), "s2", '{"$numberInt": "8"}'} <= set(points)
    embedded = '{"k": {"$numberInt": "2"}}'
    reasons = [json.loads(letter["fields"])["mongo_id"] for letter in letters(pipeline, STAGE1)]
    assert embedded in points or embedded in reasons


@pytest.fixture
def broken_api() -> Iterator[FakeApi]:
    api = FakeApi()
    yield api
    api.close()


# A vector of another size than EMBEDDING_DIM is a misconfiguration, not bad input: see test_misconfiguration.py.
@pytest.mark.parametrize(("embeddings", "reason"), [([[float("nan")] * 384], "NaN")])
def test_an_embedding_api_returning_bad_vectors_dead_letters(
    pipeline: Pipeline, broken_api: FakeApi, embeddings: list[list[float]], reason: str
) -> None:
    broken_api.body = {"embeddings": embeddings}
    pipeline.embedding_url = broken_api.url
    pipeline.collection.insert_one({"_id": "doc", "subject": "s"})
    pipeline.run_producer()
    pipeline.embedder_consumer().run(drain=True)
    [letter] = letters(pipeline, STAGE1)
    assert reason in letter["error"]
    assert pipeline.redis_client.xpending(STAGE1, "embedding_processors")["pending"] == 0


def test_a_collection_of_the_wrong_size_stops_the_upserter_with_both_sizes(tmp_path: Path) -> None:
    client = QdrantClient(":memory:")  # stands in for a Qdrant server
    ServerStore(client, "documents", 768).ensure_collection()
    with pytest.raises(ConfigurationError, match="holds vectors of 768 dimensions, but EMBEDDING_DIM is 384"):
        ServerStore(client, "documents", 384).ensure_collection()
    embedded = EmbeddedStore(tmp_path, "documents", 768)
    embedded.ensure_collection()
    embedded.close()
    with pytest.raises(ConfigurationError, match="holds vectors of 768 dimensions, but EMBEDDING_DIM is 384"):
        EmbeddedStore(tmp_path, "documents", 384)


def test_point_ids_are_stable_for_every_id_type() -> None:
    assert point_id("app.documents", '{"$numberInt": "7"}') != point_id("app.documents", "7")


def test_a_word_longer_than_the_api_takes_is_dead_lettered_with_its_reason(pipeline: Pipeline) -> None:
    # The hash backend splits by words, so one word of 200,000 characters is one chunk, past MAX_CHARS_PER_TEXT.
    points = insert_then_canary(pipeline, {"_id": "one-word", "subject": "x" * 200_000})
    [letter] = letters(pipeline, STAGE1)
    assert "one-word" not in points
    assert "MAX_CHARS_PER_TEXT" in letter["error"]
