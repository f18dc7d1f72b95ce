"""The producer: MongoDB change stream in, one stage 1 entry per change out.

Each published batch and the resume token that covers it are written in one
MULTI/EXEC, so after any crash the producer resumes exactly after the last
change it published: nothing is lost, and at worst nothing is duplicated.
With STREAM_PARTITIONS (or on a Redis Cluster) a batch spans several hash
slots: each partition's share is written with that partition's high-water
mark, then the token, and a restart completes a batch that reached only some
partitions (docs/design.md, "Partitions and Redis Cluster").

Entries carry the document as re-read by its key right after the change, not
the change event's own copy. The read happens after the change, so it shows
that change or a newer state, and changes to one document are published in
order, so the last entry of every document holds its current state. Reads
project the document to what the later stages use: its _id, text and payload
fields.

The first start snapshots the collection in _id order, in chunks, after
opening the change stream. Each chunk is published in one MULTI/EXEC with the
snapshot's position (its last _id) and the resume token of that change stream,
so a restart goes on after the last chunk published and then follows the
changes made since the snapshot began. Before each chunk or batch of events it
reads, the producer waits while the pipeline holds too much (vecsync.flow).
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import redis
from bson import json_util
from prometheus_client import Counter, Gauge
from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError

from producer.settings import ProducerSettings
from vecsync.backoff import Backoff
from vecsync.constants import dlq_stream
from vecsync.dead_letters import dead_letter_fields
from vecsync.documents import point_id, source_projection
from vecsync.errors import ConfigurationError, HistoryLost
from vecsync.flow import FlowControl
from vecsync.liveness import Liveness
from vecsync.messages import DocumentChange
from vecsync.metrics import REDIS_REFUSED
from vecsync.partitions import ProducerKeys
from vecsync.redis_client import is_cluster, node_of, wait_for_replica
from vecsync.redis_errors import REDIS_REFUSALS, REDIS_UNAVAILABLE, refusal_reason
from vecsync.source import (
    Snapshot,
    canonical_id,
    chunks_after,
    document_change,
    ejson_id,
    ids_written_otherwise_before,
    migrated_id_changes,
    mongo_id_of,
    publish_beside_producer,
    read_current,
    stored_snapshot,
    take_over_producer_state,
)

log = logging.getLogger(__name__)

# Empty reads after which a restart stops waiting for the change events of a half-written batch.
IN_FLIGHT_READS = 3
CHANGE_STREAM_HISTORY_LOST = 286
CHANGE_STREAM_NEEDS_REPLICA_SET = 40573  # what a standalone server answers to watch()
MONGO_AUTH_FAILURES = {13, 18}  # Unauthorized, AuthenticationFailed
DOCUMENT_OPERATIONS = {"insert", "update", "replace", "delete"}
# After these the change stream is invalidated; see "Collection drops and renames" in docs/design.md.
INVALIDATING_OPERATIONS = {"drop", "rename", "dropDatabase", "invalidate"}

EVENTS_READ = Counter("vecsync_producer_events_total", "Change events read, by operation type.", ["operation"])
SNAPSHOT_DOCUMENTS = Counter(
    "vecsync_producer_snapshot_documents_total", "Documents published by the initial snapshot."
)
SNAPSHOT_RUNNING = Gauge("vecsync_producer_snapshot_running", "1 while the producer snapshots the collection, else 0.")
SNAPSHOT_DONE = Gauge(
    "vecsync_producer_snapshot_documents_done", "Documents the snapshot in progress has published, across restarts."
)
SNAPSHOT_ESTIMATED = Gauge(
    "vecsync_producer_snapshot_documents_estimated", "The collection's estimated size when the snapshot began."
)
THROTTLED = Gauge(
    "vecsync_producer_throttled",
    "1 while the producer waits for the pipeline's backlog to fall below PRODUCER_RESUME_BACKLOG, else 0.",
)
THROTTLED_FOR = Gauge(
    "vecsync_producer_throttled_for_seconds", "How long the producer has been waiting for room (0 when it is not)."
)
THROTTLED_SECONDS = Counter(
    "vecsync_producer_throttled_seconds_total", "Time the producer spent waiting for room in the pipeline."
)
PIPELINE_BACKLOG = Gauge(
    "vecsync_producer_pipeline_backlog",
    "Entries not yet processed in both stages, as the producer last measured them before reading MongoDB.",
)
ENTRIES_PUBLISHED = Counter("vecsync_producer_entries_published_total", "Entries added to stage 1.", ["op"])
INVALIDATIONS = Counter(
    "vecsync_producer_invalidations_total",
    "Drop, rename and invalidate events: the watched collection went away.",
    ["operation"],
)
DEAD_LETTERED = Counter(
    "vecsync_producer_dead_lettered_total", "Changes whose document could not be re-read, sent to the stage 1 DLQ."
)
HISTORY_LOST = Counter(
    "vecsync_producer_history_lost_total", "Times the change stream could not resume from the stored token."
)
ERRORS = Counter("vecsync_producer_errors_total", "Failures talking to MongoDB or Redis, retried.", ["dependency"])
REPLICA_WAITS_TIMED_OUT = Counter(
    "vecsync_producer_replica_waits_timed_out_total",
    "Batches whose share on a Redis Cluster master no replica acknowledged within PRODUCER_REPLICA_WAIT_MS.",
)
LOST_SHARES = Counter(
    "vecsync_producer_lost_shares_total",
    "Partitions found to have lost writes their master had acknowledged (an unplanned failover, a master restarted "
    "without its last writes); the producer went back to their last mark.",
)
TOKEN_AGE = Gauge("vecsync_producer_resume_token_age_seconds", "Seconds since the stored resume token last advanced.")


class TokenMoved(Exception):
    """Raised when the stored resume token is not the one this producer last wrote."""


class ReplicaBehind(Exception):
    """Raised when no replica of a partition's master acknowledged its share of a batch within the wait allowed."""


@dataclass(frozen=True)
class InFlight:
    """A batch of change events that a crash left written to some partitions only (docs/design.md, "Partitions")."""

    partitions: frozenset[int]
    events: int
    token: str  # the resume token of its last event, as stored JSON


class Producer:
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
        self.source = settings.source
        self.partitions = settings.partitions
        self.keys = ProducerKeys.of(self.source, self.partitions)
        self.token_key = self.keys.token
        self.token_updated_key = self.keys.token_updated
        self.snapshot_key = self.keys.snapshot
        self.streams = self.partitions.names(settings.stage1_stream)
        # With several partitions: the number of the last batch written to every partition, each partition's
        # high-water mark as this process last read or wrote it, and a batch a crash left half written.
        self._batch_written = 0
        self._positions: list[str | None] = [None] * self.partitions.count
        self._in_flight: InFlight | None = None
        # Only on a Redis Cluster do a partition's share and the token live on different masters, each replicated on
        # its own: on one Redis (with replicas or not) every write is one stream, so a token that survives a crash or
        # a failover has its shares with it.
        self.replica_wait_ms = settings.producer_replica_wait_ms if self.partitions.split and is_cluster(client) else 0
        self.projection = source_projection(settings.text_fields, settings.payload_fields)
        self._token_stored_at = time.time()
        self._token_written: str | None = None  # the token JSON this process last stored
        self._snapshot_written: str | None = None  # the snapshot position this process last stored
        self._wrote_since_failure = False
        # Beats at every read of the change stream, every snapshot batch and every pause: what /healthz reports.
        self.liveness = Liveness(settings.stall_timeout_s)
        self.flow = FlowControl(client, settings, settings, self.stopping, liveness=self.liveness)
        TOKEN_AGE.set_function(lambda: time.time() - self._token_stored_at)
        THROTTLED.set_function(lambda: float(self.flow.throttled))
        THROTTLED_FOR.set_function(self.flow.throttled_for_s)
        PIPELINE_BACKLOG.set_function(lambda: self.flow.last_backlog)

    @property
    def throttled(self) -> bool:
        return self.flow.throttled

    def run(self, *, drain: bool = False) -> None:
        """Publish changes until stopped; with ``drain``, until no change is waiting."""
        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s, self.liveness)
        while not self.stopping.is_set():
            self.liveness.beat()
            try:
                if self._follow_changes(drain=drain):
                    continue
                return
            except REDIS_UNAVAILABLE as exc:
                ERRORS.labels("redis").inc()
                log.warning("Redis unavailable (%s); resuming from the stored token after a pause", exc)
            except REDIS_REFUSALS as exc:  # full, or a read-only replica after a failover: it passes
                ERRORS.labels("redis").inc()
                REDIS_REFUSED.labels(stage="producer", reason=refusal_reason(exc)).inc()
                log.warning("Redis refused the write (%s); resuming from the stored token after a pause", exc)
            except TokenMoved as exc:
                ERRORS.labels("redis").inc()
                log.warning("%s; resuming from the stored token", exc)
            except ReplicaBehind as exc:
                ERRORS.labels("redis").inc()
                log.warning("%s; publishing the batch again after a pause", exc)
            except OperationFailure as exc:
                if exc.code in MONGO_AUTH_FAILURES:
                    raise ConfigurationError(
                        f"MongoDB refused the credentials in MONGO_URI ({exc}). "
                        "Check the user, password and authSource."
                    ) from None
                if exc.code == CHANGE_STREAM_NEEDS_REPLICA_SET:
                    raise ConfigurationError(_standalone_message(exc)) from None
                if exc.code != CHANGE_STREAM_HISTORY_LOST:
                    raise
                self._history_lost(exc)
                continue
            except PyMongoError as exc:
                ERRORS.labels("mongodb").inc()
                log.warning("MongoDB unavailable (%s); resuming from the stored token after a pause", exc)
            if self._wrote_since_failure:  # a fresh failure after a good run starts with a short pause
                backoff.attempts = 0
                self._wrote_since_failure = False
            if not backoff.wait(self.stopping):
                return

    def _follow_changes(self, *, drain: bool) -> bool:
        """Publish from the stored token on; True when the stream ended (invalidated) and must be reopened."""
        self._adopt_other_naming()
        self._recover_lost_shares()
        token: Mapping[str, Any] | None = self._stored_token()
        snapshot = None if token is not None else self._stored_snapshot()
        self._migrate_ids(snapshotting_first=token is None and snapshot is None)
        self._read_positions(following_token=token is not None)
        with self._open_change_stream(token or (json_util.loads(snapshot.token) if snapshot else None)) as stream:
            if token is None:
                if not self._snapshot(stream, snapshot):
                    return False  # stopped meanwhile: the snapshot goes on from its position at the next start
                token = stream.resume_token
            while not self.stopping.is_set():
                self.liveness.beat()
                self.flow.wait_for_room()
                read_started = time.monotonic()
                in_flight, self._in_flight = self._in_flight, None
                events = self._next_events(stream, exactly=in_flight.events if in_flight else None)
                if events:
                    self._publish(events, events[-1]["_id"], skip=self._partitions_written(in_flight, events))
                if not stream.alive:
                    return True
                if not events and drain:
                    return False
                if not events and stream.resume_token and stream.resume_token != token:
                    # An idle stream still advances on real MongoDB; storing that keeps the
                    # token inside the oplog window even when the collection is quiet.
                    self._publish([], stream.resume_token)
                if not events:
                    # A server that answers an empty read at once, instead of waiting up to MAX_AWAIT_MS for
                    # changes, would have this loop spin: wait out IDLE_POLL_MS before reading again.
                    self.stopping.wait(self.settings.idle_poll_ms / 1000 - (time.monotonic() - read_started))
                token = stream.resume_token
        return False

    @contextmanager
    def _open_change_stream(self, token: Mapping[str, Any] | None) -> Iterator[CollectionChangeStream[Any]]:
        # start_after (not resume_after) so that a token of an invalidate event resumes too.
        stream = self.collection.watch(start_after=token, max_await_time_ms=self.settings.max_await_ms)
        log.info("Watching %s from %s", self.source, "a stored resume token" if token else "now")
        try:
            yield stream
        finally:
            stream.close()

    def _snapshot(self, stream: CollectionChangeStream[Any], snapshot: Snapshot | None) -> bool:
        """Publish every existing document in _id order, going on from ``snapshot``; False if stopped first.

        The change stream is already open, so a change made during the scan is
        also read from it afterwards and published after the scanned state.
        """
        opened = stream.resume_token
        if snapshot is None:
            estimated = self.collection.estimated_document_count()
            log.info("No resume token stored: snapshotting %s (about %d documents) first", self.source, estimated)
            snapshot = Snapshot(json_util.dumps(opened) if opened else "", None, 0, estimated, time.time())
            if snapshot.token:
                self._write([], token=None, snapshot=snapshot)
            else:
                log.warning("MongoDB gave no resume token for the new change stream: a restart snapshots again")
        else:
            log.info("Going on with the snapshot of %s after %d documents", self.source, snapshot.published)
        SNAPSHOT_RUNNING.set(1)
        SNAPSHOT_ESTIMATED.set(snapshot.estimated)
        try:
            snapshot = self._scan(snapshot)
            if not self.stopping.is_set():
                self._write([], token=opened, snapshot=snapshot, snapshot_done=True)
                log.info("Snapshot of %s published %d documents", self.source, snapshot.published)
                return True
        finally:
            SNAPSHOT_RUNNING.set(0)
        log.info("Stopped during the snapshot of %s after %d documents", self.source, snapshot.published)
        return False

    def _scan(self, snapshot: Snapshot) -> Snapshot:
        """Publish the collection's documents after the snapshot's position, chunk by chunk, until the end or a stop."""
        chunks = chunks_after(
            self.collection, snapshot.last_id, size=self.settings.batch_size, projection=self.projection
        )
        try:
            while not self.stopping.is_set():
                self.liveness.beat()
                self.flow.wait_for_room()
                chunk = next(chunks, None)
                if chunk is None or self.stopping.is_set():
                    break
                now = time.time()
                changes = [document_change(self.source, document["_id"], document, now) for document in chunk]
                snapshot = replace(
                    snapshot, last_id=ejson_id(chunk[-1]["_id"]), published=snapshot.published + len(chunk)
                )
                self._write(changes, token=None, snapshot=snapshot if snapshot.token else None)
                SNAPSHOT_DOCUMENTS.inc(len(changes))
                SNAPSHOT_DONE.set(snapshot.published)
        finally:
            chunks.close()
        return snapshot

    def _stored_snapshot(self) -> Snapshot | None:
        snapshot = stored_snapshot(self.client, self.snapshot_key)
        self._snapshot_written = snapshot.last_id if snapshot else None
        return snapshot

    def _next_events(self, stream: CollectionChangeStream[Any], *, exactly: int | None = None) -> list[dict[str, Any]]:
        """Up to BATCH_SIZE events; with ``exactly``, that many, unless the stream keeps giving none."""
        events: list[dict[str, Any]] = []
        empty_reads = 0
        while len(events) < (exactly or self.settings.batch_size):
            event = stream.try_next()
            if event is None:
                empty_reads += 1
                if exactly is None or empty_reads >= IN_FLIGHT_READS or not stream.alive:
                    break
                continue
            events.append(event)
        return events

    # Partitions -------------------------------------------------------------

    def _read_positions(self, *, following_token: bool) -> None:
        """Read each partition's high-water mark, and find the batch a crash left half written, if any.

        A batch goes to its partitions one transaction each, then its resume token is stored with its number. A
        partition whose mark holds a higher number than the stored one received the batch that comes right after
        the stored token; it must not receive it again.
        """
        if not self.partitions.split:
            return
        self._batch_written = int(self.client.get(self.keys.batch) or 0)
        marks = [self.client.hgetall(key) for key in self.keys.positions]
        self._positions = [mark.get("batch") for mark in marks]
        ahead = [p for p, mark in enumerate(marks) if int(mark.get("batch") or 0) > self._batch_written]
        tokens = {marks[p].get("token", "") for p in ahead}
        self._in_flight = None
        if ahead and following_token and len(tokens) == 1 and "" not in tokens:
            self._in_flight = InFlight(frozenset(ahead), int(marks[ahead[0]].get("events") or 0), tokens.pop())
            log.info(
                "The last batch of %d changes reached %d of %d partitions before the producer stopped; publishing "
                "it to the others",
                self._in_flight.events,
                len(ahead),
                self.partitions.count,
            )

    def _partitions_written(self, in_flight: InFlight | None, events: list[dict[str, Any]]) -> frozenset[int]:
        """The partitions that already hold ``events``: those the half-written batch reached, if these are it."""
        if in_flight is None:
            return frozenset()
        if len(events) == in_flight.events and json_util.dumps(events[-1]["_id"]) == in_flight.token:
            return in_flight.partitions
        log.warning(
            "The change stream did not give again the half-written batch of %d changes; publishing what it gives "
            "to every partition (the stages absorb repeated changes)",
            in_flight.events,
        )
        return frozenset()

    def _write_partition(
        self,
        partition: int,
        number: int,
        entries: list[dict[str, str]],
        letters: list[dict[str, str]],
        mark: dict[str, str],
    ) -> None:
        """XADD one partition's share of a batch, with the partition's high-water mark, in one MULTI/EXEC."""
        key, stream = self.keys.positions[partition], self.streams[partition]
        with self.client.pipeline(transaction=True) as tx:
            tx.watch(key)
            if tx.hget(key, "batch") != self._positions[partition]:
                raise TokenMoved(
                    f"the high-water mark of partition {partition} of {self.source} changed under this producer"
                )
            tx.multi()
            for fields in entries:
                tx.xadd(stream, fields)
            for letter in letters:
                tx.xadd(dlq_stream(stream), letter)
            tx.hset(key, mapping={"batch": str(number), **mark})
            try:
                tx.execute()
            except redis.WatchError:
                raise TokenMoved(
                    f"the high-water mark of partition {partition} of {self.source} changed while publishing"
                ) from None
        self._positions[partition] = str(number)

    def _by_partition(
        self, changes: list[DocumentChange], letters: list[dict[str, str]]
    ) -> dict[int, tuple[list[dict[str, str]], list[dict[str, str]]]]:
        shares: dict[int, tuple[list[dict[str, str]], list[dict[str, str]]]] = {}
        for change in changes:
            partition = self.partitions.of(point_id(change.source, change.mongo_id))
            shares.setdefault(partition, ([], []))[0].append(change.to_fields())
        for letter in letters:
            mongo_id = json.loads(letter["fields"])["mongo_id"]
            shares.setdefault(self.partitions.of(point_id(self.source, mongo_id)), ([], []))[1].append(letter)
        return shares

    def _publish(
        self, events: list[dict[str, Any]], token: Mapping[str, Any], skip: frozenset[int] = frozenset()
    ) -> None:
        found, errors = self._reread_changed(events)
        changes, dead_letters = [], []
        for event, document, error in zip(events, found, errors, strict=True):
            operation = event["operationType"]
            EVENTS_READ.labels(operation).inc()
            if operation in DOCUMENT_OPERATIONS:
                key = canonical_id(event["documentKey"]["_id"])
                if error is not None:
                    dead_letters.append(self._unreadable(operation, key, error))
                    continue
                # A document gone by the time it is re-read was deleted since; its delete event follows.
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
        self._write(changes, token=token, dead_letters=dead_letters, events=len(events), skip=skip)

    def _reread_changed(self, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any] | None], list[str | None]]:
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
            return read_current(self.collection, keys, self.projection), {}
        except OperationFailure as exc:
            if exc.code in MONGO_AUTH_FAILURES:
                raise
        # One bad key must not block the others: read them one by one.
        current, unreadable = {}, {}
        for key in keys:
            try:
                current.update(read_current(self.collection, [key], self.projection))
            except OperationFailure as exc:
                unreadable[mongo_id_of(key)] = str(exc)
        return current, unreadable

    def _unreadable(self, operation: str, key: Any, error: str) -> dict[str, str]:
        log.error("The %s of document %s cannot be re-read from MongoDB (%s); dead-lettered", operation, key, error)
        DEAD_LETTERED.inc()
        return dead_letter_fields(
            stream=self.streams[self.partitions.of(point_id(self.source, mongo_id_of(key)))],
            group="producer",
            entry_id="",
            fields={"source": self.source, "mongo_id": mongo_id_of(key), "event": operation},
            error=f"the document could not be re-read from MongoDB: {error}",
            deliveries=1,
            consumer="producer",
        )

    def _write(
        self,
        changes: list[DocumentChange],
        *,
        token: Mapping[str, Any] | None,
        dead_letters: list[dict[str, str]] | None = None,
        snapshot: Snapshot | None = None,
        snapshot_done: bool = False,
        events: int = 0,
        skip: frozenset[int] = frozenset(),
    ) -> int:
        """XADD ``changes`` (and ``dead_letters`` to the stage 1 DLQ) and store ``token``, in one MULTI/EXEC.

        With ``snapshot``, its position is stored in the same transaction; with ``snapshot_done``, it is deleted
        there instead, as the token that the changes since the snapshot began resume from is stored.

        With several partitions, each partition's share goes first, in one MULTI/EXEC per partition with its
        high-water mark (the batch's number, its ``events`` and its token), except to the partitions in ``skip``,
        which hold it already; then the token and the batch's number, in one more.
        """
        if not changes and token is None and snapshot is None:
            return 0
        partitioned = self.partitions.split
        number = self._batch_written + 1
        if partitioned:
            # A snapshot chunk has no change events to compare on a restart: it is published again whole.
            mark = {"events": str(events), "token": json_util.dumps(token) if token is not None and events else ""}
            if snapshot is not None and not snapshot_done:
                # Where a restart goes on should this partition lose what follows (see _recover_lost_shares).
                mark["snapshot"] = json.dumps(snapshot.to_fields())
            shares = self._by_partition(changes, dead_letters or [])
            for partition, (entries, letters) in sorted(shares.items()):
                if partition not in skip:
                    self._write_partition(partition, number, entries, letters, mark)
            self._wait_for_replicas(shares, number)
        with self.client.pipeline(transaction=True) as tx:
            tx.watch(self.token_key, self.snapshot_key)
            if tx.get(self.token_key) != self._token_written or (
                snapshot is not None and tx.hget(self.snapshot_key, "last_id") != self._snapshot_written
            ):
                # Redis lost its latest writes (a crash within the fsync window), or another producer
                # runs: what this process thinks it published may not be there. Resume from what is.
                raise TokenMoved(f"the stored resume token or snapshot of {self.source} changed under this producer")
            tx.multi()
            if not partitioned:
                for change in changes:
                    tx.xadd(self.streams[0], change.to_fields())
                for letter in dead_letters or []:
                    tx.xadd(dlq_stream(self.streams[0]), letter)
            else:
                tx.set(self.keys.batch, number)
                if shares:
                    tx.hset(self.keys.marks, mapping={self.keys.positions[p]: str(number) for p in shares})
            if token is not None:
                token_json = json_util.dumps(token)
                tx.set(self.token_key, token_json)
                tx.set(self.token_updated_key, repr(time.time()))
            if snapshot_done:
                tx.delete(self.snapshot_key)
            elif snapshot is not None:
                tx.hset(self.snapshot_key, mapping=snapshot.to_fields())
            try:
                tx.execute()
            except redis.WatchError:
                raise TokenMoved(f"the stored resume token of {self.source} changed while publishing") from None
        self._wrote_since_failure = True
        self._batch_written = number
        if snapshot is not None:
            self._snapshot_written = None if snapshot_done else snapshot.last_id
        if token is not None:
            self._token_written = token_json
            self._token_stored_at = time.time()
        for change in changes:
            ENTRIES_PUBLISHED.labels(change.op).inc()
        return len(changes)

    def _wait_for_replicas(self, partitions: Iterable[int], number: int) -> None:
        """Return once a replica of each master holding one of ``partitions`` acknowledged its writes so far, or
        raise ReplicaBehind: one WAIT per master covers every partition it holds."""
        if not self.replica_wait_ms:
            return
        by_node: dict[str, int] = {}
        for partition in sorted(partitions):
            by_node.setdefault(node_of(self.client, self.keys.replicated[partition])[0], partition)
        for partition in by_node.values():
            if not wait_for_replica(self.client, self.keys.replicated[partition], str(number), self.replica_wait_ms):
                REPLICA_WAITS_TIMED_OUT.inc()
                raise ReplicaBehind(
                    f"No replica of the Redis Cluster master of partition {partition} of {self.source} acknowledged "
                    f"batch {number} within PRODUCER_REPLICA_WAIT_MS ({self.replica_wait_ms} ms), so the resume "
                    "token stays where it is. Check that master's replica (INFO replication); to publish without "
                    "waiting for replicas, set PRODUCER_REPLICA_WAIT_MS=0"
                )

    def _recover_lost_shares(self) -> None:
        """Go back to the oldest mark of the partitions that lost writes their master had acknowledged.

        Each batch's token transaction records the batch number each partition it wrote received (keys.marks). A
        partition whose mark is found older has lost the shares after it (an unplanned failover to a replica that
        missed them, a master restarted without its last writes) while the token, on another master, kept them
        covered. Its mark says what it still holds: the resume token of its batch's last event, or the snapshot's
        position after its chunk. The producer goes back there (further back, to a new snapshot, when the partition
        lost every mark), in one transaction that also records the marks as found, and publishes everything since
        again; the stages absorb what other partitions receive twice.
        """
        if not self.partitions.split:
            return
        expected = self.client.hgetall(self.keys.marks)
        if not expected:
            return
        marks = {p: self.client.hgetall(key) for p, key in enumerate(self.keys.positions) if key in expected}
        lost = [p for p, mark in marks.items() if int(mark.get("batch") or 0) < int(expected[self.keys.positions[p]])]
        if not lost:
            return
        LOST_SHARES.inc(len(lost))
        oldest = marks[min(lost, key=lambda p: int(marks[p].get("batch") or 0))]
        with self.client.pipeline(transaction=True) as tx:
            tx.watch(self.token_key, self.snapshot_key, self.keys.marks)
            tx.multi()
            if oldest.get("token"):
                tx.set(self.token_key, oldest["token"])
                tx.set(self.token_updated_key, repr(time.time()))
                back_to = "the change stream after its last batch"
            else:
                tx.delete(self.token_key, self.snapshot_key)
                if oldest.get("snapshot"):
                    tx.hset(self.snapshot_key, mapping=json.loads(oldest["snapshot"]))
                    back_to = "the snapshot after its last chunk"
                else:
                    back_to = "a new snapshot, as it holds no mark"
            tx.hset(self.keys.marks, mapping={self.keys.positions[p]: marks[p].get("batch") or "0" for p in lost})
            try:
                tx.execute()
            except redis.WatchError:
                raise TokenMoved(f"the stored resume token of {self.source} changed while going back") from None
        log.error(
            "Partitions %s of %s lost writes their Redis master had acknowledged (an unplanned failover, or a master "
            "restarted without its last writes); publishing again from %s.%s",
            ", ".join(map(str, lost)),
            self.source,
            back_to,
            ""
            if self.replica_wait_ms
            else " On a Redis Cluster, PRODUCER_REPLICA_WAIT_MS above 0 makes the resume token wait for a replica.",
        )

    def _stored_token(self) -> Mapping[str, Any] | None:
        raw = self.client.get(self.token_key)
        self._token_written = raw
        return json_util.loads(raw) if raw else None

    def _adopt_other_naming(self) -> None:
        """Take over the token or snapshot stored under the other naming (STREAM_PARTITIONS went from 1 to more, or
        back), so that a change of partitions does not snapshot the collection again. Runs before this producer
        writes anything: the snapshot first, so that a crash in between leaves one of them to adopt again."""
        other = take_over_producer_state(self.client, self.source, self.partitions)
        if other is None:
            return
        log.info(
            "Took over the resume token and snapshot stored as %s and %s, for STREAM_PARTITIONS=%d",
            other.token,
            other.snapshot,
            self.partitions.count,
        )

    def _migrate_ids(self, *, snapshotting_first: bool) -> None:
        """Once per source: give the string ids that earlier releases wrote as themselves points of their own.

        Such a string (24 lowercase hex digits, say) shared its point with the value it reads as (the ObjectId of
        those digits); see vecsync.source.mongo_id_of. Both documents are published again, in their current state,
        under the ids of this release, before this producer reads its change stream (publish_beside_producer keeps
        the order with anything a producer publishes meanwhile). The mark is set only once every one of them is in
        stage 1, so a crash or stop before it starts over, which republishes some documents twice and changes
        nothing else.
        """
        mark = self.keys.ids_migrated
        if self.client.get(mark) is not None:  # GET, not EXISTS: in the producer's least-privilege ACL
            return
        if snapshotting_first:  # the snapshot about to begin publishes every document under this release's ids
            self.client.set(mark, repr(time.time()))
            return
        moved = 0
        for ids in ids_written_otherwise_before(self.collection, size=self.settings.batch_size):
            if self.stopping.is_set():
                return
            self.flow.wait_for_room()
            publish_beside_producer(
                self.client,
                self.settings,
                self.source,
                partial(migrated_id_changes, self.collection, self.source, ids, projection=self.projection),
            )
            moved += len(ids)
        self.client.set(mark, repr(time.time()))
        if moved:
            log.info(
                "Published again %d documents of %s whose string ids earlier releases shared with other ids "
                '(docs/operations.md, "Upgrading: string ids that look like other ids")',
                moved,
                self.source,
            )

    def _history_lost(self, exc: OperationFailure) -> None:
        HISTORY_LOST.inc()
        if not self.settings.resync_on_history_lost:
            raise HistoryLost(
                f"The change stream of {self.source} cannot resume from the stored token: MongoDB no longer holds "
                f"that history ({exc}). Changes made meanwhile may be missing. Set RESYNC_ON_HISTORY_LOST=true to "
                f"snapshot the collection again automatically, or delete the Redis keys {self.token_key} and "
                f"{self.snapshot_key} and restart; then run `vecsync verify --repair` to remove points of documents "
                "deleted meanwhile."
            ) from exc
        log.error(
            "The change stream of %s lost its history (%s); RESYNC_ON_HISTORY_LOST is set, so the collection "
            "is snapshotted again; run `vecsync verify --repair` to remove points of documents deleted meanwhile.",
            self.source,
            exc,
        )
        other = self.keys.other_naming(self.source, self.partitions)
        self._delete(
            self.token_key,
            self.snapshot_key,
            self.keys.batch,
            *self.keys.positions,
            *([self.keys.marks] if self.keys.marks else []),
            other.token,
            other.snapshot,
        )

    def _delete(self, *keys: str) -> None:
        for key in keys:
            self.client.delete(key)  # one by one: on a Redis Cluster, they live in different slots


def _standalone_message(exc: OperationFailure) -> str:
    answer = (exc.details or {}).get("errmsg") or str(exc)
    return (
        f"The MongoDB server in MONGO_URI is not a replica set member, and change streams need a replica set "
        f"(the server answered: {answer}). Run MongoDB as a replica set; a single node will do: start mongod "
        "with `--replSet rs0`, run `rs.initiate()` once in mongosh, add `replicaSet=rs0` to MONGO_URI, and "
        "start the producer again."
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
