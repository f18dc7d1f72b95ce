"""Benchmark of the first sync's snapshot (``make bench-snapshot``, also run by ``make bench``): a measurement.

Loads BENCH_SNAPSHOT_DOCS documents (about 1 KB of text, 4 KB of fields that are neither text nor payload) into the
MongoDB stand-in and measures, side by side in one run, alternating over BENCH_SNAPSHOT_ROUNDS rounds:

P1  the producer's snapshot (chunks read by `_id`, each published with its position), documents/s into stage 1,
    with the projection (what the product does) and reading whole documents (before the projection), and the bytes
    per stage 1 entry of each (Redis MEMORY USAGE of the stream over its entries);
P2  parallel reads: the `_id` range split in K parts, each read over its own connection and published by its own
    thread, K = 1, 2, 4, as the product's reads do it otherwise (projection, chunks after the last `_id`). The
    product reads in one thread unless this shows a gain.

Results go to bench/results/snapshot.{json,md}. The machine is noisy: compare ratios within the run.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId, json_util

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer.service import Producer  # noqa: E402
from producer.settings import ProducerSettings  # noqa: E402
from tests.support.servers import start_mongo, start_redis  # noqa: E402
from vecsync.bson_codec import ejson_id  # noqa: E402
from vecsync.documents import source_projection  # noqa: E402
from vecsync.mongo_reads import chunks_after, document_change  # noqa: E402
from vecsync.redis_client import connect  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOCS = int(os.environ.get("BENCH_SNAPSHOT_DOCS", "20000"))
ROUNDS = int(os.environ.get("BENCH_SNAPSHOT_ROUNDS", "3"))
PARTS = [int(k) for k in os.environ.get("BENCH_SNAPSHOT_PARTS", "1,2,4").split(",")]
STREAM = "raw_document_changes"
WORDS = "refund invoice printer login outage export webhook router sync scanner latency crash upgrade".split()


def load(collection: Any) -> None:
    rng = random.Random(0)
    chunk = []
    for number in range(DOCS):
        text = " ".join(rng.choice(WORDS) for _ in range(150))[:1000]
        chunk.append(
            {
                "_id": ObjectId(),
                "subject": f"ticket {number}",
                "content": text,
                "owner": rng.choice(["Ann", "Bo"]),
                "attachment": rng.randbytes(2000).hex(),
            }
        )
        if len(chunk) == 1000:
            collection.insert_many(chunk)
            chunk = []


def producer_snapshot(settings: ProducerSettings, client: Any, collection: Any, *, whole_documents: bool) -> dict:
    client.flushall()
    producer = Producer(settings, client, collection)
    if whole_documents:
        producer.projection = None  # type: ignore[assignment]  # the entries as they were before the projection
    started = time.perf_counter()
    producer.run(drain=True)
    seconds = time.perf_counter() - started
    entries = client.xlen(STREAM)
    return {
        "documents": entries,
        "seconds": round(seconds, 2),
        "documents_per_s": round(entries / seconds),
        "bytes_per_entry": round(client.memory_usage(STREAM, samples=0) / entries),
    }


def parallel_snapshot(settings: ProducerSettings, client: Any, mongo_uri: str, parts: int) -> dict:
    """Read the collection in ``parts`` `_id` ranges at once, one connection and one thread each."""
    client.flushall()
    projection = source_projection(settings.text_fields, settings.payload_fields)
    bounds = _split(mongo_uri, settings, parts)
    published = [0] * parts

    def read_part(index: int) -> None:
        mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
        collection = mongo[settings.mongo_database][settings.mongo_collection]
        redis_client = connect(settings.redis_url)
        after, upper = bounds[index], bounds[index + 1]
        query = {"_id": {"$lte": json_util.loads(upper)}} if upper is not None else {}
        for chunk in chunks_after(collection, after, size=settings.batch_size, projection=projection, query=query):
            with redis_client.pipeline(transaction=True) as tx:
                for document in chunk:
                    tx.xadd(STREAM, document_change(settings.source, document["_id"], document, 0.0).to_fields())
                tx.hset(f"bench:snapshot:{index}", "last_id", ejson_id(chunk[-1]["_id"]))
                tx.execute()
            published[index] += len(chunk)
        mongo.close()
        redis_client.close()

    threads = [threading.Thread(target=read_part, args=(index,)) for index in range(parts)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {
        "parts": parts,
        "documents": sum(published),
        "seconds": round(seconds, 2),
        "documents_per_s": round(sum(published) / seconds),
    }


def _split(mongo_uri: str, settings: ProducerSettings, parts: int) -> list[Any]:
    """The _id bounds of ``parts`` ranges: None, the last _id of each part but the last, None."""
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    collection = mongo[settings.mongo_database][settings.mongo_collection]
    step = DOCS // parts
    uppers = [
        next(collection.find({}, {"_id": 1}).sort("_id", 1).skip(step * (n + 1) - 1).limit(1))["_id"]
        for n in range(parts - 1)
    ]
    mongo.close()
    return [None, *(ejson_id(value) for value in uppers), None]


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vecsync-bench-snapshot-"))
    redis_server, mongo_server = start_redis(workdir / "redis"), start_mongo(workdir / "mongo")
    mongo_uri = f"mongodb://127.0.0.1:{mongo_server.port}/?directConnection=true"
    settings = ProducerSettings(
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        mongo_uri=mongo_uri,
        producer_max_backlog=10 * DOCS,  # no flow control: the read and the publish alone are measured
    )
    client = connect(settings.redis_url)
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    collection = mongo[settings.mongo_database][settings.mongo_collection]
    try:
        load(collection)
        rounds: list[dict[str, Any]] = []
        for _ in range(ROUNDS):
            rounds.append(
                {
                    "projected": producer_snapshot(settings, client, collection, whole_documents=False),
                    "whole_documents": producer_snapshot(settings, client, collection, whole_documents=True),
                    "parallel": [parallel_snapshot(settings, client, mongo_uri, parts) for parts in PARTS],
                }
            )
    finally:
        mongo.close()
        redis_server.stop()
        mongo_server.stop()
    report(rounds)


def report(rounds: list[dict[str, Any]]) -> None:
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    projected = median([r["projected"]["documents_per_s"] for r in rounds])
    whole = median([r["whole_documents"]["documents_per_s"] for r in rounds])
    by_parts = {
        parts: median([next(p for p in r["parallel"] if p["parts"] == parts)["documents_per_s"] for r in rounds])
        for parts in PARTS
    }
    summary = {
        "documents": DOCS,
        "rounds": ROUNDS,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "snapshot_documents_per_s": projected,
        "snapshot_whole_documents_per_s": whole,
        "bytes_per_stage1_entry": rounds[-1]["projected"]["bytes_per_entry"],
        "bytes_per_stage1_entry_whole_documents": rounds[-1]["whole_documents"]["bytes_per_entry"],
        "parallel_documents_per_s": by_parts,
        "parallel_speedup": {parts: round(rate / by_parts[PARTS[0]], 2) for parts, rate in by_parts.items()},
        "rounds_detail": rounds,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "snapshot.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Snapshot benchmark",
        "",
        f"`make bench-snapshot`: {DOCS} documents of about 1 KB of text and 4 KB of other fields in the MongoDB "
        f"stand-in, medians of {ROUNDS} alternating rounds, {summary['machine']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| snapshot into stage 1, with the projection | {projected:.0f} documents/s |",
        f"| snapshot into stage 1, whole documents (before) | {whole:.0f} documents/s |",
        f"| bytes per stage 1 entry, with the projection | {summary['bytes_per_stage1_entry']} |",
        f"| bytes per stage 1 entry, whole documents (before) | {summary['bytes_per_stage1_entry_whole_documents']} |",
    ]
    lines += [
        f"| parallel reads, {parts} part(s) | {rate:.0f} documents/s ({summary['parallel_speedup'][parts]}x) |"
        for parts, rate in by_parts.items()
    ]
    (RESULTS / "snapshot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
