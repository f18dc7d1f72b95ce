"""What a batch of change events becomes in stage 1: each changed document re-read by key, as a change; a dead
letter where it cannot be re-read; nothing for an event that changes no document.

Entries carry the document as re-read by its key right after the change, not the change event's own copy: the read
happens after the change, so it shows that change or a newer state (docs/design.md, "Entries carry current state,
re-read by key"). The re-read applies the sync's filter: a document that a change moved out of it reads as gone and
is published as a delete, one moved back in as an upsert.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from producer.metrics import DEAD_LETTERED, EVENTS_READ, INVALIDATIONS
from vecsync.bson_codec import canonical_id, mongo_id_of
from vecsync.dead_letters import dead_letter_fields
from vecsync.documents import point_id
from vecsync.messages import DocumentChange
from vecsync.mongo_reads import document_change, read_current
from vecsync.partitions import Partitions

# Every line of the producer keeps the logger name it always had.
log = logging.getLogger("producer.service")

MONGO_AUTH_FAILURES = {13, 18}  # Unauthorized, AuthenticationFailed
DOCUMENT_OPERATIONS = {"insert", "update", "replace", "delete"}
# After these the change stream is invalidated; see "Collection drops and renames" in docs/design.md.
INVALIDATING_OPERATIONS = {"drop", "rename", "dropDatabase", "invalidate"}


class EventReader:
    """Reads the documents that a batch of change events names, and makes the batch's stage 1 changes of them."""

    def __init__(
        self,
        collection: Collection[dict[str, Any]],
        source: str,
        partitions: Partitions,
        streams: list[str],
        projection: dict[str, int] | None,
        *,
        sync_name: str,
        sync_filter: Mapping[str, Any] | None = None,
    ) -> None:
        self.collection = collection
        self.sync_name = sync_name
        self.sync_filter = sync_filter
        self.source = source
        self.partitions = partitions
        self.streams = streams
        self.projection = projection

    def changes_of(self, events: list[dict[str, Any]]) -> tuple[list[DocumentChange], list[dict[str, str]]]:
        """The stage 1 changes of ``events``, and the dead letters of the documents that could not be re-read."""
        found, errors = self.reread_changed(events)
        changes, dead_letters = [], []
        for event, document, error in zip(events, found, errors, strict=True):
            operation = event["operationType"]
            EVENTS_READ.labels(sync=self.sync_name, operation=operation).inc()
            if operation in DOCUMENT_OPERATIONS:
                key = canonical_id(event["documentKey"]["_id"])
                if error is not None:
                    dead_letters.append(self._unreadable(operation, key, error))
                    continue
                # A document gone by the time it is re-read was deleted since (its delete event follows), or is
                # outside the sync's filter now: either way its point goes.
                changes.append(document_change(self.source, key, document, _event_time(event)))
            elif operation in INVALIDATING_OPERATIONS:
                INVALIDATIONS.labels(operation).inc()
                log.error(
                    "Change stream event %r on %s: the collection is gone or renamed. Existing points are kept "
                    "and watching continues after this event; if the collection is not coming back, run "
                    "`vecsync verify --repair` to delete its points.",
                    operation,
                    self.source,
                )
            else:
                log.info("Ignoring change stream event %r on %s: it changes no document", operation, self.source)
        return changes, dead_letters

    def reread_changed(self, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any] | None], list[str | None]]:
        """Each event's document as it is now (None for deletes and gone documents), and why it could not be read."""
        keys = [
            canonical_id(event["documentKey"]["_id"])
            if event["operationType"] in ("insert", "update", "replace")
            else None
            for event in events
        ]
        current, unreadable = self._reread([key for key in keys if key is not None])
        found = [current.get(mongo_id_of(key)) if key is not None else None for key in keys]
        errors = [unreadable.get(mongo_id_of(key)) if key is not None else None for key in keys]
        return found, errors

    def _reread(self, keys: list[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """The current documents by mongo_id, and why each document that cannot be read could not be."""
        try:
            return read_current(self.collection, keys, self.projection, sync_filter=self.sync_filter), {}
        except OperationFailure as exc:
            if exc.code in MONGO_AUTH_FAILURES:
                raise
        # One bad key must not block the others: read them one by one.
        current, unreadable = {}, {}
        for key in keys:
            try:
                current.update(read_current(self.collection, [key], self.projection, sync_filter=self.sync_filter))
            except OperationFailure as exc:
                unreadable[mongo_id_of(key)] = str(exc)
        return current, unreadable

    def _unreadable(self, operation: str, key: Any, error: str) -> dict[str, str]:
        log.error("The %s of document %s cannot be re-read from MongoDB (%s); dead-lettered", operation, key, error)
        DEAD_LETTERED.labels(sync=self.sync_name).inc()
        return dead_letter_fields(
            stream=self.streams[self.partitions.of(point_id(self.source, mongo_id_of(key)))],
            group="producer",
            entry_id="",
            fields={"source": self.source, "mongo_id": mongo_id_of(key), "event": operation},
            error=f"the document could not be re-read from MongoDB: {error}",
            deliveries=1,
            consumer="producer",
        )


def _event_time(event: dict[str, Any]) -> float:
    wall_time = event.get("wallTime")
    if wall_time is not None:
        # pymongo decodes BSON dates as naive datetimes in UTC.
        return float(wall_time.replace(tzinfo=wall_time.tzinfo or datetime.UTC).timestamp())
    cluster_time = event.get("clusterTime")
    if cluster_time is not None and hasattr(cluster_time, "time"):
        return float(cluster_time.time)
    return time.time()
