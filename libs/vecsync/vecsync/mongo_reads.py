"""Reading MongoDB: the collection, its durable reads and _id-ordered scans, and the stage 1 changes made of what
they read.

Every reader of documents (the producer, the operator CLI's resync, verify and dead-letter replay, the upserter's
re-read) reads through here, so that each reads on the primary with majority read concern, and each change it makes
holds the document as it was read, never an older copy.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Mapping
from typing import Any

from bson import json_util
from bson.codec_options import DatetimeConversion
from pymongo import MongoClient, ReadPreference
from pymongo.collection import Collection
from pymongo.errors import CursorNotFound
from pymongo.read_concern import ReadConcern

from vecsync.bson_codec import ejson_id, id_candidates, mongo_id_of, to_plain
from vecsync.messages import DocumentChange
from vecsync.settings import MongoSettings


def open_client(settings: MongoSettings, appname: str, *, connect: bool = True) -> MongoClient[dict[str, Any]]:
    """A client of MONGO_URI; without ``connect``, it connects on its first operation only. One client serves every
    sync (``client[database][collection]`` per sync): its connection pool is shared, and so are its monitors."""
    return MongoClient(
        settings.mongo_uri,
        # Dates outside Python's range and invalid UTF-8 must not make a document unreadable.
        datetime_conversion=DatetimeConversion.DATETIME_AUTO,
        unicode_decode_error_handler="replace",
        appname=appname,
        connect=connect,
    )


def open_collection(settings: MongoSettings, appname: str, *, connect: bool = True) -> Collection[dict[str, Any]]:
    """The collection MONGO_URI, MONGO_DATABASE and MONGO_COLLECTION name; without ``connect``, the client connects
    on its first operation only. Close it with ``collection.database.client.close()``."""
    client = open_client(settings, appname, connect=connect)
    return client[settings.mongo_database][settings.mongo_collection]


def durable_reads(collection: Collection[dict[str, Any]]) -> Collection[dict[str, Any]]:
    """``collection`` reading from the primary with majority read concern, whatever MONGO_URI asks for.

    A change stream delivers only majority-committed changes, so a majority read
    on the primary after an event shows that event or a newer state, never an
    older one (a secondary may lag behind it), and never a write that a
    failover rolls back afterwards (which no change event would then correct).
    """
    return collection.with_options(read_preference=ReadPreference.PRIMARY, read_concern=ReadConcern("majority"))


def read_current(
    collection: Collection[dict[str, Any]],
    keys: Iterable[Any],
    projection: dict[str, int] | None = None,
    *,
    sync_filter: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The documents with these _ids as they are now (only the ``projection``'s fields), by mongo_id.

    With ``sync_filter`` (a sync's filter), a document outside it reads as gone: it has no point, so a change that
    moves a document out of the filter deletes its point, and one that moves it back in writes it again.
    """
    wanted = list(keys)
    if not wanted:
        return {}
    by_id: dict[str, Any] = {"_id": {"$in": wanted}}
    query = {"$and": [by_id, dict(sync_filter)]} if sync_filter else by_id
    found = durable_reads(collection).find(query, projection)
    return {mongo_id_of(doc["_id"]): doc for doc in found}


def chunks_after(
    collection: Collection[dict[str, Any]],
    after: str | None,
    *,
    size: int,
    projection: dict[str, int] | None,
    query: Mapping[str, Any] | None = None,
) -> Generator[list[dict[str, Any]], None, None]:
    """The documents after the _id ``after`` (see ejson_id; the start if None), in _id order, in chunks of ``size``.

    A scan (the snapshot, `vecsync resync`, `vecsync verify`) commits its last _id with each chunk before it asks
    for the next, so it can stop anywhere and go on after that _id. It reads through one cursor, not a query per
    chunk: a server that cannot seek an _id range by index (the MongoDB stand-in) would scan the collection for
    every chunk. A caller that pauses for long (waiting for room in the pipeline) may find the cursor gone
    (CursorNotFound, after MongoDB's 10 idle minutes): the scan then opens another after the last chunk given.
    """
    while True:
        bounded = dict(query or {})
        if after is not None:
            bound = {"_id": {"$gt": json_util.loads(after)}}
            bounded = {"$and": [bounded, bound]} if bounded else bound
        cursor = durable_reads(collection).find(bounded, projection).sort("_id", 1).batch_size(size)
        chunk: list[dict[str, Any]] = []
        try:
            for document in cursor:
                chunk.append(document)
                if len(chunk) == size:
                    after = ejson_id(chunk[-1]["_id"])
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
            return
        except CursorNotFound:
            continue  # from after the last chunk given; a partial one is read again
        finally:
            cursor.close()


def document_change(source: str, key: Any, document: dict[str, Any] | None, changed_at: float) -> DocumentChange:
    """The stage 1 entry for a document's state: an upsert, or a delete when the document is gone."""
    return DocumentChange(
        op="upsert" if document is not None else "delete",
        source=source,
        mongo_id=mongo_id_of(key),
        changed_at=changed_at,
        document=to_plain(document) if document is not None else None,
    )


def changes_for_ids(
    collection: Collection[dict[str, Any]],
    source: str,
    mongo_ids: list[str],
    *,
    projection: dict[str, int] | None,
    sync_filter: Mapping[str, Any] | None = None,
) -> list[DocumentChange]:
    """The current state of each document named by ``mongo_ids``: an upsert, or a delete when it is gone (or, with
    ``sync_filter``, outside the sync's filter)."""
    keys = [key for mongo_id in mongo_ids for key in id_candidates(mongo_id)]
    current = read_current(collection, keys, projection, sync_filter=sync_filter)
    now = time.time()
    return [
        DocumentChange(
            op="upsert" if mongo_id in current else "delete",
            source=source,
            mongo_id=mongo_id,
            changed_at=now,
            document=to_plain(current[mongo_id]) if mongo_id in current else None,
        )
        for mongo_id in mongo_ids
    ]
