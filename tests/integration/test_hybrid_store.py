"""Hybrid search in the stores (issue 24, acceptance 2): BM25 sparse vectors beside the dense one, on both stores.

A collection made with SPARSE_MODEL=bm25 gives each point written through the pipeline's path (write_if_newer) the
BM25 vector of its text; a search is dense, sparse or hybrid (the two fused by RRF), under the same filter, by
chunk or by document; deletes, prunes and rewrites of a point change its sparse hits as they change its dense
ones; a dense-only collection keeps working with SPARSE_MODEL on. ``server`` runs ServerStore on qdrant-client's
in-memory mode, which stands in for a Qdrant server (test_hybrid_server.py checks the requests it sends);
``embedded`` runs Qdrant's engine in this process, on disk.

The data: 30 tickets, each naming one order number (ORD-10000-KX to ORD-10029-KX), so that "ord" and "kx" are in
every ticket and the number is in one; dense vectors on a quarter circle, ticket n at 0.05 n radians, so the dense
query nearest ticket 20 puts ticket 7 far down.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe

from tests.support.stores import KINDS, make_store
from upserter.main import MissingSparseVectors
from vecsync.chunking import chunk_point_id
from vecsync.cli.settings import CliSettings
from vecsync.documents import point_id, text_sha256
from vecsync.errors import PermanentError
from vecsync.search_modes import RRF_K, rrf_weights
from vecsync.store.embedded import CONFIG_FILE, EmbeddedStore
from vecsync.store.server import ServerStore
from vecsync.syncs import default_sync
from vecsync.vectorstore import Hit, NoSparseVectors, OlderPoints, Point, VectorStore

SOURCE = "db.tickets"
BM25 = qe.Bm25()  # the model the stores use, with Qdrant's defaults: what each point's sparse vector must be
TICKETS = 30
RARE = "ORD-10007-KX"  # ticket 7's order number: its "10007" is in no other ticket, its "ord" and "kx" in all
NEAREST = 20  # the ticket nearest DENSE_QUERY


def toward(angle: float) -> list[float]:
    """A unit vector at ``angle`` radians on the first quarter circle: cosine similarity falls with the angle."""
    return [math.cos(angle), math.sin(angle), 0.0, 0.0]


def ticket_vector(n: int) -> list[float]:
    return toward(0.05 * n)


DENSE_QUERY = ticket_vector(NEAREST)


def payload(mongo_id: str, text: str, version: str = "5-0", **fields: Any) -> dict[str, Any]:
    """A point's payload as the pipeline writes it."""
    return {
        **fields,
        "mongo_id": mongo_id,
        "source": SOURCE,
        "text": text,
        "text_sha256": text_sha256(text),
        "model": "test-model",
        "version": version,
    }


def ticket_id(n: int) -> str:
    return point_id(SOURCE, f"t{n}")


def ticket_text(n: int) -> str:
    """Ticket ``n``'s text: the nearer DENSE_QUERY, the longer, so that BM25 (which weighs a term less in a longer
    text) ranks the tickets that match on "ord" and "kx" alone in an order of its own, away from the dense one."""
    filler = " The parcel is late again." * max(0, 10 - abs(n - NEAREST))
    return f"Ticket about order ORD-{10000 + n}-KX: the customer asks where the parcel is.{filler}"


def ticket(n: int, version: str = "5-0", text: str | None = None) -> Point:
    """Ticket ``n``: product Ledger for an even n, Quill for an odd one."""
    product = "Ledger" if n % 2 == 0 else "Quill"
    return Point(
        ticket_id(n),
        ticket_vector(n),
        payload(f"t{n}", ticket_text(n) if text is None else text, version, product=product),
    )


def tickets() -> list[Point]:
    return [ticket(n) for n in range(TICKETS)]


MANUAL = "manual"
MANUAL_ORDER = "ORD-55555-KX"  # in chunk 3 of the manual only


def manual_chunk_id(index: int) -> str:
    return chunk_point_id(point_id(SOURCE, MANUAL), index)


def manual(version: str = "5-0", count: int = 5) -> list[Point]:
    """A document of ``count`` chunks, all nearer DENSE_QUERY than any ticket but ticket 20 (which is at it); chunk 3
    (of 5) names MANUAL_ORDER."""
    points = []
    for index in range(count):
        text = f"Scanner manual, chapter {index}: calibrate the scanner before the first use."
        if index == 3:
            text += f" Replacement parts are shipped under order {MANUAL_ORDER}."
        fields = {"chunk_index": index, "chunk_count": count, "product": "Ledger"}
        vector = toward(0.05 * NEAREST + 0.001 * (index + 1))
        points.append(Point(manual_chunk_id(index), vector, payload(MANUAL, text, version, **fields)))
    return points


def ids(hits: Sequence[Hit]) -> list[str]:
    return [hit.id for hit in hits]


def documents(hits: Sequence[Hit]) -> list[str]:
    return [hit.payload["mongo_id"] for hit in hits]


def bm25_terms(text: str) -> dict[int, float]:
    vector = BM25.embed_document(text)
    return dict(zip(vector.indices, vector.values, strict=True))


def stored_vectors(store: VectorStore, pid: str) -> Any:
    """The vectors of point ``pid`` as the engine holds them, read past the store's own retrieve."""
    if isinstance(store, EmbeddedStore):
        [record] = store._open_shard().retrieve([pid], True, True)
        return record.vector
    assert isinstance(store, ServerStore)
    [point] = store.client.retrieve(store.collection, [pid], with_vectors=True)
    return point.vector


def stored_sparse(store: VectorStore, pid: str) -> dict[int, float] | None:
    """The "bm25" sparse vector of point ``pid`` as the engine holds it (term -> weight), or None."""
    vectors = stored_vectors(store, pid)
    if not isinstance(vectors, dict) or "bm25" not in vectors:
        return None
    terms = vectors["bm25"]
    return dict(zip(terms.indices, terms.values, strict=True))


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    """A store of each kind whose collection has the bm25 sparse vector."""
    store = make_store(request.param, tmp_path, dim=4, sparse_model="bm25")
    yield store
    store.close()


@pytest.fixture
def filled(store: VectorStore) -> VectorStore:
    store.write_if_newer(upserts=tickets())
    return store


# --- The collection -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_collection_has_the_sparse_vector_only_when_made_with_it(kind: str, tmp_path: Path) -> None:
    with_bm25 = make_store(kind, tmp_path / "with", dim=4, sparse_model="bm25")
    dense_only = make_store(kind, tmp_path / "without", dim=4)
    try:
        assert with_bm25.sparse_vector() == "bm25"
        assert dense_only.sparse_vector() is None
    finally:
        with_bm25.close()
        dense_only.close()


def test_the_embedded_collection_keeps_its_sparse_vector_across_a_reopen(tmp_path: Path) -> None:
    folder = tmp_path / "qdrant"
    first = EmbeddedStore(folder, "documents", 4, sparse_model="bm25")
    first.ensure_collection()
    first.write_if_newer(upserts=[ticket(1)])
    first.close()
    config = json.loads((folder / "documents" / CONFIG_FILE).read_text())
    assert config["sparse_vectors"] == {"bm25": {"modifier": "idf"}}, "the engine's IDF modifier"
    # Opened again without SPARSE_MODEL: the collection is as it was made, and so are the points written now.
    again = EmbeddedStore(folder, "documents", 4)
    try:
        assert again.sparse_vector() == "bm25", "read from the shard as it loads, before ensure_collection"
        again.ensure_collection()
        assert again.sparse_vector() == "bm25"
        again.write_if_newer(upserts=[ticket(7)])
        assert stored_sparse(again, ticket_id(7)) == pytest.approx(bm25_terms(ticket_text(7)))
        assert ids(again.search(None, limit=1, text=RARE)) == [ticket_id(7)]
    finally:
        again.close()
    dense = EmbeddedStore(tmp_path / "dense", "documents", 4)
    dense.ensure_collection()
    dense.close()
    reopened = EmbeddedStore(tmp_path / "dense", "documents", 4)
    try:
        assert reopened.sparse_vector() is None
    finally:
        reopened.close()


# --- Writes ---------------------------------------------------------------------------------------------------------


def test_points_written_through_the_fence_carry_their_texts_bm25_vector(filled: VectorStore) -> None:
    store = filled
    for n in (0, 7, 29):
        [record] = store.retrieve([ticket_id(n)], with_vectors=True)
        assert record.vector == pytest.approx(ticket_vector(n)), "the dense vector, as written"
        assert stored_sparse(store, ticket_id(n)) == pytest.approx(bm25_terms(ticket_text(n)))
    assert stored_sparse(store, ticket_id(7)) != stored_sparse(store, ticket_id(8)), "each of its own text"


@pytest.mark.parametrize("text", ["the and of a", ""])
def test_a_text_without_terms_is_written_without_a_sparse_vector(store: VectorStore, text: str) -> None:
    store.write_if_newer(upserts=[ticket(3, text=text), ticket(7)])
    assert store.count() == 2
    [record] = store.retrieve([ticket_id(3)], with_vectors=True)
    assert record.vector == pytest.approx(ticket_vector(3))
    assert stored_sparse(store, ticket_id(3)) is None
    assert stored_sparse(store, ticket_id(7)) is not None
    assert ids(store.search(None, limit=5, text=RARE)) == [ticket_id(7)]
    assert ticket_id(3) in ids(store.search(ticket_vector(3), limit=5, text=RARE)), "found by its dense vector"


# --- Search modes ---------------------------------------------------------------------------------------------------


def test_sparse_search_finds_the_rare_identifier_first_and_far_ahead(filled: VectorStore) -> None:
    hits = filled.search(None, limit=5, text=RARE)
    assert hits[0].id == ticket_id(7)
    assert hits[0].score > 10 * hits[1].score, "ord and kx, in every ticket, weigh almost nothing (IDF)"
    assert len(hits) == 5, "the other tickets match on ord and kx alone"


def test_dense_search_ranks_by_the_vector_alone(filled: VectorStore) -> None:
    hits = filled.search(DENSE_QUERY, limit=5)
    assert hits[0].id == ticket_id(NEAREST) and hits[0].score == pytest.approx(1.0)
    assert ticket_id(7) not in ids(filled.search(DENSE_QUERY, limit=10)), "the identifier counts for nothing"


def test_hybrid_search_fuses_the_dense_and_the_sparse_first(filled: VectorStore) -> None:
    hits = filled.search(DENSE_QUERY, limit=5, text=RARE)
    assert len(hits) == 5
    assert ids(hits)[0] == ticket_id(7), "an identifier in the query: the first of the BM25 list leads"
    assert ticket_id(NEAREST) in ids(hits[:3]), "and the dense list's first follows close"
    assert ticket_id(7) not in ids(filled.search(DENSE_QUERY, limit=5)), "which dense alone does not find"
    prose = filled.search(DENSE_QUERY, limit=5, text="where is the late parcel")
    assert ids(prose)[0] == ticket_id(NEAREST), "no identifier in the query: the first of the dense list leads"
    # Reciprocal rank fusion: the first of the sparse list scores its weight / RRF_K, plus at most what the dense
    # list gives its 23rd (ticket 7, 13 steps from ticket 20, after 22 nearer ones).
    sparse_first = next(hit for hit in hits if hit.id == ticket_id(7))
    dense_weight, sparse_weight = rrf_weights(RARE)
    assert (
        sparse_weight / RRF_K - 1e-6 <= sparse_first.score <= sparse_weight / RRF_K + dense_weight / (RRF_K + 22) + 1e-6
    )


def test_a_filter_excluding_the_identifiers_point_removes_it_from_every_mode(filled: VectorStore) -> None:
    ledger = {"product": "Ledger"}  # ticket 7 is a Quill ticket
    for vector, text in ((None, RARE), (DENSE_QUERY, RARE), (ticket_vector(7), None)):
        hits = filled.search(vector, limit=10, text=text, match=ledger)
        assert hits, (vector, text)
        assert ticket_id(7) not in ids(hits), (vector, text)
        assert {hit.payload["product"] for hit in hits} == {"Ledger"}, (vector, text)


def test_hybrid_applies_the_filter_to_both_branches(filled: VectorStore) -> None:
    # Unfiltered, ticket 20 (Ledger) leads the dense list and ticket 7 (Quill) the sparse one.
    quill = filled.search(DENSE_QUERY, limit=10, text=RARE, match={"product": "Quill"})
    assert {hit.payload["product"] for hit in quill} == {"Quill"}, "the dense branch is filtered"
    assert ticket_id(7) in ids(quill[:2]), "from the sparse branch"
    assert {ticket_id(19), ticket_id(21)} <= set(ids(quill)), "from the dense branch: Quill's nearest"
    ledger = filled.search(DENSE_QUERY, limit=10, text=RARE, match={"product": "Ledger"})
    assert {hit.payload["product"] for hit in ledger} == {"Ledger"}, "the sparse branch is filtered"
    assert ticket_id(NEAREST) in ids(ledger[:3])
    assert filled.search(DENSE_QUERY, limit=10, text=RARE, match={"product": "Nothing"}) == []


class TestChunkedDocuments:
    """search_documents groups chunks by mongo_id in every mode."""

    @pytest.fixture
    def written(self, filled: VectorStore) -> VectorStore:
        filled.write_if_newer(upserts=manual())
        return filled

    def test_the_identifier_in_chunk_3_finds_its_document_once_as_that_chunk(self, written: VectorStore) -> None:
        store = written
        assert ids(store.search(None, limit=1, text=MANUAL_ORDER)) == [manual_chunk_id(3)]
        for vector in (None, DENSE_QUERY):
            found = store.search_documents(vector, limit=5, text=MANUAL_ORDER)
            assert len(found) == 5 and len(set(documents(found))) == 5, vector
            assert documents(found).count(MANUAL) == 1, vector
            assert found[0].payload["mongo_id"] == MANUAL, vector
            assert found[0].id == manual_chunk_id(3), f"the document as its best chunk ({vector})"
            assert found[0].payload["chunk_index"] == 3 and found[0].payload["chunk_count"] == 5

    def test_every_mode_gives_each_document_once(self, written: VectorStore) -> None:
        store = written
        assert documents(store.search(DENSE_QUERY, limit=6)) == ["t20"] + [MANUAL] * 5, "the raw chunks"
        for vector, text in ((DENSE_QUERY, None), (None, RARE), (DENSE_QUERY, RARE)):
            found = store.search_documents(vector, limit=8, text=text)
            assert len(found) == 8 and len(set(documents(found))) == 8, (vector, text)
        dense = store.search_documents(DENSE_QUERY, limit=3)
        assert documents(dense) == ["t20", MANUAL, "t19"] or documents(dense) == ["t20", MANUAL, "t21"]
        assert dense[1].id == manual_chunk_id(0), "the manual's nearest chunk"
        assert documents(store.search_documents(None, limit=1, text=RARE)) == ["t7"]
        hybrid = store.search_documents(DENSE_QUERY, limit=3, text=RARE)
        assert {"t20", "t7"} <= set(documents(hybrid))

    def test_the_filter_applies_to_every_chunk_in_every_mode(self, written: VectorStore) -> None:
        store = written
        quill = {"product": "Quill"}  # the manual is Ledger's
        for vector, text in ((DENSE_QUERY, None), (None, MANUAL_ORDER), (DENSE_QUERY, MANUAL_ORDER)):
            found = store.search_documents(vector, limit=5, text=text, match=quill)
            assert found and MANUAL not in documents(found), (vector, text)
            assert {hit.payload["product"] for hit in found} == {"Quill"}


# --- Deletes and rewrites -------------------------------------------------------------------------------------------


def every_mode(store: VectorStore, text: str, vector: list[float], limit: int = TICKETS + 10) -> dict[str, list[str]]:
    """The ids each mode finds for the query ``text`` and ``vector``, as many as there are points."""
    return {
        "dense": ids(store.search(vector, limit=limit)),
        "sparse": ids(store.search(None, limit=limit, text=text)),
        "hybrid": ids(store.search(vector, limit=limit, text=text)),
    }


def test_a_delete_through_the_fence_removes_the_point_from_every_mode(filled: VectorStore) -> None:
    store = filled
    assert all(ticket_id(7) in found for found in every_mode(store, RARE, ticket_vector(7)).values())
    store.write_if_newer(deletes={ticket_id(7): "4-0"})
    assert ticket_id(7) in every_mode(store, RARE, ticket_vector(7))["sparse"], "an older delete is fenced off"
    store.write_if_newer(deletes={ticket_id(7): "6-0"})
    for mode, found in every_mode(store, RARE, ticket_vector(7)).items():
        assert ticket_id(7) not in found, mode
        assert len(found) == TICKETS - 1, mode
    assert store.search(None, limit=1, text=RARE)[0].score < 1, "no ticket names the number any more"


def test_a_prune_of_a_documents_old_chunks_removes_their_sparse_hits(filled: VectorStore) -> None:
    store = filled
    store.write_if_newer(upserts=manual("5-0", count=5))
    assert ids(store.search(None, limit=1, text=MANUAL_ORDER)) == [manual_chunk_id(3)]
    # The document again, shorter: two chunks at 6-0, and its older chunks pruned.
    store.write_if_newer(upserts=manual("6-0", count=2), prune=[OlderPoints(SOURCE, MANUAL, "6-0")])
    assert store.count() == TICKETS + 2
    for mode, found in every_mode(store, MANUAL_ORDER, DENSE_QUERY).items():
        assert manual_chunk_id(3) not in found and manual_chunk_id(4) not in found, mode
    chapters = store.search(None, limit=TICKETS, text="calibrate the scanner")
    assert sorted(ids(chapters)) == sorted([manual_chunk_id(0), manual_chunk_id(1)]), "the chunks kept"
    by_document = store.search_documents(None, limit=3, text=MANUAL_ORDER)
    assert MANUAL not in documents(by_document), "no chunk left names the order"


def test_a_rewrite_with_another_text_changes_the_points_sparse_hits(filled: VectorStore) -> None:
    store = filled
    invoice = "INV-31337"
    assert store.search(None, limit=5, text=invoice) == []
    store.write_if_newer(upserts=[ticket(7, "6-0", text=f"Refund of invoice {invoice} for a broken scanner.")])
    assert ticket_id(7) not in ids(store.search(None, limit=TICKETS, text=RARE)), "the old identifier"
    assert ids(store.search(None, limit=5, text=invoice)) == [ticket_id(7)], "the new one"
    assert stored_sparse(store, ticket_id(7)) == pytest.approx(
        bm25_terms(f"Refund of invoice {invoice} for a broken scanner.")
    )


def test_a_payload_only_write_keeps_the_sparse_vector(filled: VectorStore) -> None:
    store = filled
    before = stored_sparse(store, ticket_id(7))
    newer = {**ticket(7, "6-0").payload, "status": "closed"}  # same text_sha256 and model
    store.write_if_newer(payloads={ticket_id(7): newer})
    [record] = store.retrieve([ticket_id(7)], with_vectors=True)
    assert (record.payload["version"], record.payload["status"]) == ("6-0", "closed"), "the payload was written"
    assert record.vector == pytest.approx(ticket_vector(7))
    assert stored_sparse(store, ticket_id(7)) == pytest.approx(before)
    [hit] = store.search(None, limit=1, text=RARE)
    assert (hit.id, hit.payload["status"]) == (ticket_id(7), "closed")


# --- An existing dense-only collection ------------------------------------------------------------------------------


def opened_again(kind: str, store: VectorStore, folder: Path, sparse_model: str | None) -> VectorStore:
    """The collection of ``store`` opened by another store, as an upserter started with other settings opens it."""
    if isinstance(store, ServerStore):
        return ServerStore(store.client, store.collection, store.dim, sparse_model=sparse_model)
    store.close()  # one opener of an embedded store at a time
    return EmbeddedStore(folder / "qdrant", store.collection, store.dim, sparse_model=sparse_model)


@pytest.mark.parametrize("kind", KINDS)
def test_a_dense_only_collection_opened_with_bm25_keeps_working_dense_with_one_warning(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dense_only = make_store(kind, tmp_path, dim=4)
    dense_only.write_if_newer(upserts=tickets()[:10])
    store = opened_again(kind, dense_only, tmp_path, "bm25")
    try:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            store.ensure_collection()
        warned = [record for record in caplog.records if record.levelno >= logging.WARNING]
        assert warned == [], "the store says nothing: the CLI opens it too (the upserter warns)"
        assert store.sparse_vector() is None
        sync = replace(default_sync(CliSettings()), sparse_model="bm25")
        warnings = MissingSparseVectors()
        with caplog.at_level(logging.WARNING):
            for _lane in range(3):  # a lane per partition: one warning
                warnings.warn_once(sync, store)
        [warning] = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
        assert "`vecsync rebuild`" in warning and "bm25" in warning and "'documents'" in warning
        assert "\n" not in warning, "one line"

        caplog.clear()
        with caplog.at_level(logging.WARNING):
            store.write_if_newer(upserts=tickets()[10:])
        assert store.count() == TICKETS, "writes never fail"
        assert stored_sparse(store, ticket_id(15)) is None
        assert caplog.records == [], "the warning is said once, at start"
        assert store.search(DENSE_QUERY, limit=1)[0].id == ticket_id(NEAREST)
        assert store.search_documents(DENSE_QUERY, limit=1)[0].id == ticket_id(NEAREST)
        for vector in (None, DENSE_QUERY):
            with pytest.raises(NoSparseVectors):
                store.search(vector, limit=3, text=RARE)
            with pytest.raises(NoSparseVectors) as refused:
                store.search_documents(vector, limit=3, text=RARE)
            assert isinstance(refused.value, PermanentError) and "no sparse vectors" in str(refused.value)

        store.recreate()
        assert store.sparse_vector() == "bm25" and store.count() == 0
        store.write_if_newer(upserts=tickets())
        assert store.search(None, limit=1, text=RARE)[0].id == ticket_id(7)
    finally:
        store.close()
        if isinstance(dense_only, ServerStore):
            dense_only.close()
