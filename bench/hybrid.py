"""Benchmark of hybrid search's costs on the embedded store (``make bench-hybrid``, also run by ``make bench``).

Every point is a support ticket as the pipeline writes it: a 384-dimension unit vector (random, seeded) and a text of
about 1 KB, the sentences of sample tickets (samples/support_tickets.jsonl) shuffled together, one of them naming the
ticket's own order number (ORD-48213-KX style); its payload as the upserter writes a one-chunk document (identity,
text and its SHA-256, version, model, chunk place and the default PAYLOAD_FIELDS, each with a keyword index). Measured
in one run, on this machine's two shared cores:

W  write throughput through the upserter's write path, ``EmbeddedStore.write_if_newer(upserts=...)`` in batches of
   64 (the consumer's BATCH_SIZE), of BENCH_POINTS new points into a new collection, three ways:
   dense   a collection without sparse vectors (SPARSE_MODEL unset), this checkout's code;
   bm25    a collection with SPARSE_MODEL=bm25 (the store computes each point's BM25 vector as it writes it);
   before  the dense-only write path of the code before hybrid search: libs/vecsync as of BENCH_BEFORE_REF (default:
           the parent of the commit that added vecsync/store/sparse.py), taken with `git archive` into a temporary
           folder that is removed afterwards;
   each a fresh process of its own (PYTHONPATH on that code's libs/vecsync) writing into its own new folder, the
   three in lockstep: one batch each, then the next batch each, through every order of the three, so that a shared
   machine's noise falls on all three alike, moment by moment. Only the write calls are timed (building the points
   is not): their wall and CPU seconds, and every thread's CPU from the first write to the store closed (the
   background flushes too, which run while a writer waits for its turn). BENCH_ROUNDS (6) rounds; the ratios are per
   round, then their median. dense / before is the issue's rule: the dense path must not lose more than 5%;
BM  ``vecsync.store.sparse.document_vector`` alone (Qdrant's BM25 in qdrant-edge-py): µs per text, terms per text;
S  search latency, p50 and p95 over BENCH_QUERIES (200) queries each, in-process, of ``search_documents(limit=10)``
   on the last round's collections of BENCH_POINTS points: dense on both, sparse and hybrid on the bm25 one, with an
   order number of a ticket that exists ("ORD-48213-KX") or a few words of a ticket (a sample ticket's subject) as
   the query text, then dense and hybrid under a filter on a keyword-indexed payload field (`product`). The query
   vectors are random: the engine's search is exact, so its cost does not depend on what it finds. The queries
   take turns (one of each kind, in a rotating order, then the next), after WARM_UP_QUERIES (20) of each kind that
   are not timed, so noise falls on every kind alike.

Results go to bench/results/hybrid.{json,md}. Sizes come from the environment: BENCH_POINTS (50,000), BENCH_ROUNDS
(6), BENCH_QUERIES (200); BENCH_BEFORE_REF names another commit to compare with.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SAMPLES = ROOT / "samples" / "support_tickets.jsonl"
POINTS = int(os.environ.get("BENCH_POINTS", "50000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "200"))
BEFORE_REF = os.environ.get("BENCH_BEFORE_REF", "")
# The file whose first commit brought hybrid search: the code before it is the parent of that commit.
HYBRID_FILE = "libs/vecsync/vecsync/store/sparse.py"

DIM = 384
BATCH = 64  # the consumer's BATCH_SIZE default (vecsync.settings.ConsumerSettings)
TEXT_CHARS = 1000
COLLECTION = "tickets"
SOURCE = "app.tickets"
MODEL = "all-MiniLM-L6-v2"
# The default PAYLOAD_FIELDS, each with the keyword index the upserter gives it.
PAYLOAD_FIELDS = ("product", "customer", "owner", "date", "subject")
PAYLOAD_INDEXES = dict.fromkeys(PAYLOAD_FIELDS, "keyword")
FIRST_VERSION_MS = 1_700_000_000_000
ORDER_SENTENCES = (
    "This is about order {order}.",
    "Order {order} is the one affected.",
    "Our order number is {order}, if that helps.",
    "See order {order} for the details.",
)
WRITES = ("dense", "before", "bm25")
ORDERS = list(itertools.permutations(WRITES))
# The write rates: of the write calls' wall and CPU seconds, and of every thread's CPU from the first write to closed.
RATES = ("points_per_s", "cpu_points_per_s", "process_cpu_points_per_s")
WARM_UP_QUERIES = 20
SIDE_BY_SIDE_BLOCKS = 5


# The benchmark's tickets: the same for every process that builds them ---------------------------------------------


@dataclass(frozen=True)
class Ticket:
    number: int
    order: str
    subject: str
    text: str
    fields: dict[str, str]


def order_number(number: int) -> str:
    """A distinct order number for each ticket below 90,000: 7919 is prime to 90,000, so the digits do not repeat."""
    letters = chr(65 + number % 26) + chr(65 + number // 26 % 26)
    return f"ORD-{10_000 + number * 7919 % 90_000:05d}-{letters}"


def tickets(count: int, seed: int = 7) -> list[Ticket]:
    """``count`` tickets of about TEXT_CHARS characters: a sample ticket's subject and content, other sample
    sentences drawn at random, and the ticket's order number in a sentence of its own, shuffled together."""
    samples = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    sentences = [
        part.strip().rstrip(".") + "."
        for sample in samples
        for part in f"{sample['subject']}. {sample['content']}".split(". ")
        if part.strip()
    ]
    rng = random.Random(seed)
    made = []
    for number in range(count):
        sample = samples[number % len(samples)]
        order = order_number(number)
        parts = [f"{sample['subject']}.", sample["content"], rng.choice(ORDER_SENTENCES).format(order=order)]
        while sum(len(part) + 1 for part in parts) < TEXT_CHARS:
            parts.append(rng.choice(sentences))
        rng.shuffle(parts)
        fields = {field: str(sample[field]) for field in PAYLOAD_FIELDS}
        made.append(Ticket(number, order, sample["subject"], " ".join(parts), fields))
    return made


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def payload_of(ticket: Ticket) -> dict[str, Any]:
    """The payload the upserter writes for a one-chunk document (vecsync.documents.build_payload, then the
    upserter's chunk place)."""
    return {
        **ticket.fields,
        "mongo_id": f"ticket-{ticket.number}",
        "source": SOURCE,
        "text": ticket.text,
        "text_sha256": hashlib.sha256(ticket.text.encode()).hexdigest(),
        "version": f"{FIRST_VERSION_MS + ticket.number}-0",
        "model": MODEL,
        "chunk_index": 0,
        "chunk_count": 1,
        "chunk_span": [0, len(ticket.text)],
    }


# W: a writer, in a process of its own (``hybrid.py --writer``) ------------------------------------------------------


def serve_writes(folder: Path, sparse_model: str | None, count: int) -> None:
    """Write ``count`` new points into a new collection at ``folder`` as the upserter does, one batch each time a
    line "write" comes in on stdin, answering each with the wall and CPU seconds of that write call; "close" closes
    the store and answers with the whole run's figures. Everything goes out as one JSON object a line.

    Runs on whichever vecsync the process imports: this checkout's, or the code before hybrid search, whose store
    takes no ``sparse_model``."""
    import vecsync
    from vecsync.documents import point_id
    from vecsync.store.embedded import EmbeddedStore
    from vecsync.vectorstore import Point

    made = tickets(count)
    vectors = unit_vectors(count, seed=11)
    ids = [point_id(SOURCE, f"ticket-{ticket.number}") for ticket in made]
    payloads = [payload_of(ticket) for ticket in made]
    options: dict[str, Any] = {"sparse_model": sparse_model} if sparse_model else {}
    store = EmbeddedStore(folder, COLLECTION, DIM, payload_indexes=PAYLOAD_INDEXES, **options)
    store.ensure_collection()
    _answer({"ready": True})
    starts = iter(range(0, count, BATCH))
    cpu_from: float | None = None
    for line in sys.stdin:
        if line.strip() == "write":
            start = next(starts)
            batch = [Point(ids[n], vectors[n].tolist(), payloads[n]) for n in range(start, min(count, start + BATCH))]
            cpu_from = time.process_time() if cpu_from is None else cpu_from
            begun, begun_cpu = time.perf_counter(), time.process_time()
            store.write_if_newer(upserts=batch)
            _answer({"wall": time.perf_counter() - begun, "cpu": time.process_time() - begun_cpu})
        elif line.strip() == "close":
            stored = store.count()
            sparse_vector = store.sparse_vector() if hasattr(store, "sparse_vector") else None
            begun = time.perf_counter()
            store.close()
            _answer(
                {
                    "points": stored,
                    "close_s": time.perf_counter() - begun,
                    # Every thread's CPU from the first write to closed: the background flushes too, which run
                    # while this process waits for its turn.
                    "process_cpu_s": time.process_time() - (cpu_from or 0.0),
                    "sparse_vector": sparse_vector,
                    "vecsync": str(Path(vecsync.__file__).parent.parent),
                }
            )
            return


def _answer(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


class Writer:
    """A ``serve_writes`` process on ``code``'s libs/vecsync (PYTHONPATH), driven batch by batch."""

    def __init__(self, code: Path, folder: Path, sparse_model: str | None, count: int) -> None:
        self.library = code / "libs" / "vecsync"
        self.sparse_model = sparse_model
        self.count = count
        self.wall = self.cpu = 0.0
        self._errors = tempfile.TemporaryFile("w+")
        arguments = json.dumps({"folder": str(folder), "sparse_model": sparse_model, "count": count})
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--writer", arguments],
            env={**os.environ, "PYTHONPATH": str(self.library)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
        )

    def _ask(self, command: str | None) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        if command is not None:
            self._process.stdin.write(command + "\n")
            self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(60)
            self._errors.seek(0)
            raise RuntimeError(
                f"The writer on {self.library} stopped (exit {self._process.returncode}):\n{self._errors.read()}"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ready(self) -> None:
        self._ask(None)

    def write(self) -> None:
        answer = self._ask("write")
        self.wall += answer["wall"]
        self.cpu += answer["cpu"]

    def close(self) -> dict[str, Any]:
        result = self._ask("close")
        self._process.wait(60)
        self._errors.close()
        if Path(result["vecsync"]).resolve() != self.library.resolve():
            raise RuntimeError(
                f"The writer imported vecsync from {result['vecsync']}, not {self.library}: an install of vecsync "
                "that comes before PYTHONPATH makes this comparison meaningless; run the bench from the venv of "
                "make venv."
            )
        if result["points"] != self.count or result["sparse_vector"] != self.sparse_model:
            raise RuntimeError(f"The writer on {self.library} left {result}, not {self.count} points.")
        return result


# The code before hybrid search ----------------------------------------------------------------------------------


def _git(*arguments: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True, check=True).stdout


def before_commit() -> str:
    """The commit to compare with: BENCH_BEFORE_REF, or the parent of the commit that added HYBRID_FILE."""
    ref = BEFORE_REF
    if not ref:
        added = _git("log", "--diff-filter=A", "--format=%H", "--", HYBRID_FILE).decode().split()
        if not added:
            raise RuntimeError(
                f"No commit in this checkout's history adds {HYBRID_FILE}, so the code before hybrid search is not "
                "known: set BENCH_BEFORE_REF to the commit to compare with."
            )
        ref = f"{added[-1]}^"
    return _git("rev-parse", "--verify", f"{ref}^{{commit}}").decode().strip()


@contextmanager
def code_at(commit: str) -> Iterator[Path]:
    """A temporary folder holding libs/vecsync as of ``commit``, removed afterwards."""
    archive = _git("archive", "--format=tar", commit, "libs/vecsync")
    with tempfile.TemporaryDirectory(prefix="vecsync-before-") as folder:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        yield Path(folder)


# W, BM and S, measured from this process -------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


def writes(base: Path, before: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """W: BENCH_ROUNDS rounds, each of three writers in lockstep; the last round's dense and bm25 folders are kept
    for S."""
    code = {"dense": ROOT, "before": before, "bm25": ROOT}
    sparse_model = {"dense": None, "before": None, "bm25": "bm25"}
    batches = -(-POINTS // BATCH)
    rounds: list[dict[str, Any]] = []
    kept: dict[str, Path] = {}
    for number in range(ROUNDS):
        folders = {name: base / f"{name}-{number}" for name in WRITES}
        writers = {name: Writer(code[name], folders[name], sparse_model[name], POINTS) for name in WRITES}
        for writer in writers.values():
            writer.ready()
        for batch in range(batches):
            # One batch each, then the next: the three share the machine's every moment alike. The batches go
            # through every order of the three in turn, so each writer comes first, and follows each other one
            # (whose background flush or dirty pages it may meet), equally often.
            for name in ORDERS[batch % len(ORDERS)]:
                writers[name].write()
        measured: dict[str, Any] = {}
        for name, writer in writers.items():
            closed = writer.close()
            measured[name] = {
                "points_per_s": round(POINTS / writer.wall, 1),
                "cpu_points_per_s": round(POINTS / writer.cpu, 1),
                "process_cpu_points_per_s": round(POINTS / closed["process_cpu_s"], 1),
                "close_s": round(closed["close_s"], 2),
            }
        for name, folder in folders.items():
            if number == ROUNDS - 1 and name != "before":
                kept[name] = folder
            else:
                shutil.rmtree(folder)
        for key in RATES:
            measured[f"dense / before, {key}"] = round(measured["dense"][key] / measured["before"][key], 3)
            measured[f"bm25 / dense, {key}"] = round(measured["bm25"][key] / measured["dense"][key], 3)
        rounds.append(measured)
        print(
            f"round {number + 1}: "
            + ", ".join(f"{name} {measured[name]['points_per_s']:.0f} points/s" for name in WRITES)
            + f"; dense / before {measured['dense / before, points_per_s']}",
            flush=True,
        )
    result: dict[str, Any] = {
        f"median_{key}": {name: round(_median([r[name][key] for r in rounds]), 1) for name in WRITES} for key in RATES
    }
    result["ratios"] = {
        f"{pair}, {key}": {
            "median": round(_median([r[f"{pair}, {key}"] for r in rounds]), 3),
            "each": [r[f"{pair}, {key}"] for r in rounds],
        }
        for pair in ("dense / before", "bm25 / dense")
        for key in RATES
    }
    result["rounds"] = rounds
    return result, kept


def bm25_alone(texts: list[str], queries: list[str]) -> dict[str, Any]:
    """BM: document_vector per text and query_vector per query, the median of three passes each."""
    from vecsync.store import sparse

    def per_item(action: Callable[[str], object], items: list[str]) -> float:
        passes = []
        for _ in range(3):
            begun = time.perf_counter()
            for item in items:
                action(item)
            passes.append((time.perf_counter() - begun) / len(items))
        return round(_median(passes) * 1e6, 1)

    terms = [len(vector.indices) for vector in map(sparse.document_vector, texts) if vector is not None]
    return {
        "texts": len(texts),
        "mean_chars": round(statistics.fmean(map(len, texts))),
        "mean_terms": round(statistics.fmean(terms), 1),
        "document_vector_us": per_item(sparse.document_vector, texts),
        "query_vector_us": per_item(sparse.query_vector, queries),
    }


def _ms(seconds: list[float], share: float) -> float:
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 2)


def searches(kept: dict[str, Path], made: list[Ticket]) -> dict[str, Any]:
    """S: each kind of search BENCH_QUERIES times, the kinds taking turns; and whether the sparse searches find the
    ticket whose order number they ask for."""
    from vecsync.store.embedded import EmbeddedStore
    from vecsync.vectorstore import Hit

    dense_store = EmbeddedStore(kept["dense"], COLLECTION, DIM, payload_indexes=PAYLOAD_INDEXES)
    bm25_store = EmbeddedStore(kept["bm25"], COLLECTION, DIM, payload_indexes=PAYLOAD_INDEXES, sparse_model="bm25")
    for store in (dense_store, bm25_store):
        store.ensure_collection()
        assert store.count() == len(made), f"{store.count()} points, not {len(made)}"
    assert bm25_store.sparse_vector() == "bm25" and dense_store.sparse_vector() is None
    rng = random.Random(5)
    targets = [made[rng.randrange(len(made))] for _ in range(QUERIES)]
    vectors = [vector.tolist() for vector in unit_vectors(QUERIES, seed=23)]

    def ask(store: Any, vector: bool, text: str | None, filtered: bool) -> Callable[[int], list[Hit]]:
        def one(n: int) -> list[Hit]:
            match = {"product": targets[n].fields["product"]} if filtered else None
            query = None if text is None else targets[n].order if text == "order" else targets[n].subject
            return list(store.search_documents(vectors[n] if vector else None, limit=10, match=match, text=query))

        return one

    kinds: dict[str, tuple[str, str, str, Callable[[int], list[Hit]]]] = {
        "dense, dense-only collection": ("dense", "dense", "-", ask(dense_store, True, None, False)),
        "dense": ("bm25", "dense", "-", ask(bm25_store, True, None, False)),
        "sparse, order number": ("bm25", "sparse", "order number", ask(bm25_store, False, "order", False)),
        "sparse, words": ("bm25", "sparse", "words", ask(bm25_store, False, "words", False)),
        "hybrid, order number": ("bm25", "hybrid", "order number", ask(bm25_store, True, "order", False)),
        "hybrid, words": ("bm25", "hybrid", "words", ask(bm25_store, True, "words", False)),
        # The exact scan alone: one chunk's payload read, where search_documents(limit=10) reads 40.
        "dense, search(limit=1)": ("bm25", "dense", "-", lambda n: list(bm25_store.search(vectors[n], limit=1))),
        "dense, filtered": ("bm25", "dense", "-", ask(bm25_store, True, None, True)),
        "hybrid, order number, filtered": ("bm25", "hybrid", "order number", ask(bm25_store, True, "order", True)),
        "hybrid, words, filtered": ("bm25", "hybrid", "words", ask(bm25_store, True, "words", True)),
    }
    for _collection, _mode, _text, search in kinds.values():
        for n in range(WARM_UP_QUERIES):  # the shards' files into the page cache, the engine's caches filled
            search(n)
    # Dense on the two collections alone, in pairs (each pair in alternating order) with nothing else between them:
    # the cost of holding sparse vectors beside. In SIDE_BY_SIDE_BLOCKS blocks of BENCH_QUERIES pairs, so that the
    # spread of the blocks' ratios shows how far this machine's noise goes.
    pair = {"dense": kinds["dense, dense-only collection"][3], "bm25": kinds["dense"][3]}
    blocks: list[dict[str, list[float]]] = []
    for _block in range(SIDE_BY_SIDE_BLOCKS + 1):  # the first block warms both up again, and is dropped
        side_by_side: dict[str, list[float]] = {"dense": [], "bm25": []}
        for n in range(QUERIES):
            for name in ("dense", "bm25") if n % 2 == 0 else ("bm25", "dense"):
                begun = time.perf_counter()
                pair[name](n)
                side_by_side[name].append(time.perf_counter() - begun)
        blocks.append(side_by_side)
    blocks = blocks[1:]
    pooled = {name: [seconds for block in blocks for seconds in block[name]] for name in ("dense", "bm25")}
    timings: dict[str, list[float]] = {name: [] for name in kinds}
    found_first = {"sparse, order number": 0, "hybrid, order number": 0, "hybrid, order number, filtered": 0}
    found_in_10 = dict.fromkeys(found_first, 0)
    names = list(kinds)
    for n in range(QUERIES):
        # Each turn starts one kind further on: no kind always follows the same one (or comes first).
        for name in names[n % len(names) :] + names[: n % len(names)]:
            search = kinds[name][3]
            begun = time.perf_counter()
            hits = search(n)
            timings[name].append(time.perf_counter() - begun)
            assert len(hits) == (1 if "limit=1" in name else 10), f"{name}: {len(hits)} hits"
            if "filtered" in name:
                assert all(hit.payload["product"] == targets[n].fields["product"] for hit in hits), name
            if name in found_first:
                ids = [hit.payload["mongo_id"] for hit in hits]
                found_first[name] += ids[0] == f"ticket-{targets[n].number}"
                found_in_10[name] += f"ticket-{targets[n].number}" in ids
    dense_store.close()
    bm25_store.close()
    return {
        "queries": QUERIES,
        "limit": 10,
        "kinds": {
            name: {
                "collection": collection,
                "mode": mode,
                "query_text": text,
                "filtered": "filtered" in name,
                "p50_ms": _ms(timings[name], 0.5),
                "p95_ms": _ms(timings[name], 0.95),
            }
            for name, (collection, mode, text, _search) in kinds.items()
        },
        "dense_side_by_side": {
            "dense-only collection p50_ms": _ms(pooled["dense"], 0.5),
            "bm25 collection p50_ms": _ms(pooled["bm25"], 0.5),
            "bm25 / dense-only": {
                "all": round(_ms(pooled["bm25"], 0.5) / _ms(pooled["dense"], 0.5), 3),
                "each": [round(_ms(block["bm25"], 0.5) / _ms(block["dense"], 0.5), 3) for block in blocks],
            },
        },
        "order_number_found_first": found_first,
        "order_number_found_in_10": found_in_10,
    }


def _megabytes(folder: Path) -> float:
    """The disk space the files under ``folder`` take (allocated blocks: the engine preallocates sparse files)."""
    return round(sum(path.stat().st_blocks * 512 for path in folder.rglob("*") if path.is_file()) / 2**20, 1)


def run() -> dict[str, Any]:
    commit = before_commit()
    load_before = os.getloadavg()[0]
    made = tickets(POINTS)
    print(f"W: {POINTS} points, {ROUNDS} rounds of dense, before ({commit[:10]}) and bm25", flush=True)
    started = time.perf_counter()
    with code_at(commit) as before, tempfile.TemporaryDirectory(prefix="bench-hybrid-") as folder:
        written, kept = writes(Path(folder), before)
        sizes = {name: _megabytes(path) for name, path in kept.items()}
        print(f"S: {QUERIES} queries of each kind at {POINTS} points", flush=True)
        searched = searches(kept, made)
    print("BM: BM25 alone", flush=True)
    sample = made[: min(len(made), 5000)]
    alone = bm25_alone([ticket.text for ticket in sample], [ticket.order for ticket in sample[:1000]])
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other work (noisy)",
        "date": date.today().isoformat(),
        "versions": {
            "python": platform.python_version(),
            "qdrant-edge-py": version("qdrant-edge-py"),
            "numpy": version("numpy"),
        },
        "code": {"now": _git("rev-parse", "HEAD").decode().strip(), "before": commit},
        "points": POINTS,
        "dim": DIM,
        "batch": BATCH,
        "rounds": ROUNDS,
        "seconds": round(time.perf_counter() - started, 1),
        # The machine's 1-minute load average as the run began and ended: other work's share of the two cores.
        "load_average": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "writes": written,
        "collection_mb": sizes,
        "bm25_alone": alone,
        "search": searched,
    }


# The report ------------------------------------------------------------------------------------------------------


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def markdown(results: dict[str, Any]) -> str:
    w, bm, s = results["writes"], results["bm25_alone"], results["search"]
    rates, cpu_rates, ratios = w["median_points_per_s"], w["median_cpu_points_per_s"], w["ratios"]
    process_rates = w["median_process_cpu_points_per_s"]
    kinds = s["kinds"]
    dense_ratio = ratios["dense / before, points_per_s"]["median"]
    dense_cpu_ratio = ratios["dense / before, cpu_points_per_s"]["median"]
    dense_process_ratio = ratios["dense / before, process_cpu_points_per_s"]["median"]
    bm25_ratio = ratios["bm25 / dense, points_per_s"]["median"]
    us_dense = 1e6 / rates["dense"]
    us_bm25 = 1e6 / rates["bm25"]
    engine_us = us_bm25 - us_dense - bm["document_vector_us"]
    beside = s["dense_side_by_side"]
    beside_ratio = beside["bm25 / dense-only"]
    dense_each = ratios["dense / before, points_per_s"]["each"]
    hybrid_over_dense = kinds["hybrid, words"]["p50_ms"] / kinds["dense"]["p50_ms"]
    found = s["order_number_found_first"]
    within = "stays within" if min(dense_ratio, dense_cpu_ratio, dense_process_ratio) >= 0.95 else "misses"
    labels = {
        "dense": "dense, no sparse vectors (this code)",
        "before": f"dense, the code before hybrid search ({results['code']['before'][:10]})",
        "bm25": "SPARSE_MODEL=bm25 (this code)",
    }
    return "\n".join(
        [
            "# Hybrid search on the embedded store (`make bench-hybrid`)",
            "",
            f"`make bench-hybrid`, {results['date']}, {results['machine']}: compare the rows of one run with one "
            f"another rather than the absolute figures. Python {results['versions']['python']}, qdrant-edge-py "
            f"{results['versions']['qdrant-edge-py']}; code {results['code']['now'][:10]}. {results['points']:,} "
            f"support tickets of {bm['mean_chars']:,} characters on average ({bm['mean_terms']} BM25 terms), each "
            f"naming its own order number, with {results['dim']}-dimension random unit vectors and the upserter's "
            f"payload (keyword indexes on {', '.join(PAYLOAD_FIELDS)}). The whole run took {results['seconds']} s; "
            f"load average {results['load_average']['start']} as it began, {results['load_average']['end']} as it "
            "ended.",
            "",
            "## Writes",
            "",
            f"`write_if_newer(upserts=...)` in batches of {results['batch']}, {results['points']:,} new points into a "
            "new collection by each of three fresh processes in lockstep (one batch each, then the next, through "
            f"every order of the three), {results['rounds']} rounds. *Wall* and *CPU*: of the write calls alone; "
            "*process CPU*: every thread from the first write to the store closed, its background flushes included. "
            "Medians of the rounds:",
            "",
            "| collection | points/s (wall) | points per CPU second | per process CPU second | µs per point | "
            "last flush on close |",
            "|---|---|---|---|---|---|",
            *(
                f"| {labels[name]} | {rates[name]:,.0f} | {cpu_rates[name]:,.0f} | {process_rates[name]:,.0f} | "
                f"{1e6 / rates[name]:.0f} | {_median([r[name]['close_s'] for r in w['rounds']]):.2f} s |"
                for name in WRITES
            ),
            "",
            "Ratios of the same round's writers (median, and each round's):",
            "",
            "| ratio | wall | CPU | process CPU |",
            "|---|---|---|---|",
            *(
                f"| {pair} | "
                + " | ".join(
                    f"{'**' if key == 'points_per_s' else ''}{ratios[f'{pair}, {key}']['median']}"
                    f"{'**' if key == 'points_per_s' else ''} ({', '.join(map(str, ratios[f'{pair}, {key}']['each']))})"
                    for key in RATES
                )
                + " |"
                for pair in ("dense / before", "bm25 / dense")
            ),
            "",
            f"BM25 alone (`vecsync.store.sparse.document_vector`, {bm['texts']:,} of the texts): "
            f"**{bm['document_vector_us']} µs per text**; a query's vector (an order number): "
            f"{bm['query_vector_us']} µs. On disk at {results['points']:,} points: "
            f"{results['collection_mb']['dense']} MB dense only, {results['collection_mb']['bm25']} MB with bm25.",
            "",
            "## Search",
            "",
            f"`search_documents(limit={s['limit']})` at {results['points']:,} points, {s['queries']} queries of each "
            "kind, taking turns, in-process. *Order number*: a ticket's own (ORD-48213-KX style) as the query text; "
            "*words*: a sample ticket's subject; *filtered*: `product` equal to one value (a keyword index), about "
            "a twelfth of the points.",
            "",
            "| search | collection | p50 | p95 |",
            "|---|---|---|---|",
            *(
                f"| {name} | {kind['collection']} | {kind['p50_ms']} ms | {kind['p95_ms']} ms |"
                for name, kind in kinds.items()
            ),
            "",
            f"Dense alone on the two collections, in pairs with nothing between them, {SIDE_BY_SIDE_BLOCKS} blocks "
            f"of {s['queries']} pairs (p50 of them all): {beside['dense-only collection p50_ms']} ms without sparse "
            f"vectors beside, {beside['bm25 collection p50_ms']} ms with them; with / without "
            f"**{beside_ratio['all']}** (each block's: {', '.join(map(str, beside_ratio['each']))}). Compare the "
            "two collections by this pair rather than by the table's first two rows.",
            "",
            "The ticket of the order number asked for came first: "
            + ", ".join(f"{name} {count} of {s['queries']}" for name, count in found.items())
            + "; it was among the 10: "
            + ", ".join(f"{count} of {s['queries']}" for count in s["order_number_found_in_10"].values())
            + " (the dense half of hybrid is a random vector here, so only the sparse figure says how well BM25 finds "
            "it; bench/fusion.py measures ranking on the real model).",
            "",
            "## Finding",
            "",
            f"The dense write path {within} the issue's 5%: dense-only collections write at {dense_ratio} of the code "
            f"before hybrid search ({_pct(dense_ratio)}, wall), {dense_cpu_ratio} in CPU seconds "
            f"({_pct(dense_cpu_ratio)}) and {dense_process_ratio} in the process's CPU seconds "
            f"({_pct(dense_process_ratio)}), the same round's writers in lockstep; the rounds' wall ratios range from "
            f"{min(dense_each)} to {max(dense_each)} "
            + (
                "(the shared machine's noise: for a dense-only collection the store adds only one test of its sparse "
                "vector's name per point). "
                if min(dense_each) <= 1 <= max(dense_each)
                else "(rerun it on a quieter machine, at full size, before concluding). "
            )
            + f"With SPARSE_MODEL=bm25 a write costs {us_bm25:.0f} µs per point against "
            f"{us_dense:.0f} µs dense only (bm25 / dense {bm25_ratio}, {_pct(bm25_ratio)}): "
            f"{bm['document_vector_us']} µs of it computing the BM25 vector of a {bm['mean_chars']:,}-character text "
            "in the upserter, "
            + (
                f"about {engine_us:.0f} µs the engine storing it, its inverted index and the full-text index on "
                "`text` that such a collection also gets. "
                if engine_us > 0
                else "the engine's own share lost in the noise. "
            )
            + f"At {results['points']:,} points, holding sparse vectors beside costs a dense search "
            + ("next to nothing" if beside_ratio["all"] <= 1.05 else "more than 5%")
            + f": x{beside_ratio['all']} (p50 {beside['dense-only collection p50_ms']} ms without, "
            f"{beside['bm25 collection p50_ms']} ms with; the blocks from {min(beside_ratio['each'])} to "
            f"{max(beside_ratio['each'])}). Among the kinds taking turns, a dense search "
            f"(`search_documents(limit=10)`) takes {kinds['dense']['p50_ms']} ms p50: most of it the exact scan of "
            "every dense vector (the embedded store builds no HNSW index: "
            f"{kinds['dense, search(limit=1)']['p50_ms']} ms for one chunk), the rest reading the 40 chunks' "
            f"payloads it groups into 10 documents. Sparse takes {kinds['sparse, order number']['p50_ms']} ms for an "
            f"order number and {kinds['sparse, words']['p50_ms']} ms for a few words (the inverted index, then the "
            f"same payloads); hybrid {kinds['hybrid, order number']['p50_ms']} ms and "
            f"{kinds['hybrid, words']['p50_ms']} ms, x{hybrid_over_dense:.2f} the dense search: the prefetches read "
            "no payloads, so hybrid costs the dense scan, the sparse lookup and one set of payloads. Under the filter "
            f"(a twelfth of the points), hybrid takes {kinds['hybrid, words, filtered']['p50_ms']} ms (words) against "
            f"{kinds['dense, filtered']['p50_ms']} ms dense.",
            "",
        ]
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--writer":
        arguments = json.loads(sys.argv[2])
        serve_writes(Path(arguments["folder"]), arguments["sparse_model"], arguments["count"])
        return
    results = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hybrid.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "hybrid.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
