"""Qdrant's REST API over the embedded store (upserter.qdrant_rest.app): who is served, the shapes of its replies
and errors, names that follow aliases, and the deletion of a collection; on the real engine, in a tmp folder.

The replies are parsed with qdrant-client's own response models, so that a shape a client would refuse fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from qdrant_client.http import models

from upserter.qdrant_rest.app import RestKeys, create_app
from vecsync.store.embedded_catalog import EmbeddedCatalog
from vecsync.vectorstore import Point

SYNCED = "documents"
POINT = "00000000-0000-0000-0000-000000000001"
READ_WRITE, READ_ONLY = "read-write-key-0123456789", "read-only-key-0123456789"


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[EmbeddedCatalog]:
    catalog = EmbeddedCatalog(tmp_path / "qdrant", flush_interval_s=0)
    store = catalog.open(SYNCED, dim=4, payload_indexes={"owner": "keyword"})
    store.upsert([Point(POINT, [0.1, 0.2, 0.3, 0.4], {"mongo_id": "a", "text": "a ticket", "owner": "ann"})])
    catalog.open("notes", dim=2)
    yield catalog
    catalog.close()


def client(catalog: EmbeddedCatalog, keys: RestKeys | None = None, *, host: str = "127.0.0.1") -> TestClient:
    app = create_app(catalog, keys or RestKeys(), synced=lambda name: name == SYNCED or name.startswith(SYNCED + "-v"))
    return TestClient(app, client=(host, 50000))


def result(reply: Any) -> Any:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "ok" and isinstance(body["time"], float)
    return body["result"]


def error(reply: Any, status: int) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"status", "time"}, body
    message = body["status"]["error"]
    assert isinstance(message, str) and message
    return message


def test_collections_are_listed_and_described_as_qdrant_client_reads_them(catalog: EmbeddedCatalog) -> None:
    api = client(catalog)
    listed = models.CollectionsResponse.model_validate(result(api.get("/collections")))
    assert sorted(collection.name for collection in listed.collections) == ["documents", "notes"]
    info = models.CollectionInfo.model_validate(result(api.get("/collections/documents")))
    assert info.points_count == 1
    assert isinstance(info.config.params.vectors, models.VectorParams)
    assert info.config.params.vectors.size == 4 and info.config.params.vectors.distance == models.Distance.COSINE
    assert info.payload_schema["owner"].data_type == models.PayloadSchemaType.KEYWORD
    assert result(api.get("/collections/documents/exists")) == {"exists": True}
    assert result(api.get("/collections/missing/exists")) == {"exists": False}
    assert "doesn't exist" in error(api.get("/collections/missing"), 404)
    assert api.get("/").json()["version"].count(".") == 2  # qdrant-client compares it with its own version
    assert api.get("/healthz").status_code == 200


def test_a_name_follows_its_alias_as_on_a_qdrant_server(catalog: EmbeddedCatalog) -> None:
    built = catalog.open("documents-v2", dim=8)
    built.upsert([Point(POINT, [0.5] * 8, {"mongo_id": "a"}), Point(POINT[:-1] + "2", [0.1] * 8, {"mongo_id": "b"})])
    catalog.switch("documents", "documents-v2")
    api = client(catalog)
    info = models.CollectionInfo.model_validate(result(api.get("/collections/documents")))
    assert info.points_count == 2
    assert isinstance(info.config.params.vectors, models.VectorParams) and info.config.params.vectors.size == 8
    aliases = models.CollectionsAliasesResponse.model_validate(result(api.get("/aliases")))
    assert [(alias.alias_name, alias.collection_name) for alias in aliases.aliases] == [("documents", "documents-v2")]
    of_physical = result(api.get("/collections/documents-v2/aliases"))
    assert of_physical == {"aliases": [{"alias_name": "documents", "collection_name": "documents-v2"}]}


def test_without_a_key_only_this_host_is_served(catalog: EmbeddedCatalog) -> None:
    assert client(catalog, host="127.0.0.1").get("/collections").status_code == 200
    message = error(client(catalog, host="10.1.2.3").get("/collections"), 403)
    assert "QDRANT_API_KEY" in message


def test_keys_as_qdrant_has_them(catalog: EmbeddedCatalog) -> None:
    api = client(catalog, RestKeys(read_write=READ_WRITE, read_only=READ_ONLY), host="10.1.2.3")
    assert "API key" in error(api.get("/collections"), 401)
    assert "Invalid" in error(api.get("/collections", headers={"api-key": "wrong"}), 401)
    assert result(api.get("/collections", headers={"api-key": READ_ONLY}))
    assert result(api.get("/collections", headers={"Authorization": f"Bearer {READ_WRITE}"}))
    # A read-only key reads, but may not delete.
    assert "Write access denied" in error(api.delete("/collections/notes", headers={"api-key": READ_ONLY}), 403)
    assert result(api.get("/collections/notes/exists", headers={"api-key": READ_ONLY})) == {"exists": True}
    assert result(api.delete("/collections/notes", headers={"api-key": READ_WRITE})) is True
    assert result(api.get("/collections/notes/exists", headers={"api-key": READ_ONLY})) == {"exists": False}


def test_deleting_a_synced_collection_makes_it_again_empty_and_another_one_goes(catalog: EmbeddedCatalog) -> None:
    api = client(catalog)
    assert result(api.delete("/collections/documents")) is True
    info = models.CollectionInfo.model_validate(result(api.get("/collections/documents")))
    assert info.points_count == 0  # made again at once, empty: replaying stage 2 refills it
    assert isinstance(info.config.params.vectors, models.VectorParams) and info.config.params.vectors.size == 4
    assert result(api.delete("/collections/notes")) is True
    assert "notes" not in catalog.collections()
    assert result(api.delete("/collections/notes")) is False  # as Qdrant answers a collection that does not exist


def test_what_is_not_served_answers_qdrants_error_shape_naming_it(catalog: EmbeddedCatalog) -> None:
    api = client(catalog)
    message = error(api.post("/collections/documents/snapshots"), 501)
    assert "POST /collections/documents/snapshots" in message
    # GET .../points is no Qdrant route: the answer names the ones that read points.
    message = error(api.get("/collections/documents/points"), 404)
    assert "points/scroll" in message and "points/count" in message
    assert "not JSON" in error(api.post("/collections/documents/points/scroll", content=b"{oops"), 400)


def test_a_collection_the_api_opened_first_still_gets_the_upserters_payload_indexes(tmp_path: Path) -> None:
    """The API may read a collection before the upserter's consumers open it with the sync's indexes."""
    catalog = EmbeddedCatalog(tmp_path / "qdrant", flush_interval_s=0)
    try:
        catalog.open("documents", dim=4)
        api = client(catalog)
        assert "region" not in result(api.get("/collections/documents"))["payload_schema"]
        catalog.open("documents", dim=4, payload_indexes={"region": "keyword"})
        assert result(api.get("/collections/documents"))["payload_schema"]["region"]["data_type"] == "keyword"
    finally:
        catalog.close()


def test_scroll_pages_through_uuid_ids_with_a_json_offset(catalog: EmbeddedCatalog) -> None:
    store = catalog.open(SYNCED, dim=4)
    store.upsert([Point(f"00000000-0000-0000-0000-00000000000{n}", [0.1, 0.2, 0.3, n], {"n": n}) for n in range(2, 6)])
    api = client(catalog)
    seen: list[str] = []
    offset: Any = None
    while True:
        page = models.ScrollResult.model_validate(
            result(api.post("/collections/documents/points/scroll", json={"limit": 2, "offset": offset}))
        )
        seen.extend(str(point.id) for point in page.points)
        offset = page.next_page_offset
        if offset is None:
            break
    assert len(seen) == 5 and seen == sorted(seen)


def test_deleting_a_collection_an_alias_serves_deletes_the_alias_with_it(catalog: EmbeddedCatalog) -> None:
    """As a Qdrant server does (vecsync's server store then puts the aliases of a rebuilt collection back)."""
    catalog.switch("notes-name", "notes")
    api = client(catalog)
    assert result(api.delete("/collections/notes")) is True
    assert "notes" not in catalog.collections()
    assert catalog.aliases() == {}


def test_an_unexpected_failure_is_answered_in_qdrants_error_shape(
    catalog: EmbeddedCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("the engine's own failure")

    monkeypatch.setattr(EmbeddedCatalog, "collections", broken)
    assert "the engine's own failure" in error(client(catalog).get("/collections"), 500)
