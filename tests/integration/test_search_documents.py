"""Search by document: one hit per document, its nearest chunk, in the store, the upserter's route and the CLI.

The chunk points are written directly (``store.upsert``) as the pipeline writes them (COMMON chunk model: chunk 0
under the document's point id, chunk i under ``chunk_point_id``, each payload with the document's `mongo_id`).
Both stores run: ``embedded`` groups in vecsync (VectorStore.search_documents), ``server`` asks qdrant-client's
grouped query, here on its in-memory mode, which stands in for a Qdrant server.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_cli import cli
from tests.support.pipeline import Pipeline
from tests.support.stores import KINDS, make_store
from vecsync.chunking import chunk_point_id
from vecsync.cli.context import EXIT_OK
from vecsync.documents import point_id, text_sha256
from vecsync.vectorstore import Hit, Point, VectorStore

SOURCE = "db.articles"
QUERY = [1.0, 0.0, 0.0, 0.0]


def toward(angle: float) -> list[float]:
    """A vector at ``angle`` radians from QUERY: its cosine score is cos(angle), nearer for a smaller angle."""
    return [math.cos(angle), math.sin(angle), 0.0, 0.0]


def chunks(mongo_id: str, vectors: list[list[float]], **fields: Any) -> list[Point]:
    """The points of one document of ``len(vectors)`` chunks, as the pipeline writes them."""
    document_id = point_id(SOURCE, mongo_id)
    points = []
    for index, vector in enumerate(vectors):
        text = f"{mongo_id}, chunk {index}"
        payload = {
            **fields,
            "mongo_id": mongo_id,
            "source": SOURCE,
            "text": text,
            "text_sha256": text_sha256(text),
            "version": "1-0",
            "model": "test",
            "chunk_index": index,
            "chunk_count": len(vectors),
            "chunk_span": [index * 100, index * 100 + len(text)],
            "truncated": False,
        }
        points.append(Point(chunk_point_id(document_id, index), vector, payload))
    return points


def documents(hits: list[Hit]) -> list[str]:
    return [hit.payload["mongo_id"] for hit in hits]


@pytest.fixture(params=KINDS)
def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    store = make_store(request.param, tmp_path, dim=4)
    yield store
    store.close()


class TestSearchDocuments:
    """On both stores alike (``each_store``: the pipeline's fixtures own ``store``, the embedded one)."""

    def test_the_chunks_of_one_document_count_once_as_its_nearest_chunk(self, each_store: VectorStore) -> None:
        store = each_store
        store.upsert(chunks("a", [toward(0.03), toward(0.01), toward(0.02)]))
        store.upsert(chunks("b", [toward(0.10)]))
        store.upsert(chunks("c", [toward(0.20), toward(0.05)]))
        found = store.search_documents(QUERY, limit=3)
        assert documents(found) == ["a", "c", "b"]
        nearest = {hit.id: hit for hit in store.search(QUERY, limit=10)}
        a, c = chunk_point_id(point_id(SOURCE, "a"), 1), chunk_point_id(point_id(SOURCE, "c"), 1)
        assert [hit.id for hit in found] == [a, c, point_id(SOURCE, "b")], "each document's nearest chunk"
        assert found == [nearest[hit.id] for hit in found], "that chunk's own score and payload"
        assert found[0].payload["chunk_index"] == 1 and found[0].payload["text"] == "a, chunk 1"
        assert documents(store.search_documents(QUERY, limit=2)) == ["a", "c"]

    def test_a_limit_of_5_gives_5_documents_past_a_document_of_40_nearer_chunks(self, each_store: VectorStore) -> None:
        store = each_store
        store.upsert(chunks("long", [toward(0.001 * i) for i in range(40)]))
        for k in range(6):
            store.upsert(chunks(f"d{k}", [toward(0.5 + 0.05 * k)]))
        assert documents(store.search(QUERY, limit=5)) == ["long"] * 5, "the raw chunks are all of one document"
        assert documents(store.search_documents(QUERY, limit=5)) == ["long", "d0", "d1", "d2", "d3"]

    def test_fewer_documents_than_the_limit_are_all_found(self, each_store: VectorStore) -> None:
        store = each_store
        store.upsert(chunks("long", [toward(0.001 * i) for i in range(40)]))
        store.upsert(chunks("short", [toward(0.9)]))
        assert documents(store.search_documents(QUERY, limit=10)) == ["long", "short"]
        assert store.search_documents(QUERY, limit=0) == []

    def test_the_match_filters_apply_to_every_chunk(self, each_store: VectorStore) -> None:
        store = each_store
        store.upsert(chunks("ledger", [toward(0.001 * i) for i in range(20)], product="Ledger", priority=1))
        for k in range(4):
            store.upsert(chunks(f"q{k}", [toward(0.5 + 0.05 * k), toward(0.7)], product="Quill", priority=k))
        assert documents(store.search_documents(QUERY, limit=3, match={"product": "Quill"})) == ["q0", "q1", "q2"]
        ranged = store.search_documents(QUERY, limit=5, match={"priority": {"gte": 1}, "product": "Quill"})
        assert documents(ranged) == ["q1", "q2", "q3"]
        assert store.search_documents(QUERY, limit=5, match={"product": "Nothing"}) == []

    def test_a_point_without_a_mongo_id_belongs_to_no_document(self, each_store: VectorStore) -> None:
        store = each_store
        store.upsert([Point("00000000-0000-0000-0000-000000000001", toward(0.0), {"text": "a tool's point"})])
        store.upsert(chunks("a", [toward(0.1)]))
        assert documents(store.search_documents(QUERY, limit=5)) == ["a"]


class TestGroupingWithoutAnEngineGroupBy:
    """The embedded engine has no grouped query: vecsync reads more chunks until it has the documents."""

    def test_it_asks_four_times_more_chunks_each_round(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        store = make_store("embedded", tmp_path, dim=4)
        try:
            store.upsert(chunks("long", [toward(0.001 * i) for i in range(100)]))
            for k in range(6):
                store.upsert(chunks(f"d{k}", [toward(0.5 + 0.05 * k)]))
            asked: list[int] = []
            search = store.search

            def counted(vector: list[float], *, limit: int, match: Any = None, text: str | None = None) -> list[Hit]:
                asked.append(limit)
                return search(vector, limit=limit, match=match, text=text)

            monkeypatch.setattr(store, "search", counted)
            assert documents(store.search_documents(QUERY, limit=3)) == ["long", "d0", "d1"]
            assert asked == [12, 48, 192], "the last round got fewer than asked: every chunk"
        finally:
            store.close()

    def test_past_the_cap_it_returns_the_nearest_documents_it_found_and_says_so(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setattr("vecsync.vectorstore.MAX_CHUNK_HITS", 30)
        store = make_store("embedded", tmp_path, dim=4)
        try:
            store.upsert(chunks("long", [toward(0.001 * i) for i in range(40)]))
            store.upsert(chunks("far", [toward(0.9)]))
            with caplog.at_level(logging.WARNING, logger="vecsync.vectorstore"):
                assert documents(store.search_documents(QUERY, limit=2)) == ["long"]
            assert "The nearest 30 chunks" in caplog.text and "fewer than the 2 asked for" in caplog.text
        finally:
            store.close()


def test_the_upserters_search_route_answers_documents_unless_asked_for_chunks(tmp_path: Path) -> None:
    from upserter.store_api import store_routes
    from vecsync.authenticated_routes import AuthenticatedRoutes
    from vecsync.cli.store import UpserterStore
    from vecsync.runtime import MetricsServer

    store = make_store("embedded", tmp_path, dim=4)
    server = MetricsServer("127.0.0.1", 0, post_routes=AuthenticatedRoutes(store_routes(store), "the key")).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        store.upsert(chunks("long", [toward(0.001 * i) for i in range(40)], product="Ledger"))
        for k in range(6):
            store.upsert(chunks(f"d{k}", [toward(0.5 + 0.05 * k)], product="Quill" if k % 2 else "Ledger"))
        remote = UpserterStore(base, "documents", 30, api_key="the key")
        assert remote.search_documents(QUERY, limit=5) == store.search_documents(QUERY, limit=5)
        assert documents(remote.search_documents(QUERY, limit=5)) == ["long", "d0", "d1", "d2", "d3"]
        match = {"product": "Ledger"}
        assert documents(remote.search_documents(QUERY, limit=3, match=match)) == ["long", "d0", "d2"]
        assert remote.search(QUERY, limit=5) == store.search(QUERY, limit=5), "chunks: true, the raw chunk hits"

        def post(body: dict[str, Any]) -> requests.Response:
            return requests.post(base + "/search", json=body, headers={"Authorization": "Bearer the key"}, timeout=10)

        by_default = post({"vector": QUERY, "limit": 2})
        assert by_default.status_code == 200
        [first, second] = by_default.json()["hits"]
        assert set(first) == {"id", "score", "payload"}, "the reply keeps its shape"
        assert (first["payload"]["mongo_id"], second["payload"]["mongo_id"]) == ("long", "d0")
        raw = post({"vector": QUERY, "limit": 2, "chunks": True}).json()["hits"]
        assert [hit["payload"]["mongo_id"] for hit in raw] == ["long", "long"]
        refused = post({"vector": QUERY, "limit": 2, "chunks": "yes"})
        assert refused.status_code == 400 and "'chunks' must be true" in refused.json()["detail"]
    finally:
        server.close()
        store.close()


class TestTheCli:
    """`vecsync search` over the embedded store, with the hash backend's vectors (identical text, identical vector)."""

    def write(self, pipeline: Pipeline) -> None:
        def encode(text: str) -> list[float]:
            response = requests.post(pipeline.embedding_url + "/encode", json={"text": text}, timeout=30)
            response.raise_for_status()
            return list(response.json()["embedding"])

        for mongo_id, count in (("manual", 5), ("ticket", 1), ("note", 2)):
            points = chunks(mongo_id, [[0.0] * 4] * count, subject=f"the {mongo_id}")
            for point in points:
                point.vector = encode(point.payload["text"])
            pipeline.store.upsert(points)

    def test_json_gives_one_hit_per_document_with_its_nearest_chunk(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.write(pipeline)
        assert cli(pipeline, "search", "manual, chunk 2", "--limit", "10", "--json") == EXIT_OK
        hits = json.loads(capsys.readouterr().out)
        assert sorted(hit["payload"]["mongo_id"] for hit in hits) == ["manual", "note", "ticket"]
        assert all(set(hit) == {"id", "score", "payload"} for hit in hits)
        first = hits[0]
        assert first["id"] == chunk_point_id(point_id(SOURCE, "manual"), 2)
        assert first["payload"]["text"] == "manual, chunk 2" and first["score"] == pytest.approx(1.0)
        assert first["payload"]["chunk_index"] == 2 and first["payload"]["chunk_count"] == 5

    def test_chunks_gives_the_raw_chunk_hits(self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
        self.write(pipeline)
        assert cli(pipeline, "search", "manual, chunk 2", "--limit", "10", "--chunks", "--json") == EXIT_OK
        hits = json.loads(capsys.readouterr().out)
        assert sorted(hit["payload"]["mongo_id"] for hit in hits) == ["manual"] * 5 + ["note"] * 2 + ["ticket"]

    def test_the_plain_output_says_where_a_chunk_lies_in_a_document_of_several(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.write(pipeline)
        assert cli(pipeline, "search", "manual, chunk 2", "--limit", "10") == EXIT_OK
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[0].endswith("manual  the manual  (chunk 3/5)"), lines[0]
        assert lines[2].strip() == "manual, chunk 2"
        assert out.count("manual  the manual") == 1, "one hit per document"
        assert "ticket  the ticket\n" in out, "a document of one chunk names no chunk"
        assert "chunk_index" not in out and "chunk_span" not in out and "truncated" not in out
        assert cli(pipeline, "search", "manual, chunk 2", "--limit", "10", "--chunks") == EXIT_OK
        assert capsys.readouterr().out.count("manual  the manual  (chunk") == 5

    def test_a_filter_reads_the_chunk_fields_by_their_type(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.write(pipeline)
        argv = ["search", "manual, chunk 2", "--limit", "10", "--chunks", "--json", "--filter", "chunk_index=1"]
        assert cli(pipeline, *argv) == EXIT_OK
        printed = capsys.readouterr()
        assert sorted(hit["payload"]["mongo_id"] for hit in json.loads(printed.out)) == ["manual", "note"]
        assert "warning" not in printed.err, "a chunk field is one of the identity fields"
