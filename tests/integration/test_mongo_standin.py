"""The MongoDB stand-in as the embedded default and the tests launch it (vecsync_local.mongo_standin) answers as MongoDB
does.

Each test states what real MongoDB does and fails against nx-27017 served without the corrections.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pymongo
from bson import Binary, ObjectId
from pymongo.collection import Collection

from vecsync.bson_codec import mongo_id_of

UUID_ID = Binary.from_uuid(uuid.UUID("7d444840-9dc0-11d1-b245-5ffdce74fad2"))
WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)


def events(stream: Any) -> list[dict[str, Any]]:
    found = []
    while (event := stream.try_next()) is not None:
        found.append(event)
    return found


def test_change_events_name_each_document_by_its_own_id(mongo_collection: Collection[dict[str, Any]]) -> None:
    ids: list[Any] = [ObjectId(), "ticket-1", 7, UUID_ID]
    with mongo_collection.watch() as stream:
        for key in ids:
            mongo_collection.insert_one({"_id": key, "subject": "s"})
            mongo_collection.update_one({"_id": key}, {"$set": {"subject": "t"}})
            mongo_collection.delete_one({"_id": key})
        seen = events(stream)
    assert [(event["operationType"], event["documentKey"]["_id"]) for event in seen] == [
        (operation, key) for key in ids for operation in ("insert", "update", "delete")
    ]
    assert [type(event["documentKey"]["_id"]) for event in seen[::3]] == [ObjectId, str, int, Binary]


def test_full_documents_hold_bson_values(mongo_collection: Collection[dict[str, Any]]) -> None:
    oid, ref = ObjectId(), ObjectId()
    with mongo_collection.watch() as stream:
        mongo_collection.insert_one({"_id": oid, "ref": ref, "when": WHEN, "nested": [{"ref": ref}]})
        [event] = events(stream)
    assert event["fullDocument"] == {"_id": oid, "ref": ref, "when": WHEN, "nested": [{"ref": ref}]}


def test_a_changed_document_is_found_again_by_its_document_key(mongo_collection: Collection[dict[str, Any]]) -> None:
    inserted: list[Any] = [ObjectId(), "a", 7, UUID_ID]
    with mongo_collection.watch() as stream:
        mongo_collection.insert_many([{"_id": key, "subject": "s"} for key in inserted])
        keys = [event["documentKey"]["_id"] for event in events(stream)]
    found = mongo_collection.find({"_id": {"$in": keys}})
    assert {mongo_id_of(document["_id"]) for document in found} == {mongo_id_of(key) for key in inserted}


def test_uuid_ids_are_found_updated_and_deleted(mongo_uri: str, mongo_collection: Collection[dict[str, Any]]) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, uuidRepresentation="standard")
    try:
        collection = client[mongo_collection.database.name][mongo_collection.name]
        key = uuid.uuid4()
        collection.insert_one({"_id": key, "subject": "s", "ref": uuid.UUID(int=1)})
        assert collection.find_one({"_id": key}) == {"_id": key, "subject": "s", "ref": uuid.UUID(int=1)}
        assert collection.update_one({"_id": key}, {"$set": {"subject": "t"}}).matched_count == 1
        assert collection.replace_one({"_id": key}, {"subject": "u"}).matched_count == 1
        assert collection.find_one({"_id": {"$in": [key]}}) == {"_id": key, "subject": "u"}
        other = uuid.uuid4()
        collection.update_one({"_id": other}, {"$set": {"subject": "v"}}, upsert=True)
        assert collection.find_one({"_id": other}) == {"_id": other, "subject": "v"}
        assert collection.delete_one({"_id": key}).deleted_count == 1
        assert [doc["_id"] for doc in collection.find()] == [other]
    finally:
        client.close()
