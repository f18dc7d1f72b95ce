"""REDIS_CLUSTER=true with STREAM_PARTITIONS=8 on a real Redis Cluster of three masters and three replicas."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from producer.service import Producer
from tests.support.pipeline import Pipeline
from tests.support.servers import RedisCluster, wait_for
from vecsync.consumer import StreamConsumer
from vecsync.partitions import Partitions
from vecsync.streams import stream_stats

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

    streams = Partitions(PARTITIONS, tagged=True).names("raw_document_changes")
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
    assert all(upserter.sweep_tombstones(partition) >= 0 for partition in range(PARTITIONS))


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
        slot = key_slot(Partitions(PARTITIONS, tagged=True).name("raw_document_changes", 3).encode())
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
