"""The three stages against real Redis, the MongoDB stand-in, the embedding-api and the embedded store."""

from __future__ import annotations

import datetime
import time
from typing import Any

from bson import ObjectId

from tests.support.pipeline import Pipeline
from vecsync.constants import resume_token_key
from vecsync.documents import point_id
from vecsync.mongo_reads import document_change


def test_snapshot_then_changes_reach_qdrant(pipeline: Pipeline) -> None:
    pipeline.collection.insert_many(
        [{"_id": f"doc-{i}", "subject": f"Subject {i}", "content": "body"} for i in range(5)]
    )
    pipeline.drain()
    pipeline.assert_matches_mongo()
    assert pipeline.redis_client.get(resume_token_key(pipeline.source)), "the resume token is stored after the snapshot"

    pipeline.collection.insert_one({"_id": "doc-new", "subject": "New", "content": "fresh"})
    pipeline.collection.update_one({"_id": "doc-1"}, {"$set": {"subject": "Changed subject"}})
    pipeline.collection.replace_one({"_id": "doc-2"}, {"subject": "Replaced", "content": "entirely"})
    pipeline.collection.delete_one({"_id": "doc-3"})
    pipeline.drain()

    pipeline.assert_matches_mongo()
    points = pipeline.points()
    assert points["doc-1"]["subject"] == "Changed subject"
    assert points["doc-2"]["text"] == "Replaced\n\nentirely"
    assert "doc-3" not in points


def test_update_changes_vector_and_payload(pipeline: Pipeline) -> None:
    pipeline.collection.insert_one({"_id": "a", "subject": "Printer jams", "content": "paper stuck", "owner": "Ann"})
    pipeline.drain()
    before = pipeline.store.retrieve([point_id(pipeline.source, "a")], with_vectors=True)[0]
    pipeline.collection.update_one({"_id": "a"}, {"$set": {"content": "refund please", "owner": "Bob"}})
    pipeline.drain()
    after = pipeline.store.retrieve([point_id(pipeline.source, "a")], with_vectors=True)[0]
    assert after.payload["owner"] == "Bob"
    assert after.payload["text"] == "Printer jams\n\nrefund please"
    assert after.vector != before.vector


def test_payload_fields_ids_and_dates(pipeline: Pipeline) -> None:
    oid = ObjectId()
    when = datetime.datetime(2026, 3, 14, 9, 26, tzinfo=datetime.UTC)
    pipeline.collection.insert_one(
        {"_id": oid, "subject": "S", "content": "C", "product": "P", "customer": "Cu", "owner": "O", "date": when}
    )
    pipeline.drain()
    payload = pipeline.points()[str(oid)]
    assert payload["source"] == pipeline.source
    assert payload["date"] == "2026-03-14T09:26:00Z"
    assert {payload[k] for k in ("product", "customer", "owner")} == {"P", "Cu", "O"}
    assert payload["version"], "every point carries the version of its change"
    assert pipeline.store.retrieve([point_id(pipeline.source, str(oid))])


def test_document_without_text_gets_no_point(pipeline: Pipeline) -> None:
    pipeline.collection.insert_one({"_id": "t", "subject": "Has text", "content": None})
    pipeline.drain()
    assert "t" in pipeline.points()
    pipeline.collection.update_one({"_id": "t"}, {"$set": {"subject": ""}})
    pipeline.drain()
    assert "t" not in pipeline.points(), "a document whose text went away loses its point"


def test_dotted_text_fields(pipeline: Pipeline) -> None:
    pipeline.overrides["text_fields"] = ["meta.title", "body"]
    pipeline.collection.insert_one({"_id": "n", "meta": {"title": "Nested title"}, "body": 42})
    pipeline.drain()
    assert pipeline.points()["n"]["text"] == "Nested title"


def test_producer_restart_resumes_without_loss(pipeline: Pipeline) -> None:
    pipeline.collection.insert_one({"_id": "first", "subject": "one", "content": "x"})
    pipeline.run_producer()
    # Changes made while the producer is down are published when it comes back.
    pipeline.collection.insert_one({"_id": "second", "subject": "two", "content": "y"})
    pipeline.collection.delete_one({"_id": "first"})
    pipeline.run_producer()
    entries = pipeline.redis_client.xrange("raw_document_changes")
    assert [(e[1]["mongo_id"], e[1]["op"]) for e in entries] == [
        ("first", "upsert"),
        ("second", "upsert"),
        ("first", "delete"),
    ]
    pipeline.drain()
    pipeline.assert_matches_mongo()


def test_ids_of_every_bson_type_reach_qdrant(pipeline: Pipeline) -> None:
    import uuid

    from bson import Binary

    ids = [ObjectId(), "text-id", 42, Binary.from_uuid(uuid.UUID(int=7))]
    pipeline.collection.insert_many([{"_id": i, "subject": f"id {i!r}", "content": "c"} for i in ids])
    pipeline.drain()
    pipeline.collection.insert_one({"_id": 43, "subject": "int id after the snapshot"})
    pipeline.collection.update_one({"_id": 42}, {"$set": {"content": "changed"}})
    pipeline.drain()
    points = pipeline.points()
    assert points['{"$numberInt": "42"}']["text"] == "id 42\n\nchanged"
    assert '{"$numberInt": "43"}' in points
    assert "text-id" in points
    assert len(points) == 5


def test_deletes_reach_qdrant_for_every_id_type(pipeline: Pipeline) -> None:
    oid = ObjectId()
    pipeline.run_producer()
    pipeline.collection.insert_many([{"_id": key, "subject": "to delete"} for key in (oid, "str", 5)])
    pipeline.drain()
    assert len(pipeline.points()) == 3
    for key in (oid, "str", 5):
        pipeline.collection.delete_one({"_id": key})
    pipeline.drain()
    assert pipeline.points() == {}


def test_an_objectid_and_a_string_of_its_digits_keep_their_own_points(pipeline: Pipeline) -> None:
    # MongoDB holds both at once; the stand-in cannot (it indexes every _id as text), so their changes enter stage 1
    # as the producer writes them, and the later stages run for real.
    oid = ObjectId()

    def publish(key: Any, document: dict[str, Any] | None) -> None:
        change = document_change(pipeline.source, key, document, time.time())
        pipeline.redis_client.xadd(pipeline.producer_settings().stage1_stream, change.to_fields())

    def stages() -> dict[str, dict[str, Any]]:
        pipeline.embedder_consumer().run(drain=True)
        pipeline.upserter_consumer().run(drain=True)
        return pipeline.points()

    publish(oid, {"_id": oid, "subject": "the ObjectId"})
    publish(str(oid), {"_id": str(oid), "subject": "the string"})
    points = stages()
    assert {mongo_id: payload["text"] for mongo_id, payload in points.items()} == {
        str(oid): "the ObjectId",
        f'"{oid}"': "the string",
    }
    publish(str(oid), {"_id": str(oid), "subject": "the string, changed"})
    assert stages()[str(oid)]["text"] == "the ObjectId", "a change of the string leaves the ObjectId's point"
    publish(oid, None)
    points = stages()
    assert {mongo_id: payload["text"] for mongo_id, payload in points.items()} == {f'"{oid}"': "the string, changed"}
    assert pipeline.store.retrieve([point_id(pipeline.source, f'"{oid}"')]), "the string's point is its own"
