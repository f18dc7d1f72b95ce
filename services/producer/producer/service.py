"""The producer: MongoDB change stream in, one stage 1 entry per change out.

Each published batch and the resume token that covers it are written together
(vecsync.stage1), so after any crash the producer resumes exactly after the
last change it published: nothing is lost, and at worst nothing is duplicated.
With STREAM_PARTITIONS (or on a Redis Cluster) a batch spans several hash
slots: each partition's share is written with that partition's high-water
mark, then the token, and a restart completes a batch that reached only some
partitions (docs/design.md, "Partitions and Redis Cluster").

Entries carry the document as re-read by its key right after the change
(producer.events), and changes to one document are published in order, so the
last entry of every document holds its current state. Reads project the
document to what the later stages use: its _id, text and payload fields.

The first start snapshots the collection in _id order, in chunks, after
opening the change stream. Each chunk is published in one MULTI/EXEC with the
snapshot's position (its last _id) and the resume token of that change stream,
so a restart goes on after the last chunk published and then follows the
changes made since the snapshot began. Before each chunk or batch of events it
reads, the producer waits while the pipeline holds too much (vecsync.flow).

One Producer follows one sync (producer.main runs one per sync, each on its own
thread): every read it makes applies the sync's filter, and its state keys are
named after the sync's state name.

This module is the producer's loop: what it does at each start, the snapshot,
the following of the change stream, and how it meets each failure. The
snapshot and the following stay in one class, which runs past the usual
length: they share one position, one writer and one retry loop, and the
snapshot hands over to the following in the middle of a run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import redis
from bson import json_util
from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError

from producer.events import MONGO_AUTH_FAILURES, EventReader
from producer.id_migration import migrate_ids
from producer.idle_poll import IdlePoll
from producer.metrics import (
    DEAD_LETTERED,
    ENTRIES_PUBLISHED,
    ERRORS,
    HISTORY_LOST,
    LOST_SHARES,
    PIPELINE_BACKLOG,
    REPLICA_WAITS_TIMED_OUT,
    SNAPSHOT_DOCUMENTS,
    SNAPSHOT_DONE,
    SNAPSHOT_ESTIMATED,
    SNAPSHOT_RUNNING,
    THROTTLED,
    THROTTLED_FOR,
    THROTTLED_SECONDS,
    TOKEN_AGE,
)
from producer.settings import ProducerSettings
from vecsync.backoff import Backoff
from vecsync.bson_codec import ejson_id
from vecsync.documents import source_projection
from vecsync.errors import ConfigurationError, HistoryLost
from vecsync.flow import FlowControl
from vecsync.liveness import Liveness
from vecsync.messages import DocumentChange
from vecsync.metrics import REDIS_REFUSED
from vecsync.mongo_reads import chunks_after, document_change
from vecsync.producer_state import Snapshot, forget_position, take_over_producer_state
from vecsync.redis_errors import REDIS_REFUSALS, REDIS_UNAVAILABLE, refusal_reason
from vecsync.stage1 import InFlight, ProducerWriter, ReplicaBehind, TokenMoved
from vecsync.syncs import sync_of

log = logging.getLogger(__name__)

# Empty reads after which a restart stops waiting for the change events of a half-written batch.
IN_FLIGHT_READS = 3
CHANGE_STREAM_HISTORY_LOST = 286
CHANGE_STREAM_NEEDS_REPLICA_SET = 40573  # what a standalone server answers to watch()


class Producer:
    """Follows one sync: the sync ``settings`` are for (vecsync.syncs.settings_for; the environment's sync when they
    are the environment's), with its own resume token, snapshot and metrics children, under its state name."""

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
        self.source = settings.source
        self.partitions = settings.partitions
        self.stage1 = ProducerWriter(
            client,
            self.source,
            self.partitions,
            settings.stage1_stream,
            replica_wait_ms=settings.producer_replica_wait_ms,
            state_name=self.sync.state_name,
        )
        self.projection = source_projection(settings.text_fields, settings.payload_fields)
        self.events = EventReader(
            collection,
            self.source,
            self.partitions,
            self.stage1.streams,
            self.projection,
            sync_name=self.sync.name,
            sync_filter=self.sync.filter,
        )
        # A batch a crash left written to some partitions only, found at the start (see ProducerWriter.read_marks).
        self._in_flight: InFlight | None = None
        self._token_stored_at = time.time()
        self._wrote_since_failure = False
        # Beats at every read of the change stream, every snapshot batch and every pause: what /healthz reports.
        self.liveness = Liveness(settings.stall_timeout_s)
        self.flow = FlowControl(
            client, settings, settings, self.stopping, liveness=self.liveness, on_waited=THROTTLED_SECONDS.inc
        )
        name = self.sync.name
        TOKEN_AGE.labels(sync=name).set_function(lambda: time.time() - self._token_stored_at)
        THROTTLED.labels(sync=name).set_function(lambda: float(self.flow.throttled))
        THROTTLED_FOR.labels(sync=name).set_function(self.flow.throttled_for_s)
        PIPELINE_BACKLOG.labels(sync=name).set_function(lambda: self.flow.last_backlog)
        self.snapshot_running = SNAPSHOT_RUNNING.labels(sync=name)
        self.snapshot_done = SNAPSHOT_DONE.labels(sync=name)
        self.snapshot_estimated = SNAPSHOT_ESTIMATED.labels(sync=name)
        self.snapshot_documents = SNAPSHOT_DOCUMENTS.labels(sync=name)
        self.redis_errors = ERRORS.labels(sync=name, dependency="redis")
        self.mongodb_errors = ERRORS.labels(sync=name, dependency="mongodb")
        # Counted only on a rare event, these read 0 from the start, so that dashboards and alerts find the series.
        HISTORY_LOST.labels(sync=name)
        DEAD_LETTERED.labels(sync=name)

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
                self.redis_errors.inc()
                log.warning("Redis unavailable (%s); resuming from the stored token after a pause", exc)
            except REDIS_REFUSALS as exc:  # full, or a read-only replica after a failover: it passes
                self.redis_errors.inc()
                REDIS_REFUSED.labels(stage="producer", reason=refusal_reason(exc)).inc()
                log.warning("Redis refused the write (%s); resuming from the stored token after a pause", exc)
            except TokenMoved as exc:
                self.redis_errors.inc()
                log.warning("%s; resuming from the stored token", exc)
            except ReplicaBehind as exc:
                self.redis_errors.inc()
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
                self.mongodb_errors.inc()
                log.warning("MongoDB unavailable (%s); resuming from the stored token after a pause", exc)
            if self._wrote_since_failure:  # a fresh failure after a good run starts with a short pause
                backoff.attempts = 0
                self._wrote_since_failure = False
            if not backoff.wait(self.stopping):
                return

    def _follow_changes(self, *, drain: bool) -> bool:
        """Publish from the stored token on; True when the stream ended (invalidated) and must be reopened."""
        self._take_over_state_of_other_tagging()
        self._recover_lost_shares()
        token: Mapping[str, Any] | None = self.stage1.stored_token()
        snapshot = None if token is not None else self.stage1.stored_snapshot()
        migrate_ids(
            self.client,
            self.settings,
            self.collection,
            self.flow,
            self.stopping,
            projection=self.projection,
            snapshotting_first=token is None and snapshot is None,
        )
        self._read_marks(following_token=token is not None)
        with self._open_change_stream(token or (json_util.loads(snapshot.token) if snapshot else None)) as stream:
            if token is None:
                if not self._snapshot(stream, snapshot):
                    return False  # stopped meanwhile: the snapshot goes on from its position at the next start
                token = stream.resume_token
            idle = IdlePoll(self.settings.idle_poll_ms, self.settings.idle_poll_max_ms)
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
                    # changes, would have this loop spin: wait out the idle poll before reading again.
                    self.stopping.wait(idle.next_wait_s() - (time.monotonic() - read_started))
                else:
                    idle.reset()
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
        self.snapshot_running.set(1)
        self.snapshot_estimated.set(snapshot.estimated)
        try:
            snapshot = self._scan(snapshot)
            if not self.stopping.is_set():
                self._write([], token=opened, snapshot=snapshot, snapshot_done=True)
                log.info("Snapshot of %s published %d documents", self.source, snapshot.published)
                return True
        finally:
            self.snapshot_running.set(0)
        log.info("Stopped during the snapshot of %s after %d documents", self.source, snapshot.published)
        return False

    def _scan(self, snapshot: Snapshot) -> Snapshot:
        """Publish the collection's documents after the snapshot's position, chunk by chunk, until the end or a stop."""
        chunks = chunks_after(
            self.collection,
            snapshot.last_id,
            size=self.settings.batch_size,
            projection=self.projection,
            query=self.sync.query(),  # only the documents of the sync's filter have points
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
                self.snapshot_documents.inc(len(changes))
                self.snapshot_done.set(snapshot.published)
        finally:
            chunks.close()
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

    def _read_marks(self, *, following_token: bool) -> None:
        """Find the batch a crash left written to some partitions only, if any (ProducerWriter.read_marks)."""
        self._in_flight = self.stage1.read_marks(following_token=following_token)
        if self._in_flight is not None:
            log.info(
                "The last batch of %d changes reached %d of %d partitions before the producer stopped; publishing "
                "it to the others",
                self._in_flight.events,
                len(self._in_flight.partitions),
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

    def _publish(
        self, events: list[dict[str, Any]], token: Mapping[str, Any], skip: frozenset[int] = frozenset()
    ) -> None:
        changes, dead_letters = self.events.changes_of(events)
        self._write(changes, token=token, dead_letters=dead_letters, events=len(events), skip=skip)

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
        """Publish ``changes`` with the position that covers them (ProducerWriter.write); the number published."""
        try:
            written = self.stage1.write(
                changes,
                token=token,
                dead_letters=dead_letters,
                snapshot=snapshot,
                snapshot_done=snapshot_done,
                events=events,
                skip=skip,
            )
        except ReplicaBehind:
            REPLICA_WAITS_TIMED_OUT.inc()
            raise
        if not written:
            return 0
        self._wrote_since_failure = True
        if token is not None:
            self._token_stored_at = time.time()
        for change in changes:
            ENTRIES_PUBLISHED.labels(sync=self.sync.name, op=change.op).inc()
        return len(changes)

    def _recover_lost_shares(self) -> None:
        """Go back to the oldest mark of the partitions that lost writes their master had acknowledged
        (ProducerWriter.find_lost_shares and go_back)."""
        lost = self.stage1.find_lost_shares()
        if lost is None:
            return
        LOST_SHARES.inc(len(lost.partitions))
        back_to = self.stage1.go_back(lost)
        log.error(
            "Partitions %s of %s lost writes their Redis master had acknowledged (an unplanned failover, or a master "
            "restarted without its last writes); publishing again from %s.%s",
            ", ".join(map(str, lost.partitions)),
            self.source,
            back_to,
            ""
            if self.stage1.replica_wait_ms
            else " On a Redis Cluster, PRODUCER_REPLICA_WAIT_MS above 0 makes the resume token wait for a replica.",
        )

    def _take_over_state_of_other_tagging(self) -> None:
        """Take over the token or snapshot stored under the other tagging (STREAM_PARTITIONS went from 1 to more, or
        back), so that a change of partitions does not snapshot the collection again. Runs before this producer
        writes anything: the snapshot first, so that a crash in between leaves one of them to take over again."""
        other = take_over_producer_state(self.client, self.sync.state_name, self.partitions)
        if other is None:
            return
        log.info(
            "Took over the resume token and snapshot stored as %s and %s, for STREAM_PARTITIONS=%d",
            other.token,
            other.snapshot,
            self.partitions.count,
        )

    def _history_lost(self, exc: OperationFailure) -> None:
        HISTORY_LOST.labels(sync=self.sync.name).inc()
        if not self.settings.resync_on_history_lost:
            raise HistoryLost(
                f"The change stream of {self.source} cannot resume from the stored token: MongoDB no longer holds "
                f"that history ({exc}). Changes made meanwhile may be missing. Set RESYNC_ON_HISTORY_LOST=true to "
                f"snapshot the collection again automatically, or delete the Redis keys {self.stage1.keys.token} "
                f"and {self.stage1.keys.snapshot} and restart; then run `vecsync verify --repair` to remove points of "
                "documents deleted meanwhile."
            ) from exc
        log.error(
            "The change stream of %s lost its history (%s); RESYNC_ON_HISTORY_LOST is set, so the collection "
            "is snapshotted again; run `vecsync verify --repair` to remove points of documents deleted meanwhile.",
            self.source,
            exc,
        )
        forget_position(self.client, self.sync.state_name, self.partitions)


def _standalone_message(exc: OperationFailure) -> str:
    answer = (exc.details or {}).get("errmsg") or str(exc)
    return (
        f"The MongoDB server in MONGO_URI is not a replica set member, and change streams need a replica set "
        f"(the server answered: {answer}). Run MongoDB as a replica set; a single node will do: start mongod "
        "with `--replSet rs0`, run `rs.initiate()` once in mongosh, add `replicaSet=rs0` to MONGO_URI, and "
        "start the producer again."
    )
