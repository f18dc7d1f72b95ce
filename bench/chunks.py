"""Benchmark of long documents through the pipeline (``make bench-chunks``, also run by ``make bench``).

Long documents (ticket threads of 10 to 30 sample tickets, 3 to 9 chunks of 256 tokens each) go through the local
stack with the real model, as B2 of bench/pipeline.py does with short ones, and are measured in one run:

C1  end to end: the documents inserted into the MongoDB stand-in, through the producer, two embedder-workers (POST
    /chunk, then /encode_batch for the chunks), the upserter and the embedded store, timed from the first insert
    until every chunk's point is in the store: chunks/s and tokens/s;
C0  in-process: the same chunk texts (POST /chunk's spans of the same documents, asked before C1's clock starts)
    encoded by the same backend's encoder in this process, in calls of MAX_BATCH_SIZE texts (64), the most one
    model call of the embedding-api holds; measured just before and just after each C1, with the stack up, and
    averaged;
C1/C0  the ratio (goal: at least 0.85);
    where the time went during C1: the CPU seconds of each process, the model's working seconds, and the seconds
    the embedding-api spent answering each route (/chunk among them);
SZ  the bytes of one stage 2 entry (vecsync.messages.EmbeddedDocument.to_fields: keys and values, UTF-8) of a
    document of 20 chunks and of one of 1 chunk, read back from the stage 2 stream after the pipeline wrote them.

Results go to bench/results/chunks.{json,md}. Sizes come from the environment: BENCH_CHUNK_DOCS (40 documents),
BENCH_CHUNK_ROUNDS (5: C1 five times, each between two C0 runs; the round of the median ratio is reported),
BENCH_CHUNK_BACKEND (torch; onnx-int8 exports its model into the bench folder's cache on its first run).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import MODEL_BUSY, ONNX_CACHE, WORKDIR, cpu_seconds, metric, searchable, stack  # noqa: E402

from tests.support.servers import wait_for  # noqa: E402
from vecsync.constants import DEFAULT_MAX_DOCUMENT_CHARS  # noqa: E402
from vecsync.documents import build_text  # noqa: E402
from vecsync.messages import EmbeddedDocument  # noqa: E402
from vecsync.redis_client import connect  # noqa: E402
from vecsync.syncs import load_syncs, settings_for  # noqa: E402
from vecsync_local.stack import read_samples  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOCS = int(os.environ.get("BENCH_CHUNK_DOCS", "40"))
ROUNDS = int(os.environ.get("BENCH_CHUNK_ROUNDS", "5"))
BACKEND = os.environ.get("BENCH_CHUNK_BACKEND", "torch")
# The embedding-api's MAX_BATCH_SIZE: the most texts one of its model calls holds (its MAX_BATCH_TOKENS, 16,384,
# holds 64 chunks of 256 tokens too).
MODEL_CALL_TEXTS = 64
# The chunking the pipeline applies by default: CHUNK_TOKENS unset (the model's window), CHUNK_OVERLAP_TOKENS 32.
OVERLAP = 32
TEXT_FIELDS = ("subject", "content")
SIZED_CHUNKS = (20, 1)


def thread(tickets: list[dict[str, Any]], first: int, messages: int, name: str) -> dict[str, Any]:
    """A ticket thread: sample ticket ``first`` opens it, the next ``messages - 1`` reply, a paragraph each."""
    picked = [tickets[(first + offset) % len(tickets)] for offset in range(messages)]
    replies = [f"{ticket['subject']}. {ticket['content']}" for ticket in picked[1:]]
    return {
        "_id": name,
        "subject": picked[0]["subject"],
        "content": "\n\n".join([picked[0]["content"], *replies]),
        "product": picked[0]["product"],
        "customer": picked[0]["customer"],
    }


def long_documents(count: int) -> list[dict[str, Any]]:
    tickets = read_samples(ROOT / "samples" / "support_tickets.jsonl")
    return [thread(tickets, number * 7, 10 + number % 21, f"long-{number}") for number in range(count)]


def text_of(document: dict[str, Any]) -> str:
    return build_text(document, TEXT_FIELDS, DEFAULT_MAX_DOCUMENT_CHARS)


def spans(api_url: str, texts: list[str]) -> list[list[list[int]]]:
    """POST /chunk's spans of ``texts``, as the workers ask for them (the model's window, the default overlap)."""
    reply = requests.post(f"{api_url}/chunk", json={"texts": texts, "tokens": None, "overlap": OVERLAP}, timeout=300)
    reply.raise_for_status()
    return list(reply.json()["spans"])


def chunk_texts(api_url: str, documents: list[dict[str, Any]]) -> list[str]:
    texts = [text_of(document) for document in documents]
    return [text[start:end] for text, found in zip(texts, spans(api_url, texts), strict=True) for start, end in found]


def load_model(backend: str) -> Any:
    """The backend's encoder, in the layout the embedding-api runs by default (one copy for torch)."""
    from embedding_api.backends import load_encoder
    from embedding_api.settings import EmbeddingApiSettings

    settings = EmbeddingApiSettings(embedding_backend=backend, device="cpu", onnx_cache_dir=ONNX_CACHE)  # type: ignore[arg-type]
    return load_encoder(settings), settings


def in_process(encoders: list[Any], texts: list[str]) -> tuple[float, float]:
    """Seconds and CPU seconds (this process's, every thread) to encode ``texts`` in calls of MODEL_CALL_TEXTS, each
    shared by the copies as the API shares it."""
    from embed import in_process_split

    cpu = time.process_time()
    if len(encoders) > 1:
        seconds = len(texts) / in_process_split(encoders, texts)
        return seconds, time.process_time() - cpu
    encoders[0].encode(texts[:MODEL_CALL_TEXTS])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), MODEL_CALL_TEXTS):
        encoders[0].encode(texts[start : start + MODEL_CALL_TEXTS])
    return time.perf_counter() - started, time.process_time() - cpu


def route_seconds(port: int) -> dict[str, float]:
    """Seconds the embedding-api spent answering requests so far, by endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    seconds: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vecsync_embedding_request_duration_seconds_sum{"):
            endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
            seconds[endpoint] = seconds.get(endpoint, 0.0) + float(line.split()[-1])
    return seconds


def entry_bytes(running: Any, mongo_id: str) -> tuple[int, int]:
    """The bytes of the newest stage 2 entry of ``mongo_id`` (keys and values of its to_fields, UTF-8) and its
    chunk count."""
    client = connect(running.settings.redis_url, cluster=running.settings.redis_cluster)
    try:
        for sync in load_syncs(running.settings):
            for stream, _group in settings_for(running.settings, sync).stage2_groups():
                for _id, raw in reversed(client.xrange(stream)):
                    fields = {_text(key): _text(value) for key, value in raw.items()}
                    if fields.get("mongo_id") != mongo_id:
                        continue
                    entry = EmbeddedDocument.from_fields(fields).to_fields()
                    size = sum(len(key.encode()) + len(value.encode()) for key, value in entry.items())
                    return size, len(json.loads(entry["chunks"])) if "chunks" in entry else 1
    finally:
        client.close()
    raise LookupError(f"no stage 2 entry of {mongo_id} is left in the stream: raise STREAM_RETENTION_COUNT")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sized_document(api_url: str, chunks: int) -> dict[str, Any]:
    """A thread of exactly ``chunks`` chunks: messages are added one at a time (each far less than a chunk)."""
    tickets = read_samples(ROOT / "samples" / "support_tickets.jsonl")
    for messages in range(1, len(tickets)):
        document = thread(tickets, 3, messages, f"sized-{chunks}")
        found = len(spans(api_url, [text_of(document)])[0])
        if found == chunks:
            return document
        if found > chunks:
            break
    raise RuntimeError(f"no thread of sample tickets makes exactly {chunks} chunks")


def end_to_end(running: Any, collection: Any, documents: list[dict[str, Any]], chunks: int) -> dict[str, Any]:
    """C1 once: seconds from the first insert of ``documents`` until their ``chunks`` points are in the store, and
    where the time went meanwhile."""
    api_port = urlsplit(running.settings.embedding_url).port or 80
    cpu_before, routes_before = cpu_seconds(running), route_seconds(api_port)
    model_before = metric(api_port, MODEL_BUSY)
    points_before = searchable(running)
    started = time.perf_counter()
    for start in range(0, len(documents), 100):
        collection.insert_many(documents[start : start + 100])
    wait_for(lambda: searchable(running) >= points_before + chunks, timeout=1800, interval=0.1, what="chunks")
    seconds = time.perf_counter() - started
    cpu_after, routes_after = cpu_seconds(running), route_seconds(api_port)
    return {
        "seconds": round(seconds, 2),
        "model_busy_s": round(metric(api_port, MODEL_BUSY) - model_before, 2),
        "api_route_s": {
            route: round(spent - routes_before.get(route, 0.0), 2) for route, spent in sorted(routes_after.items())
        },
        "cpu_s": {name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2) for name in sorted(cpu_after)},
    }


def run() -> dict[str, Any]:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    documents = long_documents(DOCS)
    with stack(f"chunks-{BACKEND}", BACKEND) as (running, collection):
        api_url = running.settings.embedding_url.rstrip("/")
        texts = chunk_texts(api_url, documents)
        encoder, settings = load_model(BACKEND)
        copies = [encoder] + [load_model(BACKEND)[0] for _ in range(1, settings.model_workers or 1)]
        tokens = sum(min(count, encoder.max_tokens) for count in encoder.count_tokens(texts))
        print(f"C0 and C1: {len(documents)} documents, {len(texts)} chunks, {tokens} tokens, {BACKEND}", flush=True)
        # C0 before and after every C1, on the same machine state: a shared machine's drift shows on both sides.
        runs = [in_process(copies, texts)]
        rounds = []
        for number in range(ROUNDS):
            # The same texts under new ids each round: new points, so every chunk is embedded again.
            renamed = [{**document, "_id": f"{document['_id']}-{number}"} for document in documents]
            measured = end_to_end(running, collection, renamed, len(texts))
            runs.append(in_process(copies, texts))
            c0 = (runs[-2][0] + runs[-1][0]) / 2
            c0_cpu = (runs[-2][1] + runs[-1][1]) / 2
            rounds.append(
                {
                    **measured,
                    "C0_seconds": round(c0, 2),
                    "ratio": round(c0 / measured["seconds"], 3),
                    # The same in CPU seconds: the model's work in-process against every process's during C1. A
                    # shared machine stretches wall times, far less the CPU a piece of work takes.
                    "C0_cpu_s": round(c0_cpu, 2),
                    "cpu_ratio": round(c0_cpu / sum(measured["cpu_s"].values()), 3),
                }
            )
            print(f"round {number + 1}: C0 {c0:.1f} s, C1 {measured['seconds']} s", flush=True)
        in_process_s = [seconds for seconds, _cpu in runs]
        print("SZ: stage 2 entries of a 20-chunk and a 1-chunk document", flush=True)
        sized = [sized_document(api_url, chunks) for chunks in SIZED_CHUNKS]
        points = searchable(running)
        collection.insert_many(sized)
        wait_for(lambda: searchable(running) >= points + sum(SIZED_CHUNKS), timeout=300, interval=0.1, what="sized")
        entries = {
            str(chunks): entry_bytes(running, document["_id"])
            for chunks, document in zip(SIZED_CHUNKS, sized, strict=True)
        }
    for chunks, (_size, found) in entries.items():
        assert found == int(chunks), f"the entry of the {chunks}-chunk document holds {found} chunks"
    median = sorted(rounds, key=lambda round_: round_["ratio"])[len(rounds) // 2]
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "device": "cpu"},
        "backend": BACKEND,
        "documents": len(documents),
        "chunks": len(texts),
        "tokens": tokens,
        "document_chars": {
            "min": min(len(text_of(document)) for document in documents),
            "max": max(len(text_of(document)) for document in documents),
        },
        "C0_seconds_each": [round(seconds, 2) for seconds in in_process_s],
        "cpu_ratio_median": sorted(round_["cpu_ratio"] for round_ in rounds)[len(rounds) // 2],
        "rounds": rounds,
        # The round of the median ratio: its C1 and the C0 around it.
        "C0": {
            "chunks_per_s": round(len(texts) / median["C0_seconds"], 1),
            "tokens_per_s": round(tokens / median["C0_seconds"]),
            "seconds": median["C0_seconds"],
        },
        "C1": {
            "chunks_per_s": round(len(texts) / median["seconds"], 1),
            "tokens_per_s": round(tokens / median["seconds"]),
            **{key: value for key, value in median.items() if not key.startswith("C0") and "ratio" not in key},
        },
        "ratio": median["ratio"],
        "stage2_entry_bytes": {chunks: size for chunks, (size, _found) in entries.items()},
    }


def markdown(results: dict[str, Any]) -> str:
    c0, c1, sizes = results["C0"], results["C1"], results["stage2_entry_bytes"]
    machine = results["machine"]
    ratios = ", ".join(str(round_["ratio"]) for round_ in results["rounds"])
    in_process_s = ", ".join(str(seconds) for seconds in results["C0_seconds_each"])
    cpu_ratios = ", ".join(str(round_["cpu_ratio"]) for round_ in results["rounds"])
    return "\n".join(
        [
            "# Long documents through the pipeline (`make bench-chunks`)",
            "",
            f"{machine['cpus']} cores, CPU only, Python {machine['python']}; backend {results['backend']}; "
            f"{results['documents']} ticket threads of {results['document_chars']['min']:,} to "
            f"{results['document_chars']['max']:,} characters, {results['chunks']} chunks of up to 256 tokens "
            f"(overlap {OVERLAP}), {results['tokens']:,} tokens, end to end {len(results['rounds'])} times, each "
            "between two in-process runs; the round of the median ratio:",
            "",
            "| measure | chunks/s | tokens/s | seconds |",
            "|---|---|---|---|",
            f"| C0 in-process, the same chunk texts, calls of {MODEL_CALL_TEXTS} (mean of the runs around C1) | "
            f"{c0['chunks_per_s']} | {c0['tokens_per_s']:,} | {c0['seconds']} |",
            f"| C1 end to end, insert to every chunk point in the store | {c1['chunks_per_s']} | "
            f"{c1['tokens_per_s']:,} | {c1['seconds']} |",
            f"| **C1 / C0** | **{results['ratio']}** (each round: {ratios}) | | |",
            f"| C0 / C1 in CPU seconds (the model in-process against every process of the stack) | "
            f"{results['cpu_ratio_median']} (each round: {cpu_ratios}) | | |",
            "",
            f"In-process runs, in order: {in_process_s} s. During that C1 ({c1['seconds']} s on {machine['cpus']} "
            f"cores): the model worked {c1['model_busy_s']} s; the embedding-api answered for "
            + ", ".join(f"{route} {seconds} s" for route, seconds in c1["api_route_s"].items())
            + " (summed over concurrent requests); CPU seconds per process: "
            + ", ".join(f"{name} {seconds}" for name, seconds in c1["cpu_s"].items())
            + ".",
            "",
            "| stage 2 entry (EmbeddedDocument.to_fields, keys and values) | bytes |",
            "|---|---|",
            *(
                f"| a document of {chunks} chunk{'s' if chunks != '1' else ''} | {size:,} |"
                for chunks, size in sizes.items()
            ),
            "",
        ]
    )


def main() -> None:
    results = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chunks.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "chunks.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
