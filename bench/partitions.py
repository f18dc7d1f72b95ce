"""Benchmark of STREAM_PARTITIONS on a Redis Cluster (``make bench-partitions``, also run by ``make bench``).

Starts a real Redis Cluster of three masters and three replicas (Debian's redis-server, on this machine), and
measures, side by side in one run, alternating over BENCH_PARTITION_ROUNDS rounds, the pipeline end to end with the
hash backend (the pipeline's own ceiling, as B3 of bench/pipeline.py): BENCH_HASH_DOCS documents from MongoDB insert
to searchable, with

P1   REDIS_CLUSTER=true, STREAM_PARTITIONS=1: every stream and key in one slot, so on one master;
P8   REDIS_CLUSTER=true, STREAM_PARTITIONS=8: the partitions spread over the three masters;
P8-nowait  P8 with PRODUCER_REPLICA_WAIT_MS=0: the producer's token does not wait for replicas (WAIT);
R1   one Redis, STREAM_PARTITIONS=1 (the embedded default), for reference.

And the producer alone, where the wait for replicas weighs most: W8 / W0, the producer (in this process) snapshotting
BENCH_WAIT_DOCS documents in batches of BENCH_WAIT_BATCH into the eight partitions, with and without the wait, each
batch touching every master; alternating over the same rounds.

Each run is a fresh local stack (two embedder-workers, one upserter with the embedded store) over the emptied
cluster. Every process, the six Redis nodes included, shares this machine's cores: the ratio shows what the
partitions cost or gain here, not what six machines carry (docs/scaling.md). Results go to
bench/results/partitions.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pymongo
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import HASH_DOCS, cpu_seconds, documents, insert_and_time, stack  # noqa: E402

from producer.service import Producer  # noqa: E402
from producer.settings import ProducerSettings  # noqa: E402
from tests.support.servers import RedisCluster, start_mongo, start_redis_cluster  # noqa: E402
from vecsync.redis_client import connect  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ROUNDS = int(os.environ.get("BENCH_PARTITION_ROUNDS", "3"))
SETUPS = {
    "P1": {"redis_cluster": True, "stream_partitions": 1},
    "P8": {"redis_cluster": True, "stream_partitions": 8},
    "P8-nowait": {"redis_cluster": True, "stream_partitions": 8},
    "R1": {},
}
# The environment of a setup's processes beyond its settings.
SETUP_ENV = {"P8-nowait": {"PRODUCER_REPLICA_WAIT_MS": "0"}}
WAIT_DOCS = int(os.environ.get("BENCH_WAIT_DOCS", "2000"))
WAIT_BATCH = int(os.environ.get("BENCH_WAIT_BATCH", "16"))
WAITS = {"W8": 1000, "W0": 0}


def producer_rate(cluster: RedisCluster, mongo_uri: str, collection: str, replica_wait_ms: int) -> float:
    """Documents per second of a producer snapshotting ``collection`` into eight partitions on the cluster."""
    client = connect(cluster.url, cluster=True)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    settings = ProducerSettings(
        redis_url=cluster.url,
        redis_cluster=True,
        stream_partitions=8,
        mongo_uri=mongo_uri,
        mongo_collection=collection,
        batch_size=WAIT_BATCH,
        producer_replica_wait_ms=replica_wait_ms,
        producer_max_backlog=10 * WAIT_DOCS,
    )
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    try:
        source = mongo[settings.mongo_database][collection]
        started = time.perf_counter()
        Producer(settings, client, source).run(drain=True)
        elapsed = time.perf_counter() - started
    finally:
        mongo.close()
        client.close()
    return WAIT_DOCS / elapsed


def run() -> dict[str, Any]:
    rates: dict[str, list[float]] = {name: [] for name in [*SETUPS, *WAITS]}
    cpu: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        cluster = start_redis_cluster(Path(folder))
        mongo = start_mongo(Path(folder) / "mongo")
        mongo_uri = f"mongodb://127.0.0.1:{mongo.port}/?directConnection=true"
        seeding: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
        seeding["app"]["wait"].insert_many(documents(WAIT_DOCS, seed=7))
        seeding.close()
        try:
            for round_number in range(ROUNDS):
                for name, wait_ms in WAITS.items():
                    rates[name].append(producer_rate(cluster, mongo_uri, "wait", wait_ms))
                    print(f"round {round_number + 1}: {name} producer {rates[name][-1]:.0f} documents/s", flush=True)
                for name, setup in SETUPS.items():
                    overrides = {"redis_url": cluster.url, **setup} if setup else {}
                    if setup:
                        client = connect(cluster.url, cluster=True)
                        client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)  # type: ignore[call-arg]
                        client.close()
                    with stack(f"partitions-{name}", "hash", overrides, **SETUP_ENV.get(name, {})) as (
                        running,
                        collection,
                    ):
                        before = cpu_seconds(running)
                        started = time.perf_counter()
                        rate = insert_and_time(running, collection, documents(HASH_DOCS, seed=5))
                        elapsed = time.perf_counter() - started
                        after = cpu_seconds(running)
                    rates[name].append(rate)
                    if round_number == ROUNDS - 1:
                        cpu[name] = {key: round(after[key] - before.get(key, 0.0), 2) for key in sorted(after)}
                        cpu[name]["elapsed_s"] = round(elapsed, 2)
                    print(f"round {round_number + 1}: {name} {rate:.0f} documents/s", flush=True)
        finally:
            mongo.stop()
            cluster.stop()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "documents": HASH_DOCS,
        "rounds": ROUNDS,
        "docs_per_s": {name: [round(value, 1) for value in values] for name, values in rates.items()},
        "median_docs_per_s": {name: round(value, 1) for name, value in medians.items()},
        "ratio_p8_p1": round(medians["P8"] / medians["P1"], 2),
        "ratio_p1_cluster_one_redis": round(medians["P1"] / medians["R1"], 2),
        "ratio_p8_wait_nowait": round(medians["P8"] / medians["P8-nowait"], 2),
        "producer_batch": WAIT_BATCH,
        "producer_documents": WAIT_DOCS,
        "ratio_producer_wait_nowait": round(medians["W8"] / medians["W0"], 2),
        # The stack's processes (not the cluster's nodes) in each setup's last round.
        "cpu_s_last_round": cpu,
    }


def markdown(results: dict[str, Any]) -> str:
    medians, rates = results["median_docs_per_s"], results["docs_per_s"]
    return "\n".join(
        [
            "# Partitions on a Redis Cluster (`make bench-partitions`)",
            "",
            f"{results['machine']['cpus']} CPUs, Python {results['machine']['python']}; {results['documents']} "
            f"documents per run, hash backend, {results['rounds']} rounds alternating; every process and the six "
            "Redis nodes on this one machine.",
            "",
            "| setup | documents/s, median (each round) |",
            "|---|---|",
            f"| P1: Redis Cluster, STREAM_PARTITIONS=1 | {medians['P1']} ({', '.join(map(str, rates['P1']))}) |",
            f"| P8: Redis Cluster, STREAM_PARTITIONS=8 | {medians['P8']} ({', '.join(map(str, rates['P8']))}) |",
            f"| P8-nowait: P8 with PRODUCER_REPLICA_WAIT_MS=0 | {medians['P8-nowait']} "
            f"({', '.join(map(str, rates['P8-nowait']))}) |",
            f"| R1: one Redis, STREAM_PARTITIONS=1 | {medians['R1']} ({', '.join(map(str, rates['R1']))}) |",
            f"| ratio P8 / P1 | **{results['ratio_p8_p1']} x** |",
            f"| ratio P1 / R1 | {results['ratio_p1_cluster_one_redis']} x |",
            f"| ratio P8 / P8-nowait (the wait for replicas, end to end) | **{results['ratio_p8_wait_nowait']} x** |",
            "",
            f"The producer alone, snapshotting {results['producer_documents']} documents in batches of "
            f"{results['producer_batch']} into eight partitions (each batch writes to every master, so waits for "
            "three replicas):",
            "",
            "| setup | documents/s, median (each round) |",
            "|---|---|",
            f"| W8: PRODUCER_REPLICA_WAIT_MS=1000 (the default) | {medians['W8']} "
            f"({', '.join(map(str, rates['W8']))}) |",
            f"| W0: PRODUCER_REPLICA_WAIT_MS=0 | {medians['W0']} ({', '.join(map(str, rates['W0']))}) |",
            f"| ratio W8 / W0 | **{results['ratio_producer_wait_nowait']} x** |",
            "",
            "CPU seconds of the stack's processes in the last round: "
            + "; ".join(f"{name}: {json.dumps(values)}" for name, values in results["cpu_s_last_round"].items()),
            "",
        ]
    )


def main() -> None:
    results = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "partitions.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "partitions.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
