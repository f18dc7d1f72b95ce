"""The producer's state in Redis: the names of its keys, the snapshot in progress, and their move between the two
namings (without hash tags, and with them).

Read by the producer, by `vecsync status` and the local stack's progress, and by `vecsync repartition`; written
only by the producer through vecsync.stage1, except for the moves here, which run before the producer writes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import redis

from vecsync import constants
from vecsync.partitions import Partitions


@dataclass(frozen=True)
class ProducerKeys:
    """The keys of the producer of one sync, named after its state name (Sync.state_name: the source for the
    environment's sync, so the seed's keys stay as they were; the sync's name for a definition's).

    With hash-tagged names (see Partitions.hash_tagged), the resume token, its time, the snapshot in progress and
    the number of the last batch published share one slot of their own, chosen by the name and not by the number
    of partitions, so that they keep their names when STREAM_PARTITIONS changes; each partition's high-water mark
    lives in its partition's slot, written with its entries (docs/design.md, "Partitions"). Without, they are the
    seed's names.
    """

    token: str
    token_updated: str
    snapshot: str
    batch: str
    positions: list[str]
    ids_migrated: str
    # Hash-tagged names only, like the positions: the batch each mark last received (in the producer's slot), and
    # the key written before each WAIT for a replica (one per partition, in its slot).
    marks: str = ""
    replicated: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, name: str, partitions: Partitions) -> ProducerKeys:
        tag = ""
        if partitions.hash_tagged:
            tag = ":{vsp-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:12] + "}"
        return cls(
            token=constants.resume_token_key(name) + tag,
            token_updated=constants.resume_token_updated_key(name) + tag,
            snapshot=constants.snapshot_key(name) + tag,
            batch=constants.producer_batch_key(name) + tag,
            positions=partitions.names(constants.producer_position_key(name)) if partitions.hash_tagged else [],
            ids_migrated=constants.ids_migrated_key(name) + tag,
            marks=constants.producer_marks_key(name) + tag if partitions.hash_tagged else "",
            replicated=partitions.names(constants.producer_replicated_key(name)) if partitions.hash_tagged else [],
        )

    @classmethod
    def of_other_tagging(cls, name: str, partitions: Partitions) -> ProducerKeys:
        """The keys of ``name`` named with hash tags if ``partitions`` names them without, and the other way round:
        where the state was stored before STREAM_PARTITIONS went from 1 on one Redis to more, or back."""
        return cls.of(name, Partitions(1, redis_cluster=not partitions.hash_tagged))


@dataclass(frozen=True)
class Snapshot:
    """A snapshot in progress, as stored at snapshot_key: where the scan is, and where the change stream resumes."""

    token: str  # the resume token (Extended JSON) of the change stream opened before the scan began
    last_id: str | None  # the last _id published (see vecsync.bson_codec.ejson_id); None before the first chunk
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


def take_over_producer_state(client: redis.Redis, name: str, partitions: Partitions) -> ProducerKeys | None:
    """Move the resume token, snapshot and ids-migrated mark of the producer of the state ``name`` (see
    ProducerKeys) from the other tagging to
    the names it has with ``partitions``, unless some are stored there already; the keys they came from, or None if
    nothing moved.

    The token and snapshot keep their names whatever the number of partitions, except between one partition on one
    Redis (the seed's names) and hash-tagged names (ProducerKeys.of_other_tagging): the producer calls this before
    it writes anything, and so does `vecsync repartition`, so that a change of partitions needs no new snapshot. The
    snapshot goes first, so that a crash in between leaves one of them to take over again.
    """
    keys = ProducerKeys.of(name, partitions)
    if client.get(keys.token) or client.hget(keys.snapshot, "token"):
        return None
    other = ProducerKeys.of_other_tagging(name, partitions)
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


def forget_position(client: redis.Redis, name: str, partitions: Partitions) -> None:
    """Delete where the producer of the state ``name`` (see ProducerKeys) stands (its resume token and snapshot
    under either tagging, the number of its last batch and the marks), so that its next start snapshots the
    collection again."""
    keys = ProducerKeys.of(name, partitions)
    other = ProducerKeys.of_other_tagging(name, partitions)
    for key in (
        keys.token,
        keys.snapshot,
        keys.batch,
        *keys.positions,
        *([keys.marks] if keys.marks else []),
        other.token,
        other.snapshot,
    ):
        client.delete(key)  # one by one: on a Redis Cluster, they live in different slots
