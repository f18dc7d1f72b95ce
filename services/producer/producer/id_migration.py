"""The producer's one-time move of string ids that earlier releases wrote as themselves to points of their own.

Such a string (24 lowercase hex digits, say) shared its id string, and so its point, with the value it reads as (the
ObjectId of those digits); see vecsync.bson_codec.mongo_id_of. The producer publishes both documents again, at its
first start on this release (docs/operations.md, "Upgrading: string ids that look like other ids").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import redis
from pymongo.collection import Collection

from producer.settings import ProducerSettings
from vecsync.bson_codec import mongo_id_of, written_otherwise_before
from vecsync.flow import FlowControl
from vecsync.messages import DocumentChange
from vecsync.mongo_reads import changes_for_ids, chunks_after
from vecsync.producer_state import ProducerKeys
from vecsync.stage1 import publish_no_older_than_producer
from vecsync.syncs import sync_of

# Every line of the producer keeps the logger name it always had.
log = logging.getLogger("producer.service")

# String _ids that may read as another value's id (see id_of); written_otherwise_before decides exactly.
_MAYBE_QUOTED = {"_id": {"$type": "string", "$regex": r'^(?:[0-9a-f]{24}$|["{]|(?:true|false|null)$)'}}


def migrate_ids(
    client: redis.Redis,
    settings: ProducerSettings,
    collection: Collection[dict[str, Any]],
    flow: FlowControl,
    stopping: threading.Event,
    *,
    projection: dict[str, int] | None,
    snapshotting_first: bool,
) -> None:
    """Once per source: give the string ids that earlier releases wrote as themselves points of their own.

    Both documents of each such string are published again, in their current state, under the ids of this release,
    before the producer reads its change stream (publish_no_older_than_producer keeps the order with anything a
    producer publishes meanwhile). The mark is set only once every one of them is in stage 1, so a crash or stop
    before it starts over, which republishes some documents twice and changes nothing else.
    """
    source, sync = settings.source, sync_of(settings)
    mark = ProducerKeys.of(sync.state_name, settings.partitions).ids_migrated
    if client.get(mark) is not None:  # GET, not EXISTS: in the producer's least-privilege ACL
        return
    if snapshotting_first:  # the snapshot about to begin publishes every document under this release's ids
        client.set(mark, repr(time.time()))
        return
    moved = 0
    for ids in ids_written_otherwise_before(collection, size=settings.batch_size):
        if stopping.is_set():
            return
        flow.wait_for_room()
        publish_no_older_than_producer(
            client,
            settings,
            source,
            partial(migrated_id_changes, collection, source, ids, projection=projection, sync_filter=sync.filter),
        )
        moved += len(ids)
    client.set(mark, repr(time.time()))
    if moved:
        log.info(
            "Published again %d documents of %s whose string ids earlier releases shared with other ids "
            '(docs/operations.md, "Upgrading: string ids that look like other ids")',
            moved,
            source,
        )


def ids_written_otherwise_before(collection: Collection[dict[str, Any]], *, size: int) -> Iterator[list[Any]]:
    """The string _ids whose mongo_id earlier releases wrote as the string itself, in chunks of ``size``.

    Each of them shared its id string, and so its point, with the value it reads as (the ObjectId of its digits, for
    one): migrate_ids publishes both again. One scan of the _id index, in _id order.
    """
    for chunk in chunks_after(collection, None, size=size, projection={"_id": 1}, query=_MAYBE_QUOTED):
        ids = [document["_id"] for document in chunk if written_otherwise_before(document["_id"])]
        if ids:
            yield ids


def migrated_id_changes(
    collection: Collection[dict[str, Any]],
    source: str,
    ids: list[str],
    *,
    projection: dict[str, int] | None,
    sync_filter: Mapping[str, Any] | None = None,
) -> list[DocumentChange]:
    """The changes that move the points of string ``ids`` (see ids_written_otherwise_before) to their own ids.

    Each string's document is published under its new id (a new point), and its old id string again: that now
    names the value it reads as, whose current state (or, when no such document exists, a delete) replaces the
    point the two shared. A document outside ``sync_filter`` (the sync's filter) is published as a delete.
    """
    return changes_for_ids(
        collection,
        source,
        [i for text in ids for i in (mongo_id_of(text), text)],
        projection=projection,
        sync_filter=sync_filter,
    )
