"""The MongoDB side: document ids, BSON to plain JSON, and publishing current document states to stage 1.

Used by the producer and by the operator CLI's resync, verify --repair and
dead-letter replay, so that every writer of stage 1 follows one rule: an entry
holds the document as re-read after the change, never an older copy.
"""

from __future__ import annotations

import base64
import datetime
import math
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from bson import ObjectId, json_util
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS
from pymongo import ReadPreference
from pymongo.collection import Collection
from pymongo.errors import CursorNotFound
from pymongo.read_concern import ReadConcern

from vecsync.documents import point_id
from vecsync.messages import DocumentChange
from vecsync.partitions import Partitions, ProducerKeys
from vecsync.settings import CommonSettings


def mongo_id_of(value: Any) -> str:
    """The id string of a document: an ObjectId's 24 hex digits, a string as is, else canonical Extended JSON."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID):  # decoded with a uuidRepresentation: encode it as the standard subtype
        value = Binary.from_uuid(value)
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


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


def id_candidates(mongo_id: str) -> list[Any]:
    """The _id values a mongo_id string may stand for (the inverse of mongo_id_of)."""
    if mongo_id.startswith("{"):
        try:
            return [json_util.loads(mongo_id)]
        except ValueError:
            return [mongo_id]
    if ObjectId.is_valid(mongo_id) and len(mongo_id) == 24:
        return [ObjectId(mongo_id), mongo_id]
    return [mongo_id]


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
    """Move the resume token and snapshot of the producer of ``source`` from the other naming to the names it has
    with ``partitions``, unless some are stored there already; the keys they came from, or None if nothing moved.

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
    if token:
        client.set(keys.token_updated, client.get(other.token_updated) or repr(time.time()))
        client.set(keys.token, token)
    for key in (other.token, other.token_updated, other.snapshot):
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
    A producer batch published afterwards is newer.

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


def _guarded(client: redis.Redis | redis.client.Pipeline, guards: list[tuple[str, str | None]]) -> list[str | None]:
    """What the producer rewrites with each batch: a key's value, or a field of a hash."""
    return [client.get(key) if field is None else client.hget(key, field) for key, field in guards]
