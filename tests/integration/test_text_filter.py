"""Keyword filters on a point's text: ``match={"text": {"words": ...}}`` in the stores, ``--filter text~WORDS`` in
`vecsync search`.

The stores are checked on both code paths (tests/support/stores.py): vecsync.store.server on qdrant-client's
in-memory mode, and vecsync.store.embedded. The CLI is driven as tests/integration/test_cli.py drives it, over the
pipeline's real Redis, MongoDB stand-in, hash embedding-api and embedded store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from tests.support.pipeline import Pipeline
from tests.support.stores import KINDS, index_types, make_store
from vecsync.cli.context import EXIT_OK, EXIT_USAGE, Context
from vecsync.cli.main import main
from vecsync.cli.settings import CliSettings
from vecsync.documents import point_id
from vecsync.errors import PermanentError
from vecsync.store.embedded import EmbeddedStore
from vecsync.store.server import ServerStore, _filter
from vecsync.vectorstore import Point, VectorStore

TEXTS = {
    "t1": "Refund requested for the late delivery of order ORD-48213-KX.",
    "t2": "The REFUND was processed; the customer is happy.",
    "t3": "The customer asks about refunds and returns.",
    "t4": "A nonrefundable deposit; a late fee applies.",
    "t5": "Late shipment, no word of money back.",
    "t6": "refund,late: both words, with punctuation between them.",
}
PRODUCTS = {"t1": "Ledger", "t2": "Ledger", "t3": "Ledger", "t4": "Atlas", "t5": "Atlas", "t6": "Atlas"}


def ticket_points() -> list[Point]:
    return [
        Point(
            point_id("app.tickets", mongo_id),
            [1.0, float(number), 0.5, 0.1],
            {"mongo_id": mongo_id, "text": text, "product": PRODUCTS[mongo_id]},
        )
        for number, (mongo_id, text) in enumerate(TEXTS.items(), start=1)
    ]


@pytest.fixture(params=KINDS)
def tickets(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    store = make_store(request.param, tmp_path, dim=4, collection="tickets")
    store.upsert(ticket_points())
    yield store
    store.close()


def found(store: VectorStore, match: dict[str, Any], *, documents: bool = False) -> list[str]:
    search = store.search_documents if documents else store.search
    return sorted(hit.payload["mongo_id"] for hit in search([1.0, 2.0, 0.5, 0.1], limit=10, match=match))


def test_a_text_match_keeps_exactly_the_points_whose_text_holds_the_word(tickets: VectorStore) -> None:
    # Whole words, whatever their case: not "refunds", not "nonrefundable".
    assert found(tickets, {"text": {"words": "refund"}}) == ["t1", "t2", "t6"]
    assert found(tickets, {"text": {"words": "REFUNDS"}}) == ["t3"]
    assert found(tickets, {"text": {"words": "refun"}}) == []
    # An identifier is its words, so its parts match as its whole does.
    assert found(tickets, {"text": {"words": "ord-48213-kx"}}) == ["t1"]
    assert found(tickets, {"text": {"words": "48213"}}) == ["t1"]


def test_a_text_match_of_several_words_needs_every_one(tickets: VectorStore) -> None:
    assert found(tickets, {"text": {"words": "late refund"}}) == ["t1", "t6"]
    assert found(tickets, {"text": {"words": "refund late money"}}) == []
    assert found(tickets, {"text": {"words": "money back"}}) == ["t5"]


def test_a_text_match_joins_an_equality_and_works_on_any_text_field(tickets: VectorStore) -> None:
    assert found(tickets, {"text": {"words": "refund"}, "product": "Ledger"}) == ["t1", "t2"]
    assert found(tickets, {"text": {"words": "late"}, "product": "Atlas"}) == ["t4", "t5", "t6"]
    assert found(tickets, {"product": {"words": "atlas"}}) == ["t4", "t5", "t6"]


def test_a_text_match_filters_the_documents_of_a_dense_search(tickets: VectorStore) -> None:
    assert found(tickets, {"text": {"words": "refund"}}, documents=True) == ["t1", "t2", "t6"]
    assert tickets.sparse_vector() is None, "these collections are dense only: the search above is dense"


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ({"text": {"words": "refund", "gte": 2}}, "is a text match ('words'), so it can hold nothing else"),
        ({"text": {"words": ""}}, "needs one or more words"),
        ({"text": {"words": " -- "}}, "needs one or more words"),
        ({"text": {"words": ["refund"]}}, "needs one or more words"),
        ({"text": {"word": "refund"}}, "or a text match {'words': WORDS}, not 'word'"),
    ],
)
def test_a_text_match_that_cannot_hold_is_refused(tickets: VectorStore, match: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        tickets.search([1.0, 2.0, 0.5, 0.1], limit=10, match=match)


def test_the_server_store_asks_qdrant_for_a_match_text_condition() -> None:
    assert _filter({"text": {"words": "late refund"}, "product": "Ledger"}) == models.Filter(
        must=[
            models.FieldCondition(key="text", match=models.MatchText(text="late refund")),
            models.FieldCondition(key="product", match=models.MatchValue(value="Ledger")),
        ]
    )


# Through the CLI ------------------------------------------------------------------------------------------------


def cli(pipeline: Pipeline, *argv: str) -> int:
    settings = CliSettings(
        redis_url=pipeline.redis_url,
        mongo_uri=pipeline.mongo_uri,
        mongo_database=pipeline.collection.database.name,
        mongo_collection=pipeline.collection.name,
        embedding_url=pipeline.embedding_url,
    )
    ctx = Context(settings, interactive=False, _redis=pipeline.redis_client, _collection=pipeline.collection)
    ctx._store = pipeline.store
    ctx.close = lambda: None  # type: ignore[method-assign]  # the fixtures own the connections
    return main(list(argv), ctx)


def seed_tickets(pipeline: Pipeline) -> None:
    pipeline.collection.insert_many(
        [
            {"_id": mongo_id, "subject": f"ticket {mongo_id}", "content": text, "product": PRODUCTS[mongo_id]}
            for mongo_id, text in TEXTS.items()
        ]
    )
    pipeline.drain()


def searched(pipeline: Pipeline, capsys: pytest.CaptureFixture[str], *filters: str, mode: str = "") -> list[str]:
    argv = ["search", "a ticket", "--json", *(["--mode", mode] if mode else [])]
    for item in filters:
        argv += ["--filter", item]
    assert cli(pipeline, *argv) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err == ""
    return sorted(hit["payload"]["mongo_id"] for hit in json.loads(captured.out))


def test_the_cli_filters_on_words_of_the_text(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    seed_tickets(pipeline)
    assert searched(pipeline, capsys, "text~refund") == ["t1", "t2", "t6"]
    assert searched(pipeline, capsys, "text~Late refund") == ["t1", "t6"]
    # Two text filters on one field join: every word of both must be there.
    assert searched(pipeline, capsys, "text~late", "text~refund") == ["t1", "t6"]
    assert searched(pipeline, capsys, "text~refund", "product=Ledger") == ["t1", "t2"]
    assert searched(pipeline, capsys, "product~ledger") == ["t1", "t2", "t3"]
    assert searched(pipeline, capsys, "text~refund", mode="dense") == ["t1", "t2", "t6"]
    assert cli(pipeline, "search", "a ticket", "--chunks", "--filter", "text~ORD-48213-KX") == EXIT_OK
    assert "t1  ticket t1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (["text~"], "FIELD~WORDS needs one or more words (letters or digits) after the ~ that 'text' must hold"),
        (["text~  - "], "FIELD~WORDS needs one or more words"),
        (["chunk_index~1"], "'chunk_index' has an integer index, so it holds no text whose words ~ could match"),
        (["text~refund", "text=a ticket"], "gives 'text' both a value and words"),
        (["text=a ticket", "text~refund"], "gives 'text' both a value and words"),
        (["~refund"], "--filter takes FIELD=VALUE or a range such as FIELD>=VALUE, or FIELD~WORDS"),
    ],
)
def test_a_text_filter_that_cannot_hold_exits_2_and_says_why(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str], filters: list[str], message: str
) -> None:
    argv = ["search", "a ticket"]
    for item in filters:
        argv += ["--filter", item]
    assert cli(pipeline, *argv) == EXIT_USAGE
    assert message in capsys.readouterr().err


# The full-text index of the collections made for keyword search ------------------------------------------------


def open_store(kind: str, tmp_path: Path, client: QdrantClient, *, sparse_model: str | None) -> VectorStore:
    """A store of ``kind`` on the tickets collection (the server store on ``client``, which keeps it between
    stores), created or found by ensure_collection."""
    store: VectorStore
    if kind == "server":
        store = ServerStore(client, "tickets", 4, sparse_model=sparse_model)
    else:
        store = EmbeddedStore(tmp_path / "qdrant", "tickets", 4, sparse_model=sparse_model)
    store.ensure_collection()
    return store


def recorded_indexes(client: QdrantClient) -> dict[str, str]:
    """The payload indexes created through ``client`` from now on, path -> type: the in-memory client keeps none."""
    created: dict[str, str] = {}
    record = client.create_payload_index

    def create_payload_index(collection: str, field: str, schema: Any, **extra: Any) -> Any:
        created[field] = schema.value
        return record(collection, field, schema, **extra)

    client.create_payload_index = create_payload_index  # type: ignore[method-assign]
    return created


@pytest.mark.parametrize("kind", KINDS)
def test_a_collection_for_keyword_search_gets_a_text_index_and_matches_as_without(kind: str, tmp_path: Path) -> None:
    client = QdrantClient(":memory:")
    created = recorded_indexes(client)
    store = open_store(kind, tmp_path, client, sparse_model="bm25")
    try:
        types = created if kind == "server" else index_types(store)
        assert types == {"mongo_id": "keyword", "text": "text"}
        store.upsert(ticket_points())
        assert found(store, {"text": {"words": "refund"}}) == ["t1", "t2", "t6"]
        assert found(store, {"text": {"words": "late refund"}}) == ["t1", "t6"]
        assert found(store, {"text": {"words": "refund"}, "product": "Ledger"}) == ["t1", "t2"]
        assert found(store, {"text": {"words": "refunds"}}) == ["t3"]
        # A keyword filter, whatever ranks what it keeps: here BM25 and the dense vector fused.
        hybrid = store.search([1.0, 2.0, 0.5, 0.1], limit=10, match={"text": {"words": "late"}}, text="refund")
        assert sorted(hit.payload["mongo_id"] for hit in hybrid) == ["t1", "t4", "t5", "t6"]
    finally:
        store.close()


@pytest.mark.parametrize("kind", KINDS)
def test_an_existing_collection_gets_the_text_index_when_sparse_model_is_set(kind: str, tmp_path: Path) -> None:
    client = QdrantClient(":memory:")
    created = recorded_indexes(client)
    dense = open_store(kind, tmp_path, client, sparse_model=None)
    try:
        assert (created if kind == "server" else index_types(dense)) == {"mongo_id": "keyword"}
        dense.upsert(ticket_points())
    finally:
        if kind == "embedded":
            dense.close()  # the folder's one process; the server store's client keeps the collection
    created.clear()
    store = open_store(kind, tmp_path, client, sparse_model="bm25")
    try:
        assert store.sparse_vector() is None, "Qdrant adds no sparse vector to an existing collection"
        # The in-memory client keeps no payload schema, so the server store creates each index again there.
        types = created if kind == "server" else index_types(store)
        assert types == {"mongo_id": "keyword", "text": "text"}
        assert found(store, {"text": {"words": "late refund"}}) == ["t1", "t6"]
    finally:
        store.close()
