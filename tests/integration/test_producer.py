"""Producer policies: those the MongoDB stand-in cannot trigger are injected at the driver boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from pymongo.errors import OperationFailure

from producer.service import Producer
from tests.support.pipeline import Pipeline
from tests.support.servers import BIN, free_port, start_mongo, wait_for
from vecsync.constants import resume_token_key
from vecsync.errors import ConfigurationError, HistoryLost
from vecsync.metrics import REDIS_REFUSED


class FailingWatch:
    """A collection whose watch() fails once with ``code`` when resuming; everything else is the real one."""

    def __init__(self, collection: Any, code: int) -> None:
        self._collection = collection
        self._code = code
        self.failed = False

    def watch(self, **kwargs: Any) -> Any:
        if kwargs.get("start_after") is not None and not self.failed:
            self.failed = True
            raise OperationFailure("injected", code=self._code)
        return self._collection.watch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def producer(pipeline: Pipeline, collection: Any, **overrides: Any) -> Producer:
    pipeline.overrides.update(overrides)
    return Producer(pipeline.producer_settings(), pipeline.redis_client, collection)


def stage1(pipeline: Pipeline) -> list[tuple[str, str]]:
    return [(f["mongo_id"], f["op"]) for _id, f in pipeline.redis_client.xrange("raw_document_changes")]


def test_history_lost_stops_loudly_by_default(pipeline: Pipeline) -> None:
    pipeline.collection.insert_one({"_id": "a", "subject": "s"})
    pipeline.run_producer()
    token = pipeline.redis_client.get(resume_token_key(pipeline.source))
    with pytest.raises(HistoryLost, match="RESYNC_ON_HISTORY_LOST"):
        producer(pipeline, FailingWatch(pipeline.collection, 286)).run(drain=True)
    assert pipeline.redis_client.get(resume_token_key(pipeline.source)) == token, (
        "the token is kept for the operator to decide"
    )


def test_history_lost_resyncs_when_enabled(pipeline: Pipeline) -> None:
    pipeline.collection.insert_one({"_id": "a", "subject": "s"})
    pipeline.run_producer()
    pipeline.collection.insert_one({"_id": "b", "subject": "t"})
    producer(pipeline, FailingWatch(pipeline.collection, 286), resync_on_history_lost=True).run(drain=True)
    # The fresh snapshot publishes every current document again.
    assert stage1(pipeline)[-2:] == [("a", "upsert"), ("b", "upsert")]
    pipeline.drain()
    pipeline.assert_matches_mongo()


def test_refused_credentials_are_a_configuration_error(pipeline: Pipeline) -> None:
    pipeline.collection.insert_one({"_id": "a", "subject": "s"})
    pipeline.run_producer()
    with pytest.raises(ConfigurationError, match="MONGO_URI"):
        producer(pipeline, FailingWatch(pipeline.collection, 18)).run(drain=True)


def test_invalidating_events_are_counted_and_watching_continues(pipeline: Pipeline) -> None:
    from producer.metrics import INVALIDATIONS

    before = INVALIDATIONS.labels("drop")._value.get()
    events = [
        {"_id": {"_data": "t1"}, "operationType": "drop"},
        {"_id": {"_data": "t2"}, "operationType": "invalidate"},
    ]
    producer(pipeline, pipeline.collection)._publish(events, {"_data": "t2"})
    assert INVALIDATIONS.labels("drop")._value.get() == before + 1
    assert pipeline.redis_client.get(resume_token_key(pipeline.source)), "the position after the invalidate is stored"
    assert stage1(pipeline) == []


def test_writes_lost_by_redis_are_published_again(pipeline: Pipeline) -> None:
    """Redis can lose its last second of writes in a crash; the producer must notice and republish them."""
    import threading

    from tests.support.servers import wait_for

    client = pipeline.redis_client
    pipeline.collection.insert_one({"_id": "before", "subject": "s"})
    pipeline.run_producer()
    token_before = client.get(resume_token_key(pipeline.source))
    running = producer(pipeline, pipeline.collection)
    thread = threading.Thread(target=running.run)
    thread.start()
    try:
        pipeline.collection.insert_one({"_id": "lost", "subject": "s"})
        wait_for(lambda: stage1(pipeline)[-1] == ("lost", "upsert"), what="the producer to publish")
        # The crash: the entry and the token that covered it are gone, as after a lost AOF tail.
        [(lost_id, _)] = client.xrevrange("raw_document_changes", count=1)
        client.xdel("raw_document_changes", lost_id)
        client.set(resume_token_key(pipeline.source), token_before)
        pipeline.collection.insert_one({"_id": "after", "subject": "s"})
        wait_for(lambda: stage1(pipeline)[-1] == ("after", "upsert"), what="the producer to publish again")
    finally:
        running.stopping.set()
        thread.join(10)
    assert ("lost", "upsert") in stage1(pipeline)


def test_an_idle_change_stream_is_not_polled_in_a_busy_loop(pipeline: Pipeline, monkeypatch: Any) -> None:
    """The MongoDB stand-in answers empty reads at once; the producer must still wait between them."""
    import threading
    import time

    reads = []
    real = Producer._next_events

    def counting(self: Producer, stream: Any, **kwargs: Any) -> Any:
        reads.append(time.monotonic())
        return real(self, stream, **kwargs)

    monkeypatch.setattr(Producer, "_next_events", counting)
    running = producer(pipeline, pipeline.collection, idle_poll_ms=100)
    thread = threading.Thread(target=running.run)
    thread.start()
    time.sleep(1.0)
    running.stopping.set()
    thread.join(10)
    assert 5 <= len(reads) <= 15, f"{len(reads)} reads in one idle second"


def test_restarts_replay_changes_of_every_id_type_without_dead_letters(pipeline: Pipeline) -> None:
    """Each restart resumes from the stored token and replays changes of documents since deleted or changed again.

    Their re-reads find later states or nothing; none may be dead-lettered, and the last entry of every document
    must hold its current state under the id string of its real _id type.
    """
    import json
    import random

    from bson import ObjectId

    from vecsync.bson_codec import mongo_id_of, to_plain

    rng = random.Random(12)
    keys: list[Any] = [ObjectId() for _ in range(25)] + [f"doc-{n}" for n in range(25)] + list(range(1000, 1025))
    present: set[Any] = set()
    pipeline.run_producer()
    for burst in range(12):
        for number in range(60):
            key = rng.choice(keys)
            change = {"subject": f"burst {burst} change {number}", "owner": rng.choice("abc")}
            if key not in present:
                pipeline.collection.insert_one({"_id": key, **change})
                present.add(key)
            elif rng.random() < 0.3:
                pipeline.collection.delete_one({"_id": key})
                present.discard(key)
            else:
                pipeline.collection.update_one({"_id": key}, {"$set": change})
        pipeline.run_producer()  # a fresh producer: a restart from the stored resume token

    assert pipeline.redis_client.xrange("raw_document_changes:dlq") == []
    last = {f["mongo_id"]: f for _id, f in pipeline.redis_client.xrange("raw_document_changes")}
    current = {mongo_id_of(document["_id"]): document for document in pipeline.collection.find()}
    assert '{"$numberInt": "1000"}' in last, "an int _id keeps its type"
    for mongo_id, document in current.items():
        assert last[mongo_id]["op"] == "upsert"
        assert json.loads(last[mongo_id]["doc"]) == to_plain(document)
    assert {mongo_id: f["op"] for mongo_id, f in last.items() if mongo_id not in current} == dict.fromkeys(
        last.keys() - current.keys(), "delete"
    )


class StandaloneWatch:
    """A collection on a standalone server (no replica set): watch() fails as mongod's does."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def watch(self, **kwargs: Any) -> Any:
        raise OperationFailure(
            "The $changeStream stage is only supported on replica sets",
            code=40573,
            details={
                "ok": 0,
                "errmsg": "The $changeStream stage is only supported on replica sets",
                "code": 40573,
                "codeName": "Location40573",
            },
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def test_a_standalone_server_is_a_configuration_error_naming_the_replica_set_setup(pipeline: Pipeline) -> None:
    with pytest.raises(ConfigurationError, match=r"need a replica set.*--replSet.*rs\.initiate\(\)"):
        producer(pipeline, StandaloneWatch(pipeline.collection)).run(drain=True)


def test_snapshot_and_re_reads_are_majority_reads_the_stand_in_answers(pipeline: Pipeline, mongo_uri: str) -> None:
    import pymongo
    from pymongo import monitoring

    class Finds(monitoring.CommandListener):
        def __init__(self) -> None:
            self.commands: list[dict[str, Any]] = []

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "find":
                self.commands.append(dict(event.command))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    finds = Finds()
    # A URI asking for local reads from a secondary: the producer must read durably from the primary regardless.
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_uri + "&readPreference=secondaryPreferred&readConcernLevel=local", event_listeners=[finds]
    )
    try:
        collection = client[pipeline.collection.database.name][pipeline.collection.name]
        collection.insert_one({"_id": "snapshotted", "subject": "s"})
        producer(pipeline, collection).run(drain=True)
        collection.insert_one({"_id": "changed", "subject": "s"})
        producer(pipeline, collection).run(drain=True)
    finally:
        client.close()
    assert stage1(pipeline) == [("snapshotted", "upsert"), ("changed", "upsert")]
    assert len(finds.commands) >= 2  # the snapshot reads in chunks, then the re-read of the change
    assert all(command["readConcern"] == {"level": "majority"} for command in finds.commands)
    assert all(command.get("$readPreference", {"mode": "primary"}) == {"mode": "primary"} for command in finds.commands)


def test_the_producer_exits_2_with_one_message_on_a_standalone_server(redis_url: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.support.servers import BIN, Server, free_port

    port = free_port()
    args = [sys.executable, "-m", "tests.support.standalone_mongo", "--db", str(tmp_path / "mongo.sqlite")]
    args += ["-p", str(port), "--pid-file", str(tmp_path / "mongo.pid"), "--log-file", str(tmp_path / "server.log")]
    server = Server(args, port, log=tmp_path / "mongo.log").start()
    env = {
        **os.environ,
        "MONGO_URI": f"mongodb://127.0.0.1:{port}/?directConnection=true",
        "REDIS_URL": redis_url,
        "METRICS_PORT": str(free_port()),
        "DATA_DIR": str(tmp_path),
    }
    try:
        result = subprocess.run(
            [str(BIN / "vecsync-producer")], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        server.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "change streams need a replica set" in output
    assert "rs.initiate()" in output
    assert "Traceback" not in output


def refused(reason: str) -> float:
    return REDIS_REFUSED.labels(stage="producer", reason=reason)._value.get()


def test_a_full_redis_is_waited_out_and_nothing_is_lost(pipeline: Pipeline) -> None:
    client = pipeline.redis_client
    before = refused("oom")
    # The snapshot (of the empty collection) first: a snapshot that overlaps the inserts publishes some of them twice,
    # once from the scan and once from the change stream, which is allowed but not what this test counts.
    pipeline.run_producer()
    running = producer(pipeline, pipeline.collection)
    # Flow control would keep the producer from writing into a Redis this full (see test_snapshot.py); here Redis
    # fills up behind its back, so it meets the refusal itself.
    running.flow.memory.share = lambda: 0.0  # type: ignore[method-assign]
    thread = threading.Thread(target=running.run, daemon=True)
    client.config_set("maxmemory-policy", "noeviction")
    # Full from now on, whatever Redis frees meanwhile (a limit at today's use would let writes through again once a
    # client's buffers are released): with noeviction, every write is refused while the use exceeds the limit.
    client.config_set("maxmemory", "1")
    try:
        try:
            thread.start()
            pipeline.collection.insert_many([{"_id": f"d{i}", "subject": f"s {i}"} for i in range(20)])
            wait_for(lambda: refused("oom") > before, timeout=20, what="the producer to meet the full Redis")
            assert thread.is_alive() and running.liveness.alive()
        finally:
            client.config_set("maxmemory", "0")
        wait_for(lambda: len(stage1(pipeline)) >= 20, timeout=20, what="the changes to be published")
    finally:
        running.stopping.set()  # also when a wait failed: a producer left running would log into later tests
        thread.join(10)
    assert sorted(mongo_id for mongo_id, _op in stage1(pipeline)) == sorted(f"d{i}" for i in range(20))


def healthz(port: int) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
    except requests.ConnectionError:
        return 0


def test_healthz_reflects_the_producer_loop(redis_url: str, tmp_path: Path) -> None:
    mongo = start_mongo(tmp_path / "mongo")
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MONGO_URI": f"mongodb://127.0.0.1:{mongo.port}/?directConnection=true",
        "MONGO_COLLECTION": "health",
        "METRICS_PORT": str(port),
        "STALL_TIMEOUT_S": "2",
    }
    process = subprocess.Popen(
        [str(BIN / "vecsync-producer")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: healthz(port) == 200, timeout=30, what="a healthy producer")
        assert 'vecsync_loop_healthy{stage="producer"} 1.0' in requests.get(f"http://127.0.0.1:{port}/metrics").text
        assert mongo.process is not None
        mongo.process.send_signal(signal.SIGSTOP)  # MongoDB stops answering: the producer's read never returns
        wait_for(lambda: healthz(port) == 503, timeout=15, what="/healthz to report the stuck loop")
        mongo.process.send_signal(signal.SIGCONT)
        wait_for(lambda: healthz(port) == 200, timeout=30, what="the producer to recover")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        if mongo.process is not None:
            mongo.process.send_signal(signal.SIGCONT)
        mongo.stop()


def test_string_ids_that_shared_a_point_with_another_id_get_their_own_at_the_upgrade(pipeline: Pipeline) -> None:
    from bson import ObjectId

    from vecsync.constants import APPLIED_TEXT_KEY, ids_migrated_key
    from vecsync.documents import point_id
    from vecsync.vectorstore import Point

    hex_string, oid = "65f0c0ffee0000000000abcd", ObjectId()
    pipeline.collection.insert_many(
        [
            {"_id": hex_string, "subject": "a string of 24 hex digits"},
            {"_id": "true", "subject": "a string that reads as a boolean"},
            {"_id": oid, "subject": "an ObjectId"},
            {"_id": "plain", "subject": "a plain string"},
        ]
    )
    pipeline.drain()
    pipeline.assert_matches_mongo()
    assert pipeline.redis_client.xlen(pipeline.producer_settings().stage1_stream) == 4, "a first start only snapshots"
    # As an earlier release left it: those two strings' points under the strings themselves, no mark.
    old_ids = {text: point_id(pipeline.source, text) for text in (hex_string, "true")}
    new_ids = {text: point_id(pipeline.source, f'"{text}"') for text in (hex_string, "true")}
    for text, record in zip(old_ids, pipeline.store.retrieve(list(new_ids.values()), with_vectors=True), strict=True):
        assert record.vector is not None
        pipeline.store.upsert([Point(old_ids[text], record.vector, {**record.payload, "mongo_id": text})])
    pipeline.store.delete(list(new_ids.values()))
    pipeline.redis_client.hdel(APPLIED_TEXT_KEY, *new_ids.values())
    pipeline.redis_client.delete(ids_migrated_key(pipeline.source))
    stage1 = pipeline.producer_settings().stage1_stream
    before = pipeline.redis_client.xlen(stage1)

    pipeline.drain()
    pipeline.assert_matches_mongo()
    assert not pipeline.store.retrieve(list(old_ids.values())), "the points the strings shared are deleted"
    assert pipeline.points()[f'"{hex_string}"']["text"] == "a string of 24 hex digits"
    assert pipeline.redis_client.xlen(stage1) - before == 4, "each string under its new id and its old one, only"
    assert pipeline.redis_client.get(ids_migrated_key(pipeline.source))
    pipeline.drain()
    assert pipeline.redis_client.xlen(stage1) - before == 4, "once"


def test_an_event_naming_an_objectid_in_the_stand_ins_storage_form_re_reads_that_document(pipeline: Pipeline) -> None:
    # After resumes, the stand-in names some ObjectId documents so (docs/operations.md, "The MongoDB stand-in").
    from bson import ObjectId

    from vecsync.bson_codec import mongo_id_of

    oid = ObjectId()
    pipeline.collection.insert_one({"_id": oid, "subject": "s"})
    producer = Producer(pipeline.producer_settings(), pipeline.redis_client, pipeline.collection)
    stored_form = {"__neosqlite_objectid__": True, "id": str(oid)}
    found, errors = producer.events.reread_changed([{"operationType": "update", "documentKey": {"_id": stored_form}}])
    assert errors == [None]
    assert found[0] is not None and found[0]["_id"] == oid
    assert mongo_id_of(stored_form) == mongo_id_of(oid)
