"""Partitioned streams: STREAM_PARTITIONS splits each stage's stream, and the state beside it, by document.

With one partition (the default) every stream and key keeps the name it always had. With P partitions, a document's
changes all go to partition ``partition_of(point_id)``, so they stay in one stream, in order; each stage's stream is
P streams, and each key a stage commits together with a stream (the producer's position, the upserters' locks,
tombstones and the skip-unchanged hint) is P keys. Every name of partition p carries one Redis Cluster hash tag, so
all of them live in one hash slot: whatever commits atomically today (a MULTI/EXEC, a script) still does, on a
cluster too. The P tags are chosen so that their slots fall one in each P-th of the 16,384 slots: a cluster created
with equal slot ranges per master (as `redis-cli --cluster create` makes it) holds the partitions evenly.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass

from redis.crc import key_slot

from vecsync import constants

SLOTS = 16384


def partition_of(point_id: str, partitions: int) -> int:
    """The partition of a document: a stable hash of its point id, the same in every process and every release."""
    if partitions == 1:
        return 0
    digest = hashlib.sha256(point_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partitions


@functools.cache
def partition_tag(partition: int, partitions: int) -> str:
    """The hash tag of a partition, e.g. ``{vs3-11}``, whose slot lies in the partition's share of the slots."""
    low, high = partition * SLOTS // partitions, (partition + 1) * SLOTS // partitions
    for attempt in itertools.count():
        tag = f"{{vs{partition}-{attempt}}}"
        if low <= key_slot(tag.encode()) < high:
            return tag
    raise AssertionError("unreachable")


def base_name(name: str) -> str:
    """The name a partition's stream or key was made from: ``raw_document_changes`` for any of its partitions."""
    return name.split(":{vs", 1)[0]


@dataclass(frozen=True)
class Partitions:
    """The names of each partition's streams and keys."""

    count: int = 1
    # Names carry hash tags even with one partition: on a Redis Cluster, a partition's stream and the keys committed
    # with it must share a slot whatever their number.
    tagged: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("STREAM_PARTITIONS must be at least 1")

    def of(self, point_id: str) -> int:
        return partition_of(point_id, self.count)

    def name(self, base: str, partition: int) -> str:
        """``base`` for partition ``partition``: itself when untagged (one partition on one Redis), else with the
        partition's hash tag."""
        if self.count == 1 and not self.tagged:
            return base
        return f"{base}:{partition_tag(partition, self.count)}"

    def names(self, base: str) -> list[str]:
        return [self.name(base, partition) for partition in range(self.count)]

    def indexes(self) -> range:
        return range(self.count)


@dataclass(frozen=True)
class ProducerKeys:
    """The keys of the producer of one source.

    The resume token, its time, the snapshot in progress and the number of the last batch published live in
    partition 0's slot, so that one transaction writes them all; each partition's high-water mark lives in its own
    slot, written with that partition's entries (docs/design.md, "Partitions").
    """

    token: str
    token_updated: str
    snapshot: str
    batch: str
    positions: list[str]

    @classmethod
    def of(cls, source: str, partitions: Partitions) -> ProducerKeys:
        return cls(
            token=partitions.name(constants.resume_token_key(source), 0),
            token_updated=partitions.name(constants.resume_token_updated_key(source), 0),
            snapshot=partitions.name(constants.snapshot_key(source), 0),
            batch=partitions.name(constants.producer_batch_key(source), 0),
            positions=partitions.names(constants.producer_position_key(source)),
        )

    def all(self) -> list[str]:
        return [self.token, self.token_updated, self.snapshot, self.batch, *self.positions]
