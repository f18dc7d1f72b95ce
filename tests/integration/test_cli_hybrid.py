"""`vecsync search --mode dense|sparse|hybrid` over the embedded store, as an operator runs it: the CLI reads its
settings from the environment and opens the store under DATA_DIR itself (or asks the upserter that holds it).

Thirty of the sample tickets (samples/support_tickets.jsonl) each name one order number (ORD-10000-KX to
ORD-10029-KX), and a manual of three chunks names an error code in two of them; their points are written as the
pipeline writes them, with the hash backend's vectors, which the CLI's queries get too (the same text, the same
vector). One collection has BM25 sparse vectors (SPARSE_MODEL=bm25), the other was made without them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.servers import BIN, Server
from vecsync.chunking import chunk_point_id
from vecsync.cli.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from vecsync.cli.main import main
from vecsync.cli.settings import CliSettings
from vecsync.documents import payload_of, point_id, text_of, text_sha256
from vecsync.search_modes import RRF_K, prefetch_limit, rrf_weights
from vecsync.store.embedded import EmbeddedStore
from vecsync.syncs import default_sync
from vecsync.vectorstore import Point

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "support_tickets.jsonl"
TICKETS = 30
SOURCE = "app.documents"  # the environment's sync: MONGO_DATABASE app, MONGO_COLLECTION documents
COLLECTION = "documents"
MODEL = "hash-384"
# Nothing listens here.
CLOSED = "http://127.0.0.1:1"
# What the CLI reads from the environment that would change what these tests see.
SETTINGS_VARIABLES = (
    "SPARSE_MODEL",
    "VECSYNC_CONFIG",
    "QDRANT_URL",
    "QDRANT_PATH",
    "QDRANT_COLLECTION",
    "MONGO_DATABASE",
    "MONGO_COLLECTION",
    "TEXT_FIELDS",
    "PAYLOAD_FIELDS",
    "UPSERTER_API_KEY",
    "EMBEDDING_API_KEY",
)


def order(number: int) -> str:
    return f"ORD-{10000 + number}-KX"


def ticket_id(number: int) -> str:
    return f"t{number:02d}"


def ticket_documents() -> list[dict[str, Any]]:
    """The first TICKETS sample tickets, ticket n naming order(n) in its text."""
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()[:TICKETS]
    documents = []
    for number, line in enumerate(lines):
        ticket = json.loads(line)
        ticket["content"] += f" Our order number is {order(number)}."
        documents.append({"_id": ticket_id(number), **ticket})
    return documents


def encode(embedding_url: str, text: str) -> list[float]:
    reply = requests.post(f"{embedding_url}/encode", json={"text": text}, timeout=30)
    reply.raise_for_status()
    return list(reply.json()["embedding"])


def pipeline_points(embedding_url: str) -> list[Point]:
    """The points the pipeline writes for the tickets (one chunk each) and for the manual (three chunks)."""
    sync = default_sync(CliSettings())
    points = []
    for document in ticket_documents():
        text = text_of(document, sync)
        payload = payload_of(document, sync, mongo_id=document["_id"], text=text, version="1-0", model=MODEL)
        points.append(Point(point_id(SOURCE, document["_id"]), encode(embedding_url, text), payload))
    manual = [
        "Brambleway Print 400 manual. Error E-4411 means the duplex unit is jammed.",
        "Loading paper: fan the stack and load it face down in tray two.",
        "Clearing error E-4411: open the rear door and pull the sheet out slowly.",
    ]
    for index, text in enumerate(manual):
        payload = {
            "product": "Brambleway Print 400",
            "subject": "Print 400 manual",
            "mongo_id": "manual",
            "source": SOURCE,
            "text": text,
            "text_sha256": text_sha256(text),
            "version": "1-0",
            "model": MODEL,
            "chunk_index": index,
            "chunk_count": len(manual),
            "chunk_span": [index * 100, index * 100 + len(text)],
            "truncated": False,
        }
        vector = encode(embedding_url, text)
        points.append(Point(chunk_point_id(point_id(SOURCE, "manual"), index), vector, payload))
    return points


@dataclass
class Collections:
    """Two DATA_DIRs holding the same points: one collection with BM25 sparse vectors, one without."""

    hybrid: Path
    dense: Path
    embedding_url: str
    points: list[Point]


@pytest.fixture(scope="module")
def collections(hash_api: Server, tmp_path_factory: pytest.TempPathFactory) -> Collections:
    """Written once and closed, so that each search opens the store under DATA_DIR itself, as a CLI run does."""
    embedding_url = f"http://127.0.0.1:{hash_api.port}"
    points = pipeline_points(embedding_url)
    folders = {}
    for name, sparse_model in (("hybrid", "bm25"), ("dense", None)):
        data_dir = tmp_path_factory.mktemp(f"cli-{name}")
        store = EmbeddedStore(data_dir / "qdrant", COLLECTION, len(points[0].vector), sparse_model=sparse_model)
        try:
            store.ensure_collection()
            store.upsert(points)
            assert store.sparse_vector() == sparse_model
        finally:
            store.close()
        folders[name] = data_dir
    return Collections(folders["hybrid"], folders["dense"], embedding_url, points)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Searched:
    status: int
    out: str
    err: str

    @property
    def hits(self) -> list[dict[str, Any]]:
        assert self.status == EXIT_OK, self.err
        hits: list[dict[str, Any]] = json.loads(self.out)  # stdout is the JSON and nothing else
        return hits

    @property
    def documents(self) -> list[str]:
        return [hit["payload"]["mongo_id"] for hit in self.hits]


def search(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    *argv: str,
    embedding_url: str,
    **environment: str,
) -> Searched:
    """`vecsync search ARGV` in this process, its settings read from the environment, as a shell runs it."""
    capsys.readouterr()
    for name, value in {
        "DATA_DIR": str(data_dir),
        "EMBEDDING_URL": embedding_url,
        "UPSERTER_URL": CLOSED,  # no upserter holds the store: the CLI opens it itself
        **environment,
    }.items():
        monkeypatch.setenv(name, value)
    status = main(["search", *argv])
    printed = capsys.readouterr()
    return Searched(status, printed.out, printed.err)


def run_vecsync(data_dir: Path, *argv: str, embedding_url: str, **environment: str) -> Searched:
    """`vecsync ARGV` as its own process, so that everything it writes on stderr is seen, log lines among it."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "DATA_DIR": str(data_dir),
        "EMBEDDING_URL": embedding_url,
        "UPSERTER_URL": CLOSED,
        **environment,
    }
    done = subprocess.run([str(BIN / "vecsync"), *argv], env=env, capture_output=True, text=True, timeout=60)
    return Searched(done.returncode, done.stdout, done.stderr)


# Scores closer than this are one score (a tie): the engine orders tied points differently from one search to the next.
SAME_SCORE = 1e-6


def ranked(hits: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """Hits as (score, id), best first, tied scores by id: what two searches that found the same must agree on."""
    return sorted(((round(hit["score"], 6), hit["id"]) for hit in hits), key=lambda pair: (-pair[0], pair[1]))


def rank_ranges(hits: list[dict[str, Any]]) -> dict[str, range]:
    """Each hit's rank (counted from 0) in a list best first; a hit tied with others may hold any rank of its tie."""
    ranges = {}
    for hit in hits:
        tied = [rank for rank, other in enumerate(hits) if abs(other["score"] - hit["score"]) < SAME_SCORE]
        ranges[hit["id"]] = range(tied[0], tied[-1] + 1)
    return ranges


def fused_scores(query: str, point: str, *lists: list[dict[str, Any]]) -> set[float]:
    """The scores reciprocal rank fusion may give ``point`` over ranked hit lists for ``query``, as Qdrant computes
    it: the sum over the lists of weight / (RRF_K + its rank there), ranks counted from 0, with the query's weights
    (rrf_weights); one score per ranking of its ties."""
    scores = {0.0}
    for weight, hits in zip(rrf_weights(query), lists, strict=True):
        ranks = rank_ranges(hits).get(point)
        if ranks is not None:
            scores = {score + weight / (RRF_K + rank) for score in scores for rank in ranks}
    return scores


class TestACollectionWithSparseVectors:
    def test_sparse_finds_the_ticket_of_an_order_number_first(
        self, collections: Collections, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for number in (7, 0, 23):
            found = search(
                monkeypatch, capsys, collections.hybrid, order(number), "--mode", "sparse", "--json",
                embedding_url=collections.embedding_url,
            )  # fmt: skip
            assert found.documents[0] == ticket_id(number), found.documents
            assert found.err == ""
            first, second = found.hits[0]["score"], found.hits[1]["score"]
            assert first > 10 * second, "the rare number decides, not the ORD and KX of every ticket"

    def test_hybrid_fuses_the_dense_and_the_sparse_ranking(
        self, collections: Collections, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        limit = 10
        each = str(prefetch_limit(limit))  # the length of each list that hybrid search fuses

        def chunks(*argv: str) -> list[dict[str, Any]]:
            return search(
                monkeypatch, capsys, collections.hybrid, order(7), "--chunks", "--json", *argv,
                embedding_url=collections.embedding_url,
            ).hits  # fmt: skip

        dense, sparse = chunks("--mode", "dense", "--limit", each), chunks("--mode", "sparse", "--limit", each)
        hybrid = chunks("--mode", "hybrid", "--limit", str(limit))
        assert len(hybrid) == limit
        scores = [hit["score"] for hit in hybrid]
        assert scores == sorted(scores, reverse=True)
        for hit in hybrid:
            possible = fused_scores(order(7), hit["id"], dense, sparse)
            assert any(abs(hit["score"] - score) < SAME_SCORE for score in possible), (hit["score"], possible)
        # No point that fuses better than the last one shown is left out.
        shown = {hit["id"] for hit in hybrid}
        for point in {hit["id"] for hit in dense + sparse} - shown:
            assert min(fused_scores(order(7), point, dense, sparse)) <= scores[-1] + SAME_SCORE, point
        ids = [hit["id"] for hit in hybrid]
        assert set(ids) != {hit["id"] for hit in dense[:limit]} and set(ids) != {hit["id"] for hit in sparse[:limit]}
        assert ids[0] == point_id(SOURCE, ticket_id(7)), "an order number: the BM25 list's first leads"

    def test_the_default_is_hybrid(
        self, collections: Collections, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # Every point or document (--limit 40), so that no tie is cut at the limit: tied hits come in any order.
        for argv in (["--json"], ["--json", "--chunks"], []):
            options = {"hybrid": ["--mode", "hybrid"], "default": [], "dense": ["--mode", "dense"]}
            found = {
                mode: search(
                    monkeypatch, capsys, collections.hybrid, order(7), "--limit", "40", *argv, *option,
                    embedding_url=collections.embedding_url,
                )
                for mode, option in options.items()
            }  # fmt: skip
            for searched in found.values():
                assert searched.status == EXIT_OK and searched.err == ""
            if argv:
                assert ranked(found["default"].hits) == ranked(found["hybrid"].hits)
                assert ranked(found["default"].hits) != ranked(found["dense"].hits)
                assert len(found["default"].hits) == (33 if "--chunks" in argv else 31)
            else:
                assert sorted(found["default"].out.splitlines()) == sorted(found["hybrid"].out.splitlines())
                assert sorted(found["default"].out.splitlines()) != sorted(found["dense"].out.splitlines())

    def test_dense_is_the_cosine_search_of_before(
        self, collections: Collections, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The nearest by cosine, as the query's embedding finds them: computed here over the points written."""
        [ticket] = [point for point in collections.points if point.payload["mongo_id"] == ticket_id(12)]
        query = ticket.payload["text"]  # the hash backend: this text's vector is the ticket's own
        query_vector = encode(collections.embedding_url, query)
        cosine = {
            point.id: sum(a * b for a, b in zip(query_vector, point.vector, strict=True))
            for point in collections.points
        }
        nearest = sorted(cosine, key=lambda pid: cosine[pid], reverse=True)[:8]
        for data_dir in (collections.hybrid, collections.dense):
            found = search(
                monkeypatch, capsys, data_dir, query, "--mode", "dense", "--chunks", "--limit", "8", "--json",
                embedding_url=collections.embedding_url,
            )  # fmt: skip
            assert [hit["id"] for hit in found.hits] == nearest
            assert [hit["score"] for hit in found.hits] == pytest.approx([cosine[pid] for pid in nearest], abs=1e-5)
            assert found.hits[0]["score"] == pytest.approx(1.0) and found.err == ""
        # And the dense-only collection searched without --mode is that same search.
        before = search(
            monkeypatch, capsys, collections.dense, query, "--chunks", "--limit", "8", "--json",
            embedding_url=collections.embedding_url,
        )  # fmt: skip
        assert [hit["id"] for hit in before.hits] == nearest and before.err == ""

    @pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
    def test_json_is_a_list_of_id_score_and_payload_in_every_mode(
        self,
        collections: Collections,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        mode: str,
    ) -> None:
        found = search(
            monkeypatch, capsys, collections.hybrid, order(7), "--mode", mode, "--json", "--limit", "4",
            embedding_url=collections.embedding_url,
        )  # fmt: skip
        hits = found.hits
        assert len(hits) == 4 and found.err == ""
        for hit in hits:
            assert set(hit) == {"id", "score", "payload"}
            assert isinstance(hit["id"], str) and isinstance(hit["score"], float)
            assert {"mongo_id", "source", "text", "text_sha256", "version", "model"} <= set(hit["payload"])
        assert len({hit["payload"]["mongo_id"] for hit in hits}) == 4, "one hit per document"

    @pytest.mark.parametrize("mode", ["sparse", "hybrid"])
    def test_a_filter_holds_in_both_branches(
        self,
        collections: Collections,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        mode: str,
    ) -> None:
        products = {document["_id"]: document["product"] for document in ticket_documents()}
        helpdesk = sorted(mongo_id for mongo_id, product in products.items() if product == "Brambleway Helpdesk")
        assert products[ticket_id(7)] == "Brambleway Billing" and len(helpdesk) == 7

        def filtered(product: str) -> list[str]:
            return search(
                monkeypatch, capsys, collections.hybrid, order(7), "--mode", mode, "--json", "--limit", "40",
                "--filter", f"product={product}", embedding_url=collections.embedding_url,
            ).documents  # fmt: skip

        # Every Helpdesk ticket and nothing else: neither branch lets another product in.
        assert sorted(filtered("Brambleway Helpdesk")) == helpdesk
        billing = filtered("Brambleway Billing")
        assert sorted(billing) == sorted(
            mongo_id for mongo_id, product in products.items() if product == "Brambleway Billing"
        )
        if mode == "sparse":
            assert billing[0] == ticket_id(7)
        assert filtered("Brambleway Nothing") == []

    @pytest.mark.parametrize("mode", ["sparse", "hybrid"])
    def test_chunks_shows_several_chunks_of_a_document(
        self,
        collections: Collections,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        mode: str,
    ) -> None:
        argv = ["error E-4411", "--mode", mode, "--limit", "6"]
        url = collections.embedding_url
        chunks = search(monkeypatch, capsys, collections.hybrid, *argv, "--json", "--chunks", embedding_url=url).hits
        manual = [hit["payload"]["chunk_index"] for hit in chunks if hit["payload"]["mongo_id"] == "manual"]
        assert {0, 2} <= set(manual), "both chunks naming the code, as chunks of one document"
        if mode == "sparse":
            assert sorted(manual[:2]) == [0, 2] and len(chunks) == 6
        documents = search(monkeypatch, capsys, collections.hybrid, *argv, "--json", embedding_url=url).documents
        # One hit per document; BM25 finds only the documents that share a term with the query.
        assert documents.count("manual") == 1 and len(documents) == len(set(documents))
        assert len(documents) == 6 if mode == "hybrid" else 1 < len(documents) <= 6
        if mode == "sparse":
            assert documents[0] == "manual"
        plain = search(monkeypatch, capsys, collections.hybrid, *argv, "--chunks", embedding_url=url)
        assert plain.status == EXIT_OK and plain.out.count("manual  Print 400 manual  (chunk ") >= 2, plain.out

    def test_sparse_needs_no_embedding_api(
        self, collections: Collections, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        found = search(
            monkeypatch, capsys, collections.hybrid, order(7), "--mode", "sparse", "--json", embedding_url=CLOSED
        )
        assert found.documents[0] == ticket_id(7) and found.err == ""
        for mode in ("dense", "hybrid"):  # which need the query's embedding
            failed = search(
                monkeypatch, capsys, collections.hybrid, order(7), "--mode", mode, "--json", embedding_url=CLOSED
            )
            assert failed.status == EXIT_FAILED and failed.out == ""
            assert "could not reach the embedding-api" in failed.err, failed.err

    def test_an_unknown_mode_is_bad_usage(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exited:
            main(["search", order(7), "--mode", "bogus"])
        assert exited.value.code == EXIT_USAGE
        err = capsys.readouterr().err
        assert "--mode" in err and "invalid choice: 'bogus'" in err and "dense" in err, err


def assert_one_note(err: str) -> None:
    """stderr is exactly one line: the note that the collection has no sparse vectors, and what makes them."""
    lines = err.splitlines()
    assert len(lines) == 1, f"one line on stderr, not {len(lines)}: {err!r}"
    [note] = lines
    assert note.startswith("note: ") and f"Qdrant collection '{COLLECTION}'" in note, note
    assert "no sparse vectors" in note and "`vecsync rebuild`" in note, note


class TestADenseOnlyCollection:
    """A collection made before SPARSE_MODEL, or without it: searched dense, with a one-line note where sparse
    vectors are asked for or configured. Each search runs as its own process, so that all of its stderr is seen."""

    @pytest.mark.parametrize("mode", ["sparse", "hybrid"])
    def test_asking_for_sparse_vectors_searches_dense_with_a_note(self, collections: Collections, mode: str) -> None:
        argv = ["search", order(7), "--limit", "6"]
        url = collections.embedding_url
        dense = run_vecsync(collections.dense, *argv, "--json", "--mode", "dense", embedding_url=url)
        assert dense.status == EXIT_OK and dense.err == "", dense.err
        asked = run_vecsync(collections.dense, *argv, "--json", "--mode", mode, embedding_url=url)
        assert asked.hits == dense.hits  # stdout is the JSON only
        assert_one_note(asked.err)
        plain = run_vecsync(collections.dense, *argv, "--mode", mode, embedding_url=url)
        assert plain.status == EXIT_OK and plain.out == run_vecsync(collections.dense, *argv, embedding_url=url).out
        assert_one_note(plain.err)

    def test_sparse_model_in_the_environment_gives_the_note_too(self, collections: Collections) -> None:
        argv = ["search", order(7), "--limit", "6", "--json"]
        url = collections.embedding_url
        dense = run_vecsync(collections.dense, *argv, embedding_url=url)
        assert dense.status == EXIT_OK and dense.err == "", "without SPARSE_MODEL or --mode: no note"
        configured = run_vecsync(collections.dense, *argv, embedding_url=url, SPARSE_MODEL="bm25")
        assert configured.hits == dense.hits
        assert_one_note(configured.err)
        assert "SPARSE_MODEL is bm25" in configured.err

    def test_the_note_is_written_in_process_too(
        self, collections: Collections, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = collections.embedding_url
        hybrid = search(
            monkeypatch, capsys, collections.dense, order(7), "--mode", "hybrid", "--json", embedding_url=url
        )
        default = search(monkeypatch, capsys, collections.dense, order(7), "--json", embedding_url=url)
        assert hybrid.hits == default.hits and default.err == ""
        assert_one_note(hybrid.err)


@contextmanager
def upserter_serving(data_dir: Path, dim: int) -> Iterator[str]:
    """The upserter's store routes over the embedded store of ``data_dir``, holding it open as a running upserter
    does; yields their base URL. The key is the upserter's own file under DATA_DIR, which the CLI reads."""
    from upserter.store_api import store_routes, write_store_key
    from vecsync.authenticated_routes import AuthenticatedRoutes
    from vecsync.runtime import MetricsServer

    store = EmbeddedStore(data_dir / "qdrant", COLLECTION, dim)
    try:
        routes = AuthenticatedRoutes(store_routes({COLLECTION: store}), write_store_key(data_dir))
        server = MetricsServer("127.0.0.1", 0, post_routes=routes).start()
        try:
            yield f"http://127.0.0.1:{server.port}"
        finally:
            server.close()
    finally:
        store.close()


class TestThroughTheUpserter:
    """An upserter holds the embedded store open: the CLI searches through its routes (UpserterStore), and finds
    what it finds with the store opened directly."""

    def test_every_mode_and_the_note_through_the_upserter(
        self, collections: Collections, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url, dim = collections.embedding_url, len(collections.points[0].vector)
        asked = {
            # Every document or point (--limit 40): tied hits come in any order, and none is cut at the limit.
            "hybrid": [order(7), "--json", "--limit", "40"],
            "sparse": [order(7), "--json", "--mode", "sparse", "--filter", "product=Brambleway Billing"],
            "chunks": ["error E-4411", "--json", "--mode", "hybrid", "--chunks", "--limit", "40"],
        }
        direct = {name: search(monkeypatch, capsys, collections.hybrid, *argv, embedding_url=url)
                  for name, argv in asked.items()}  # fmt: skip
        dense_direct = search(monkeypatch, capsys, collections.dense, order(7), "--json", embedding_url=url)
        with upserter_serving(collections.hybrid, dim) as base:
            for name, argv in asked.items():
                served = search(monkeypatch, capsys, collections.hybrid, *argv, embedding_url=url, UPSERTER_URL=base)
                assert ranked(served.hits) == ranked(direct[name].hits), name
                assert served.err == ""
            assert direct["sparse"].documents[0] == ticket_id(7)
        with upserter_serving(collections.dense, dim) as base:
            served = search(
                monkeypatch, capsys, collections.dense, order(7), "--json", "--mode", "hybrid",
                embedding_url=url, UPSERTER_URL=base,
            )  # fmt: skip
            assert served.hits == dense_direct.hits
            assert_one_note(served.err)
