"""The snapshot of one sync for a model change: while its collection's new physical collection is building, every
document of the sync goes into stage 1 once more, marked for that collection alone (vecsync.reindex).

The upserter starts a model change (phase building, a new physical collection); this loop, one per sync beside the
sync's producer, finds it within REINDEX_POLL_S and publishes the sync's documents in _id order, marked
``build=<collection>``. Like `vecsync resync`, the scan only names the documents: each chunk is read again inside
vecsync.stage1.publish_current_states, after the producer's guards are read, so no state older than one the producer
published goes in after it. Each chunk is published with its position (``snapshot_last:<sync>``,
``snapshot_published:<sync>``), so a restart goes on after the last chunk committed. Once the scan ends, the last id
of every partition stream of the sync's stage 1 is recorded as the sync's watermark: once both stages have handled
everything up to it, the new collection holds the whole snapshot and every change made since, and the upserter may
switch the alias.

Every record of a change is written only while the change is still the one this loop works for (the same number,
phase building): a change aborted meanwhile, or replaced by a new one whose hash took its key, is never given the
progress of another. Redis and MongoDB outages are waited out with backoff; nothing here stops the producer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from producer.settings import ProducerSettings
from vecsync import reindex
from vecsync.backoff import Backoff
from vecsync.bson_codec import ejson_id, mongo_id_of
from vecsync.documents import source_projection
from vecsync.flow import FlowControl
from vecsync.mongo_reads import chunks_after
from vecsync.redis_errors import REDIS_REFUSALS, REDIS_UNAVAILABLE
from vecsync.stage1 import publish_current_states
from vecsync.syncs import sync_of

log = logging.getLogger(__name__)

# How often the loop reads the model change of its sync's collection.
REINDEX_POLL_S = 1.0
# The shortest interval between two progress lines of one snapshot.
PROGRESS_LOG_S = 10.0
# The scan names the documents; publish_current_states reads each one's state, so the scan reads only _ids.
ID_ONLY = {"_id": 1}
# Where a stream does not exist yet, nothing was published to it: every id is after this one.
NOTHING_PUBLISHED = "0-0"

# HSET the fields given only while the hash holds change ARGV[1], building: 1 when written, 0 when not.
RECORD_IF_CURRENT = """
if redis.call('HGET', KEYS[1], 'number') == ARGV[1] and redis.call('HGET', KEYS[1], 'phase') == 'building' then
    redis.call('HSET', KEYS[1], unpack(ARGV, 2))
    return 1
end
return 0
"""


class BuildSnapshot:
    """Publishes the snapshot of the sync ``settings`` are for (vecsync.syncs.settings_for) for each model change of
    its Qdrant collection, once per change, until stopped."""

    def __init__(
        self,
        settings: ProducerSettings,
        client: redis.Redis,
        collection: Collection[dict[str, Any]],
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.collection = collection
        self.stopping = stopping or threading.Event()
        self.sync = sync_of(settings)
        self.alias = self.sync.qdrant_collection
        self.streams = settings.partitions.names(settings.stage1_stream)
        # The producer's projection: the fields the later stages read.
        self.projection = source_projection(settings.text_fields, settings.payload_fields)
        # Like the producer's own snapshot, this one must not publish faster than the stages work.
        self.flow = FlowControl(client, settings, settings, self.stopping)

    def run(self) -> None:
        """Publish each model change's snapshot of the sync, until stopped; outages are waited out."""
        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        while not self.stopping.is_set():
            try:
                self.publish_if_due()
            except (*REDIS_UNAVAILABLE, *REDIS_REFUSALS) as exc:
                log.warning(
                    "Redis failed during the model change snapshot of sync %s (%s); going on from its last "
                    "recorded position after a pause",
                    self.sync.name,
                    exc,
                )
            except PyMongoError as exc:
                log.warning(
                    "MongoDB failed during the model change snapshot of sync %s (%s); going on from its last "
                    "recorded position after a pause",
                    self.sync.name,
                    exc,
                )
            else:
                backoff.attempts = 0
                self.stopping.wait(REINDEX_POLL_S)
                continue
            if not backoff.wait(self.stopping):
                return

    def publish_if_due(self) -> bool:
        """Publish the sync's snapshot (or the rest of it) if a model change is building and the sync's watermark is
        not recorded yet; True once this call recorded the watermark."""
        change = reindex.read_reindex(self.client, self.alias)
        if change is None or not change.building or change.watermark(self.sync.name) is not None:
            return False
        return self._publish(change)

    def _publish(self, change: reindex.Reindex) -> bool:
        """Count the sync's documents once, publish them after the recorded position, then record the watermark;
        False when stopped, or when ``change`` ended or was replaced meanwhile."""
        name = self.sync.name
        query = self.sync.query()  # only the documents of the sync's filter have points
        total_field = f"total:{name}"
        if total_field in change.fields:
            total = int(change.fields[total_field])
        else:
            total = self.collection.count_documents(query)
            if not self._record(change, {total_field: total}):
                self._still_building(change)  # logs why
                return False
        last_id, published = change.snapshot_position(name)
        if last_id is None:
            log.info(
                "Model change %d of %s builds %s (model %s): publishing the snapshot of sync %s (%d documents)",
                change.number,
                self.alias,
                change.collection,
                change.model,
                name,
                total,
            )
        else:
            log.info(
                "Going on with the snapshot of sync %s for %s after %d of %d documents",
                name,
                change.collection,
                published,
                total,
            )
        logged_at = time.monotonic()
        chunks = chunks_after(self.collection, last_id, size=self.settings.batch_size, projection=ID_ONLY, query=query)
        try:
            while True:
                self.flow.wait_for_room()
                if self.stopping.is_set():
                    log.info(
                        "Stopped the snapshot of sync %s for %s after %d documents", name, change.collection, published
                    )
                    return False
                chunk = next(chunks, None)
                if chunk is None:
                    break
                if not self._still_building(change):
                    return False
                self._publish_chunk(change, chunk, published)
                published += len(chunk)
                if time.monotonic() - logged_at >= PROGRESS_LOG_S:
                    logged_at = time.monotonic()
                    log.info(
                        "Snapshot of sync %s for %s: %d of %d documents published",
                        name,
                        change.collection,
                        published,
                        total,
                    )
        finally:
            chunks.close()
        # Read after the last chunk's commit: every entry of the snapshot is at or before these ids.
        watermark = self._last_ids()
        if not self._record(change, {f"watermark:{name}": json.dumps(watermark, sort_keys=True)}):
            self._still_building(change)  # logs why
            return False
        log.info(
            "Snapshot of sync %s for %s published %d documents; its watermark in stage 1 is %s",
            name,
            change.collection,
            published,
            watermark,
        )
        return True

    def _publish_chunk(self, change: reindex.Reindex, chunk: list[dict[str, Any]], published: int) -> None:
        """Publish the current state of a chunk's documents marked for the collection being built, with the
        snapshot's position after it (in one transaction with one partition on one Redis, else right after)."""
        position = {
            f"snapshot_last:{self.sync.name}": ejson_id(chunk[-1]["_id"]),
            f"snapshot_published:{self.sync.name}": published + len(chunk),
        }

        def save_position(pipe: redis.client.Pipeline) -> None:
            self._queue_record(pipe, change, position)

        publish_current_states(
            self.client,
            self.settings,
            self.collection,
            self.sync.source,
            [mongo_id_of(document["_id"]) for document in chunk],
            projection=self.projection,
            build=change.collection,
            also=save_position,
        )

    def _still_building(self, change: reindex.Reindex) -> bool:
        """Whether ``change`` is still the model change of the collection, building; logs why not."""
        current = reindex.read_reindex(self.client, self.alias)
        if current is not None and current.number == change.number and current.building:
            return True
        if current is None:
            why = "its record is gone"
        elif current.number != change.number:
            why = f"change {current.number} replaced it"
        else:
            why = f"it is {current.phase.value}"
        log.info(
            "Model change %d of %s is no longer building (%s): stopping the snapshot of sync %s for %s",
            change.number,
            self.alias,
            why,
            self.sync.name,
            change.collection,
        )
        return False

    def _last_ids(self) -> dict[str, str]:
        """The last id generated in each partition stream of the sync's stage 1."""
        ids = {}
        for stream in self.streams:
            try:
                ids[stream] = str(self.client.xinfo_stream(stream)["last-generated-id"])
            except redis.ResponseError as exc:
                if "no such key" not in str(exc).lower():
                    raise
                ids[stream] = NOTHING_PUBLISHED
        return ids

    def _record(self, change: reindex.Reindex, fields: Mapping[str, Any]) -> bool:
        """Write ``fields`` into ``change``'s hash if it still holds that change, building; whether it did."""
        return bool(self._queue_record(self.client, change, fields))

    def _queue_record(
        self, client: redis.Redis | redis.client.Pipeline, change: reindex.Reindex, fields: Mapping[str, Any]
    ) -> Any:
        """Write ``fields`` into ``change``'s hash only while it holds that change, building (RECORD_IF_CURRENT):
        one script, so that nothing comes between the check and the write. On a pipeline it is only queued."""
        flat = [str(value) for item in fields.items() for value in item]
        return client.eval(RECORD_IF_CURRENT, 1, reindex.reindex_key(self.alias), str(change.number), *flat)
