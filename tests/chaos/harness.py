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

With ``--long-documents`` (``make chaos CHUNKS=1``) the stack chunks at CHUNK_TOKENS=20 with an overlap of 4, and
the workload (tests/chaos/long_documents.py) writes documents of 1 to 60 chunks that grow, shrink, are replaced,
deleted, rewritten and edited inside one chunk. Whatever the mode, ``compare`` checks chunk by chunk: each document
with text must have exactly the chunks the hash backend's split gives it, each at its point id with its own text,
place, span, the document's fields and version and the vector of its text; any other point is an extra chunk.

Past 400 lines: the run, its fault schedule and its workloads stay in one module so that a replayed seed reads in
one place; the long-document workload and the per-chunk checks have modules of their own (long_documents, chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pymongo
import requests
from bson import ObjectId
from redis.crc import key_slot

from tests.chaos import long_documents
from tests.chaos.chunks import HASH_MAX_TOKENS, ExpectedChunk, chunk_differences, expected_chunks, point_name
from tests.chaos.long_documents import apply_long_workload
from tests.support.rest_api import RestApi
from tests.support.servers import RedisCluster, start_redis_cluster, wait_for
from tests.support.stack import drained, stack_settings
from vecsync.cli.store import UpserterStore
from vecsync.constants import dlq_stream
from vecsync.documents import point_id
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


# The long run's defaults with --long-documents: a change of a long document is about 30 chunks to chunk and write.
LONG_OPERATIONS = 2500
LONG_DOCUMENTS = 300


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
    # Documents of 1 to 60 chunks (tests/chaos/long_documents.py) instead of short texts; the environment's sync.
    long_documents: bool = False
    # The upserter on the server implementation (QDRANT_URL) against the upserter's Qdrant REST API, served over an
    # embedded store by this process (tests/support/rest_api.py), instead of on the embedded store itself. The
    # upserter's freeze then stops the writer only: the API, standing in for the server, keeps serving.
    rest_api: bool = False


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
    # Per sync: the documents of more than one chunk at the end, and the most chunks one document has.
    documents_chunked: dict[str, int] = field(default_factory=dict)
    most_chunks: dict[str, int] = field(default_factory=dict)
    # The changes the long-documents workload made, by kind.
    changes: dict[str, int] = field(default_factory=dict)
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
    if config.syncs > 1 or config.long_documents:
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


def compare(
    collection: Any,
    settings: LocalStackSettings,
    result: ChaosResult,
    sync: Sync | None = None,
    chunking: tuple[int, int] | None = None,
) -> None:
    """Count missing, extra and stale chunks of ``sync`` (the environment's by default), checking ids, text, place,
    payload fields, version and vectors (tests/chaos/chunks.py).

    ``chunking`` is the stack's (CHUNK_TOKENS, CHUNK_OVERLAP_TOKENS); None: the sync's, where CHUNK_TOKENS unset
    is the hash backend's window. A short text is one chunk, so a run of short texts compares one point per
    document, as before chunking.
    """
    sync = sync or default_sync(settings)
    tokens, overlap = chunking or (sync.chunk_tokens or HASH_MAX_TOKENS, sync.chunk_overlap_tokens)
    store = open_vector_store(QdrantSettings(qdrant_collection=sync.qdrant_collection), settings.data_dir.resolve())
    try:
        documents = list(collection.find())
        points: dict[str, Any] = {}
        offset = None
        while True:
            page, offset = store.scroll(limit=512, offset=offset, fields=["mongo_id"])
            points.update({record.id: record for record in store.retrieve(list(page), with_vectors=True)})
            if offset is None:
                break
    finally:
        store.close()
    for kind, count in Counter(type(document["_id"]).__name__ for document in documents).items():
        result.id_types[kind] = result.id_types.get(kind, 0) + count
    expected: dict[str, ExpectedChunk] = {}
    for document in documents:
        if sync.structured and document.get("status") == "spam" and sync.filter:
            result.filtered_out[sync.name] = result.filtered_out.get(sync.name, 0) + 1
            continue  # outside the filter: no point
        chunks = expected_chunks(document, sync, tokens, overlap)
        expected.update((chunk.point_id, chunk) for chunk in chunks)
        result.documents_chunked[sync.name] = result.documents_chunked.get(sync.name, 0) + (len(chunks) > 1)
        result.most_chunks[sync.name] = max(result.most_chunks.get(sync.name, 0), len(chunks))
    result.points[sync.name] = len(points)
    for pid in expected.keys() - points.keys():
        result.missing += 1
        result.examples.append(f"missing {expected[pid].name()}")
    for pid in points.keys() - expected.keys():
        result.extra += 1
        result.examples.append(f"extra {point_name(points[pid].payload or {})}")
    for pid in sorted(expected.keys() & points.keys()):
        chunk, record = expected[pid], points[pid]
        first = points.get(chunk.first_id)
        wrong = chunk_differences(chunk, record, first, sync, PAYLOAD_FIELDS)
        if wrong:
            result.stale += 1
            result.examples.append(f"stale {chunk.name()} at version {record.payload.get('version')}: {wrong}")
    del result.examples[20:]


def _published(client: Any, stream: str, mongo_id: str) -> bool:
    """Whether one of the last entries of ``stream`` is a change of ``mongo_id``."""
    return any(fields.get("mongo_id") == mongo_id for _id, fields in client.xrevrange(stream, count=50))


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment while the stack's processes are created (each keeps a copy, which
    its restarts reuse), then the environment as it was: a pytest run's other tests never see them."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_chaos(config: ChaosConfig, workdir: Path) -> ChaosResult:
    if config.long_documents and config.syncs > 1:
        raise ValueError("The long-documents mode runs the environment's one sync: leave out --syncs 2 (CHAOS_SYNCS).")
    if not config.rest_api:
        return _run_chaos(config, workdir)
    api = RestApi(workdir / "qdrant-rest").start()
    try:
        # The stack's processes, and compare's store, find the API as a Qdrant server.
        with _environment({"QDRANT_URL": api.url}):
            return _run_chaos(config, workdir)
    finally:
        api.stop()


def _run_chaos(config: ChaosConfig, workdir: Path) -> ChaosResult:
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
        with _environment(long_documents.STACK_ENVIRONMENT if config.long_documents else {}):
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
        changes: dict[str, int] = {}
        if config.long_documents:
            ids = document_ids(config.documents, rng)
            changes = apply_long_workload(collections[0], ids, config.operations, config.duration_s, rng)
            operations = sum(changes.values())
        else:
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
        result = ChaosResult(config.seed, operations, in_mongo, changes=changes, schedule=schedule)
        stage_streams = [
            stream
            for sync in syncs
            for stream, _ in settings_for(settings, sync).stage1_groups() + settings_for(settings, sync).stage2_groups()
        ]
        result.dead_lettered = sum(redis_client.xlen(dlq_stream(stream)) for stream in stage_streams)
        watch.finish(result)
        stack.stop_stages()  # the upserter releases the embedded store
        chunking = (long_documents.CHUNK_TOKENS, long_documents.CHUNK_OVERLAP) if config.long_documents else None
        for sync, collection in zip(syncs, collections, strict=True):
            compare(collection, settings, result, sync, chunking)
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
    parser.add_argument(
        "--operations", type=int, default=None, help=f"default {ChaosConfig.operations}, {LONG_OPERATIONS} long"
    )
    parser.add_argument(
        "--documents", type=int, default=None, help=f"default {ChaosConfig.documents}, {LONG_DOCUMENTS} long"
    )
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
    parser.add_argument(
        "--long-documents",
        action="store_true",
        default=os.environ.get("CHAOS_CHUNKS", "") not in ("", "0"),
        help="documents of 1 to 60 chunks at CHUNK_TOKENS=20 (default: CHAOS_CHUNKS=1), compared chunk by chunk",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    long = args.long_documents
    if long and args.syncs > 1:
        parser.error("--long-documents (CHAOS_CHUNKS) runs the environment's one sync: leave out --syncs 2.")
    config = ChaosConfig(
        seed=seed,
        operations=args.operations or (LONG_OPERATIONS if long else ChaosConfig.operations),
        documents=args.documents or (LONG_DOCUMENTS if long else ChaosConfig.documents),
        duration_s=args.duration,
        cluster=args.cluster,
        partitions=args.partitions,
        replica_wait_ms=args.replica_wait_ms,
        syncs=args.syncs,
        long_documents=long,
    )
    workdir = args.workdir / str(seed)
    # A replay starts from nothing: a MongoDB file, a Redis append-only file or a cluster's nodes.conf left by an
    # earlier run of the same seed would fail it (duplicate keys, nodes that already know a cluster).
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"chaos: seed {seed}, {config.operations} operations over {config.documents} "
        f"{'long documents (1 to 60 chunks)' if long else 'documents'} in each of {config.syncs} sync(s), "
        f"workdir {workdir}"
    )
    result = run_chaos(config, workdir)
    summary = {k: v for k, v in asdict(result).items() if k != "schedule"}
    print(json.dumps(summary, indent=2))
    print("fault schedule: " + ", ".join(f"{f.at_s}s {f.action} {f.target}" for f in result.schedule))
    verdict = "PASS" if result.passed else "FAIL"
    print(
        f"{verdict}: seed {seed}: {result.missing} missing, {result.extra} extra, {result.stale} stale"
        f"{' chunks' if long else ''}, "
        f"{result.dead_lettered} dead-lettered, {result.versions_backwards} versions backwards in "
        f"{result.version_samples} samples"
    )
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
