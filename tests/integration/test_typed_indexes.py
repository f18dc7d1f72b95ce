"""Typed payload indexes (a sync's payload_indexes) and the stores of several collections in one process.

A range on a nested integer or datetime index is checked on both store code paths: vecsync.store.server on
qdrant-client's in-memory mode (as test_vectorstore.py does), and vecsync.store.embedded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from tests.support.stores import index_types
from vecsync.documents import point_id
from vecsync.settings import QdrantSettings
from vecsync.store import open_vector_stores
from vecsync.store.embedded import EmbeddedStore
from vecsync.store.server import ServerStore
from vecsync.vectorstore import Point, StoreInUse, VectorStore


def nested_points() -> list[Point]:
    return [
        Point(
            point_id("app.tickets", f"t{n}"),
            [1.0, float(n), 0.5, 0.1],
            {"mongo_id": f"t{n}", "meta": {"priority": n, "due": f"2024-0{n}-01T00:00:00Z"}, "status": "open"},
        )
        for n in range(1, 6)
    ]


TYPED = {"meta.priority": "integer", "meta.due": "datetime", "status": "keyword"}


@pytest.mark.parametrize("kind", ["server", "embedded"])
def test_a_range_on_a_nested_integer_index_filters_on_both_stores(kind: str, tmp_path: Path) -> None:
    store: VectorStore
    created: dict[str, Any] = {}
    if kind == "server":
        client = QdrantClient(":memory:")  # stands in for a Qdrant server, as in test_vectorstore.py
        record = client.create_payload_index

        def create_payload_index(collection: str, field: str, schema: Any, **extra: Any) -> Any:
            created[field] = schema.value
            return record(collection, field, schema, **extra)

        client.create_payload_index = create_payload_index  # type: ignore[method-assign]
        store = ServerStore(client, "tickets", 4, payload_indexes=TYPED)
    else:
        store = EmbeddedStore(tmp_path / "qdrant", "tickets", 4, payload_indexes=TYPED)
    try:
        store.ensure_collection()
        store.upsert(nested_points())
        query = [1.0, 2.0, 0.5, 0.1]

        def found(match: dict[str, Any]) -> list[str]:
            return sorted(hit.payload["mongo_id"] for hit in store.search(query, limit=10, match=match))

        assert found({"meta.priority": {"gte": 2, "lt": 4}}) == ["t2", "t3"]
        assert found({"meta.priority": {"gt": 4}, "status": "open"}) == ["t5"]
        assert found({"meta.priority": 3}) == ["t3"]
        assert found({"meta.due": {"gte": "2024-04-01T00:00:00Z"}}) == ["t4", "t5"]
        types = created if kind == "server" else index_types(store)
        assert types == {"mongo_id": "keyword", **TYPED}
    finally:
        store.close()


def test_the_collections_of_one_process_share_the_folder_and_keep_their_own_folders(tmp_path: Path) -> None:
    settings = QdrantSettings(qdrant_path=tmp_path / "qdrant", embedding_dim=4)
    stores = open_vector_stores(settings, tmp_path, {"tickets": {"meta.priority": "integer"}, "kb_articles": ["a"]})
    try:
        for store in stores.values():
            store.ensure_collection()
        assert (tmp_path / "qdrant" / "tickets").is_dir() and (tmp_path / "qdrant" / "kb_articles").is_dir()
        with pytest.raises(StoreInUse):
            open_vector_stores(settings, tmp_path, {"other": {}})
        stores.pop("tickets").close()
        with pytest.raises(StoreInUse):  # still held by the other store
            open_vector_stores(settings, tmp_path, {"other": {}})
    finally:
        for store in stores.values():
            store.close()
    open_vector_stores(settings, tmp_path, {"other": {}})["other"].close()  # released with the last store
