"""STREAM_PARTITIONS on one Redis: each stage's stream split by document, the producer's commit across partitions,
and `vecsync status` over them. The same on a real Redis Cluster: test_cluster.py."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from typing import Any

import pytest
import redis
from bson import ObjectId
from prometheus_client import CollectorRegistry

from producer.service import Producer
from tests.integration.test_cli import cli, cli_env, dead_letter_stage2
from tests.support.pipeline import Pipeline
from tests.support.servers import BIN, free_port
from vecsync.bson_codec import mongo_id_of
from vecsync.cli.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from vecsync.constants import APPLIED_TEXT_PREVIOUS_KEY, tombstones_key
from vecsync.documents import point_id
from vecsync.metrics import StreamStatsCollector
from vecsync.partitions import Partitions, check_count
from vecsync.producer_state import ProducerKeys
from vecsync.runtime import EXIT_CONFIG

PARTITIONS = 4
# Where the first process stores the stage 1 stream's STREAM_PARTITIONS (the key operators see).
STORED_PARTITIONS = "vecsync:partitions:raw_document_changes"


class Killed(BaseException):
    """The producer's process dying at a chosen step."""


def partitioned(pipeline: Pipeline) -> Pipeline:
    pipeline.overrides["stream_partitions"] = PARTITIONS
    return pipeline


def stage1_changes(pipeline: Pipeline) -> list[tuple[int, str]]:
    """(partition, mongo_id) of every stage 1 entry, over the partitions."""
    names = Partitions(PARTITIONS).names("raw_document_changes")
    return [
        (partition, fields["mongo_id"])
        for partition, name in enumerate(names)
        for _id, fields in pipeline.redis_client.xrange(name)
    ]


def seed(pipeline: Pipeline) -> list[Any]:
    ids: list[Any] = [ObjectId() for _ in range(12)] + [f"doc-{n}" for n in range(12)] + list(range(100, 112))
    pipeline.collection.insert_many([{"_id": _id, "subject": f"subject {n}"} for n, _id in enumerate(ids)])
    return ids


def test_every_change_goes_to_its_documents_partition_and_qdrant_ends_equal(pipeline: Pipeline) -> None:
    partitioned(pipeline)
    ids = seed(pipeline)
    pipeline.drain()
    pipeline.collection.update_one({"_id": ids[0]}, {"$set": {"subject": "changed"}})
    pipeline.collection.delete_one({"_id": ids[13]})
    pipeline.collection.update_one({"_id": ids[30]}, {"$set": {"subject": "changed too"}})
    pipeline.drain()
    pipeline.assert_matches_mongo()

    client = pipeline.redis_client
    assert not client.exists("raw_document_changes") and not client.exists("embedded_documents")
    entries = stage1_changes(pipeline)
    for partition, mongo_id in entries:
        assert Partitions(PARTITIONS).of(point_id(pipeline.source, mongo_id)) == partition
    assert {partition for partition, _ in entries} == set(range(PARTITIONS)), "every partition gets documents"


def test_status_sums_the_partitions_and_says_when_all_are_drained(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    partitioned(pipeline)
    seed(pipeline)
    pipeline.run_producer()
    assert cli(pipeline, "status", "--json", stream_partitions=PARTITIONS) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["drained"] is False
    assert report["stage1"]["stream"] == "raw_document_changes"
    assert report["stage1"]["lag"] == 36 and len(report["stage1"]["partitions"]) == PARTITIONS
    assert sum(part["length"] for part in report["stage1"]["partitions"]) == 36
    pipeline.drain()
    assert cli(pipeline, "status", "--json", stream_partitions=PARTITIONS) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["drained"] is True
    assert report["stage2"]["length"] == 36 and report["stage2"]["pending"] == 0


def test_one_partition_keeps_the_seeds_names_and_reports_drained(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(pipeline)
    pipeline.drain()
    assert pipeline.redis_client.xlen("raw_document_changes") == 36
    assert pipeline.redis_client.xlen("embedded_documents") == 36
    assert cli(pipeline, "status", "--json") == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["drained"] is True and "partitions" not in report["stage1"]


@pytest.mark.parametrize("written", [1, PARTITIONS - 1])
def test_a_batch_cut_short_between_partitions_is_finished_without_repeats(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, written: int
) -> None:
    partitioned(pipeline)
    pipeline.run_producer()  # the snapshot of the empty collection: from now on, change events
    ids = seed(pipeline)
    first = Producer(pipeline.producer_settings(), pipeline.redis_client, pipeline.collection)
    write_partition = first.stage1._write_partition
    partitions_written = []

    def write_then_die(partition: int, *args: Any) -> None:
        if len(partitions_written) == written:
            raise Killed
        write_partition(partition, *args)
        partitions_written.append(partition)

    monkeypatch.setattr(first.stage1, "_write_partition", write_then_die)
    with pytest.raises(Killed):
        first.run(drain=True)
    before = Counter(mongo_id for _partition, mongo_id in stage1_changes(pipeline))
    assert 0 < len(before) < len(ids), "the batch reached some partitions only"

    pipeline.run_producer()
    published = Counter(mongo_id for _partition, mongo_id in stage1_changes(pipeline))
    assert published == Counter({mongo_id_of(_id): 1 for _id in ids}), "each change once, in whichever run wrote it"
    pipeline.drain()
    pipeline.assert_matches_mongo()


def test_resync_and_dlq_replay_publish_to_the_documents_partitions(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    partitioned(pipeline)
    ids = seed(pipeline)
    pipeline.drain()
    assert cli(pipeline, "resync", "--yes", stream_partitions=PARTITIONS) == EXIT_OK
    entries = stage1_changes(pipeline)
    assert Counter(mongo_id for _partition, mongo_id in entries) == Counter({mongo_id_of(_id): 2 for _id in ids})
    for partition, mongo_id in entries:
        assert Partitions(PARTITIONS).of(point_id(pipeline.source, mongo_id)) == partition
    pipeline.drain()
    pipeline.assert_matches_mongo()


def cli_p(pipeline: Pipeline, *argv: str) -> int:
    return cli(pipeline, *argv, stream_partitions=PARTITIONS)


@pytest.mark.parametrize("from_mongo", [False, True])
def test_rebuild_refills_the_collection_from_every_partition(pipeline: Pipeline, from_mongo: bool) -> None:
    partitioned(pipeline)
    seed(pipeline)
    pipeline.drain()
    assert cli_p(pipeline, "--yes", "rebuild", *(["--from-mongo"] if from_mongo else [])) == EXIT_OK
    pipeline.drain()
    pipeline.assert_matches_mongo()


def test_a_dead_letter_of_a_partition_is_replayed_into_its_documents_partition(pipeline: Pipeline) -> None:
    partitioned(pipeline)
    ids = seed(pipeline)
    pipeline.drain()
    lost = mongo_id_of(ids[5])
    partition = Partitions(PARTITIONS).of(point_id(pipeline.source, lost))
    stage2 = Partitions(PARTITIONS).name("embedded_documents", partition)
    dead_letter_stage2(pipeline, lost, stage2)
    pipeline.store.delete([point_id(pipeline.source, lost)])
    assert cli_p(pipeline, "--yes", "dlq", "replay", "--all", "--stage", "2") == EXIT_OK
    assert pipeline.redis_client.xlen(stage2 + ":dlq") == 0
    pipeline.drain()
    pipeline.assert_matches_mongo()


def test_verify_repairs_through_the_partitions(pipeline: Pipeline) -> None:
    partitioned(pipeline)
    ids = seed(pipeline)
    pipeline.drain()
    pipeline.store.delete([point_id(pipeline.source, mongo_id_of(_id)) for _id in ids[:5]])
    assert cli_p(pipeline, "--yes", "verify", "--repair") == EXIT_OK
    pipeline.drain()
    pipeline.assert_matches_mongo()


@pytest.mark.parametrize(("before", "after"), [(1, PARTITIONS), (PARTITIONS, 1), (PARTITIONS, 2)])
def test_a_drained_pipeline_changes_its_partitions_without_a_new_snapshot(
    pipeline: Pipeline, before: int, after: int
) -> None:
    pipeline.overrides["stream_partitions"] = before
    seed(pipeline)
    pipeline.drain()
    pipeline.overrides["stream_partitions"] = after
    pipeline.collection.insert_one({"_id": "new", "subject": "written after the change"})
    pipeline.collection.update_one({"_id": "doc-1"}, {"$set": {"subject": "changed after the change"}})
    pipeline.drain()
    streams = Partitions(after).names("raw_document_changes")
    published = [f["mongo_id"] for name in streams for _id, f in pipeline.redis_client.xrange(name)]
    if after == 1 or before == 1:
        assert sorted(published) == ["doc-1", "new"], "only the changes since, no second snapshot"
    pipeline.assert_matches_mongo()


def test_stream_metrics_name_the_stages_stream_and_each_partition(pipeline: Pipeline) -> None:
    partitioned(pipeline)
    seed(pipeline)
    pipeline.run_producer()
    registry = CollectorRegistry()
    registry.register(StreamStatsCollector(pipeline.redis_client, pipeline.groups()))
    lengths = {
        (sample.labels["stream"], sample.labels["partition"]): sample.value
        for metric in registry.collect()
        if metric.name == "vecsync_stream_length"
        for sample in metric.samples
    }
    assert {stream for stream, _ in lengths} == {"raw_document_changes", "embedded_documents"}
    assert {partition for _, partition in lengths} == {str(p) for p in range(PARTITIONS)}
    assert sum(value for (stream, _), value in lengths.items() if stream == "raw_document_changes") == 36


def test_a_process_started_with_another_stream_partitions_refuses_to_start(pipeline: Pipeline) -> None:
    assert cli(pipeline, "status", stream_partitions=PARTITIONS) == EXIT_OK  # the first process stores its number
    env = {
        **os.environ,
        **cli_env(pipeline),
        "PATH": os.environ["PATH"],
        "STREAM_PARTITIONS": "2",
        "METRICS_PORT": str(free_port()),
        "BACKOFF_MAX_S": "0.1",
    }
    done = subprocess.run([str(BIN / "vecsync-producer")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "STREAM_PARTITIONS is 2" in done.stderr and f"split into {PARTITIONS} partitions" in done.stderr
    assert "vecsync repartition" in done.stderr
    assert cli(pipeline, "status", stream_partitions=2) == EXIT_USAGE
    assert pipeline.redis_client.get(STORED_PARTITIONS) == str(PARTITIONS)


def tombstones(pipeline: Pipeline, partitions: Partitions) -> dict[str, tuple[str, str]]:
    """Each tombstone's (hash, version), over the partitions."""
    client, base = pipeline.redis_client, tombstones_key(pipeline.store.collection)
    return {
        point: (name, version)
        for name in dict.fromkeys([*partitions.names(base), *Partitions(1).names(base)])
        for point, version in client.hgetall(name).items()
    }


@pytest.mark.parametrize(("before", "after"), [(1, PARTITIONS), (PARTITIONS, 2)])
def test_repartition_moves_the_tombstones_and_the_producers_state_of_a_drained_pipeline(
    pipeline: Pipeline, before: int, after: int
) -> None:
    pipeline.overrides["stream_partitions"] = before
    ids = seed(pipeline)
    pipeline.drain()
    pipeline.collection.delete_many({"_id": {"$in": ids[::3]}})
    pipeline.drain()
    assert cli(pipeline, "status", stream_partitions=before) == EXIT_OK
    deleted = tombstones(pipeline, Partitions(before))
    assert deleted, "the deletes left tombstones"
    old_keys = ProducerKeys.of(pipeline.source, Partitions(before))
    token = pipeline.redis_client.get(old_keys.token)
    migrated = pipeline.redis_client.get(old_keys.ids_migrated)
    assert migrated, "the producer marked its ids as migrated"
    # A hint of the previous generation (the upserter rotates them at SKIP_UNCHANGED_HINT_POINTS) moves too.
    old, hinted = Partitions(before), point_id(pipeline.source, "hinted")
    previous_hint = old.name(APPLIED_TEXT_PREVIOUS_KEY, old.of(hinted))
    pipeline.redis_client.hset(previous_hint, hinted, "fingerprint")

    assert cli(pipeline, "repartition", "--yes", stream_partitions=after) == EXIT_OK

    new = Partitions(after)
    moved = tombstones(pipeline, new)
    assert {point: version for point, (_name, version) in moved.items()} == {
        point: version for point, (_name, version) in deleted.items()
    }
    assert all(
        name == new.name(tombstones_key(pipeline.store.collection), new.of(point))
        for point, (name, _v) in moved.items()
    )
    assert pipeline.redis_client.get(ProducerKeys.of(pipeline.source, new).token) == token
    assert pipeline.redis_client.get(ProducerKeys.of(pipeline.source, new).ids_migrated) == migrated
    assert pipeline.redis_client.hget(new.name(APPLIED_TEXT_PREVIOUS_KEY, new.of(hinted)), hinted) == "fingerprint"
    assert cli(pipeline, "status", stream_partitions=before) == EXIT_USAGE, "the old number is refused now"

    pipeline.overrides["stream_partitions"] = after
    streams = new.names("raw_document_changes")  # a partition of two numbers may share a name, and its entries
    last = {name: (pipeline.redis_client.xrevrange(name, count=1) or [("0-0", {})])[0][0] for name in streams}
    pipeline.collection.insert_one({"_id": "new", "subject": "written after the change"})
    pipeline.drain()
    published = [
        f["mongo_id"] for name in streams for _id, f in pipeline.redis_client.xrange(name, min=f"({last[name]}")
    ]
    assert published == ["new"], "only the change since, no second snapshot"
    pipeline.assert_matches_mongo()


def test_repartition_refuses_a_pipeline_that_is_not_drained(pipeline: Pipeline) -> None:
    partitioned(pipeline)
    seed(pipeline)
    pipeline.run_producer()  # stage 1 holds entries no worker read
    assert cli(pipeline, "repartition", "--yes", "--from", str(PARTITIONS), stream_partitions=2) == EXIT_FAILED
    assert pipeline.redis_client.get(STORED_PARTITIONS) is None, "nothing changed"


def test_a_full_redis_at_start_up_is_no_reason_not_to_start(redis_client: redis.Redis) -> None:
    """The number cannot be stored while Redis refuses writes; the process starts, and a later start stores it."""
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", "1")  # every write that needs memory is refused
    try:
        check_count(redis_client, ["raw_document_changes"], PARTITIONS)
    finally:
        redis_client.config_set("maxmemory", "0")
    assert redis_client.get(STORED_PARTITIONS) is None
    check_count(redis_client, ["raw_document_changes"], PARTITIONS)
    assert redis_client.get(STORED_PARTITIONS) == str(PARTITIONS)
