"""Benchmark of the whole pipeline (``make bench``): a measurement, not a test.

Runs on the embedded default (the local stack: real Redis, the MongoDB stand-in, the embedding-api, the producer,
two embedder-workers, the upserter holding the embedded store, Qdrant's engine in-process) and measures, in one run:

B1  the limit: in-process model throughput on the benchmark texts, at batch 32 (torch and onnx-int8), measured
    just before and just after B2 with the stack up, and averaged;
B2  end-to-end throughput from MongoDB insert to searchable in Qdrant, for BENCH_DOCS documents, per backend;
B3  end-to-end throughput with the hash backend (the pipeline's own ceiling), against the old per-document design
    (one XADD, one HTTP call and one Qdrant upsert per document: every BATCH_SIZE set to 1);
B4  latency from change to searchable, p50/p95/p99, under a steady load at half of B2 (torch);
B5  memory (RSS) of each process, idle and under the B2 load;
B6  a re-save of every document with unchanged text: time and embedding calls, with the skip on and off;
S   the cost of a 384-dimension vector in stage 2: packed float32 in base64 against JSON float text;
E, Q, R  the store's own measures (bench/store.py): the embedded store alone against the old local mode, search
    through the upserter's read route at 50,000 points with its memory, and the recall of an HNSW index.

Results go to bench/results/pipeline.{json,md,png}. The machine may be shared and is noisy: compare the ratios,
each measured within one run, rather than absolute rates. Sizes come from the environment: BENCH_DOCS (2000),
BENCH_HASH_DOCS (3000), BENCH_PER_DOC_DOCS (600), BENCH_LOAD_SECONDS (20), BENCH_B2_BACKENDS (torch,onnx-int8),
BENCH_STORE_POINTS (10000), BENCH_QUERY_POINTS (50000), BENCH_HNSW_BUILD (1). BENCH_MEASURES runs only some of
`model` (B1, B2, B4, B5, B6), `B3`, `E`, `Q`, `R`, and then prints the results instead of recording them.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymongo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import store  # noqa: E402

from tests.support.servers import wait_for  # noqa: E402
from tests.support.stack import drained, stack_settings  # noqa: E402
from vecsync.cli.store import UpserterStore  # noqa: E402
from vecsync.vectorstore import store_key_file  # noqa: E402
from vecsync_local.stack import LocalStack, read_samples  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOCS = int(os.environ.get("BENCH_DOCS", "2000"))
HASH_DOCS = int(os.environ.get("BENCH_HASH_DOCS", "3000"))
PER_DOC_DOCS = int(os.environ.get("BENCH_PER_DOC_DOCS", "600"))
LOAD_SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "20"))
B2_BACKENDS = os.environ.get("BENCH_B2_BACKENDS", "torch,onnx-int8").split(",")
WORKDIR = Path(os.environ.get("BENCH_WORKDIR", str(ROOT / "data" / "bench")))
ALL_MEASURES = ("model", "B3", "E", "Q", "R")
MEASURES = [name for name in os.environ.get("BENCH_MEASURES", ",".join(ALL_MEASURES)).split(",") if name]
ONNX_CACHE = WORKDIR / "onnx-cache"


def documents(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Benchmark documents in the sample data's shape, each with its own text."""
    samples = read_samples(ROOT / "samples" / "support_tickets.jsonl")
    rng = random.Random(seed)
    result = []
    for number in range(count):
        sample = dict(samples[number % len(samples)])
        sample["_id"] = f"bench-{number}"
        sample["content"] = f"{sample['content']} Reference {number}-{rng.randrange(10**6)}."
        result.append(sample)
    return result


def texts_of(docs: list[dict[str, Any]]) -> list[str]:
    return [f"{doc['subject']}\n\n{doc['content']}" for doc in docs]


# B1 --------------------------------------------------------------------------------------------------------------


def in_process_rate(backend: str, texts: list[str]) -> float:
    """The best of the model in this process at batch 32: one copy on every core, or the embedding-api's layout of
    MODEL_WORKERS copies sharing each batch (faster for onnx on a CPU)."""
    from embed import in_process_split

    from embedding_api.backends import load_encoder
    from embedding_api.settings import EmbeddingApiSettings
    from embedding_api.worker_layout import model_workers

    def settings(workers: int | None) -> EmbeddingApiSettings:
        return EmbeddingApiSettings(
            embedding_backend=backend,  # type: ignore[arg-type]
            device="cpu",
            onnx_cache_dir=ONNX_CACHE,
            model_workers=workers,
        )

    encoder = load_encoder(settings(1))
    encoder.encode(texts[:32])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(texts), 32):
        encoder.encode(texts[start : start + 32])
    one_copy = len(texts) / (time.perf_counter() - started)
    workers = model_workers(settings(None))
    if workers == 1:
        return one_copy
    return max(one_copy, in_process_split([load_encoder(settings(workers)) for _ in range(workers)], texts))


def cpu_seconds(running: LocalStack) -> dict[str, float]:
    """CPU seconds (user and system) each process of the stack has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    usage = {}
    for child in [*running.servers, *running.stages]:
        if child.process is None or child.process.poll() is not None:
            continue
        fields = Path(f"/proc/{child.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        name = child.env.get("CONSUMER_NAME", child.name)
        usage[name] = usage.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return usage


# The stack -------------------------------------------------------------------------------------------------------


@contextmanager
def stack(
    name: str, backend: str, overrides: dict[str, Any] | None = None, **env: str
) -> Iterator[tuple[LocalStack, Any]]:
    """A fresh local stack in its own data folder, with the settings ``overrides``; yields it and the source
    collection."""
    saved = dict(os.environ)
    os.environ.update({"ONNX_CACHE_DIR": str(ONNX_CACHE), "LOG_LEVEL": "WARNING", **env})
    shutil.rmtree(WORKDIR / name, ignore_errors=True)  # every measure starts from empty stores
    settings = stack_settings(WORKDIR / name, embedding_backend=backend, **(overrides or {}))
    running = LocalStack(settings)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongo_uri)
    try:
        running.start()
        # Connect before any clock starts: the first operation of a client pays its connection and handshake
        # (about 0.35 s with the MongoDB stand-in), which is not the pipeline's time.
        client.admin.command("ping")
        yield running, client[settings.mongo_database][settings.mongo_collection]
    finally:
        client.close()
        running.stop()
        os.environ.clear()
        os.environ.update(saved)


def searchable(running: LocalStack) -> int:
    return UpserterStore(
        running.settings.upserter_url, "", timeout_s=10, key_file=store_key_file(running.data_dir)
    ).count()


def insert_and_time(running: LocalStack, collection: Any, docs: list[dict[str, Any]]) -> float:
    """Documents per second from the first insert until every document is searchable."""
    before = searchable(running)
    started = time.perf_counter()
    for start in range(0, len(docs), 500):
        collection.insert_many(docs[start : start + 500])
    wait_for(lambda: searchable(running) >= before + len(docs), timeout=1800, interval=0.1, what="searchable")
    return len(docs) / (time.perf_counter() - started)


MODEL_BUSY = "vecsync_embedding_model_call_duration_seconds_sum"


def metric(port: int, name: str) -> float:
    """The sum of a metric's samples on a service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def rss_mb(running: LocalStack) -> dict[str, float]:
    usage = {}
    for child in [*running.servers, *running.stages]:
        if child.process is None or child.process.poll() is not None:
            continue
        status = Path(f"/proc/{child.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        name = child.env.get("CONSUMER_NAME", child.name)
        usage[name] = max(usage.get(name, 0.0), kib / 1024)
    return usage


@contextmanager
def peak_rss(running: LocalStack) -> Iterator[dict[str, float]]:
    peaks: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            for name, mb in rss_mb(running).items():
                peaks[name] = max(peaks.get(name, 0.0), mb)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()


def resave(running: LocalStack, collection: Any, count: int) -> tuple[float, float]:
    """Seconds to apply a re-save of every document with its text unchanged, and the embedding calls it made."""
    calls_before = texts_embedded(running)
    started = time.perf_counter()
    collection.update_many({}, {"$set": {"owner": "Re-saved"}})
    wait_for(
        lambda: drained(running.settings, min_stage1_entries=2 * count), timeout=1800, interval=0.1, what="re-save"
    )
    elapsed = time.perf_counter() - started
    return elapsed, texts_embedded(running) - calls_before


def texts_embedded(running: LocalStack) -> float:
    """Texts sent to the embedding-api so far, summed over every embedder-worker (worker i serves port + i)."""
    first = running.settings.embedder_metrics_port
    ports = range(first, first + running.settings.embedder_workers)
    return sum(metric(port, "vecsync_embedder_texts_embedded_total") for port in ports)


def steady_latency(running: LocalStack, collection: Any, rate: float, seconds: float) -> list[float]:
    """Insert at ``rate`` documents/s for ``seconds``; return each document's seconds from insert to searchable."""
    reader = UpserterStore(running.settings.upserter_url, "", timeout_s=10, key_file=store_key_file(running.data_dir))
    from vecsync.documents import point_id

    inserted: dict[str, float] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() or inserted:
            with lock:
                waiting = dict(inserted)
            if waiting:
                found = reader.payloads(list(waiting), fields=["mongo_id"])
                now = time.perf_counter()
                with lock:
                    for pid in found:
                        latencies.append(now - inserted.pop(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    docs = documents(int(rate * seconds) + 1, seed=11)
    source = f"{running.settings.mongo_database}.{running.settings.mongo_collection}"
    started = time.perf_counter()
    for number, doc in enumerate(docs):
        doc["_id"] = f"steady-{number}"
        delay = started + number / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with lock:
            inserted[point_id(source, doc["_id"])] = time.perf_counter()
        collection.insert_one(doc)
    done.set()
    watcher.join(timeout=300)
    return latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def serialisation(rounds: int = 2000) -> dict[str, float]:
    """Bytes and microseconds (encode + decode) of one 384-dimension vector, packed against JSON text."""
    from vecsync.messages import pack_vector, unpack_vector

    rng = random.Random(1)
    vector = [rng.uniform(-1, 1) for _ in range(384)]
    started = time.perf_counter()
    for _ in range(rounds):
        packed = pack_vector(vector)
        unpack_vector(packed)
    packed_us = (time.perf_counter() - started) / rounds * 1e6
    started = time.perf_counter()
    for _ in range(rounds):
        text = json.dumps(vector)
        json.loads(text)
    json_us = (time.perf_counter() - started) / rounds * 1e6
    return {
        "packed_bytes": len(pack_vector(vector)),
        "json_bytes": len(json.dumps(vector)),
        "packed_us": round(packed_us, 1),
        "json_us": round(json_us, 1),
    }


# The run ---------------------------------------------------------------------------------------------------------


def run() -> dict[str, Any]:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    docs = documents(DOCS)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": {
            "docs": DOCS,
            "hash_docs": HASH_DOCS,
            "per_doc_docs": PER_DOC_DOCS,
            "load_seconds": LOAD_SECONDS,
            "store_points": store.STORE_POINTS,
            "query_points": store.QUERY_POINTS,
        },
    }
    results["S"] = serialisation()
    if "model" in MEASURES:
        measure_model(results, docs)
    if "B3" in MEASURES:
        print("B3: hash backend, batched and per document", flush=True)
        with stack("b3-batched", "hash") as (running, collection):
            cpu_before = cpu_seconds(running)
            batched = insert_and_time(running, collection, documents(HASH_DOCS, seed=5))
            cpu_after = cpu_seconds(running)
        with stack("b3-per-doc", "hash", BATCH_SIZE="1") as (running, collection):
            per_document = insert_and_time(running, collection, documents(PER_DOC_DOCS, seed=5))
        results["B3"] = {
            "batched_docs_per_s": round(batched, 1),
            "per_document_docs_per_s": round(per_document, 1),
            "ratio": round(batched / per_document, 2),
            # Where the 2 cores went during the batched run: what bounds the pipeline's ceiling.
            "batched_cpu_s": {
                name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2) for name in sorted(cpu_after)
            },
            "batched_seconds": round(HASH_DOCS / batched, 2),
        }
    if "E" in MEASURES:
        print(f"E: the embedded store alone against the old local mode, {store.STORE_POINTS} points", flush=True)
        results["E"] = store.store_alone()
    if "Q" in MEASURES:
        print(f"Q: {store.QUERY_POINTS} points behind the upserter's read route", flush=True)
        results["Q"] = store.query_behind_the_upserter(WORKDIR / "q", lambda count: documents(count, seed=13))
    if "R" in MEASURES:
        print("R: recall@10 of an HNSW index against exact search, on the model's embeddings", flush=True)
        encoder = load_model_encoder(B2_BACKENDS[0])
        subjects = [sample["subject"] for sample in read_samples(ROOT / "samples" / "support_tickets.jsonl")]
        results["R"] = {"backend": B2_BACKENDS[0], **store.hnsw_recall(texts_of(docs), subjects, encoder.encode)}
    return results


def load_model_encoder(backend: str) -> Any:
    from embedding_api.backends import load_encoder
    from embedding_api.settings import EmbeddingApiSettings

    settings = EmbeddingApiSettings(
        embedding_backend=backend,  # type: ignore[arg-type]
        device="cpu",
        onnx_cache_dir=ONNX_CACHE,
        model_workers=1,
    )
    return load_encoder(settings)


def measure_model(results: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """B1, B2, B4, B5 and B6: the pipeline with the model."""
    results["B1"], results["B2"], results["B5"] = {}, {}, {}
    for backend in B2_BACKENDS:
        print(f"B1 and B2: the model alone, end to end, the model alone again, with {backend}", flush=True)
        with stack(f"b2-{backend}", backend) as (running, collection):
            # B1 is measured just before and just after B2, on the same machine state (the stack up and idle),
            # so that a shared machine's drift shows on both sides of the ratio.
            b1_before = in_process_rate(backend, texts_of(docs[:512]))
            idle = rss_mb(running)
            cpu_before = cpu_seconds(running)
            api_port = urlsplit(running.settings.embedding_url).port or 80
            model_before = metric(api_port, MODEL_BUSY)
            with peak_rss(running) as peaks:
                rate = insert_and_time(running, collection, docs)
            cpu_after = cpu_seconds(running)
            model_busy = metric(api_port, MODEL_BUSY) - model_before
            b1_after = in_process_rate(backend, texts_of(docs[:512]))
            b1 = (b1_before + b1_after) / 2
            results["B1"][backend] = round(b1, 1)
            results["B2"][backend] = {
                "docs_per_s": round(rate, 1),
                "of_B1": round(rate / b1, 3),
                "B1_before_after": [round(b1_before, 1), round(b1_after, 1)],
                # Seconds the model worked during B2, summed over its workers: against the seconds B2 took.
                "model_busy_s": round(model_busy, 2),
                # Where the 2 cores went while B2 ran: what the pipeline's processes take, the model cannot use.
                "cpu_s": {name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2) for name in sorted(cpu_after)},
                "seconds": round(len(docs) / rate, 2),
            }
            results["B5"][backend] = {"idle_mb": _round(idle), "under_load_mb": _round(peaks)}
            if backend == B2_BACKENDS[0]:
                print("B6: re-save with unchanged text, skip on", flush=True)
                seconds, calls = resave(running, collection, DOCS)
                results["B6"] = {"skip_on": {"seconds": round(seconds, 2), "embedding_calls": calls}}
                print("B4: latency at half of B2", flush=True)
                latencies = steady_latency(running, collection, rate / 2, LOAD_SECONDS)
                results["B4"] = {
                    "backend": backend,
                    "rate_docs_per_s": round(rate / 2, 1),
                    "samples": len(latencies),
                    "p50_s": round(percentile(latencies, 0.50), 3),
                    "p95_s": round(percentile(latencies, 0.95), 3),
                    "p99_s": round(percentile(latencies, 0.99), 3),
                    "mean_s": round(statistics.fmean(latencies), 3),
                }

    print("B6: re-save with unchanged text, skip off", flush=True)
    with stack("b6-off", B2_BACKENDS[0], SKIP_UNCHANGED_TEXT="false") as (running, collection):
        insert_and_time(running, collection, docs)
        seconds, calls = resave(running, collection, DOCS)
        results["B6"]["skip_off"] = {"seconds": round(seconds, 2), "embedding_calls": calls}


def _round(values: dict[str, float]) -> dict[str, float]:
    return {name: round(mb, 1) for name, mb in sorted(values.items())}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Pipeline benchmark (`make bench`)",
        "",
        f"{results['machine']['cpus']} CPUs, Python {results['machine']['python']}; sizes: {results['sizes']}.",
        "",
        "| measure | result |",
        "|---|---|",
    ]
    if "B1" in results:
        lines += _model_rows(results)
    if "B3" in results:
        b3 = results["B3"]
        lines += [
            f"| B3 end to end, hash backend, batched | {b3['batched_docs_per_s']} docs/s |",
            f"| B3 end to end, hash backend, per document (old design) | {b3['per_document_docs_per_s']} docs/s |",
            f"| B3 ratio batched / per document | {b3['ratio']} x |",
            f"| B3 batched: CPU seconds per process over {b3['batched_seconds']} s on 2 cores | "
            + ", ".join(f"{name} {seconds}" for name, seconds in b3["batched_cpu_s"].items())
            + " |",
        ]
    if "B6" in results:
        b6 = results["B6"]
        lines += [
            f"| B6 re-save of {results['sizes']['docs']} unchanged texts, skip on | {b6['skip_on']['seconds']} s, "
            f"{b6['skip_on']['embedding_calls']:.0f} embedding calls |",
            f"| B6 same, skip off | {b6['skip_off']['seconds']} s, "
            f"{b6['skip_off']['embedding_calls']:.0f} embedding calls |",
        ]
    lines += [
        f"| S one vector in stage 2, packed float32 (base64) | {results['S']['packed_bytes']} bytes, "
        f"{results['S']['packed_us']} us to encode and decode |",
        f"| S the same as JSON float text | {results['S']['json_bytes']} bytes, {results['S']['json_us']} us |",
    ]
    if "Q" in results:
        q = results["Q"]
        lines += [
            f"| Q {q['points']} points applied by the upserter from stage 2 | {q['applied_points_per_s']} points/s |",
            f"| Q filtered search through the upserter's read route | p50 {q['filtered_search_ms']['p50']} ms, "
            f"p95 {q['filtered_search_ms']['p95']} ms |",
            f"| Q unfiltered search through the read route (exact) | p50 {q['unfiltered_search_ms']['p50']} ms, "
            f"p95 {q['unfiltered_search_ms']['p95']} ms |",
            f"| Q upserter resident memory, empty / at {q['points']} points | {q['upserter_idle_rss_mb']} / "
            f"{q['upserter_rss_mb']} MB |",
        ]
        if "hnsw_build" in q:
            build = q["hnsw_build"]
            lines.append(
                f"| Q an HNSW build of those points (never done by the upserter) | {build['seconds']} s, other "
                f"threads stopped for {build['longest_stall_of_other_threads_s']} s |"
            )
    if "R" in results:
        r = results["R"]
        lines += [
            f"| R HNSW recall@10 against exact search, {r['points']} {r['backend']} embeddings, {r['queries']} "
            f"queries | {r['recall_at_10']} (lowest {r['min_recall_at_10']}) |",
            f"| R search p50, exact / HNSW | {r['exact_p50_ms']} / {r['hnsw_p50_ms']} ms |",
            f"| R the HNSW build | {r['build_s']} s, other threads stopped for {r['build_stall_s']} s |",
        ]
    if "E" in results:
        e = results["E"]
        lines += [
            "",
            f"E, the store alone: {e['points']} points of 384 dimensions in batches of {e['batch']}, then 20-200 "
            "filtered searches, in one run:",
            "",
            "| store | upserts/s | filtered search p50 |",
            "|---|---|---|",
        ]
        for name, rate in e["upserts_per_s"].items():
            lines.append(f"| {name} | {rate} | {e['filtered_search_p50_ms'][name]} ms |")
        lines.append(
            f"| embedded, the same filter on a field without a payload index | | "
            f"{e['embedded_filter_on_an_unindexed_field_p50_ms']} ms |"
        )
        lines += ["", "| ratio | |", "|---|---|"]
        lines += [f"| {name} | {ratio} x |" for name, ratio in e["ratios"].items()]
    if "B5" in results:
        lines += _memory_rows(results)
    return "\n".join(lines) + "\n"


def _model_rows(results: dict[str, Any]) -> list[str]:
    b1, b2, b4 = results["B1"], results["B2"], results["B4"]
    lines = []
    for backend, rate in b1.items():
        before, after = b2[backend]["B1_before_after"]
        lines.append(
            f"| B1 in-process model, {backend}, batch 32 | {rate} texts/s ({before} before B2, {after} after) |"
        )
    for backend, row in b2.items():
        lines.append(f"| B2 end to end, {backend} | {row['docs_per_s']} docs/s = {row['of_B1']} x B1 |")
        lines.append(
            f"| B2 {backend}: the model's working seconds (all its workers) over B2's {row['seconds']} s "
            f"| {row['model_busy_s']} |"
        )
        if "cpu_s" in row:
            spent = ", ".join(f"{name} {seconds}" for name, seconds in row["cpu_s"].items())
            lines.append(f"| B2 {backend}: CPU seconds per process over {row['seconds']} s on 2 cores | {spent} |")
    lines.append(
        f"| B4 latency at {b4['rate_docs_per_s']} docs/s ({b4['backend']}) | p50 {b4['p50_s']} s, p95 {b4['p95_s']} s, "
        f"p99 {b4['p99_s']} s ({b4['samples']} documents) |"
    )
    return lines


def _memory_rows(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "B5, resident memory in MB (idle / under the B2 load):",
        "",
        "| process | " + " | ".join(results["B5"]) + " |",
        "|---|" + "---|" * len(results["B5"]),
    ]
    names = sorted({name for row in results["B5"].values() for name in row["idle_mb"]})
    for name in names:
        cells = [
            f"{row['idle_mb'].get(name, '-')} / {row['under_load_mb'].get(name, '-')}" for row in results["B5"].values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for backend, rate in results["B1"].items():
        labels.append(f"B1 model\n{backend}")
        values.append(rate)
    for backend, row in results["B2"].items():
        labels.append(f"B2 pipeline\n{backend}")
        values.append(row["docs_per_s"])
    labels += ["B3 hash\nbatched", "B3 hash\nper document"]
    values += [results["B3"]["batched_docs_per_s"], results["B3"]["per_document_docs_per_s"]]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    axis.bar(
        labels,
        values,
        color=["#4c72b0"] * len(results["B1"]) + ["#55a868"] * len(results["B2"]) + ["#c44e52", "#8c8c8c"],
    )
    axis.set_ylabel("documents (texts) per second")
    axis.set_title("vecsync: model limit (B1), pipeline (B2), pipeline ceiling vs per-document design (B3)")
    for index, value in enumerate(values):
        axis.text(index, value, f"{value:.0f}", ha="center", va="bottom")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    results = run()
    if set(MEASURES) != set(ALL_MEASURES):
        print(json.dumps(results, indent=2))
        print(markdown(results))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "pipeline.md").write_text(markdown(results))
    plot(results, RESULTS / "pipeline.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
