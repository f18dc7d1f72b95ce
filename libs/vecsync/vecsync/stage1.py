"""Writing stage 1: the one protocol by which every writer adds entries to ``raw_document_changes`` (each of its
partitions, with STREAM_PARTITIONS), so that no writer ever publishes a state of a document older than one already
there. It has four writers:

- The producer (ProducerWriter): each batch of changes, or snapshot chunk, with the position that covers it. With
  one partition on one Redis, one MULTI/EXEC holds the entries, the dead letters and the resume token (or the
  snapshot's position), WATCHing the token and the snapshot. With hash-tagged names (several partitions, or a Redis
  Cluster) no MULTI spans the slots: each partition's share goes first, in one MULTI/EXEC with the partition's
  high-water mark (its "mark": the batch's number, its count of events and last token, or the snapshot's position),
  WATCHing the mark; on a Redis Cluster the producer then waits for a replica of each master it wrote to; then the
  token, the batch's number and the batch each partition received ("marks"), in one more MULTI/EXEC in the
  producer's own slot, WATCHing the token and the snapshot. At each start the producer reads the marks back: to
  finish a batch that a crash left half written (read_marks), and to go back to the oldest mark of a partition that
  lost writes its master had acknowledged (find_lost_shares, go_back).
- The recoveries, which publish beside the running producer (publish_current_states: `vecsync resync`,
  `verify --repair`, `dlq replay`, and the upserter's re-read of a trimmed change). They read what the producer
  rewrites with every batch it publishes to a partition (its "guards": the token and the snapshot's position with
  one partition on one Redis, the partition's mark otherwise), read MongoDB only after that, and write each
  partition's share WATCHing its guards: a state read before a newer one that the producer published meanwhile is
  read again.
- `vecsync dlq replay`'s put-back of a letter that names no document of this collection (put_back): as it was,
  together with its removal from the DLQ.
- The upserter's return of a payload-only change whose point no longer holds its text (send_back_to_embed): the
  entry the producer wrote, read back by its id, with its own version, in the upserter's batch transaction.

Why each guarantee holds: docs/design.md, "Why nothing is lost", "Partitions and Redis Cluster" and "Recoveries
never reinstate an older state". The module runs a little past the usual length so that the whole protocol, every
key each writer WATCHes and every transaction, reads in one place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import redis
from bson import json_util
from pymongo.collection import Collection

from vecsync.constants import dlq_stream
from vecsync.documents import point_id
from vecsync.messages import DocumentChange
from vecsync.mongo_reads import changes_for_ids
from vecsync.partitions import Partitions
from vecsync.producer_state import ProducerKeys, Snapshot, stored_snapshot
from vecsync.redis_client import is_cluster, node_of, wait_for_replica
from vecsync.settings import CommonSettings
from vecsync.syncs import sync_of

# Per partition, the keys (and hash fields, None for a plain key) that the producer rewrites with every batch it
# publishes there.
Guards = list[tuple[str, str | None]]


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


@dataclass(frozen=True)
class LostShares:
    """The partitions whose mark is older than the batch the producer's slot records them to have received."""

    partitions: list[int]
    marks: dict[int, dict[str, str]]  # the mark of every partition the producer's slot records, as found


class ProducerWriter:
    """The producer's side of the protocol: its batches, and the marks it reads back at each start."""

    def __init__(
        self,
        client: redis.Redis,
        source: str,
        partitions: Partitions,
        stage1_stream: str,
        *,
        replica_wait_ms: int,
        state_name: str | None = None,
    ) -> None:
        self.client = client
        self.source = source
        self.partitions = partitions
        # Named after the sync's state name (Sync.state_name), which is the source for the environment's sync.
        self.keys = ProducerKeys.of(state_name or source, partitions)
        self.streams = partitions.names(stage1_stream)
        # Only on a Redis Cluster do a partition's share and the token live on different masters, each replicated on
        # its own: on one Redis (with replicas or not) every write is one stream, so a token that survives a crash or
        # a failover has its shares with it.
        self.replica_wait_ms = replica_wait_ms if partitions.hash_tagged and is_cluster(client) else 0
        # What this process last stored or read: the token JSON and the snapshot's position (the token's
        # transaction checks them), and with hash-tagged names each partition's mark (its share's transaction checks
        # it) and the number of the last batch written to every partition.
        self.token_written: str | None = None
        self.snapshot_written: str | None = None
        self.batch_written = 0
        self.positions: list[str | None] = [None] * partitions.count

    def stored_token(self) -> Mapping[str, Any] | None:
        """The resume token stored, now what this process last wrote; None when none is."""
        raw = self.client.get(self.keys.token)
        self.token_written = raw
        return json_util.loads(raw) if raw else None

    def stored_snapshot(self) -> Snapshot | None:
        """The snapshot in progress stored, its position now what this process last wrote; None when none is."""
        snapshot = stored_snapshot(self.client, self.keys.snapshot)
        self.snapshot_written = snapshot.last_id if snapshot else None
        return snapshot

    def read_marks(self, *, following_token: bool) -> InFlight | None:
        """Read each partition's high-water mark; the batch a crash left half written, if any.

        A batch goes to its partitions one transaction each, then its resume token is stored with its number. A
        partition whose mark holds a higher number than the stored one received the batch that comes right after
        the stored token; it must not receive it again.
        """
        if not self.partitions.hash_tagged:
            return None
        self.batch_written = int(self.client.get(self.keys.batch) or 0)
        marks = [self.client.hgetall(key) for key in self.keys.positions]
        self.positions = [mark.get("batch") for mark in marks]
        ahead = [p for p, mark in enumerate(marks) if int(mark.get("batch") or 0) > self.batch_written]
        tokens = {marks[p].get("token", "") for p in ahead}
        if ahead and following_token and len(tokens) == 1 and "" not in tokens:
            return InFlight(frozenset(ahead), int(marks[ahead[0]].get("events") or 0), tokens.pop())
        return None

    def write(
        self,
        changes: list[DocumentChange],
        *,
        token: Mapping[str, Any] | None,
        dead_letters: list[dict[str, str]] | None = None,
        snapshot: Snapshot | None = None,
        snapshot_done: bool = False,
        events: int = 0,
        skip: frozenset[int] = frozenset(),
    ) -> bool:
        """XADD ``changes`` (and ``dead_letters`` to the stage 1 DLQ) and store ``token``, in one MULTI/EXEC; False
        when there was nothing to write.

        With ``snapshot``, its position is stored in the same transaction; with ``snapshot_done``, it is deleted
        there instead, as the token that the changes since the snapshot began resume from is stored.

        With hash-tagged names, each partition's share goes first, in one MULTI/EXEC per partition with its
        high-water mark (the batch's number, its ``events`` and its token), except to the partitions in ``skip``,
        which hold it already; then the token and the batch's number, in one more.
        """
        if not changes and token is None and snapshot is None:
            return False
        partitioned = self.partitions.hash_tagged
        number = self.batch_written + 1
        if partitioned:
            # A snapshot chunk has no change events to compare on a restart: it is published again whole.
            mark = {"events": str(events), "token": json_util.dumps(token) if token is not None and events else ""}
            if snapshot is not None and not snapshot_done:
                # Where a restart goes on should this partition lose what follows (see go_back).
                mark["snapshot"] = json.dumps(snapshot.to_fields())
            shares = self._by_partition(changes, dead_letters or [])
            for partition, (entries, letters) in sorted(shares.items()):
                if partition not in skip:
                    self._write_partition(partition, number, entries, letters, mark)
            self._wait_for_replicas(shares, number)
        with self.client.pipeline(transaction=True) as tx:
            tx.watch(self.keys.token, self.keys.snapshot)
            if tx.get(self.keys.token) != self.token_written or (
                snapshot is not None and tx.hget(self.keys.snapshot, "last_id") != self.snapshot_written
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
                tx.set(self.keys.token, token_json)
                tx.set(self.keys.token_updated, repr(time.time()))
            if snapshot_done:
                tx.delete(self.keys.snapshot)
            elif snapshot is not None:
                tx.hset(self.keys.snapshot, mapping=snapshot.to_fields())
            try:
                tx.execute()
            except redis.WatchError:
                raise TokenMoved(f"the stored resume token of {self.source} changed while publishing") from None
        self.batch_written = number
        if snapshot is not None:
            self.snapshot_written = None if snapshot_done else snapshot.last_id
        if token is not None:
            self.token_written = token_json
        return True

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
            if tx.hget(key, "batch") != self.positions[partition]:
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
        self.positions[partition] = str(number)

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
                raise ReplicaBehind(
                    f"No replica of the Redis Cluster master of partition {partition} of {self.source} acknowledged "
                    f"batch {number} within PRODUCER_REPLICA_WAIT_MS ({self.replica_wait_ms} ms), so the resume "
                    "token stays where it is. Check that master's replica (INFO replication); to publish without "
                    "waiting for replicas, set PRODUCER_REPLICA_WAIT_MS=0"
                )

    def find_lost_shares(self) -> LostShares | None:
        """The partitions that lost writes their master had acknowledged, if any.

        Each batch's token transaction records the batch number each partition it wrote received (keys.marks). A
        partition whose mark is found older has lost the shares after it (an unplanned failover to a replica that
        missed them, a master restarted without its last writes) while the token, on another master, kept them
        covered.
        """
        if not self.partitions.hash_tagged:
            return None
        expected = self.client.hgetall(self.keys.marks)
        if not expected:
            return None
        marks = {p: self.client.hgetall(key) for p, key in enumerate(self.keys.positions) if key in expected}
        lost = [p for p, mark in marks.items() if int(mark.get("batch") or 0) < int(expected[self.keys.positions[p]])]
        return LostShares(lost, marks) if lost else None

    def go_back(self, lost: LostShares) -> str:
        """Go back to the oldest mark of the ``lost`` partitions; where to, in words.

        Its mark says what the partition still holds: the resume token of its batch's last event, or the snapshot's
        position after its chunk. The producer goes back there (further back, to a new snapshot, when the partition
        lost every mark), in one transaction that also records the marks as found, and publishes everything since
        again; the stages absorb what other partitions receive twice.
        """
        marks = lost.marks
        oldest = marks[min(lost.partitions, key=lambda p: int(marks[p].get("batch") or 0))]
        with self.client.pipeline(transaction=True) as tx:
            tx.watch(self.keys.token, self.keys.snapshot, self.keys.marks)
            tx.multi()
            if oldest.get("token"):
                tx.set(self.keys.token, oldest["token"])
                tx.set(self.keys.token_updated, repr(time.time()))
                back_to = "the change stream after its last batch"
            else:
                tx.delete(self.keys.token, self.keys.snapshot)
                if oldest.get("snapshot"):
                    tx.hset(self.keys.snapshot, mapping=json.loads(oldest["snapshot"]))
                    back_to = "the snapshot after its last chunk"
                else:
                    back_to = "a new snapshot, as it holds no mark"
            tx.hset(
                self.keys.marks, mapping={self.keys.positions[p]: marks[p].get("batch") or "0" for p in lost.partitions}
            )
            try:
                tx.execute()
            except redis.WatchError:
                raise TokenMoved(f"the stored resume token of {self.source} changed while going back") from None
        return back_to


def publish_no_older_than_producer(
    client: redis.Redis,
    settings: CommonSettings,
    source: str,
    read_changes: Callable[[], list[DocumentChange]],
    also: Callable[[redis.client.Pipeline], None] | None = None,
) -> None:
    """XADD what ``read_changes`` reads from MongoDB, without ever publishing an older state after a newer one.

    A state read here could be older than one the running producer publishes
    between this read and this write. So the producer's guards (what it rewrites
    with every batch it publishes to a partition: the resume token and the
    snapshot's position with one partition on one Redis, that partition's
    high-water mark otherwise) are read before the read and WATCHed up to the
    write: if the producer published to the partition meanwhile, the documents
    are read again for it. A producer batch published afterwards is newer. So
    ``read_changes`` must read MongoDB when it is called, never hand back
    documents read before: those may be older than what the producer published
    before the guards were read.

    ``also`` queues further commands (progress markers, deletes): in the same
    transaction with one partition on one Redis, else once every partition is
    written (a crash in between publishes the changes again, which the stages
    absorb).

    The guards are those of the producer of the sync ``settings`` are for (vecsync.syncs.sync_of: give
    settings_for(settings, sync)); ``source`` names the points the changes go to.
    """
    partitions = settings.partitions
    guards = _producer_guards(ProducerKeys.of(sync_of(settings).state_name, partitions), partitions)
    streams = partitions.names(settings.stage1_stream)
    together = not partitions.hash_tagged
    remaining = set(partitions.indexes())
    while remaining:
        before = {partition: _read_guards(client, guards[partition]) for partition in remaining}
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
                    if _read_guards(pipe, guards[partition]) != before[partition]:
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
    build: str | None = None,
    also: Callable[[redis.client.Pipeline], None] | None = None,
) -> None:
    """Read the documents named by ``mongo_ids`` from MongoDB and publish their current states to stage 1 beside the
    running producer: an upsert each, or a delete for one that is gone.

    The one way every recovery puts a document back into the pipeline (`vecsync resync`, `verify --repair`,
    `dlq replay`, and the upserter when a change it must embed again was trimmed from stage 1): the read happens
    inside publish_no_older_than_producer, after the producer's guards are read, so it is never older than a state
    the producer published. With ``force_embed`` the entries are embedded even where their text looks unchanged;
    with ``build`` (a model change's snapshot, vecsync.reindex) each is marked for that physical collection alone.
    ``also`` is as for publish_no_older_than_producer. A document outside the filter of the sync ``settings`` are
    for (vecsync.syncs.sync_of) is published as a delete: it has no point.
    """
    sync_filter = sync_of(settings).filter  # a document outside the sync's filter reads as gone: its point goes

    def read() -> list[DocumentChange]:
        changes = changes_for_ids(collection, source, mongo_ids, projection=projection, sync_filter=sync_filter)
        if not force_embed and build is None:
            return changes
        return [replace(change, force_embed=force_embed, build=build) for change in changes]

    publish_no_older_than_producer(client, settings, source, read, also=also)


def put_back(
    client: redis.Redis, stream: str, fields: dict[str, str], also: Callable[[redis.client.Pipeline], None]
) -> None:
    """XADD an entry to ``stream`` as it was, with what ``also`` queues (its removal from a DLQ), in one MULTI/EXEC.

    For a dead letter whose document this process cannot re-read (it names no document of this collection): it goes
    back for its consumer to judge. Nothing read from MongoDB goes in, so nothing could be older than the producer's.
    """
    with client.pipeline(transaction=True) as pipe:
        pipe.xadd(stream, fields)
        also(pipe)
        pipe.execute()


def send_back_to_embed(tx: redis.client.Pipeline, stream: str, change: DocumentChange, version: str) -> None:
    """Queue ``change`` on ``stream`` once more, to be embedded, in the caller's transaction (the upserter's batch).

    ``change`` is the entry the producer wrote, read back by its id ``version``: it holds no state older than the
    producer's, and keeping its version keeps its place in the version fence's order.
    """
    tx.xadd(stream, replace(change, version=version, force_embed=True).to_fields())


def _producer_guards(keys: ProducerKeys, partitions: Partitions) -> list[Guards]:
    """Per partition, what the producer rewrites with every batch it publishes there: the resume token and the
    snapshot's position with one partition on one Redis, else the partition's high-water mark (ProducerWriter)."""
    if not partitions.hash_tagged:
        return [[(keys.token, None), (keys.snapshot, "last_id")]]
    return [[(key, "batch")] for key in keys.positions]


def _read_guards(client: redis.Redis | redis.client.Pipeline, guards: Guards) -> list[str | None]:
    """The guards' values: a key's value, or a field of a hash."""
    return [client.get(key) if field is None else client.hget(key, field) for key, field in guards]
