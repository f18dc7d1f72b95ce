"""Hybrid search on ServerStore (issue 24, acceptance 2): the requests it sends to a Qdrant server, and how it
follows a collection made again by another process.

qdrant-client's in-memory mode stands in for the server, subclassed to record each request's arguments (as
tests/unit/test_qdrant_distribution.py's RecordingClient records create_collection's), or to answer a refused write
as a server does. The data is test_hybrid_store.py's tickets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from tests.integration.test_hybrid_store import (
    DENSE_QUERY,
    MANUAL_ORDER,
    RARE,
    bm25_terms,
    ids,
    manual,
    stored_sparse,
    ticket,
    ticket_id,
    ticket_text,
    ticket_vector,
    tickets,
)
from vecsync.errors import PermanentError, TransientError
from vecsync.search_modes import HYBRID_PREFETCH, IDENTIFIER_WEIGHTS, RRF_K, prefetch_limit, rrf_weights
from vecsync.store.server import ServerStore

BM25 = qe.Bm25()  # the model the stores use: what the requests must carry


# --- ServerStore: the request's shape -------------------------------------------------------------------------------


class SpyingClient(QdrantClient):
    """qdrant-client's in-memory mode, recording the keyword arguments of the requests that shape a hybrid search
    and its writes (as tests/unit/test_qdrant_distribution.py's RecordingClient records create_collection's)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.calls: dict[str, list[dict[str, Any]]] = {}

    def _record(self, method: str, **kwargs: Any) -> None:
        self.calls.setdefault(method, []).append(kwargs)

    def create_collection(self, collection_name: str, **kwargs: Any) -> bool:
        self._record("create_collection", **kwargs)
        return super().create_collection(collection_name, **kwargs)

    def query_points(self, collection_name: str, **kwargs: Any) -> models.QueryResponse:
        self._record("query_points", **kwargs)
        return super().query_points(collection_name, **kwargs)

    def query_points_groups(self, collection_name: str, group_by: str, **kwargs: Any) -> models.GroupsResult:
        self._record("query_points_groups", group_by=group_by, **kwargs)
        return super().query_points_groups(collection_name, group_by, **kwargs)

    def batch_update_points(self, collection_name: str, **kwargs: Any) -> list[models.UpdateResult]:
        self._record("batch_update_points", **kwargs)
        return super().batch_update_points(collection_name, **kwargs)

    def upsert(self, collection_name: str, **kwargs: Any) -> models.UpdateResult:
        self._record("upsert", **kwargs)
        return super().upsert(collection_name, **kwargs)


@pytest.fixture
def spied() -> Iterator[tuple[ServerStore, SpyingClient]]:
    client = SpyingClient()
    store = ServerStore(client, "documents", 4, sparse_model="bm25")
    store.ensure_collection()
    store.write_if_newer(upserts=tickets())
    client.calls.clear()
    yield store, client
    store.close()


QUILL = {"product": "Quill"}
QUILL_FILTER = models.Filter(must=[models.FieldCondition(key="product", match=models.MatchValue(value="Quill"))])


def sparse_query(text: str) -> models.SparseVector:
    terms = BM25.embed_query(text)
    return models.SparseVector(indices=list(terms.indices), values=list(terms.values))


def sparse_document(text: str) -> models.SparseVector:
    terms = BM25.embed_document(text)
    return models.SparseVector(indices=list(terms.indices), values=list(terms.values))


def test_the_server_collection_is_created_with_bm25_and_the_idf_modifier() -> None:
    client = SpyingClient()
    ServerStore(client, "documents", 4, sparse_model="bm25").ensure_collection()
    ServerStore(client, "dense", 4).ensure_collection()
    with_bm25, dense_only = client.calls["create_collection"]
    assert with_bm25["sparse_vectors_config"] == {"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)}
    assert with_bm25["vectors_config"] == models.VectorParams(size=4, distance=models.Distance.COSINE)
    assert dense_only.get("sparse_vectors_config") is None
    params = client.get_collection("documents").config.params
    assert params.sparse_vectors == {"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)}
    client.close()


@pytest.mark.parametrize("limit", [5, 50])
def test_a_hybrid_search_sends_two_filtered_prefetches_fused_by_rrf(
    spied: tuple[ServerStore, SpyingClient], limit: int
) -> None:
    store, client = spied
    hits = store.search(DENSE_QUERY, limit=limit, text=RARE, match=QUILL)
    assert ticket_id(7) in ids(hits[:2])
    [call] = client.calls["query_points"]
    each = prefetch_limit(limit)
    assert each == max(limit, HYBRID_PREFETCH)
    assert call["prefetch"] == [
        models.Prefetch(query=DENSE_QUERY, limit=each, filter=QUILL_FILTER),
        models.Prefetch(query=sparse_query(RARE), using="bm25", limit=each, filter=QUILL_FILTER),
    ]
    assert call["query"] == models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=list(IDENTIFIER_WEIGHTS)))
    assert rrf_weights(RARE) == IDENTIFIER_WEIGHTS, "an order number: the BM25 list leads"
    assert call["limit"] == limit
    assert call.get("using") is None and call.get("query_filter") is None, "the branches hold the filter"


def test_a_sparse_search_sends_the_querys_bm25_terms_using_bm25(spied: tuple[ServerStore, SpyingClient]) -> None:
    store, client = spied
    store.search(None, limit=5, text=RARE, match=QUILL)
    [call] = client.calls["query_points"]
    assert call["query"] == sparse_query(RARE)
    assert len(call["query"].indices) == 3, "ord, 10007 and kx, each once"
    assert (call["using"], call["query_filter"], call.get("prefetch")) == ("bm25", QUILL_FILTER, None)


def test_a_dense_search_sends_the_vector_alone(spied: tuple[ServerStore, SpyingClient]) -> None:
    store, client = spied
    store.search(DENSE_QUERY, limit=5, match=QUILL)
    [call] = client.calls["query_points"]
    assert call["query"] == DENSE_QUERY
    assert call["query_filter"] == QUILL_FILTER
    assert call.get("using") is None and call.get("prefetch") is None


def test_a_search_by_document_sends_the_same_query_grouped_by_mongo_id(spied: tuple[ServerStore, SpyingClient]) -> None:
    store, client = spied
    store.write_if_newer(upserts=manual())
    store.search_documents(DENSE_QUERY, limit=3, text=MANUAL_ORDER, match={"product": "Ledger"})
    store.search_documents(None, limit=3, text=MANUAL_ORDER)
    store.search_documents(DENSE_QUERY, limit=3)
    hybrid, sparse, dense = client.calls["query_points_groups"]
    ledger = models.Filter(must=[models.FieldCondition(key="product", match=models.MatchValue(value="Ledger"))])
    for call in (hybrid, sparse, dense):
        assert (call["group_by"], call["group_size"], call["limit"]) == ("mongo_id", 1, 3)
    assert hybrid["prefetch"] == [
        models.Prefetch(query=DENSE_QUERY, limit=HYBRID_PREFETCH, filter=ledger),
        models.Prefetch(query=sparse_query(MANUAL_ORDER), using="bm25", limit=HYBRID_PREFETCH, filter=ledger),
    ]
    assert hybrid["query"] == models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=list(rrf_weights(MANUAL_ORDER))))
    assert (sparse["query"], sparse["using"]) == (sparse_query(MANUAL_ORDER), "bm25")
    assert dense["query"] == DENSE_QUERY and dense.get("using") is None


def written_vectors(client: SpyingClient) -> dict[str, Any]:
    """The vector of each point that the recorded batch_update_points calls upserted, by point id."""
    written = {}
    for call in client.calls["batch_update_points"]:
        for operation in call["update_operations"]:
            if isinstance(operation, models.UpsertOperation):
                assert isinstance(operation.upsert, models.PointsList)
                written.update({str(struct.id): struct.vector for struct in operation.upsert.points})
    return written


def test_upserts_send_the_dense_vector_and_the_bm25_one_by_name() -> None:
    client = SpyingClient()
    store = ServerStore(client, "documents", 4, sparse_model="bm25")
    dense_store = ServerStore(client, "dense", 4)
    try:
        store.ensure_collection()
        dense_store.ensure_collection()
        store.write_if_newer(upserts=[ticket(7), ticket(3, text="the and of a")])
        assert written_vectors(client) == {
            ticket_id(7): {"": ticket_vector(7), "bm25": sparse_document(ticket_text(7))},
            ticket_id(3): {"": ticket_vector(3)},  # no terms, no sparse vector
        }
        client.calls.clear()
        dense_store.write_if_newer(upserts=[ticket(7)])
        assert written_vectors(client) == {ticket_id(7): ticket_vector(7)}, "a dense-only collection: the list"
        # The unconditional upsert (for tools and tests) writes the same vectors.
        store.upsert([ticket(8)])
        [call] = client.calls["upsert"]
        [struct] = call["points"]
        assert struct.vector == {"": ticket_vector(8), "bm25": sparse_document(ticket_text(8))}
    finally:
        store.close()


# --- ServerStore: a collection made again by another process --------------------------------------------------------


class ServerAnsweringClient(QdrantClient):
    """The in-memory client, answering a write it refuses as a Qdrant server does: a 400 with the engine's message.

    The in-memory mode raises the engine's "Wrong input: ..." as a bare ValueError, where a server answers HTTP
    400 (gRPC INVALID_ARGUMENT) with that message, which is what the store reads.
    """

    def __init__(self) -> None:
        super().__init__(":memory:")

    def batch_update_points(self, collection_name: str, **kwargs: Any) -> list[models.UpdateResult]:
        try:
            return super().batch_update_points(collection_name, **kwargs)
        except ValueError as exc:
            if not str(exc).startswith("Wrong input"):
                raise
            body = json.dumps({"status": {"error": str(exc)}, "time": 0.0}).encode()
            raise UnexpectedResponse(400, "Bad Request", body, httpx.Headers()) from exc


def test_a_store_writes_sparse_vectors_once_another_made_the_collection_again_with_them() -> None:
    client = ServerAnsweringClient()
    ServerStore(client, "documents", 4).ensure_collection()
    upserter = ServerStore(client, "documents", 4, sparse_model="bm25")
    upserter.ensure_collection()
    assert upserter.sparse_vector() is None
    upserter.write_if_newer(upserts=[ticket(1)])
    rebuild = ServerStore(client, "documents", 4, sparse_model="bm25")
    rebuild.recreate()  # `vecsync rebuild`, in another process
    try:
        upserter.write_if_newer(upserts=[ticket(7)])
        assert stored_sparse(upserter, ticket_id(7)) == pytest.approx(bm25_terms(ticket_text(7)))
        assert ids(upserter.search(None, limit=5, text=RARE)) == [ticket_id(7)]
        assert upserter.sparse_vector() == "bm25"
    finally:
        upserter.close()


def test_a_write_naming_a_vector_the_collection_lost_is_transient_and_the_retry_writes_dense() -> None:
    client = ServerAnsweringClient()
    upserter = ServerStore(client, "documents", 4, sparse_model="bm25")
    upserter.ensure_collection()
    upserter.write_if_newer(upserts=[ticket(1)])
    assert upserter.sparse_vector() == "bm25"
    ServerStore(client, "documents", 4).recreate()  # made again without SPARSE_MODEL, elsewhere
    try:
        with pytest.raises(TransientError) as failed:
            upserter.write_if_newer(upserts=[ticket(7)])
        assert not isinstance(failed.value, PermanentError)
        assert "made again" in str(failed.value)
        upserter.write_if_newer(upserts=[ticket(7)])  # the retry
        assert upserter.count() == 1
        [record] = upserter.retrieve([ticket_id(7)], with_vectors=True)
        assert record.vector == pytest.approx(ticket_vector(7))
        assert stored_sparse(upserter, ticket_id(7)) is None
        assert upserter.sparse_vector() is None
    finally:
        upserter.close()
