"""Partition names and the hash of documents to partitions."""

from __future__ import annotations

import uuid
from collections import Counter

from redis.crc import key_slot

from vecsync.partitions import SLOTS, Partitions, partition_of
from vecsync.producer_state import ProducerKeys


def test_one_partition_keeps_every_name() -> None:
    one = Partitions(1)
    assert one.names("raw_document_changes") == ["raw_document_changes"]
    assert one.name("vecsync:upserter:applied_text", 0) == "vecsync:upserter:applied_text"
    assert one.of("anything") == 0


def test_a_partitions_names_share_one_slot_and_the_slots_spread_over_the_cluster() -> None:
    eight = Partitions(8)
    slots = []
    for partition in eight.indexes():
        names = [eight.name(base, partition) for base in ("raw_document_changes", "embedded_documents", "x:y")]
        assert len({key_slot(name.encode()) for name in names}) == 1
        slots.append(key_slot(names[0].encode()))
    # One slot in each eighth: with three masters of equal slot ranges, every master holds two or three partitions.
    assert [slot * 8 // SLOTS for slot in slots] == list(range(8))
    masters = Counter(slot * 3 // SLOTS for slot in slots)
    assert sorted(masters.values()) == [2, 3, 3]


def test_documents_spread_evenly_and_stay_in_their_partition() -> None:
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, str(n))) for n in range(8000)]
    counts = Counter(partition_of(point_id, 8) for point_id in ids)
    assert set(counts) == set(range(8)) and max(counts.values()) < 1.1 * 1000
    # Stable across processes and releases (not Python's salted hash()): a document never changes partition.
    assert partition_of("eb512e3c-27ae-4921-bab1-dc8dc3279bfd", 8) == 2
    assert partition_of("00000000-0000-0000-0000-000000000001", 8) == 5


def test_one_partition_on_a_cluster_is_tagged_so_a_stream_and_its_keys_share_a_slot() -> None:
    cluster = Partitions(1, redis_cluster=True)
    names = [cluster.name(base, 0) for base in ("raw_document_changes", "vecsync:producer:app.documents:resume_token")]
    assert all(name.startswith(base) for name, base in zip(names, ["raw_document_changes", "vecsync:"], strict=True))
    assert len({key_slot(name.encode()) for name in names}) == 1


def test_the_producers_keys_keep_their_names_with_one_partition() -> None:
    keys = ProducerKeys.of("app.documents", Partitions(1))
    assert keys.token == "vecsync:producer:app.documents:resume_token"
    assert keys.snapshot == "vecsync:producer:app.documents:snapshot"
    # With several, the token, the snapshot and the batch number share partition 0's slot; each mark its partition's.
    keys = ProducerKeys.of("app.documents", Partitions(4))
    assert len({key_slot(key.encode()) for key in (keys.token, keys.token_updated, keys.snapshot, keys.batch)}) == 1
    streams = Partitions(4).names("raw_document_changes")
    assert [key_slot(key.encode()) for key in keys.positions] == [key_slot(name.encode()) for name in streams]
    # The batch each mark received is stored with the token; the key written before each WAIT is in its partition.
    assert key_slot(keys.marks.encode()) == key_slot(keys.token.encode())
    assert [key_slot(key.encode()) for key in keys.replicated] == [key_slot(name.encode()) for name in streams]
