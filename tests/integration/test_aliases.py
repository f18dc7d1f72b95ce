"""The collection name as an alias (issue 25): the embedded store's alias file, and Qdrant's aliases on a server.

The server catalog runs on qdrant-client's in-memory mode, subclassed to record the alias requests it is sent (as
tests/integration/test_hybrid_server.py records its queries): the switch must be one update_collection_aliases
request holding the removal and the creation, in that order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from vecsync.errors import PermanentError
from vecsync.settings import QdrantSettings
from vecsync.store import open_vector_store
from vecsync.store.embedded_catalog import ALIASES_FILE, EmbeddedCatalog
from vecsync.store.server_catalog import ServerCatalog
from vecsync.vectorstore import Point

ID = "7f1c8a52-0000-4000-8000-000000000001"


def point(dim: int, text: str = "a ticket") -> Point:
    return Point(ID, [1.0] + [0.0] * (dim - 1), {"mongo_id": "doc", "text": text})


# The embedded store ---------------------------------------------------------------------------------------------


def test_an_embedded_name_serves_its_own_folder_until_an_alias_takes_it(tmp_path: Path) -> None:
    catalog = EmbeddedCatalog(tmp_path)
    try:
        assert catalog.resolve("documents") is None
        catalog.open("documents", dim=384).upsert([point(384, "old")])
        assert catalog.resolve("documents") == "documents"  # adopted: no alias, no copy
        catalog.open("documents-v1", dim=256).upsert([point(256, "new")])
        catalog.switch("documents", "documents-v1")
        assert catalog.resolve("documents") == "documents-v1"
        assert catalog.aliases() == {"documents": "documents-v1"}
        assert catalog.collections() == ["documents", "documents-v1"]
        assert catalog.open("documents", dim=None).dim == 384, "the old collection keeps its own size"
    finally:
        catalog.close()
    # After a reopen, by every way in: the name serves the new collection.
    reopened = open_vector_store(QdrantSettings(qdrant_collection="documents", qdrant_path=tmp_path), tmp_path)
    try:
        assert reopened.collection == "documents-v1" and reopened.dim == 256
        assert reopened.payloads([ID], ["text"])[ID]["text"] == "new"
    finally:
        reopened.close()


def test_an_interrupted_embedded_switch_keeps_the_old_mapping(tmp_path: Path) -> None:
    catalog = EmbeddedCatalog(tmp_path)
    try:
        catalog.open("documents-v1", dim=8)
        catalog.open("documents-v2", dim=8)
        catalog.switch("documents", "documents-v1")
        # A crash after writing the new mapping beside the file, before the rename: the file is as it was.
        (tmp_path / (ALIASES_FILE + ".partial")).write_text(json.dumps({"documents": "documents-v2"}))
        assert catalog.resolve("documents") == "documents-v1"
        catalog.switch("documents", "documents-v2")  # the next switch overwrites what the crash left
        assert catalog.resolve("documents") == "documents-v2"
        assert not (tmp_path / (ALIASES_FILE + ".partial")).exists()
    finally:
        catalog.close()


def test_an_embedded_drop_removes_the_folder_and_refuses_the_served_collection(tmp_path: Path) -> None:
    catalog = EmbeddedCatalog(tmp_path)
    try:
        catalog.open("documents", dim=8).upsert([point(8)])
        catalog.open("documents-v1", dim=8)
        catalog.switch("documents", "documents-v1")
        with pytest.raises(PermanentError, match="serves it"):
            catalog.drop("documents-v1")
        catalog.drop("documents")
        assert not (tmp_path / "documents").exists()
        assert catalog.collections() == ["documents-v1"]
        with pytest.raises(PermanentError, match="no such"):
            catalog.switch("documents", "documents-v9")
    finally:
        catalog.close()


def test_searches_run_on_two_collections_of_different_sizes_at_once(tmp_path: Path) -> None:
    catalog = EmbeddedCatalog(tmp_path)
    try:
        old, new = catalog.open("documents", dim=4), catalog.open("documents-v1", dim=3)
        old.upsert([point(4)])
        new.upsert([point(3)])
        assert [hit.id for hit in old.search([1.0, 0, 0, 0], limit=1)] == [ID]
        assert [hit.id for hit in new.search([1.0, 0, 0], limit=1)] == [ID]
        assert catalog.open("documents", dim=None) is old
    finally:
        catalog.close()


# A Qdrant server ---------------------------------------------------------------------------------------------


class RecordingClient(QdrantClient):
    """qdrant-client's in-memory mode, keeping the alias and collection requests it is sent."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.requests: list[tuple[str, Any]] = []

    def update_collection_aliases(self, change_aliases_operations: Any, **kwargs: Any) -> bool:
        self.requests.append(("update_collection_aliases", list(change_aliases_operations)))
        return super().update_collection_aliases(change_aliases_operations=change_aliases_operations, **kwargs)

    def delete_collection(self, collection_name: str, **kwargs: Any) -> bool:
        self.requests.append(("delete_collection", collection_name))
        return super().delete_collection(collection_name, **kwargs)


@pytest.fixture
def server() -> RecordingClient:
    return RecordingClient()


def test_a_switch_on_a_server_is_one_alias_request(server: RecordingClient) -> None:
    catalog = ServerCatalog(server)
    catalog.open("documents-v1", dim=8)
    catalog.open("documents-v2", dim=4)
    catalog.switch("documents", "documents-v1")
    assert server.requests == [
        (
            "update_collection_aliases",
            [
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="documents-v1", alias_name="documents")
                )
            ],
        )
    ]
    server.requests.clear()
    catalog.switch("documents", "documents-v2")
    assert server.requests == [
        (
            "update_collection_aliases",
            [
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="documents")),
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="documents-v2", alias_name="documents")
                ),
            ],
        )
    ], "the removal and the creation must travel in one request, which Qdrant applies atomically"
    assert catalog.resolve("documents") == "documents-v2"
    assert catalog.open("documents-v1", dim=None).dim == 8


def test_an_adopted_server_collection_gives_its_name_to_the_alias_at_its_first_switch(server: RecordingClient) -> None:
    catalog = ServerCatalog(server)
    catalog.open("documents", dim=8).upsert([point(8, "old")])
    assert catalog.resolve("documents") == "documents"
    catalog.open("documents-v1", dim=4).upsert([point(4, "new")])
    catalog.switch("documents", "documents-v1")
    assert [name for name, _ in server.requests] == ["delete_collection", "update_collection_aliases"]
    assert server.requests[0] == ("delete_collection", "documents")
    assert catalog.resolve("documents") == "documents-v1"
    assert catalog.collections() == ["documents-v1"]
    # Every way in follows the alias: a store opened by the name reads the new collection.
    assert server.retrieve("documents", [ID], with_payload=True)[0].payload == {"mongo_id": "doc", "text": "new"}


def test_a_server_drop_refuses_the_served_collection(server: RecordingClient) -> None:
    catalog = ServerCatalog(server)
    catalog.open("documents-v1", dim=8)
    catalog.open("documents-v2", dim=8)
    catalog.switch("documents", "documents-v2")
    with pytest.raises(PermanentError, match="serves it"):
        catalog.drop("documents-v2")
    catalog.drop("documents-v1")
    assert catalog.collections() == ["documents-v2"]


def test_a_rebuilt_server_collection_keeps_the_names_that_serve_it(server: RecordingClient) -> None:
    """`vecsync rebuild` recreates the physical collection; Qdrant deletes a collection's aliases with it, so the
    store puts them back, or clients of the name would find nothing after a model change."""
    catalog = ServerCatalog(server)
    store = catalog.open("documents-v2", dim=4)
    store.upsert([point(4)])
    catalog.switch("documents", "documents-v2")
    store.recreate()
    assert store.count() == 0
    assert catalog.resolve("documents") == "documents-v2"
    assert catalog.aliases() == {"documents": "documents-v2"}
