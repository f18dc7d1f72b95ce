"""Chaos test: a seeded random workload on MongoDB while stages are killed and dependencies fail.

Runs the local stack (real Redis with AOF, the MongoDB stand-in, three
embedder-workers, one upserter holding the embedded Qdrant store (Qdrant's engine, in-process), the `hash`
embedding backend), applies inserts, updates, replaces and deletes that often
hit the same documents in quick succession, on documents whose `_id`s are
ObjectIds, strings, integers and UUIDs in equal shares, and meanwhile:

* SIGKILLs a random stage every few seconds (the supervisor restarts it);
* stops the embedding-api for a while;
* SIGKILLs Redis once (it restarts from its AOF, possibly without its last second);
* freezes the upserter, and with it the embedded Qdrant, for a while (SIGSTOP, then SIGCONT).

With ``--cluster``, Redis is a real Redis Cluster of three masters and three replicas, the streams are split into
``--partitions`` partitions, and instead of the Redis kill, two failovers happen while changes flow: an unplanned
one first, where the master of a partition (not the one holding the producer's token) dies with writes its replica
never received (the replica is frozen with SIGSTOP and its link cut; the master is SIGKILLed; the replica resumes
and takes over with CLUSTER FAILOVER TAKEOVER; the old master comes back as its replica), and later a manual one
(CLUSTER FAILOVER) of another partition's master. ``--replica-wait-ms`` sets the producer's
PRODUCER_REPLICA_WAIT_MS (0: no wait, so the unplanned failover drops shares the producer must find).

Meanwhile it samples every point's version through the upserter once a second. Then it waits until every stage
is drained and compares MongoDB with Qdrant point by point: ids, payload fields, text, and the vector against a
fresh embedding of the current text. It passes with 0 missing, 0 extra, 0 stale, 0 dead-lettered, and no point
ever seen at an older version than before. The seed and the fault schedule are printed so a failure can be
replayed: `make chaos SEED=<seed>`.

With ``--syncs 2`` (``make chaos SYNCS=2``) the stack runs a sync definition file (VECSYNC_CONFIG) of two syncs,
two collections in two databases into two Qdrant collections, each with its own streams: ``tickets`` has a filter
(``status`` not ``spam``), arrays and nested fields in its text and payload and an integer payload index, and the
workload moves its documents in and out of the filter; ``articles`` maps nested fields. Every stage is killed at
least once, and each Qdrant collection must end equal to its MongoDB collection's matching documents.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pymongo
import requests
from bson import ObjectId
from redis.crc import key_slot

from embedding_api.backends import HashEncoder
from tests.support.servers import RedisCluster, start_redis_cluster, wait_for
from tests.support.stack import drained, stack_settings
from vecsync.bson_codec import mongo_id_of
from vecsync.cli.store import UpserterStore
from vecsync.constants import dlq_stream
from vecsync.documents import build_text, mapped_payload, point_id, text_of
from vecsync.errors import VecsyncError
from vecsync.messages import parse_version
from vecsync.producer_state import ProducerKeys
from vecsync.redis_client import connect
from vecsync.settings import QdrantSettings
from vecsync.store import open_vector_store
from vecsync.sync import Sync
from vecsync.syncs import default_sync, load_syncs, settings_for
from vecsync.vectorstore import store_key_file
from vecsync_local.stack import LocalStack, LocalStackSettings
from vecsync_local.supervisor import Child

PAYLOAD_FIELDS = ("product", "customer", "owner", "subject")
OWNERS = ["Ann", "Bo", "Chen", "Dara", "Eli"]
WORDS = "refund invoice printer login outage export webhook router sync scanner latency crash upgrade".split()

# The definition file of a run with two syncs (--syncs 2): a document of `tickets` whose status is spam has no point.
TWO_SYNCS = """
syncs:
  - name: tickets
    mongo_database: app
    mongo_collection: tickets
    filter: {status: {$ne: spam}}
    text_fields: [subject, content, tags]
    payload_fields: [product, customer, owner, subject, status, meta.priority, tags]
    payload_indexes: {meta.priority: integer}
  - name: articles
    mongo_database: kb
    mongo_collection: articles
    text_fields: [subject, body.text]
    payload_fields: [product, owner, body.lang]
    qdrant_collection: kb_articles
"""


@dataclass
class ChaosConfig:
    seed: int
    operations: int = 5000
    documents: int = 1000
    duration_s: float = 90.0
    workers: int = 3
    kill_interval_s: float = 4.0
    api_outage_s: float = 20.0
    qdrant_outage_s: float = 10.0
    restart_redis: bool = True
    # A Redis Cluster instead of one Redis, and STREAM_PARTITIONS.
    cluster: bool = False
    partitions: int = 1
    # PRODUCER_REPLICA_WAIT_MS on the cluster; None keeps the default.
    replica_wait_ms: int | None = None
    # On the cluster: how long the replica of the master that dies misses its writes.
    replica_away_s: float = 2.0
    # 2: the two syncs of TWO_SYNCS (a definition file) instead of the environment's one.
    syncs: int = 1


@dataclass
class Fault:
    at_s: float
    action: str
    target: str
    duration_s: float = 0.0


@dataclass
class ChaosResult:
    seed: int
    operations: int
    documents_in_mongo: int
    # Documents in MongoDB at the end, by the type of their _id; points compared, and documents left out by a
    # sync's filter, per sync.
    id_types: dict[str, int] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)
    filtered_out: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    extra: int = 0
    stale: int = 0
    dead_lettered: int = 0
    # Points seen at an older version than an earlier sample showed, and the samples taken.
    versions_backwards: int = 0
    version_samples: int = 0
    examples: list[str] = field(default_factory=list)
    schedule: list[Fault] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.dead_lettered or self.versions_backwards)


def fault_schedule(config: ChaosConfig, stage_names: list[str], rng: random.Random) -> list[Fault]:
    times = _frange(config.kill_interval_s, config.duration_s, config.kill_interval_s)
    targets = [rng.choice(stage_names) for _ in times]
    if config.syncs > 1:
        # Every stage killed at least once, at a random one of the kill times.
        for name, slot in zip(
            stage_names, rng.sample(range(len(times)), min(len(times), len(stage_names))), strict=False
        ):
            targets[slot] = name
    faults = [Fault(round(at, 1), "kill", target) for at, target in zip(times, targets, strict=True)]
    if config.api_outage_s:
        faults.append(Fault(round(config.duration_s * 0.2, 1), "stop", "embedding-api", config.api_outage_s))
    if config.restart_redis:
        faults.append(Fault(round(config.duration_s * 0.5, 1), "failover" if config.cluster else "kill", "redis"))
    if config.restart_redis and config.cluster:
        faults.append(Fault(round(config.duration_s * 0.35, 1), "takeover", "redis", config.replica_away_s))
    if config.qdrant_outage_s:
        faults.append(Fault(round(config.duration_s * 0.7, 1), "freeze", "upserter", config.qdrant_outage_s))
    return sorted(faults, key=lambda fault: fault.at_s)


def _frange(start: float, stop: float, step: float) -> list[float]:
    values, value = [], start
    while value < stop:
        values.append(value)
        value += step
    return values


class FaultInjector(threading.Thread):
    """Applies the schedule to the stack's processes, then puts everything back."""

    def __init__(self, stack: LocalStack, schedule: list[Fault], cluster: RedisCluster | None = None) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.schedule = schedule
        self.cluster = cluster
        self.done = threading.Event()
        self._timers: list[threading.Timer] = []

    def _child(self, target: str) -> Child:
        for child in [*self.stack.servers, *self.stack.stages]:
            name = child.env.get("CONSUMER_NAME", child.name)
            if target in (name, child.name):
                return child
        raise KeyError(target)

    def run(self) -> None:
        started = time.monotonic()
        for fault in self.schedule:
            if self.done.wait(max(0.0, fault.at_s - (time.monotonic() - started))):
                return
            if fault.action == "takeover":
                assert self.cluster is not None
                self._unplanned_failover(fault)
                continue
            if fault.action == "failover":
                assert self.cluster is not None
                partitions = self.stack.settings.partitions
                stream = partitions.name(self.stack.settings.stage1_stream, partitions.count // 2)
                old, new = self.cluster.fail_over(key_slot(stream.encode()))
                print(f"[chaos {fault.at_s:6.1f}s] failover of {stream}'s master {old} to {new}", flush=True)
                continue
            child = self._child(fault.target)
            if child.paused or child.process is None:
                continue  # already held down by another fault
            print(f"[chaos {fault.at_s:6.1f}s] {fault.action} {fault.target}", flush=True)
            if fault.action == "kill":
                child.process.send_signal(signal.SIGKILL)
            elif fault.action == "stop":
                child.paused = True
                child.stop()
                self._later(fault.duration_s, lambda child=child: setattr(child, "paused", False))
            elif fault.action == "freeze":
                child.paused = True
                child.process.send_signal(signal.SIGSTOP)
                self._later(fault.duration_s, lambda child=child: self._thaw(child))

    def _unplanned_failover(self, fault: Fault) -> None:
        """The master of a partition dies with writes its replica never received, and the replica takes over."""
        assert self.cluster is not None
        settings, cluster = self.stack.settings, self.cluster
        partitions = settings.partitions
        token_master = cluster.master_of(key_slot(ProducerKeys.of(settings.source, partitions).token.encode()))
        manual = partitions.name(settings.stage1_stream, partitions.count // 2)
        stream = next(
            name
            for name in partitions.names(settings.stage1_stream)
            if cluster.master_of(key_slot(name.encode()))
            not in (token_master, cluster.master_of(key_slot(manual.encode())))
        )
        master = cluster.master_of(key_slot(stream.encode()))
        replica = cluster.replica_of(master)
        print(
            f"[chaos {fault.at_s:6.1f}s] replica {replica} of {stream}'s master {master} misses its writes", flush=True
        )
        cluster.node(replica).process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        cluster.client(master).client_kill_filter(_type="replica")
        self.done.wait(fault.duration_s)
        cluster.node(master).process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        cluster.node(replica).process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        cluster.take_over(replica)
        cluster.node(master).start()  # back as the new master's replica
        print(f"[chaos {fault.at_s:6.1f}s] master {master} killed; {replica} took over; {master} back", flush=True)

    def _thaw(self, child: Child) -> None:
        if child.process is not None and child.process.poll() is None:
            child.process.send_signal(signal.SIGCONT)
        child.paused = False

    def _later(self, delay: float, action: Any) -> None:
        timer = threading.Timer(delay, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def finish(self) -> None:
        """Stop injecting, and end every outage now."""
        self.done.set()
        for timer in self._timers:
            timer.cancel()
        for child in [*self.stack.servers, *self.stack.stages]:
            if child.paused:
                self._thaw(child)


def document_ids(count: int, rng: random.Random) -> list[Any]:
    """``count`` _ids, a quarter each of ObjectIds, strings, integers and UUIDs, drawn from ``rng``."""
    makers = (
        lambda n: ObjectId(rng.randbytes(12)),
        lambda n: f"doc-{n}",
        lambda n: 10_000 + n,
        lambda n: uuid.UUID(int=rng.getrandbits(128), version=4),
    )
    return [makers[n % len(makers)](n) for n in range(count)]


def apply_workload(collections: list[Any], config: ChaosConfig, rng: random.Random) -> int:
    """Random changes, a third of them on a small hot set of documents, paced over the configured duration, each on
    one of ``collections`` drawn at random (the first collection's documents are tickets, the second's articles).

    A document that is absent is inserted; one that is present is deleted, replaced or updated.
    """
    ids = [document_ids(config.documents, rng) for _ in collections]
    present: list[set[int]] = [set() for _ in collections]
    hot = max(1, config.documents // 20)
    started = time.monotonic()
    for number in range(config.operations):
        which = rng.randrange(len(collections)) if len(collections) > 1 else 0  # one: the seeds' earlier draws
        collection, shape = collections[which], _SHAPES[which] if config.syncs > 1 else _plain
        index = rng.randrange(hot) if rng.random() < 0.35 else rng.randrange(config.documents)
        doc_id = ids[which][index]
        roll = rng.random()
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        if index not in present[which]:
            document = shape({"subject": f"ticket {number}", "content": text, "product": rng.choice(WORDS)}, rng)
            collection.insert_one({"_id": doc_id, **document})
            present[which].add(index)
        elif roll < 0.2:
            collection.delete_one({"_id": doc_id})
            present[which].discard(index)
        elif roll < 0.4:
            replacement = shape({"subject": f"replaced {number}", "content": text, "owner": rng.choice(OWNERS)}, rng)
            if rng.random() < 0.1:
                replacement = {"owner": rng.choice(OWNERS)}  # no text at all: the point must go
            collection.replace_one({"_id": doc_id}, replacement)
        elif roll < 0.55:
            collection.update_one({"_id": doc_id}, {"$set": shape({"owner": rng.choice(OWNERS)}, rng, partial=True)})
        else:
            change = shape({"subject": f"ticket {number}", "content": text, "product": rng.choice(WORDS)}, rng)
            collection.update_one({"_id": doc_id}, {"$set": change})
        ahead = started + config.duration_s * (number + 1) / config.operations - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return config.operations


def _plain(fields: dict[str, Any], rng: random.Random, *, partial: bool = False) -> dict[str, Any]:
    """A document of the environment's sync, as written since the first chaos runs."""
    return fields


def _ticket(fields: dict[str, Any], rng: random.Random, *, partial: bool = False) -> dict[str, Any]:
    """A document of the `tickets` sync: its status moves it in and out of the filter; tags are an array of the
    text, meta.priority a nested integer. A partial update changes the status only, half the time."""
    status = {"status": rng.choice(["open", "open", "closed", "spam"])}
    if partial:
        return {**fields, **status} if rng.random() < 0.5 else status
    tags = rng.sample(WORDS, rng.randint(0, 3))
    return {**fields, **status, "tags": tags, "meta": {"priority": rng.randint(1, 5)}}


def _article(fields: dict[str, Any], rng: random.Random, *, partial: bool = False) -> dict[str, Any]:
    """A document of the `articles` sync: its body is nested."""
    if partial or "content" not in fields:
        return fields
    body = {"text": fields.pop("content"), "lang": rng.choice(["en", "de"])}
    return {**fields, "body": body}


_SHAPES = [_ticket, _article]


class VersionWatch(threading.Thread):
    """Samples every point's version through the upserter, counting points seen at an older version than before."""

    def __init__(self, settings: LocalStackSettings, collections: list[str]) -> None:
        super().__init__(daemon=True)
        key_file = store_key_file(settings.data_dir.resolve())
        self.stores = [UpserterStore(settings.upserter_url, name, 10.0, key_file=key_file) for name in collections]
        self.done = threading.Event()
        self.newest: dict[str, tuple[int, int]] = {}
        self.backwards: list[str] = []
        self.samples = 0

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                versions = self._sample()
            except (VecsyncError, requests.RequestException, KeyError):
                continue  # the upserter is down or frozen: the next sample
            self.samples += 1
            for pid, (version, mongo_id) in versions.items():
                if pid in self.newest and version < self.newest[pid]:
                    self.backwards.append(f"{mongo_id} went back from {self.newest[pid]} to {version}")
                self.newest[pid] = max(version, self.newest.get(pid, version))

    def _sample(self) -> dict[str, tuple[tuple[int, int], str]]:
        versions = {}
        for store in self.stores:
            offset = None
            while True:
                page, offset = store.scroll(limit=512, offset=offset, fields=["version", "mongo_id"])
                versions.update({pid: (parse_version(p["version"]), p["mongo_id"]) for pid, p in page.items()})
                if offset is None:
                    break
        return versions

    def finish(self, result: ChaosResult) -> None:
        self.done.set()
        self.join(30)
        result.versions_backwards = len(self.backwards)
        result.version_samples = self.samples
        result.examples += self.backwards[:10]


def compare(collection: Any, settings: LocalStackSettings, result: ChaosResult, sync: Sync | None = None) -> None:
    """Count missing, extra and stale points of ``sync`` (the environment's by default), checking ids, text, payload
    fields and vectors."""
    sync = sync or default_sync(settings)
    encoder = HashEncoder(384)
    store = open_vector_store(QdrantSettings(qdrant_collection=sync.qdrant_collection), settings.data_dir.resolve())
    try:
        documents = list(collection.find())
        for kind, count in Counter(type(document["_id"]).__name__ for document in documents).items():
            result.id_types[kind] = result.id_types.get(kind, 0) + count
        expected = {}
        for document in documents:
            if sync.structured and document.get("status") == "spam" and sync.filter:
                result.filtered_out[sync.name] = result.filtered_out.get(sync.name, 0) + 1
                continue  # outside the filter: no point
            text = text_of(document, sync) if sync.structured else build_text(document, ["subject", "content"], 8192)
            if text:
                expected[point_id(sync.source, mongo_id_of(document["_id"]))] = (document, text)
        points: dict[str, Any] = {}
        offset = None
        while True:
            page, offset = store.scroll(limit=512, offset=offset, fields=["mongo_id"])
            points.update({record.id: record for record in store.retrieve(list(page), with_vectors=True)})
            if offset is None:
                break
        result.points[sync.name] = len(points)
        for pid in expected.keys() - points.keys():
            result.missing += 1
            result.examples.append(f"missing {mongo_id_of(expected[pid][0]['_id'])}")
        for pid in points.keys() - expected.keys():
            result.extra += 1
            result.examples.append(f"extra {points[pid].payload.get('mongo_id')}")
        for pid in expected.keys() & points.keys():
            document, text = expected[pid]
            record = points[pid]
            payload = record.payload or {}
            fresh = encoder.encode([text])[0]
            cosine = sum(a * b for a, b in zip(fresh, record.vector, strict=True))
            if sync.structured:
                fields = mapped_payload(document, sync.payload_fields)
                same_fields = all(payload.get(name) == value for name, value in fields.items()) and all(
                    payload.get(name) is None
                    for name in {path.split(".")[0] for path in sync.payload_fields} - set(fields)
                )
            else:
                same_fields = all(payload.get(name) == document.get(name) for name in PAYLOAD_FIELDS)
            if payload.get("text") != text or not same_fields or not math.isclose(cosine, 1.0, abs_tol=1e-4):
                result.stale += 1
                result.examples.append(f"stale {mongo_id_of(document['_id'])}")
    finally:
        store.close()
    del result.examples[20:]


def _published(client: Any, stream: str, mongo_id: str) -> bool:
    """Whether one of the last entries of ``stream`` is a change of ``mongo_id``."""
    return any(fields.get("mongo_id") == mongo_id for _id, fields in client.xrevrange(stream, count=50))


def run_chaos(config: ChaosConfig, workdir: Path) -> ChaosResult:
    rng = random.Random(config.seed)
    started = time.monotonic()
    cluster = start_redis_cluster(workdir / "redis-cluster") if config.cluster else None
    overrides: dict[str, Any] = {"redis_url": cluster.url, "redis_cluster": True} if cluster else {}
    if cluster and config.replica_wait_ms is not None:
        os.environ["PRODUCER_REPLICA_WAIT_MS"] = str(config.replica_wait_ms)  # the stack's processes inherit it
    if config.syncs > 1:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "syncs.yaml").write_text(TWO_SYNCS)
        overrides["vecsync_config"] = workdir / "syncs.yaml"
    settings = stack_settings(
        workdir / "data",
        embedding_backend="hash",
        embedder_workers=config.workers,
        stream_partitions=config.partitions,
        **overrides,
    )
    syncs = load_syncs(settings)
    stack = LocalStack(settings)
    try:
        stack.start()
    except BaseException:
        if cluster is not None:
            cluster.stop()
        raise
    stage_names = ["producer", *(f"embedder-{n + 1}" for n in range(config.workers)), "upserter-1"]
    schedule = fault_schedule(config, stage_names, rng)
    supervisor = threading.Thread(target=stack.supervise, daemon=True)
    injector = FaultInjector(stack, schedule, cluster)
    watch = VersionWatch(settings, sorted({sync.qdrant_collection for sync in syncs}))
    # UUIDs as BSON binary subtype 4, as applications write them.
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongo_uri, uuidRepresentation="standard")
    collections = [client[sync.mongo_database][sync.mongo_collection] for sync in syncs]
    try:
        supervisor.start()
        injector.start()
        watch.start()
        operations = apply_workload(collections, config, rng)
        injector.finish()
        redis_client = connect(settings.redis_url, cluster=settings.redis_cluster)
        partitions = settings.partitions
        for sync, collection in zip(syncs, collections, strict=True):
            collection.insert_one({"_id": "sentinel", "subject": "the last change"})
            stream = partitions.name(sync.stage1_stream, partitions.of(point_id(sync.source, "sentinel")))
            wait_for(
                partial(_published, redis_client, stream, "sentinel"),
                timeout=300,
                what=f"the producer to publish the last change of sync {sync.name}",
            )
        wait_for(
            lambda: all(child.alive() for child in [*stack.servers, *stack.stages]) and drained(settings),
            timeout=600,
            interval=0.5,
            what="every stage to drain",
        )
        in_mongo = sum(collection.count_documents({}) for collection in collections)
        result = ChaosResult(config.seed, operations, in_mongo, schedule=schedule)
        stage_streams = [
            stream
            for sync in syncs
            for stream, _ in settings_for(settings, sync).stage1_groups() + settings_for(settings, sync).stage2_groups()
        ]
        result.dead_lettered = sum(redis_client.xlen(dlq_stream(stream)) for stream in stage_streams)
        watch.finish(result)
        stack.stop_stages()  # the upserter releases the embedded store
        for sync, collection in zip(syncs, collections, strict=True):
            compare(collection, settings, result, sync)
    finally:
        injector.finish()
        watch.done.set()
        stack.stop()
        client.close()
        if cluster is not None:
            cluster.stop()
    result.elapsed_s = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    parser.add_argument("--operations", type=int, default=ChaosConfig.operations)
    parser.add_argument("--documents", type=int, default=ChaosConfig.documents)
    parser.add_argument("--duration", type=float, default=ChaosConfig.duration_s, help="seconds of workload")
    parser.add_argument("--workdir", type=Path, default=Path("data/chaos"))
    parser.add_argument("--cluster", action="store_true", help="a Redis Cluster of 3 masters and 3 replicas")
    parser.add_argument("--partitions", type=int, default=1, help="STREAM_PARTITIONS")
    parser.add_argument(
        "--replica-wait-ms", type=int, default=None, help="PRODUCER_REPLICA_WAIT_MS on the cluster (default: its own)"
    )
    parser.add_argument(
        "--syncs",
        type=int,
        choices=(1, 2),
        default=int(os.environ.get("CHAOS_SYNCS") or 1),
        help="2: two syncs of a definition file (default: CHAOS_SYNCS, or the environment's one sync)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    config = ChaosConfig(
        seed=seed,
        operations=args.operations,
        documents=args.documents,
        duration_s=args.duration,
        cluster=args.cluster,
        partitions=args.partitions,
        replica_wait_ms=args.replica_wait_ms,
        syncs=args.syncs,
    )
    workdir = args.workdir / str(seed)
    # A replay starts from nothing: a MongoDB file, a Redis append-only file or a cluster's nodes.conf left by an
    # earlier run of the same seed would fail it (duplicate keys, nodes that already know a cluster).
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"chaos: seed {seed}, {config.operations} operations over {config.documents} documents in each of "
        f"{config.syncs} sync(s), workdir {workdir}"
    )
    result = run_chaos(config, workdir)
    summary = {k: v for k, v in asdict(result).items() if k != "schedule"}
    print(json.dumps(summary, indent=2))
    print("fault schedule: " + ", ".join(f"{f.at_s}s {f.action} {f.target}" for f in result.schedule))
    verdict = "PASS" if result.passed else "FAIL"
    print(
        f"{verdict}: seed {seed}: {result.missing} missing, {result.extra} extra, {result.stale} stale, "
        f"{result.dead_lettered} dead-lettered, {result.versions_backwards} versions backwards in "
        f"{result.version_samples} samples"
    )
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
