"""The MongoDB side: document ids, BSON to plain JSON, and publishing current document states to stage 1.

Used by the producer, by the operator CLI's resync, verify --repair and
dead-letter replay, and by the upserter, so that every writer of stage 1
follows one rule: an entry holds the document as re-read after the change,
never an older copy.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import redis
from bson import ObjectId, json_util
from bson.binary import Binary
from bson.codec_options import DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS
from pymongo import MongoClient, ReadPreference
from pymongo.collection import Collection
from pymongo.errors import CursorNotFound
from pymongo.read_concern import ReadConcern

from vecsync.documents import point_id
from vecsync.messages import DocumentChange
from vecsync.partitions import Partitions, ProducerKeys
from vecsync.settings import CommonSettings, MongoSettings


def mongo_id_of(value: Any) -> str:
    """The id string of a document, one per _id value and type (``id_of`` reads it back).

    An ObjectId is its 24 hex digits; a string is itself, unless ``id_of`` would read it as another value (24
    lowercase hex digits would be an ObjectId, ``true`` a boolean, ``{...}`` Extended JSON, ``"..."`` a quoted
    string): then it is quoted as a JSON string, ``"65f0c0ffee0000000000abcd"``. Every other _id is its canonical
    Extended JSON. So no two documents share an id string, and with it a point (docs/design.md, "Point ids and
    payload").
    """
    value = canonical_id(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value if _reads_as_itself(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, uuid.UUID):  # decoded with a uuidRepresentation: encode it as the standard subtype
        value = Binary.from_uuid(value)
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def id_of(mongo_id: str) -> Any:
    """The _id value that a mongo_id string stands for: the inverse of mongo_id_of.

    A string that mongo_id_of never writes (such as a string id of an earlier release that is now quoted) reads as
    the value it spells, so that a change published for it names that value's document, never the string's.
    """
    if mongo_id.startswith('"'):
        try:
            quoted = json.loads(mongo_id)
        except ValueError:
            return mongo_id
        return quoted if isinstance(quoted, str) else mongo_id
    if _OBJECT_ID.fullmatch(mongo_id):
        return ObjectId(mongo_id)
    if mongo_id.startswith("{") or mongo_id in _JSON_WORDS:
        try:
            return json_util.loads(mongo_id)
        except Exception:  # noqa: BLE001 - what Extended JSON cannot read (bad $oid, $binary...) is a string
            return mongo_id
    return mongo_id


def id_candidates(mongo_id: str) -> list[Any]:
    """The _id values to look a mongo_id up by in MongoDB: the one it stands for (see id_of)."""
    return [id_of(mongo_id)]


def canonical_id(value: Any) -> Any:
    """``value``, with an ObjectId in neosqlite's storage form (the MongoDB stand-in) as the ObjectId it stands for.

    The stand-in names some documents in change events by ``{"__neosqlite_objectid__": true, "id": "<24 hex>"}``
    (docs/operations.md, "The MongoDB stand-in"); read as a document _id, that would be a third id for the
    ObjectId's document, and a re-read by it would find nothing. No real _id has that form in practice.
    """
    if (
        isinstance(value, dict)
        and len(value) == 2
        and value.get("__neosqlite_objectid__") is True
        and isinstance(value.get("id"), str)
        and ObjectId.is_valid(value["id"])
    ):
        return ObjectId(value["id"])
    return value


def written_otherwise_before(value: Any) -> bool:
    """Whether ``value`` is a string _id that earlier releases wrote as itself and mongo_id_of now quotes."""
    return isinstance(value, str) and not _reads_as_itself(value)


_OBJECT_ID = re.compile(r"[0-9a-f]{24}")
_JSON_WORDS = ("true", "false", "null")


def _reads_as_itself(text: str) -> bool:
    read = id_of(text)
    return isinstance(read, str) and read == text


def to_plain(value: Any) -> Any:
    """``value`` with every BSON type replaced by a JSON one: dates become ISO 8601 strings in UTC."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime.datetime):
        return _iso(value)
    if isinstance(value, DatetimeMS):
        # Outside the years Python's datetime can hold: keep the instant as milliseconds.
        return {"$date": int(value)}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Binary) and value.subtype in (3, 4):
        return str(value.as_uuid(value.subtype))
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)  # ObjectId, Decimal128, Timestamp, Regex, Code and friends


def _iso(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


# String _ids that may read as another value's id (see id_of); written_otherwise_before decides exactly.
_MAYBE_QUOTED = {"_id": {"$type": "string", "$regex": r'^(?:[0-9a-f]{24}$|["{]|(?:true|false|null)$)'}}


def ids_written_otherwise_before(collection: Collection[dict[str, Any]], *, size: int) -> Iterator[list[Any]]:
    """The string _ids whose mongo_id earlier releases wrote as the string itself, in chunks of ``size``.

    Each of them shared its id string, and so its point, with the value it reads as (the ObjectId of its digits, for
    one): the producer publishes both again once, at its first start on this release (see migrated_id_changes).
    One scan of the _id index, in _id order.
    """
    for chunk in chunks_after(collection, None, size=size, projection={"_id": 1}, query=_MAYBE_QUOTED):
        ids = [document["_id"] for document in chunk if written_otherwise_before(document["_id"])]
        if ids:
            yield ids


def migrated_id_changes(
    collection: Collection[dict[str, Any]], source: str, ids: list[str], *, projection: dict[str, int] | None
) -> list[DocumentChange]:
    """The changes that move the points of string ``ids`` (see ids_written_otherwise_before) to their own ids.

    Each string's document is published under its new id (a new point), and its old id string again: that now
    names the value it reads as, whose current state (or, when no such document exists, a delete) replaces the
    point the two shared.
    """
    return changes_for_ids(
        collection, source, [i for text in ids for i in (mongo_id_of(text), text)], projection=projection
    )


def durable_reads(collection: Collection[dict[str, Any]]) -> Collection[dict[str, Any]]:
    """``collection`` reading from the primary with majority read concern, whatever MONGO_URI asks for.

    A change stream delivers only majority-committed changes, so a majority read
    on the primary after an event shows that event or a newer state, never an
    older one (a secondary may lag behind it), and never a write that a
    failover rolls back afterwards (which no change event would then correct).
    """
    return collection.with_options(read_preference=ReadPreference.PRIMARY, read_concern=ReadConcern("majority"))


def read_current(
    collection: Collection[dict[str, Any]], keys: Iterable[Any], projection: dict[str, int] | None = None
) -> dict[str, dict[str, Any]]:
    """The documents with these _ids as they are now (only the ``projection``'s fields), by mongo_id."""
    wanted = list(keys)
    if not wanted:
        return {}
    found = durable_reads(collection).find({"_id": {"$in": wanted}}, projection)
    return {mongo_id_of(doc["_id"]): doc for doc in found}


def ejson_id(value: Any) -> str:
    """An _id as canonical Extended JSON, which keeps its BSON type: a scan's position, stored in Redis."""
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def chunks_after(
    collection: Collection[dict[str, Any]],
    after: str | None,
    *,
    size: int,
    projection: dict[str, int] | None,
    query: dict[str, Any] | None = None,
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
    collection: Collection[dict[str, Any]], source: str, mongo_ids: list[str], *, projection: dict[str, int] | None
) -> list[DocumentChange]:
    """The current state of each document named by ``mongo_ids``: an upsert, or a delete when it is gone."""
    keys = [key for mongo_id in mongo_ids for key in id_candidates(mongo_id)]
    current = read_current(collection, keys, projection)
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


@dataclass(frozen=True)
class Snapshot:
    """A snapshot in progress, as stored at snapshot_key: where the scan is, and where the change stream resumes."""

    token: str  # the resume token (Extended JSON) of the change stream opened before the scan began
    last_id: str | None  # the last _id published (see source.ejson_id); None before the first chunk
    published: int
    estimated: int
    started_at: float

    def to_fields(self) -> dict[str, str]:
        fields = {
            "token": self.token,
            "published": str(self.published),
            "estimated": str(self.estimated),
            "started_at": repr(self.started_at),
        }
        if self.last_id is not None:
            fields["last_id"] = self.last_id
        return fields

    def rate_per_s(self, now: float) -> float:
        """Documents per second since the snapshot began, restarts included."""
        return self.published / max(now - self.started_at, 1e-9)

    def seconds_left(self, now: float) -> float | None:
        """At that rate, until the estimated count is done; None before any rate is known."""
        rate = self.rate_per_s(now)
        return max(self.estimated - self.published, 0) / rate if rate > 0 else None

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Snapshot:
        return cls(
            token=fields["token"],
            last_id=fields.get("last_id"),
            published=int(fields.get("published", 0)),
            estimated=int(fields.get("estimated", 0)),
            started_at=float(fields.get("started_at", 0.0)),
        )


def stored_snapshot(client: redis.Redis, key: str) -> Snapshot | None:
    """The snapshot in progress stored at ``key`` (ProducerKeys.snapshot), or None when none is."""
    fields = client.hgetall(key)
    return Snapshot.from_fields(fields) if fields.get("token") else None


def take_over_producer_state(client: redis.Redis, source: str, partitions: Partitions) -> ProducerKeys | None:
    """Move the resume token, snapshot and ids-migrated mark of the producer of ``source`` from the other naming to
    the names it has with ``partitions``, unless some are stored there already; the keys they came from, or None if
    nothing moved.

    The token and snapshot keep their names whatever the number of partitions, except between one partition on one
    Redis (the seed's names) and a split pipeline (ProducerKeys.other_naming): the producer calls this before it
    writes anything, and so does `vecsync repartition`, so that a change of partitions needs no new snapshot. The
    snapshot goes first, so that a crash in between leaves one of them to take over again.
    """
    keys = ProducerKeys.of(source, partitions)
    if client.get(keys.token) or client.hget(keys.snapshot, "token"):
        return None
    other = keys.other_naming(source, partitions)
    token, snapshot = client.get(other.token), client.hgetall(other.snapshot)
    if not token and not snapshot:
        return None
    if snapshot:
        client.hset(keys.snapshot, mapping=snapshot)
    # Before the token: a producer that finds the token under its names but not the mark migrates the ids again.
    migrated = client.get(other.ids_migrated)
    if migrated is not None:
        client.set(keys.ids_migrated, migrated)
    if token:
        client.set(keys.token_updated, client.get(other.token_updated) or repr(time.time()))
        client.set(keys.token, token)
    for key in (other.token, other.token_updated, other.snapshot, other.ids_migrated):
        client.delete(key)  # one by one: on a Redis Cluster, they live in different slots
    return other


def publish_beside_producer(
    client: redis.Redis,
    settings: CommonSettings,
    source: str,
    read_changes: Callable[[], list[DocumentChange]],
    also: Callable[[redis.client.Pipeline], None] | None = None,
) -> None:
    """XADD what ``read_changes`` reads from MongoDB, without ever publishing an older state after a newer one.

    A state read here could be older than one the running producer publishes
    between this read and this write. So what the producer rewrites with every
    batch it publishes to a partition (the resume token and the snapshot's
    position with one partition, that partition's high-water mark with several)
    is read before the read and WATCHed up to the write: if the producer
    published to the partition meanwhile, the documents are read again for it.
    A producer batch published afterwards is newer. So ``read_changes`` must read
    MongoDB when it is called, never hand back documents read before: those may
    be older than what the producer published before the position was read.

    ``also`` queues further commands (progress markers, deletes): in the same
    transaction on one Redis with one partition, else once every partition is
    written (a crash in between publishes the changes again, which the stages
    absorb).
    """
    partitions = settings.partitions
    keys = ProducerKeys.of(source, partitions)
    guards: list[list[tuple[str, str | None]]] = (
        [[(keys.token, None), (keys.snapshot, "last_id")]]
        if not partitions.split
        else [[(key, "batch")] for key in keys.positions]
    )
    streams = partitions.names(settings.stage1_stream)
    together = not partitions.split
    remaining = set(partitions.indexes())
    while remaining:
        before = {partition: _guarded(client, guards[partition]) for partition in remaining}
        shares: dict[int, list[DocumentChange]] = {}
        for change in read_changes():
            shares.setdefault(partitions.of(point_id(change.source, change.mongo_id)), []).append(change)
        for partition in sorted(remaining):
            if partition not in shares and not (together and also):
                remaining.discard(partition)
                continue
            with client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*(key for key, _field in guards[partition]))
                    if _guarded(pipe, guards[partition]) != before[partition]:
                        continue  # the producer published to it since: read again
                    pipe.multi()
                    for change in shares.get(partition, []):
                        pipe.xadd(streams[partition], change.to_fields())
                    if together and also is not None:
                        also(pipe)
                    pipe.execute()
                except redis.WatchError:
                    continue
            remaining.discard(partition)
        if remaining:
            time.sleep(0.01)
    if also is not None and not together:
        pipe = client.pipeline(transaction=False)
        also(pipe)
        pipe.execute()


def publish_current_states(
    client: redis.Redis,
    settings: CommonSettings,
    collection: Collection[dict[str, Any]],
    source: str,
    mongo_ids: list[str],
    *,
    projection: dict[str, int] | None,
    force_embed: bool = False,
    also: Callable[[redis.client.Pipeline], None] | None = None,
) -> None:
    """Read the documents named by ``mongo_ids`` from MongoDB and publish their current states to stage 1 beside the
    running producer: an upsert each, or a delete for one that is gone.

    The one way every recovery puts a document back into the pipeline (`vecsync resync`, `verify --repair`,
    `dlq replay`, and the upserter when a change it must embed again was trimmed from stage 1): the read happens
    inside publish_beside_producer, after the producer's position is read, so it is never older than a state the
    producer published. With ``force_embed`` the entries are embedded even where their text looks unchanged.
    ``also`` is as for publish_beside_producer.
    """

    def read() -> list[DocumentChange]:
        changes = changes_for_ids(collection, source, mongo_ids, projection=projection)
        return [replace(change, force_embed=True) for change in changes] if force_embed else changes

    publish_beside_producer(client, settings, source, read, also=also)


def open_collection(settings: MongoSettings, appname: str, *, connect: bool = True) -> Collection[dict[str, Any]]:
    """The collection MONGO_URI, MONGO_DATABASE and MONGO_COLLECTION name; without ``connect``, the client connects
    on its first operation only. Close it with ``collection.database.client.close()``."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongo_uri,
        # Dates outside Python's range and invalid UTF-8 must not make a document unreadable.
        datetime_conversion=DatetimeConversion.DATETIME_AUTO,
        unicode_decode_error_handler="replace",
        appname=appname,
        connect=connect,
    )
    return client[settings.mongo_database][settings.mongo_collection]


def _guarded(client: redis.Redis | redis.client.Pipeline, guards: list[tuple[str, str | None]]) -> list[str | None]:
    """What the producer rewrites with each batch: a key's value, or a field of a hash."""
    return [client.get(key) if field is None else client.hget(key, field) for key, field in guards]
