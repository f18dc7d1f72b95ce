"""The producer's snapshot for a model change (producer.build_snapshot): every document of the sync published once
into stage 1 marked for the collection being built, its position and watermark recorded, on real Redis and the
MongoDB stand-in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
from bson import ObjectId
from pymongo.errors import AutoReconnect

import producer.build_snapshot as build_snapshot
from producer.build_snapshot import BuildSnapshot
from producer.service import Producer
from producer.settings import ProducerSettings
from tests.support.servers import BIN, free_port, wait_for
from vecsync import reindex, stage1
from vecsync.bson_codec import mongo_id_of
from vecsync.messages import parse_version
from vecsync.syncs import load_syncs, settings_for

Collection = pymongo.collection.Collection[dict[str, Any]]
STREAM = "raw_document_changes"
ALIAS = "documents"  # the environment's sync's QDRANT_COLLECTION
BATCH = 3


class Killed(Exception):
    """Stands for the producer's process dying in the middle of the snapshot."""


def producer_settings(mongo_uri: str, redis_url: str, collection: Collection, **overrides: Any) -> ProducerSettings:
    values: dict[str, Any] = {
        "mongo_uri": mongo_uri,
        "redis_url": redis_url,
        "mongo_database": collection.database.name,
        "mongo_collection": collection.name,
        "max_await_ms": 50,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "batch_size": BATCH,
        **overrides,
    }
    return ProducerSettings(**values)


def start_change(client: redis.Redis, alias: str = ALIAS) -> reindex.Reindex:
    """A model change started as the upserter starts one: the name serves its adopted collection, a build begins."""
    serving = reindex.Serving(alias, "hash-384", 384, alias)
    reindex.write_serving(client, serving)
    return reindex.start(client, alias, model="all-MiniLM-L6-v2", dim=384, serving=serving)


def build_entries(client: redis.Redis, stream: str = STREAM) -> list[tuple[str, dict[str, str]]]:
    return [(entry_id, fields) for entry_id, fields in client.xrange(stream) if fields.get("build")]


def insert(collection: Collection, count: int) -> list[str]:
    collection.insert_many(
        [{"_id": f"d{n:02}", "subject": f"s{n}", "content": "c", "other": "x"} for n in range(count)]
    )
    return [f"d{n:02}" for n in range(count)]


@pytest.fixture
def settings(mongo_uri: str, redis_url: str, mongo_collection: Collection) -> ProducerSettings:
    return producer_settings(mongo_uri, redis_url, mongo_collection)


def test_the_snapshot_publishes_every_document_once_marked_for_the_build(
    settings: ProducerSettings, redis_client: redis.Redis, mongo_collection: Collection
) -> None:
    ids = insert(mongo_collection, 7)
    Producer(settings, redis_client, mongo_collection).run(drain=True)  # the live pipeline's own snapshot first
    live = redis_client.xlen(STREAM)
    change = start_change(redis_client)
    assert BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due()
    entries = build_entries(redis_client)
    assert [fields["mongo_id"] for _id, fields in entries] == ids, "each document once, in _id order"
    assert {fields["build"] for _id, fields in entries} == {change.collection} == {"documents-v1"}
    assert {fields["op"] for _id, fields in entries} == {"upsert"}
    assert json.loads(entries[0][1]["doc"]) == {"_id": "d00", "subject": "s0", "content": "c"}, "the projection"
    assert redis_client.xlen(STREAM) == live + len(ids)
    recorded = reindex.read_reindex(redis_client, ALIAS)
    assert recorded is not None and recorded.building
    assert recorded.fields["total:default"] == "7" and recorded.total == 7
    assert recorded.snapshot_position("default") == ('"d06"', 7)
    watermark = recorded.watermark("default")
    assert watermark is not None and set(watermark) == {STREAM}
    assert all(parse_version(watermark[STREAM]) >= parse_version(entry_id) for entry_id, _f in entries)
    assert not BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due(), "published once only"
    assert len(build_entries(redis_client)) == len(ids)


def test_nothing_is_published_without_a_change_building(
    settings: ProducerSettings, redis_client: redis.Redis, mongo_collection: Collection
) -> None:
    insert(mongo_collection, 4)
    snapshot = BuildSnapshot(settings, redis_client, mongo_collection)
    assert not snapshot.publish_if_due()
    assert not redis_client.exists(STREAM)
    change = start_change(redis_client)
    assert reindex.end(redis_client, ALIAS, change.number, reindex.Phase.SWITCHED)
    assert not snapshot.publish_if_due()
    assert not redis_client.exists(STREAM), "a change that is over has no snapshot"


def test_a_snapshot_killed_midway_goes_on_after_its_last_chunk(
    settings: ProducerSettings, redis_client: redis.Redis, mongo_collection: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = insert(mongo_collection, 8)
    start_change(redis_client)
    kill_before_chunk(monkeypatch, 3)
    with pytest.raises(Killed):
        BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due()
    recorded = reindex.read_reindex(redis_client, ALIAS)
    assert recorded is not None and recorded.snapshot_position("default") == ('"d05"', 6)
    assert recorded.watermark("default") is None
    monkeypatch.undo()
    assert BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due()
    published = [fields["mongo_id"] for _id, fields in build_entries(redis_client)]
    assert published == ids, "with one partition the position commits with its chunk: nothing twice"
    recorded = reindex.read_reindex(redis_client, ALIAS)
    assert recorded is not None and recorded.snapshot_position("default") == ('"d07"', 8)
    assert recorded.watermark("default") is not None


def test_a_kill_between_a_chunk_and_its_position_publishes_that_chunk_again_only(
    mongo_uri: str,
    redis_url: str,
    redis_client: redis.Redis,
    mongo_collection: Collection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = producer_settings(mongo_uri, redis_url, mongo_collection, stream_partitions=2)
    ids = insert(mongo_collection, 8)
    start_change(redis_client)
    real = stage1.publish_current_states
    calls = []

    def publish_then_die(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second chunk's entries go out, its position does not
            real(*args, **{**kwargs, "also": None})
            raise Killed
        real(*args, **kwargs)

    monkeypatch.setattr(build_snapshot, "publish_current_states", publish_then_die)
    with pytest.raises(Killed):
        BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due()
    monkeypatch.undo()
    assert BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due()
    streams = settings.partitions.names(STREAM)
    published = sorted(fields["mongo_id"] for stream in streams for _id, fields in build_entries(redis_client, stream))
    again = sorted(ids[BATCH : 2 * BATCH])
    assert published == sorted(ids + again), "the chunk in flight, and nothing else, is published twice"


def test_an_aborted_change_stops_its_snapshot(
    settings: ProducerSettings, redis_client: redis.Redis, mongo_collection: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(mongo_collection, 9)
    change = start_change(redis_client)
    after_chunk(monkeypatch, 1, lambda: reindex.end(redis_client, ALIAS, change.number, reindex.Phase.ABORTED))
    snapshot = BuildSnapshot(settings, redis_client, mongo_collection)
    assert not snapshot.publish_if_due()
    assert len(build_entries(redis_client)) == BATCH, "no chunk after the abort"
    recorded = reindex.read_reindex(redis_client, ALIAS)
    assert recorded is not None and recorded.phase is reindex.Phase.ABORTED
    assert recorded.watermark("default") is None
    assert not snapshot.publish_if_due()
    assert len(build_entries(redis_client)) == BATCH


def test_a_change_replaced_midway_gets_its_own_whole_snapshot(
    settings: ProducerSettings, redis_client: redis.Redis, mongo_collection: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = insert(mongo_collection, 7)
    first = start_change(redis_client)
    real = stage1.publish_current_states
    calls = []

    def replaced_while_publishing(*args: Any, also: Callable[[Any], None], **kwargs: Any) -> None:
        calls.append(1)

        def replace_then_save(pipe: Any) -> None:
            if len(calls) == 2:  # aborted and a new change started between the check and this chunk's commit
                reindex.end(redis_client, ALIAS, first.number, reindex.Phase.ABORTED)
                start_change(redis_client)
            also(pipe)

        real(*args, also=replace_then_save, **kwargs)

    monkeypatch.setattr(build_snapshot, "publish_current_states", replaced_while_publishing)
    assert not BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due()
    second = reindex.read_reindex(redis_client, ALIAS)
    assert second is not None and second.number == first.number + 1
    assert second.snapshot_position("default") == (None, 0), "the old change's position is not the new one's"
    monkeypatch.undo()
    assert BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due()
    published = [fields["mongo_id"] for _id, fields in build_entries(redis_client) if fields["build"] == "documents-v2"]
    assert published == ids


def test_object_ids_and_a_sync_with_a_filter(
    mongo_uri: str, redis_url: str, redis_client: redis.Redis, mongo_collection: Collection, tmp_path: Path
) -> None:
    config = tmp_path / "syncs.yaml"
    config.write_text(
        "syncs:\n"
        "  - name: tickets\n"
        f"    mongo_database: {mongo_collection.database.name}\n"
        f"    mongo_collection: {mongo_collection.name}\n"
        "    filter: {status: {$ne: spam}}\n"
        "    text_fields: [subject]\n"
        "    payload_fields: [status]\n"
        "    qdrant_collection: support\n"
    )
    kept = [ObjectId() for _ in range(5)]
    mongo_collection.insert_many([{"_id": key, "subject": "s", "status": "open", "noise": 1} for key in kept])
    mongo_collection.insert_many([{"_id": ObjectId(), "subject": "buy", "status": "spam"} for _ in range(2)])
    base = producer_settings(mongo_uri, redis_url, mongo_collection, vecsync_config=config)
    [sync] = load_syncs(base)
    start_change(redis_client, "support")
    assert BuildSnapshot(settings_for(base, sync), redis_client, mongo_collection).publish_if_due()
    stream = "raw_document_changes.tickets"
    entries = build_entries(redis_client, stream)
    assert [fields["mongo_id"] for _id, fields in entries] == [mongo_id_of(key) for key in sorted(kept)]
    assert {fields["build"] for _id, fields in entries} == {"support-v1"}
    assert json.loads(entries[0][1]["doc"]).keys() == {"_id", "subject", "status"}
    recorded = reindex.read_reindex(redis_client, "support")
    assert recorded is not None and recorded.fields["total:tickets"] == "5"
    assert recorded.snapshot_position("tickets") == (f'{{"$oid": "{sorted(kept)[-1]}"}}', 5)
    assert recorded.watermark("tickets") == {stream: entries[-1][0]}


def test_each_partition_stream_gets_its_watermark(
    mongo_uri: str, redis_url: str, redis_client: redis.Redis, mongo_collection: Collection
) -> None:
    settings = producer_settings(mongo_uri, redis_url, mongo_collection, stream_partitions=2)
    ids = insert(mongo_collection, 12)
    start_change(redis_client)
    assert BuildSnapshot(settings, redis_client, mongo_collection).publish_if_due()
    streams = settings.partitions.names(STREAM)
    recorded = reindex.read_reindex(redis_client, ALIAS)
    assert recorded is not None
    watermark = recorded.watermark("default")
    assert watermark is not None and sorted(watermark) == sorted(streams)
    published = []
    for stream in streams:
        entries = build_entries(redis_client, stream)
        assert entries, f"12 documents all in one of two partitions: {stream} got none"
        assert watermark[stream] == entries[-1][0]
        published += [fields["mongo_id"] for _id, fields in entries]
    assert sorted(published) == ids


@pytest.mark.parametrize("outage", ["mongodb", "redis"])
def test_the_loop_waits_out_an_outage(
    settings: ProducerSettings, redis_client: redis.Redis, mongo_collection: Collection, outage: str
) -> None:
    insert(mongo_collection, 5)
    start_change(redis_client)
    collection: Any = FailingOnce(mongo_collection, "count_documents", AutoReconnect("injected outage"))
    client: Any = redis_client
    if outage == "redis":
        collection, client = mongo_collection, FailingOnce(redis_client, "eval", redis.ConnectionError("injected"))
    snapshot = BuildSnapshot(settings, client, collection)
    thread = threading.Thread(target=snapshot.run)
    thread.start()
    try:
        wait_for(lambda: watermark_of(redis_client), what="the watermark")
    finally:
        snapshot.stopping.set()
        thread.join(10)
    assert (collection if outage == "mongodb" else client).failed and not thread.is_alive()
    assert len(build_entries(redis_client)) == 5


def test_the_producer_process_publishes_the_snapshot_and_stops_on_sigterm(
    mongo_uri: str, redis_url: str, redis_client: redis.Redis, mongo_collection: Collection, tmp_path: Path
) -> None:
    ids = insert(mongo_collection, 4)
    env = {
        **os.environ,
        "MONGO_URI": mongo_uri,
        "REDIS_URL": redis_url,
        "MONGO_DATABASE": mongo_collection.database.name,
        "MONGO_COLLECTION": mongo_collection.name,
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(free_port()),
        "MAX_AWAIT_MS": "50",
    }
    log = tmp_path / "producer.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([str(BIN / "vecsync-producer")], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: redis_client.xlen(STREAM) == len(ids), what="the producer's own snapshot")
        start_change(redis_client)
        wait_for(lambda: watermark_of(redis_client), what="the watermark")
        assert [fields["mongo_id"] for _id, fields in build_entries(redis_client)] == ids
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    assert "publishing the snapshot of sync default" in log.read_text()


def watermark_of(client: redis.Redis) -> dict[str, str] | None:
    recorded = reindex.read_reindex(client, ALIAS)
    return recorded.watermark("default") if recorded is not None else None


class FailingOnce:
    """A client or collection whose first call of ``method`` raises ``error``, as in an outage; everything else is
    the real one."""

    def __init__(self, real: Any, method: str, error: Exception) -> None:
        self._real, self._method, self._error = real, method, error
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if name != self._method or self.failed:
            return attribute

        def fail(*args: Any, **kwargs: Any) -> Any:
            self.failed = True
            raise self._error

        return fail


def kill_before_chunk(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    """Make the snapshot die as it is about to publish its ``number``-th chunk."""
    real = stage1.publish_current_states
    calls = []

    def publish(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == number:
            raise Killed
        real(*args, **kwargs)

    monkeypatch.setattr(build_snapshot, "publish_current_states", publish)


def after_chunk(monkeypatch: pytest.MonkeyPatch, number: int, then: Callable[[], object]) -> None:
    """Run ``then`` once the snapshot's ``number``-th chunk is published."""
    real = stage1.publish_current_states
    calls = []

    def publish(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == number:
            then()

    monkeypatch.setattr(build_snapshot, "publish_current_states", publish)
