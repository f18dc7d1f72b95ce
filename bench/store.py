"""The store's measures for ``make bench`` (see bench/pipeline.py, which runs them and records the results).

E  the embedded store alone against the old local mode, side by side in one run: batch upserts of
   BENCH_STORE_POINTS points of 384 dimensions in batches of 64, and filtered search over them in-process;
Q  BENCH_QUERY_POINTS points (50,000) applied by a real upserter process from stage 2, then filtered and
   unfiltered search p50 through the upserter's read route (the CLI's path), and the upserter's resident memory;
   then the time an HNSW build of those points holds the process (the embedded store never builds one);
R  recall@10 of an HNSW index against exact search, on real embeddings (torch) of the benchmark documents, with the
   sample data's subjects as queries, and the time the build held the process.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.servers import free_port, start_redis, wait_for
from vecsync.cli.store import UpserterStore
from vecsync.documents import point_id, text_sha256
from vecsync.messages import EmbeddedDocument
from vecsync.store.embedded import EmbeddedStore
from vecsync.vectorstore import Point, store_key_file

STORE_POINTS = int(os.environ.get("BENCH_STORE_POINTS", "10000"))
QUERY_POINTS = int(os.environ.get("BENCH_QUERY_POINTS", "50000"))
HNSW_BUILD = os.environ.get("BENCH_HNSW_BUILD", "1") != "0"
SOURCE = "app.documents"
PRODUCTS = [f"Product {n}" for n in range(20)]
BIN = Path(sys.executable).parent


def _ms(seconds: list[float], share: float = 0.5) -> float:
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 2)


def _points(count: int, seed: int) -> list[Point]:
    rng = random.Random(seed)
    points = []
    for n in range(count):
        text = f"ticket {n} about {PRODUCTS[n % len(PRODUCTS)]}"
        payload = {
            "mongo_id": f"bench-{n}",
            "source": SOURCE,
            "product": PRODUCTS[n % len(PRODUCTS)],
            "owner": f"Owner {n % 7}",
            "text": text,
            "text_sha256": text_sha256(text),
            "model": "hash-384",
            "version": f"{1_700_000_000_000 + n}-0",
        }
        points.append(Point(point_id(SOURCE, f"bench-{n}"), [rng.uniform(-1, 1) for _ in range(384)], payload))
    return points


# E: the store alone -------------------------------------------------------------------------------------------


def _old_write_ahead_log(client: Any) -> None:
    """BENCH ONLY: what the release before the embedded engine did to local mode, to measure what it replaced.

    It reached into qdrant-client's private storage objects to switch each collection's SQLite file to a
    write-ahead log with synchronous=NORMAL. No product code does this any more.
    """
    for collection in client._client.collections.values():
        connection = collection.storage.storage
        assert isinstance(connection, sqlite3.Connection)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")


def _local_mode(folder: Path, points: list[Point], *, write_ahead_log: bool) -> tuple[float, float, None]:
    """BENCH ONLY: qdrant-client's local mode, as earlier releases ran the embedded store: upserts/s, search p50."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(folder))
    client.create_collection("bench", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE))
    if write_ahead_log:
        _old_write_ahead_log(client)
    structs = [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points]
    started = time.perf_counter()
    for start in range(0, len(structs), 64):
        client.upsert("bench", points=structs[start : start + 64], wait=True)
    rate = len(points) / (time.perf_counter() - started)
    match = models.Filter(must=[models.FieldCondition(key="product", match=models.MatchValue(value=PRODUCTS[3]))])
    timings = []
    for point in points[:20]:
        begun = time.perf_counter()
        client.query_points("bench", query=point.vector, limit=10, query_filter=match)
        timings.append(time.perf_counter() - begun)
    client.close()
    return rate, _ms(timings), None


def _embedded(
    folder: Path, points: list[Point], write: str, *, flush_interval_s: float = 1.0
) -> tuple[float, float, float | None]:
    """The embedded store as the upserter opens it: upserts/s, filtered search p50, and (plain) unindexed p50.

    ``write``: "plain" upserts, the fence's conditional writes of new points ("fence"), or the fence's writes of
    a newer version of every point, once they exist ("fence-update").
    """
    store = EmbeddedStore(folder, "bench", 384, payload_indexes=["product", "owner"], flush_interval_s=flush_interval_s)
    store.ensure_collection()
    if write == "fence-update":
        for start in range(0, len(points), 256):
            store.upsert(points[start : start + 256])
        points = [Point(p.id, p.vector, {**p.payload, "version": _newer(p.payload["version"])}) for p in points]
    started = time.perf_counter()
    for start in range(0, len(points), 64):
        batch = points[start : start + 64]
        if write == "plain":
            store.upsert(batch)
        else:
            store.write_if_newer(upserts=batch)
    rate = len(points) / (time.perf_counter() - started)
    timings = []
    for point in points[:200]:
        begun = time.perf_counter()
        store.search(point.vector, limit=10, match={"product": PRODUCTS[3]})
        timings.append(time.perf_counter() - begun)
    unindexed = []
    if write == "plain":
        # The same filter on a field without a payload index: every point's payload is read.
        for point in points[:20]:
            begun = time.perf_counter()
            store.search(point.vector, limit=10, match={"text": point.payload["text"]})
            unindexed.append(time.perf_counter() - begun)
    store.close()
    return rate, _ms(timings), _ms(unindexed) if unindexed else None


def _newer(version: str) -> str:
    """A later change's version: after every version of the first round, as the pipeline's next changes are."""
    millis, _seq = version.split("-")
    return f"{int(millis) + 10**9}-0"


def store_alone(points: int = STORE_POINTS) -> dict[str, Any]:
    """E: upserts per second and filtered search p50, the old local mode and the embedded store, in one run."""
    data = _points(points, seed=3)
    rows: dict[str, tuple[float, float, float | None]] = {}
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        rows["local mode, as it comes"] = _local_mode(base / "local", data, write_ahead_log=False)
        rows["local mode, with the old write-ahead-log patch"] = _local_mode(base / "wal", data, write_ahead_log=True)
        rows["embedded, plain batch upsert"] = _embedded(base / "plain", data, "plain")
        rows["embedded, the fence's conditional writes (the upserter's), new points"] = _embedded(
            base / "fence", data, "fence"
        )
        rows["embedded, the fence's conditional writes, a newer version of every point"] = _embedded(
            base / "update", data, "fence-update"
        )
        rows["embedded, conditional, new points, flushed every batch (QDRANT_FLUSH_INTERVAL_MS=0)"] = _embedded(
            base / "flush", data, "fence", flush_interval_s=0
        )
    result: dict[str, Any] = {"points": points, "batch": 64}
    result["upserts_per_s"] = {name: round(row[0], 1) for name, row in rows.items()}
    result["filtered_search_p50_ms"] = {name: row[1] for name, row in rows.items()}
    result["embedded_filter_on_an_unindexed_field_p50_ms"] = rows["embedded, plain batch upsert"][2]
    old, old_wal = rows["local mode, as it comes"][0], rows["local mode, with the old write-ahead-log patch"][0]
    fence = rows["embedded, the fence's conditional writes (the upserter's), new points"][0]
    update = rows["embedded, the fence's conditional writes, a newer version of every point"][0]
    plain = rows["embedded, plain batch upsert"][0]
    result["ratios"] = {
        "embedded plain / local mode": round(plain / old, 1),
        "embedded plain / local mode with the patch": round(plain / old_wal, 1),
        "embedded conditional, new points / local mode": round(fence / old, 1),
        "embedded conditional, new points / local mode with the patch": round(fence / old_wal, 1),
        "embedded conditional, newer versions / local mode": round(update / old, 1),
        "embedded conditional, newer versions / local mode with the patch": round(update / old_wal, 1),
    }
    return result


# Q: 50,000 points behind the upserter's read route -----------------------------------------------------------


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return round(next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024, 1)


@contextmanager
def _upserter(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Any]]:
    """Real Redis and a real upserter process holding an embedded store under ``workdir``."""
    redis_server = start_redis(workdir / "redis")
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "DATA_DIR": str(workdir / "data"),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(port),
        "CONSUMER_NAME": "upserter-1",
        "LOG_LEVEL": "WARNING",
    }
    with open(workdir / "upserter.log", "ab") as log:
        process = subprocess.Popen([str(BIN / "vecsync-upserter")], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        reader = UpserterStore(f"http://127.0.0.1:{port}", "documents", 30, key_file=store_key_file(workdir / "data"))
        wait_for(lambda: _answers(reader), timeout=120, what="the upserter's read route")
        yield process, env["REDIS_URL"], reader
    finally:
        process.terminate()
        process.wait(60)
        redis_server.stop()


def _answers(reader: UpserterStore) -> bool:
    try:
        reader.count()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


Documents = Callable[[int], list[dict[str, Any]]]


def _stage2_entries(docs: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    from embedding_api.backends import HashEncoder

    encoder = HashEncoder(384)
    for start in range(0, len(docs), 1000):
        points = _points_from_docs(docs, range(start, min(len(docs), start + 1000)))
        vectors = encoder.encode([p.payload["text"] for p in points])
        for point, vector in zip(points, vectors, strict=True):
            payload = point.payload
            yield EmbeddedDocument(
                "upsert", SOURCE, payload["mongo_id"], time.time(), payload["version"], vector.tolist(), payload
            ).to_fields()


def _points_from_docs(docs: list[dict[str, Any]], numbers: range) -> list[Point]:
    points = []
    for number in numbers:
        doc = docs[number]
        text = f"{doc['subject']}\n\n{doc['content']}"
        payload = {
            "mongo_id": doc["_id"],
            "source": SOURCE,
            "text": text,
            "text_sha256": text_sha256(text),
            "model": "hash-384",
            "version": f"{1_700_000_000_000 + number}-0",
            **{key: doc[key] for key in ("product", "customer", "owner", "subject")},
            "date": doc["date"].isoformat(),
        }
        points.append(Point(point_id(SOURCE, doc["_id"]), [], payload))
    return points


def query_behind_the_upserter(workdir: Path, documents: Documents, points: int = QUERY_POINTS) -> dict[str, Any]:
    """Q: the upserter applies ``points`` documents from stage 2; then search through its read route, and its RSS."""
    import redis

    from embedding_api.backends import HashEncoder

    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "redis").mkdir(parents=True)
    result: dict[str, Any] = {"points": points}
    docs = documents(points)
    products = sorted({doc["product"] for doc in docs})
    with _upserter(workdir) as (process, redis_url, reader):
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        result["upserter_idle_rss_mb"] = _rss_mb(process.pid)
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for number, fields in enumerate(_stage2_entries(docs), start=1):
            pipe.xadd("embedded_documents", fields)
            if number % 500 == 0:
                pipe.execute()
        pipe.execute()
        wait_for(lambda: reader.count() >= points, timeout=3600, interval=0.2, what="every point applied")
        result["applied_points_per_s"] = round(points / (time.perf_counter() - started), 1)
        queries = HashEncoder(384).encode([f"query {n}" for n in range(200)])
        filtered, unfiltered = [], []
        for number, vector in enumerate(queries):
            begun = time.perf_counter()
            hits = reader.search(vector.tolist(), limit=10, match={"product": products[number % len(products)]})
            filtered.append(time.perf_counter() - begun)
            assert hits and all(hit.payload["product"] == products[number % len(products)] for hit in hits)
            begun = time.perf_counter()
            reader.search(vector.tolist(), limit=10)
            unfiltered.append(time.perf_counter() - begun)
        result["filtered_search_ms"] = {"p50": _ms(filtered), "p95": _ms(filtered, 0.95)}
        result["unfiltered_search_ms"] = {"p50": _ms(unfiltered), "p95": _ms(unfiltered, 0.95)}
        result["upserter_rss_mb"] = _rss_mb(process.pid)
        client.close()
    if HNSW_BUILD:
        result["hnsw_build"] = _hnsw_build_stall(workdir / "data" / "qdrant" / "documents")
    return result


def _stall(action: Callable[[], object]) -> tuple[float, float]:
    """Seconds ``action`` took, and the longest a Python thread of this process waited meanwhile (a 10 ms ticker)."""
    ticks: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.01)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    started = time.perf_counter()
    action()
    elapsed = time.perf_counter() - started
    done.set()
    ticker.join()
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    return round(elapsed, 2), round(max(gaps, default=elapsed), 2)


def _hnsw_build_stall(shard: Path) -> dict[str, Any]:
    """The seconds an HNSW build of a copy of ``shard`` takes, and how long it stops this process's other threads."""
    import qdrant_edge as qe

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "copy"
        shutil.copytree(shard, copy)
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
        )
        loaded = qe.EdgeShard.load(str(copy), config)
        seconds, stalled = _stall(loaded.optimize)
        indexed = loaded.info().indexed_vectors_count
        loaded.close()
    return {"seconds": seconds, "longest_stall_of_other_threads_s": stalled, "indexed_vectors": indexed}


# R: recall of an HNSW index against exact search, on real embeddings ----------------------------------------------


def hnsw_recall(texts: list[str], queries: list[str], encode: Callable[[list[str]], Any]) -> dict[str, Any]:
    """R: recall@10 of HNSW (m 16, ef_construct 100) against exact search, over ``texts`` queried with ``queries``."""
    import qdrant_edge as qe

    vectors = [list(map(float, v)) for v in encode(texts)]
    asked = [list(map(float, v)) for v in encode(queries)]
    with tempfile.TemporaryDirectory() as folder:
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=len(vectors[0]), distance=qe.Distance.Cosine),
            # Index however small the segment, and search through the graph however few the points.
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
            hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=1),
        )
        shard = qe.EdgeShard.create(folder + "/shard", config)
        for start in range(0, len(vectors), 256):
            batch = [qe.Point(n, vectors[n], {"n": n}) for n in range(start, min(len(vectors), start + 256))]
            shard.update(qe.UpdateOperation.upsert_points(batch))
        seconds, stalled = _stall(shard.optimize)
        recalls, exact_ms, hnsw_ms = [], [], []
        for vector in asked:
            begun = time.perf_counter()
            exact = shard.query(
                qe.QueryRequest(query=qe.Query.Nearest(vector), limit=10, params=qe.SearchParams(exact=True))
            )
            exact_ms.append(time.perf_counter() - begun)
            begun = time.perf_counter()
            graph = shard.query(qe.QueryRequest(query=qe.Query.Nearest(vector), limit=10))
            hnsw_ms.append(time.perf_counter() - begun)
            recalls.append(len({p.id for p in exact} & {p.id for p in graph}) / 10)
        indexed = shard.info().indexed_vectors_count
        shard.close()
    return {
        "points": len(vectors),
        "queries": len(asked),
        "indexed_vectors": indexed,
        "recall_at_10": round(statistics.fmean(recalls), 4),
        "min_recall_at_10": min(recalls),
        "exact_p50_ms": _ms(exact_ms),
        "hnsw_p50_ms": _ms(hnsw_ms),
        "build_s": seconds,
        "build_stall_s": stalled,
    }
