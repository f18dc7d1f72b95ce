"""REDIS_CLUSTER=true with STREAM_PARTITIONS=8 on a real Redis Cluster of three masters and three replicas."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from redis.crc import key_slot

from producer.service import Producer
from tests.integration.test_cli import cli
from tests.support.pipeline import Pipeline
from tests.support.servers import RedisCluster, start_redis_cluster, wait_for
from vecsync.cli.context import EXIT_OK, EXIT_USAGE
from vecsync.constants import tombstones_key
from vecsync.consumer import StreamConsumer
from vecsync.documents import point_id
from vecsync.partitions import Partitions, partition_index
from vecsync.producer_state import ProducerKeys
from vecsync.redis_client import connect
from vecsync.stream_stats import stream_stats

PARTITIONS = 8


@pytest.fixture
def pipeline(pipeline: Pipeline, cluster_client: redis.Redis, redis_cluster: RedisCluster) -> Pipeline:
    """The conftest's pipeline, on the Redis Cluster with eight partitions."""
    return replace(
        pipeline,
        redis_client=cluster_client,
        redis_url=redis_cluster.url,
        overrides={"redis_cluster": True, "stream_partitions": PARTITIONS},
    )


def dead_letters(pipeline: Pipeline) -> int:
    return sum(pipeline.redis_client.xlen(stream + ":dlq") for stream, _group in pipeline.groups())


def test_the_pipeline_runs_on_the_cluster_with_its_partitions_spread_over_the_masters(
    pipeline: Pipeline, redis_cluster: RedisCluster
) -> None:
    pipeline.collection.insert_many([{"_id": f"d{n}", "subject": f"subject {n}"} for n in range(60)])
    pipeline.drain()
    pipeline.collection.update_many({"_id": {"$in": ["d1", "d2", "d3"]}}, {"$set": {"subject": "changed"}})
    pipeline.collection.delete_many({"_id": {"$in": ["d4", "d5"]}})
    pipeline.drain()
    pipeline.assert_matches_mongo()
    assert dead_letters(pipeline) == 0

    streams = Partitions(PARTITIONS, redis_cluster=True).names("raw_document_changes")
    masters = [redis_cluster.master_of(key_slot(name.encode())) for name in streams]
    assert sorted(masters.count(master) for master in set(masters)) == [2, 3, 3]


def test_leaving_groups_the_tombstone_sweep_and_the_hint_run_on_the_cluster(pipeline: Pipeline) -> None:
    """Each is a script or a pipeline over one partition's keys, in one hash slot."""
    from upserter.service import Upserter

    pipeline.overrides.update(tombstone_sweep_interval_s=0.001, skip_unchanged_hint_points=2)
    pipeline.collection.insert_many([{"_id": f"d{n}", "subject": f"subject {n}"} for n in range(40)])
    pipeline.drain()
    pipeline.collection.delete_many({"_id": {"$in": [f"d{n}" for n in range(10)]}})
    pipeline.collection.update_many({}, {"$set": {"owner": "Bob"}})  # payload-only, judged by the hint
    pipeline.drain()
    pipeline.assert_matches_mongo()
    assert dead_letters(pipeline) == 0
    client = pipeline.redis_client
    assert all(client.xinfo_consumers(stream, group) == [] for stream, group in pipeline.groups())
    upserter = Upserter(pipeline.upserter_settings(), client, pipeline.store, pipeline.collection)
    assert all(upserter.tombstone_sweep.run(partition) >= 0 for partition in range(PARTITIONS))


class Running:
    """Every stage running in this process, one consumer per partition, until stopped."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.stopping = threading.Event()
        self.loops: list[Any] = [Producer(pipeline.producer_settings(), pipeline.redis_client, pipeline.collection)]
        for partition in range(PARTITIONS):
            for make in (pipeline.embedder_consumer, pipeline.upserter_consumer):
                self.loops.append(make(partition, claim_idle_ms=2000))
        self.threads = []
        for loop in self.loops:
            loop.stopping = self.stopping
            self.threads.append(threading.Thread(target=loop.run, daemon=True))

    def __enter__(self) -> Running:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self.threads)

    def consumers(self) -> Iterator[StreamConsumer]:
        return (loop for loop in self.loops if isinstance(loop, StreamConsumer))


def test_a_failover_while_changes_flow_loses_nothing_and_dead_letters_nothing(
    pipeline: Pipeline, redis_cluster: RedisCluster
) -> None:
    collection = pipeline.collection
    pipeline.run_producer()
    with Running(pipeline) as running:
        for n in range(100):
            collection.insert_one({"_id": f"d{n}", "subject": f"subject {n}"})
        # The master of partition 3 hands over to its replica while the stages work and changes keep coming.
        slot = key_slot(Partitions(PARTITIONS, redis_cluster=True).name("raw_document_changes", 3).encode())
        changing = threading.Thread(
            target=lambda: [
                collection.update_one({"_id": f"d{n}"}, {"$set": {"subject": f"changed {n}"}}) for n in range(100)
            ]
        )
        changing.start()
        redis_cluster.fail_over(slot)
        changing.join()
        collection.delete_many({"_id": {"$in": [f"d{n}" for n in range(0, 100, 10)]}})
        collection.insert_many([{"_id": f"e{n}", "subject": f"after {n}"} for n in range(50)])
        wait_for(
            lambda: len(pipeline.points()) == 140 and pipeline.drained(),
            timeout=120,
            what="the pipeline to catch up after the failover",
        )
        assert running.alive(), "no stage died of the failover"
    pipeline.assert_matches_mongo()
    assert dead_letters(pipeline) == 0


def test_a_consumer_blocked_in_a_read_on_a_master_that_fails_over_reads_on(
    pipeline: Pipeline, redis_cluster: RedisCluster
) -> None:
    pipeline.run_producer()
    partition = 2
    consumer = pipeline.upserter_consumer(partition, block_ms=8_000)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: consumer.liveness.alive(), timeout=10, what="the consumer to start reading")
        # Redis answers a read blocked on a master that becomes a replica with an UNBLOCKED error.
        redis_cluster.fail_over(key_slot(consumer.stream.encode()))
        pipeline.collection.insert_many([{"_id": f"d{n}", "subject": f"subject {n}"} for n in range(40)])
        pipeline.run_producer()
        for other in range(PARTITIONS):
            pipeline.embedder_consumer(other).run(drain=True)
        client, stream, group = pipeline.redis_client, consumer.stream, consumer.group
        assert client.xlen(stream) > 0, "the partition got entries"
        wait_for(
            lambda: stream_stats(client, stream, group).drained or not thread.is_alive(),
            timeout=60,
            what="the consumer to read on",
        )
        assert thread.is_alive(), "the failover stopped the consumer"
    finally:
        consumer.stop()
        thread.join(30)


def waits_timed_out() -> float:
    return REGISTRY.get_sample_value("vecsync_producer_replica_waits_timed_out_total") or 0.0


@pytest.fixture
def lossy_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of its own: the test kills one of its masters."""
    cluster = start_redis_cluster(tmp_path / "lossy-cluster")
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("replica_wait_ms", [300, 0], ids=["waiting-for-the-replica", "not-waiting"])
def test_an_unplanned_failover_to_a_replica_that_missed_a_partitions_share_loses_no_change(
    pipeline: Pipeline, lossy_cluster: RedisCluster, replica_wait_ms: int
) -> None:
    """The master of a partition dies with writes its replica never received, and the replica takes over.

    The replica is frozen (SIGSTOP) and its link to the master cut, so nothing the producer writes from then on
    reaches it; the producer's token lives on another master and survives. Waiting for the replica (WAIT) keeps the
    token from moving past the share; not waiting, the producer finds the share lost and goes back to the
    partition's last mark.
    """
    client = connect(lossy_cluster.url, cluster=True)
    pipeline = replace(
        pipeline,
        redis_client=client,
        redis_url=lossy_cluster.url,
        overrides={**pipeline.overrides, "producer_replica_wait_ms": replica_wait_ms},
    )
    collection, settings = pipeline.collection, pipeline.producer_settings()
    collection.insert_many([{"_id": f"d{n}", "subject": f"subject {n}"} for n in range(40)])
    pipeline.drain()
    collection.update_many({}, {"$set": {"content": "followed from the change stream"}})
    pipeline.drain()  # each partition's mark is now a batch of change events

    keys = ProducerKeys.of(settings.source, settings.partitions)
    token_master = lossy_cluster.master_of(key_slot(keys.token.encode()))
    stream = next(
        name
        for name in settings.partitions.names(settings.stage1_stream)
        if lossy_cluster.master_of(key_slot(name.encode())) != token_master
    )
    partition = partition_index(stream)
    master = lossy_cluster.master_of(key_slot(stream.encode()))
    replica = lossy_cluster.replica_of(master)
    lost = [f"d{n}" for n in range(40) if settings.partitions.of(point_id(settings.source, f"d{n}")) == partition]
    assert lost, "some documents live in the partition"
    length = client.xlen(stream)

    lossy_cluster.node(replica).process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    lossy_cluster.client(master).client_kill_filter(_type="replica")
    collection.update_many({"_id": {"$in": lost}}, {"$set": {"subject": "changed while the replica was away"}})
    collection.insert_many([{"_id": f"e{n}", "subject": f"new {n}"} for n in range(20)])
    token_before = client.get(keys.token)
    producer = Producer(settings, client, collection)
    thread = threading.Thread(target=producer.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: client.xlen(stream) > length, timeout=30, what="the producer to write the partition")
        if replica_wait_ms:
            timed_out = waits_timed_out()
            wait_for(
                lambda: waits_timed_out() > timed_out + 1,
                timeout=30,
                what="the producer to wait for the replica twice",
            )
            assert client.get(keys.token) == token_before, "the token waits for the replica"
        else:
            wait_for(lambda: client.get(keys.token) != token_before, timeout=30, what="the token to move on")
        producer.stopping.set()
        thread.join(30)
    finally:
        producer.stopping.set()

    lossy_cluster.node(master).process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    lossy_cluster.node(replica).process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    lossy_cluster.take_over(replica)
    assert client.xlen(stream) == length, "the new master lacks the writes the old one acknowledged"
    # Back, the old master becomes the new one's replica: what the producer waits for has a replica again.
    lossy_cluster.node(master).start()

    lost_before = REGISTRY.get_sample_value("vecsync_producer_lost_shares_total") or 0.0
    pipeline.drain()
    pipeline.assert_matches_mongo()
    assert dead_letters(pipeline) == 0
    lost_found = (REGISTRY.get_sample_value("vecsync_producer_lost_shares_total") or 0.0) - lost_before
    assert (lost_found > 0) == (not replica_wait_ms), "only a token that moved past a share finds it lost"
    client.close()


def test_repartition_on_the_cluster_moves_the_tombstones_to_their_new_partitions(pipeline: Pipeline) -> None:
    collection = pipeline.collection
    collection.insert_many([{"_id": f"d{n}", "subject": f"subject {n}"} for n in range(30)])
    pipeline.drain()
    collection.delete_many({"_id": {"$in": [f"d{n}" for n in range(0, 30, 3)]}})
    pipeline.drain()
    base = tombstones_key(pipeline.store.collection)
    before = {
        point: version
        for name in Partitions(PARTITIONS, redis_cluster=True).names(base)
        for point, version in pipeline.redis_client.hgetall(name).items()
    }
    assert len(before) == 10
    overrides = {"redis_cluster": True}
    assert cli(pipeline, "status", stream_partitions=PARTITIONS, **overrides) == EXIT_OK
    assert cli(pipeline, "repartition", "--yes", stream_partitions=3, **overrides) == EXIT_OK

    new = Partitions(3, redis_cluster=True)
    after = {
        point: (name, version)
        for name in new.names(base)
        for point, version in pipeline.redis_client.hgetall(name).items()
    }
    assert {point: version for point, (_name, version) in after.items()} == before
    assert all(name == new.name(base, new.of(point)) for point, (name, _version) in after.items())
    assert cli(pipeline, "status", stream_partitions=PARTITIONS, **overrides) == EXIT_USAGE

    pipeline.overrides["stream_partitions"] = 3
    collection.update_many({}, {"$set": {"subject": "after the change"}})
    pipeline.drain()
    pipeline.assert_matches_mongo()
    assert dead_letters(pipeline) == 0
