"""Hybrid search through the upserter's store routes (issue 24, acceptance 2): /search's "mode" and "text", and
/collection, over embedded stores with and without the bm25 sparse vector; then the CLI's UpserterStore against
those routes served on a real HTTP port.

The handlers are called directly where the answer is the point; the data is test_hybrid_store.py's 30 tickets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_hybrid_store import DENSE_QUERY, NEAREST, RARE, TICKETS, ticket_id, tickets
from tests.support.stores import make_store
from vecsync.authenticated_routes import PostRoute
from vecsync.vectorstore import NoSparseVectors, VectorStore

KEY = "a key of the upserter"
EVERY = TICKETS + 10  # a limit past every point: results compared whole, where ties cannot cut them differently


@pytest.fixture
def hybrid(tmp_path: Path) -> Iterator[VectorStore]:
    """An embedded collection with the bm25 sparse vector, holding the tickets."""
    store = make_store("embedded", tmp_path / "hybrid", dim=4, collection="tickets", sparse_model="bm25")
    store.write_if_newer(upserts=tickets())
    yield store
    store.close()


@pytest.fixture
def dense_only(tmp_path: Path) -> Iterator[VectorStore]:
    """An embedded collection made without SPARSE_MODEL, holding the same tickets."""
    store = make_store("embedded", tmp_path / "dense", dim=4, collection="old")
    store.write_if_newer(upserts=tickets())
    yield store
    store.close()


@pytest.fixture
def routes(hybrid: VectorStore, dense_only: VectorStore) -> dict[str, PostRoute]:
    from upserter.store_api import store_routes

    return store_routes({"tickets": hybrid, "old": dense_only})


def search(routes: dict[str, PostRoute], **body: Any) -> tuple[int, dict[str, Any]]:
    status, answer = routes["/search"](body)
    assert isinstance(answer, dict)
    return status, answer


def found(answer: dict[str, Any]) -> list[str]:
    return [hit["id"] for hit in answer["hits"]]


def tie_free(hits: list[Any]) -> list[tuple[float, str, dict[str, Any]]]:
    """Hits (Hit or their JSON) nearest first, in an order of their own among equal scores: the embedded engine
    gives points of one fused score (ticket 7 and ticket 20, first of one list each) in either order, query by
    query."""
    rows = [(hit["score"], hit["id"], hit["payload"]) if isinstance(hit, dict) else (hit.score, hit.id, hit.payload)
            for hit in hits]  # fmt: skip
    return sorted(rows, key=lambda row: (-row[0], row[1]))


class TestModes:
    def test_each_mode_answers_as_the_store_does(self, routes: dict[str, PostRoute], hybrid: VectorStore) -> None:
        both = {"vector": DENSE_QUERY, "text": RARE, "limit": EVERY}
        status, dense = search(routes, mode="dense", **both)
        assert (status, dense["mode"]) == (200, "dense") and "note" not in dense
        assert tie_free(dense["hits"]) == tie_free(hybrid.search_documents(DENSE_QUERY, limit=EVERY)), "no text"
        assert found(dense)[0] == ticket_id(NEAREST) and ticket_id(7) not in found(dense)[:20]
        status, sparse = search(routes, mode="sparse", **both)
        assert (status, sparse["mode"]) == (200, "sparse")
        assert tie_free(sparse["hits"]) == tie_free(hybrid.search_documents(None, limit=EVERY, text=RARE)), "no vector"
        assert found(sparse)[0] == ticket_id(7)
        status, fused = search(routes, mode="hybrid", **both)
        assert (status, fused["mode"]) == (200, "hybrid")
        assert tie_free(fused["hits"]) == tie_free(hybrid.search_documents(DENSE_QUERY, limit=EVERY, text=RARE))
        assert len(found(fused)) == TICKETS
        assert found(fused)[0] == ticket_id(7) and ticket_id(NEAREST) in found(fused)[:3]
        assert all(set(hit) == {"id", "score", "payload"} for hit in fused["hits"]), "the reply keeps its shape"

    def test_chunks_true_answers_the_chunk_hits_in_each_mode(
        self, routes: dict[str, PostRoute], hybrid: VectorStore
    ) -> None:
        for mode, vector, text in (("sparse", None, RARE), ("hybrid", DENSE_QUERY, RARE), ("dense", DENSE_QUERY, None)):
            status, answer = search(routes, mode=mode, vector=vector, text=text, limit=EVERY, chunks=True)
            assert status == 200 and answer["mode"] == mode
            assert tie_free(answer["hits"]) == tie_free(hybrid.search(vector, limit=EVERY, text=text)), mode

    def test_the_filter_applies_in_every_mode(self, routes: dict[str, PostRoute]) -> None:
        for mode in ("dense", "sparse", "hybrid"):
            status, answer = search(
                routes, mode=mode, vector=DENSE_QUERY, text=RARE, limit=10, match={"product": "Nothing"}
            )
            assert (status, answer["hits"]) == (200, []), mode
            status, answer = search(
                routes, mode=mode, vector=DENSE_QUERY, text=RARE, limit=10, match={"product": "Ledger"}
            )
            assert status == 200 and answer["hits"], mode
            assert ticket_id(7) not in found(answer), mode
            assert {hit["payload"]["product"] for hit in answer["hits"]} == {"Ledger"}, mode

    def test_the_default_is_hybrid_where_both_are_given_else_what_is_given(self, routes: dict[str, PostRoute]) -> None:
        assert search(routes, vector=DENSE_QUERY, text=RARE, limit=3)[1]["mode"] == "hybrid"
        assert search(routes, text=RARE, limit=3)[1]["mode"] == "sparse"
        assert search(routes, vector=DENSE_QUERY, limit=3)[1]["mode"] == "dense"
        old = search(routes, collection="old", vector=DENSE_QUERY, text=RARE, limit=3)[1]
        assert old["mode"] == "dense" and "note" not in old, "a dense-only collection's default: dense, said nowhere"


class TestADenseOnlyCollection:
    @pytest.mark.parametrize("mode", ["hybrid", "sparse"])
    def test_a_sparse_or_hybrid_request_with_a_vector_is_answered_dense_with_a_note(
        self, routes: dict[str, PostRoute], dense_only: VectorStore, mode: str
    ) -> None:
        status, answer = search(routes, collection="old", mode=mode, vector=DENSE_QUERY, text=RARE, limit=EVERY)
        assert (status, answer["mode"]) == (200, "dense")
        assert "no sparse vectors" in answer["note"]
        assert tie_free(answer["hits"]) == tie_free(dense_only.search_documents(DENSE_QUERY, limit=EVERY))
        assert found(answer)[0] == ticket_id(NEAREST)

    def test_a_sparse_request_with_no_vector_is_refused(self, routes: dict[str, PostRoute]) -> None:
        status, answer = search(routes, collection="old", mode="sparse", text=RARE, limit=5)
        assert status == 400
        assert "query vector" in answer["detail"] and "no sparse vectors" in answer["detail"]

    def test_the_collection_route_says_which_has_sparse_vectors(self, routes: dict[str, PostRoute]) -> None:
        assert routes["/collection"]({}) == (200, {"collection": "tickets", "sparse_vector": "bm25"})
        assert routes["/collection"]({"collection": "old"}) == (200, {"collection": "old", "sparse_vector": None})
        assert routes["/collection"]({"collection": "other"})[0] == 404


class TestRefusals:
    def test_a_sparse_search_needs_a_text(self, routes: dict[str, PostRoute]) -> None:
        status, answer = search(routes, mode="sparse", vector=DENSE_QUERY, limit=5)
        assert status == 400 and answer["detail"] == "A sparse search needs a query text."

    def test_a_hybrid_search_needs_both(self, routes: dict[str, PostRoute]) -> None:
        for body in ({"text": RARE}, {"vector": DENSE_QUERY}):
            status, answer = search(routes, mode="hybrid", limit=5, **body)
            assert status == 400 and answer["detail"] == "A hybrid search needs both.", body

    def test_a_search_needs_a_vector_or_a_text(self, routes: dict[str, PostRoute]) -> None:
        status, answer = search(routes, limit=5)
        assert status == 400 and "query" in answer["detail"]

    @pytest.mark.parametrize("mode", ["fuzzy", "", "HYBRID", 3, ["dense"]])
    def test_an_unknown_mode_is_refused_naming_the_modes(self, routes: dict[str, PostRoute], mode: Any) -> None:
        status, answer = search(routes, mode=mode, vector=DENSE_QUERY, text=RARE, limit=5)
        assert status == 400
        assert answer["detail"] == f"The search mode must be one of dense, sparse, hybrid, not {mode!r}."

    @pytest.mark.parametrize("text", [42, ["ORD-10007-KX"], {"q": "x"}])
    def test_a_text_that_is_not_a_string_is_refused(self, routes: dict[str, PostRoute], text: Any) -> None:
        status, answer = search(routes, mode="sparse", text=text, limit=5)
        assert status == 400
        assert "'text' (the query)" in answer["detail"] and "'mode' (dense, sparse or hybrid)" in answer["detail"]

    def test_a_vector_that_is_not_a_list_is_refused(self, routes: dict[str, PostRoute]) -> None:
        status, answer = search(routes, mode="dense", vector="0.1, 0.2", limit=5)
        assert status == 400 and "'vector' (the query's embedding, a list of numbers)" in answer["detail"]


def test_the_clis_upserter_store_searches_every_mode_through_the_routes(
    hybrid: VectorStore, dense_only: VectorStore
) -> None:
    from upserter.store_api import store_routes
    from vecsync.authenticated_routes import AuthenticatedRoutes
    from vecsync.cli.store import UpserterStore
    from vecsync.runtime import MetricsServer

    routes = AuthenticatedRoutes(store_routes({"tickets": hybrid, "old": dense_only}), KEY)
    server = MetricsServer("127.0.0.1", 0, post_routes=routes).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        remote = UpserterStore(base, "tickets", 30, api_key=KEY)
        assert remote.sparse_vector() == "bm25"
        for vector, text in ((DENSE_QUERY, None), (None, RARE), (DENSE_QUERY, RARE)):
            assert tie_free(remote.search_documents(vector, limit=EVERY, text=text)) == tie_free(
                hybrid.search_documents(vector, limit=EVERY, text=text)
            ), (vector, text)
            assert tie_free(remote.search(vector, limit=EVERY, text=text)) == tie_free(
                hybrid.search(vector, limit=EVERY, text=text)
            )
        match = {"product": "Quill"}
        quill = remote.search(DENSE_QUERY, limit=EVERY, text=RARE, match=match)
        assert tie_free(quill) == tie_free(hybrid.search(DENSE_QUERY, limit=EVERY, text=RARE, match=match))
        assert len(quill) == TICKETS // 2
        assert remote.search(None, limit=1, text=RARE)[0].id == ticket_id(7)

        old = UpserterStore(base, "old", 30, api_key=KEY)
        assert old.sparse_vector() is None
        assert tie_free(old.search(DENSE_QUERY, limit=EVERY)) == tie_free(dense_only.search(DENSE_QUERY, limit=EVERY))
        with pytest.raises(NoSparseVectors, match="no sparse vectors"):
            old.search(DENSE_QUERY, limit=5, text=RARE)  # answered dense: not what was asked for
        with pytest.raises(NoSparseVectors):
            old.search_documents(DENSE_QUERY, limit=5, text=RARE)
    finally:
        server.close()
