"""Partitioned streams: STREAM_PARTITIONS splits each stage's stream, and the state beside it, by document.

With one partition on one Redis (the default) every stream and key keeps the name it always had; on a Redis
Cluster, names carry a hash tag even with one partition (Partitions.hash_tagged). With P partitions, a document's
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
import logging
from dataclasses import dataclass

import redis
from redis.crc import key_slot

from vecsync import constants
from vecsync.errors import ConfigurationError
from vecsync.redis_errors import REDIS_REFUSALS

SLOTS = 16384

log = logging.getLogger(__name__)


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


def partition_index(name: str) -> int:
    """The partition a stream or key name belongs to: 3 for ``raw_document_changes:{vs3-11}``, 0 when untagged."""
    _base, tagged, tag = name.partition(":{vs")
    return int(tag.split("-", 1)[0]) if tagged else 0


@dataclass(frozen=True)
class Partitions:
    """The names of each partition's streams and keys."""

    count: int = 1
    # On a Redis Cluster, names carry hash tags even with one partition: a partition's stream and the keys committed
    # with it must share a slot whatever their number.
    redis_cluster: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("STREAM_PARTITIONS must be at least 1")

    @property
    def hash_tagged(self) -> bool:
        """Whether names carry hash tags: several partitions, or a Redis Cluster. Else every name is the seed's."""
        return self.count > 1 or self.redis_cluster

    def of(self, point_id: str) -> int:
        return partition_of(point_id, self.count)

    def name(self, base: str, partition: int) -> str:
        """``base`` for partition ``partition``: itself when not hash-tagged (one partition on one Redis), else with
        the partition's hash tag."""
        if not self.hash_tagged:
            return base
        return f"{base}:{partition_tag(partition, self.count)}"

    def names(self, base: str) -> list[str]:
        return [self.name(base, partition) for partition in range(self.count)]

    def indexes(self) -> range:
        return range(self.count)


def stored_count(client: redis.Redis, stream: str) -> int | None:
    """The number of partitions the pipeline's stream ``stream`` is split into, as stored; None before any process
    stored one."""
    value = client.get(constants.partitions_key(stream))
    return int(value) if value is not None else None


def check_count(client: redis.Redis, streams: list[str], count: int) -> None:
    """Store ``count`` (STREAM_PARTITIONS) as the number of partitions of each of ``streams`` the first time (SET NX),
    and raise ConfigurationError when one is stored with another number.

    Every process of a pipeline must split the streams alike, or a document's changes go to streams that another
    process never reads; nothing else would notice.
    """
    for stream in streams:
        stored = stored_count(client, stream)
        if stored is None:
            try:
                if client.set(constants.partitions_key(stream), count, nx=True):
                    continue
            except REDIS_REFUSALS as exc:
                # A full or read-only Redis is waited out by every stage; the next start stores the number.
                log.warning("Could not store STREAM_PARTITIONS=%d for %s yet (%s)", count, stream, exc)
                continue
            stored = stored_count(client, stream)  # another process stored one first
        if stored is not None and stored != count:
            raise ConfigurationError(
                f"STREAM_PARTITIONS is {count}, but the stream {stream} of this pipeline is split into {stored} "
                f"partitions (stored at {constants.partitions_key(stream)} by the first process that used it). Every "
                f"process of one pipeline must use the same number: start this one with STREAM_PARTITIONS={stored}, "
                f"or change the number for the whole pipeline: wait until `vecsync status --json` reports "
                f'"drained": true, stop every service, run `vecsync repartition` with STREAM_PARTITIONS={count}, and '
                f"start every service with STREAM_PARTITIONS={count} "
                '(docs/operations.md, "Changing STREAM_PARTITIONS").'
            )
