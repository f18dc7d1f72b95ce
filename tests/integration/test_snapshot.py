"""The first sync of a big collection: lean entries, a snapshot that resumes where it stopped, and a producer that
waits while the pipeline holds too much."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY

from producer.service import Producer
from tests.integration.test_cli import cli
from tests.support.pipeline import Pipeline
from tests.support.servers import wait_for
from vecsync.cli.context import EXIT_OK
from vecsync.constants import resume_token_key, snapshot_key
from vecsync.stream_stats import unprocessed

STAGE1, STAGE2 = "raw_document_changes", "embedded_documents"


def stage1(pipeline: Pipeline) -> list[dict[str, str]]:
    return [fields for _id, fields in pipeline.redis_client.xrange(STAGE1)]


def producer(pipeline: Pipeline, **overrides: Any) -> Producer:
    pipeline.overrides.update(overrides)
    return Producer(pipeline.producer_settings(), pipeline.redis_client, pipeline.collection)


def test_stage1_entries_carry_only_the_id_the_text_and_the_payload_fields(pipeline: Pipeline) -> None:
    bulk = "x" * 4000
    pipeline.collection.insert_one(
        {"_id": "a", "subject": "s", "content": "c", "owner": "Ann", "attachment": bulk, "meta": {"n": 1}}
    )
    pipeline.run_producer()  # the snapshot
    pipeline.collection.update_one({"_id": "a"}, {"$set": {"attachment": bulk + "y", "owner": "Bo"}})
    pipeline.run_producer()  # a change
    documents = [json.loads(fields["doc"]) for fields in stage1(pipeline)]
    assert [doc["owner"] for doc in documents] == ["Ann", "Bo"]
    for document in documents:
        assert set(document) == {"_id", "subject", "content", "owner"}


class Killed(Exception):
    """Stands for a SIGKILL right after a batch was committed."""


def test_a_killed_snapshot_resumes_from_its_position_and_misses_no_change_made_meanwhile(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    collection = pipeline.collection
    collection.insert_many([{"_id": f"d{i:03}", "subject": f"ticket {i}"} for i in range(100)])
    first = producer(pipeline, batch_size=10)
    write, writes = first._write, []

    def write_then_die(*args: Any, **kwargs: Any) -> int:
        published = write(*args, **kwargs)
        writes.append(published)
        if len(writes) == 4:  # the state, then three batches
            raise Killed
        return published

    monkeypatch.setattr(first, "_write", write_then_die)
    with pytest.raises(Killed):
        first.run(drain=True)
    assert pipeline.redis_client.exists(snapshot_key(pipeline.source))
    assert not pipeline.redis_client.exists(resume_token_key(pipeline.source))
    assert cli(pipeline, "status") == EXIT_OK
    assert "producer snapshot: 30 of about 100 documents" in capsys.readouterr().out
    assert cli(pipeline, "status", "--json") == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["producer"]["snapshot"]["documents_done"] == 30
    assert report["pipeline"]["backlog"] == 30  # no worker has read them yet
    # Changes while the producer is down: behind the scan's position, ahead of it, and a new document.
    collection.update_one({"_id": "d005"}, {"$set": {"subject": "ticket 5, edited"}})
    collection.delete_one({"_id": "d050"})
    collection.insert_one({"_id": "d200", "subject": "new"})

    producer(pipeline, batch_size=10).run(drain=True)
    assert not pipeline.redis_client.exists(snapshot_key(pipeline.source)), "the finished snapshot left its state"
    published = Counter(fields["mongo_id"] for fields in stage1(pipeline))
    assert all(published[f"d{i:03}"] == 1 for i in range(100) if i not in (5, 50)), "published twice"
    assert published["d005"] == 2 and published["d200"] == 2  # the scan's state, then the change
    last = {fields["mongo_id"]: fields for fields in stage1(pipeline)}
    assert json.loads(last["d005"]["doc"])["subject"] == "ticket 5, edited"
    assert last["d050"]["op"] == "delete"
    pipeline.drain()
    pipeline.assert_matches_mongo()


def test_the_producer_waits_while_the_pipeline_holds_too_many_unprocessed_entries(pipeline: Pipeline) -> None:
    client = pipeline.redis_client
    pipeline.collection.insert_many([{"_id": f"d{i:03}", "subject": f"ticket {i}"} for i in range(200)])
    running = producer(pipeline, batch_size=10, producer_max_backlog=50)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    backlogs = []

    def backlog() -> int:
        total = sum(unprocessed(client, stream, group) for stream, group in pipeline.groups())
        backlogs.append(total)
        return total

    try:
        wait_for(lambda: running.throttled, timeout=20, what="the producer to wait")
        assert backlog() <= 60
        while not client.exists(resume_token_key(pipeline.source)) or backlog():
            # Only what the stages finish makes room: stage 1 drained into stage 2 still counts.
            pipeline.embedder_consumer().run(drain=True)
            backlog()
            pipeline.upserter_consumer().run(drain=True)
            backlog()
    finally:
        running.stopping.set()
        thread.join(10)
    assert max(backlogs) <= 50 + 10, backlogs
    assert len(stage1(pipeline)) == 200
    pipeline.assert_matches_mongo()


def test_the_time_the_producer_waits_for_room_is_counted(pipeline: Pipeline) -> None:
    pipeline.collection.insert_many([{"_id": f"d{i:03}", "subject": f"ticket {i}"} for i in range(100)])
    running = producer(pipeline, batch_size=10, producer_max_backlog=20)
    waited_before = REGISTRY.get_sample_value("vecsync_producer_throttled_seconds_total") or 0.0
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: running.throttled, timeout=20, what="the producer to wait")
        time.sleep(0.5)
        while not pipeline.redis_client.exists(resume_token_key(pipeline.source)) or running.throttled:
            pipeline.embedder_consumer().run(drain=True)
            pipeline.upserter_consumer().run(drain=True)
    finally:
        running.stopping.set()
        thread.join(10)
    waited = (REGISTRY.get_sample_value("vecsync_producer_throttled_seconds_total") or 0.0) - waited_before
    assert waited >= 0.5


def test_a_resync_waits_for_room_as_the_producer_does(pipeline: Pipeline) -> None:
    pipeline.collection.insert_many([{"_id": f"d{i:03}", "subject": f"ticket {i}"} for i in range(100)])
    pipeline.drain()
    first_entry_of_resync = len(stage1(pipeline))
    resync = threading.Thread(
        target=cli, args=(pipeline, "--yes", "resync", "--batch-size", "10"), kwargs={"producer_max_backlog": 20}
    )
    resync.start()
    try:
        wait_for(lambda: len(stage1(pipeline)) > first_entry_of_resync + 20, timeout=20, what="the resync to publish")
        assert resync.is_alive(), "the resync did not wait for the stages"
        assert len(stage1(pipeline)) - first_entry_of_resync <= 30
        while resync.is_alive():
            pipeline.embedder_consumer().run(drain=True)
            pipeline.upserter_consumer().run(drain=True)
    finally:
        resync.join(60)
    assert len(stage1(pipeline)) - first_entry_of_resync == 100


def test_the_producer_waits_while_redis_is_close_to_its_maxmemory(pipeline: Pipeline) -> None:
    client = pipeline.redis_client
    pipeline.collection.insert_many([{"_id": f"d{i:03}", "subject": f"ticket {i}"} for i in range(50)])
    running = producer(pipeline, batch_size=10)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(int(int(client.info("memory")["used_memory"]) / 0.7)))  # 70% used
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: running.throttled, timeout=20, what="the producer to wait for memory")
        assert client.xlen(STAGE1) == 0, "it wrote into a Redis above REDIS_MEMORY_HIGH_WATER"
    finally:
        client.config_set("maxmemory", "0")
    try:
        wait_for(lambda: client.xlen(STAGE1) == 50, timeout=20, what="the snapshot once Redis has room")
    finally:
        running.stopping.set()
        thread.join(10)
