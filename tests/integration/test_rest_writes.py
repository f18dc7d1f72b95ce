"""The writes of the upserter's Qdrant REST API (upserter.qdrant_rest.writes): refused where vecsync syncs the
collection or the setting does not allow them, and otherwise applied to the embedded store as a Qdrant server
applies them. Requests are qdrant-client's own, over HTTP, to the app served by uvicorn (tests/support/rest_api.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from tests.support.rest_api import RestApi
from tests.support.stores import index_types
from vecsync.store.embedded import EmbeddedStore

DIM = 4


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RestApi]:
    api = RestApi(tmp_path / "qdrant").start()
    yield api
    api.stop()


@pytest.fixture
def client(api: RestApi) -> Iterator[QdrantClient]:
    # Without the check qdrant-client runs on a thread of its own, which could outlive the test's server.
    client = QdrantClient(url=api.url, check_compatibility=False)
    yield client
    client.close()


def create(client: QdrantClient, name: str, *, sparse: bool = False) -> None:
    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)} if sparse else None,
    )


def store_of(api: RestApi, name: str) -> EmbeddedStore:
    store = api.catalog.open(name, dim=None)
    assert isinstance(store, EmbeddedStore)
    return store


class TestCollections:
    def test_a_collection_created_through_the_api_is_an_embedded_one_of_that_size_and_sparse_vector(
        self, api: RestApi, client: QdrantClient
    ) -> None:
        create(client, "notes", sparse=True)
        assert api.catalog.collections() == ["notes"]
        store = store_of(api, "notes")
        assert (store.dim, store.sparse_vector()) == (DIM, "bm25")
        assert client.collection_exists("notes")

    def test_a_collection_that_exists_is_not_made_again(self, client: QdrantClient) -> None:
        create(client, "notes")
        with pytest.raises(UnexpectedResponse) as refused:
            create(client, "notes")
        assert refused.value.status_code == 409

    def test_a_collection_the_engine_cannot_hold_as_asked_is_refused_naming_what(
        self, api: RestApi, client: QdrantClient
    ) -> None:
        with pytest.raises(UnexpectedResponse) as refused:
            client.create_collection(
                "notes", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT)
            )
        assert refused.value.status_code == 501
        assert "Dot distance" in str(refused.value)
        assert api.catalog.collections() == []

    def test_a_collection_name_that_is_not_a_plain_folder_name_is_refused(self, api: RestApi) -> None:
        body = {"vectors": {"size": DIM, "distance": "Cosine"}}
        answer = httpx.put(f"{api.url}/collections/.hidden", json=body)
        assert answer.status_code == 400, answer.text
        assert api.catalog.collections() == []

    def test_a_payload_index_is_created_in_the_engine(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes")
        client.create_payload_index("notes", "owner", models.PayloadSchemaType.KEYWORD)
        client.create_payload_index("notes", "size", models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER))
        # mongo_id's index comes with every collection of the embedded store (vecsync.store.embedded).
        assert index_types(store_of(api, "notes")) == {"mongo_id": "keyword", "owner": "keyword", "size": "integer"}


class TestAliases:
    def test_an_alias_is_created_switched_in_one_request_and_deleted(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes-v1")
        create(client, "notes-v2")
        client.update_collection_aliases(
            change_aliases_operations=[
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="notes-v1", alias_name="notes")
                )
            ]
        )
        assert api.catalog.aliases() == {"notes": "notes-v1"}
        client.update_collection_aliases(
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="notes")),
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="notes-v2", alias_name="notes")
                ),
            ]
        )
        assert api.catalog.aliases() == {"notes": "notes-v2"}
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="notes"))]
        )
        assert api.catalog.aliases() == {}

    def test_an_alias_is_renamed(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes-v1")
        api.catalog.switch("notes", "notes-v1")
        client.update_collection_aliases(
            change_aliases_operations=[
                models.RenameAliasOperation(
                    rename_alias=models.RenameAlias(old_alias_name="notes", new_alias_name="papers")
                )
            ]
        )
        assert api.catalog.aliases() == {"papers": "notes-v1"}

    def test_a_request_with_an_action_that_fails_changes_no_alias(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes-v1")
        with pytest.raises(UnexpectedResponse) as refused:
            client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name="notes-v1", alias_name="notes")
                    ),
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="missing")),
                ]
            )
        assert refused.value.status_code == 404
        assert api.catalog.aliases() == {}

    def test_an_alias_cannot_point_at_a_collection_that_does_not_exist(
        self, api: RestApi, client: QdrantClient
    ) -> None:
        with pytest.raises(UnexpectedResponse) as refused:
            client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name="nowhere", alias_name="notes")
                    )
                ]
            )
        assert refused.value.status_code == 404
        assert api.catalog.aliases() == {}


class TestRefusals:
    """Point writes bypass vecsync's version fence: refused in a collection it syncs, and where not allowed."""

    def test_every_write_to_a_synced_collection_or_a_name_serving_one_is_refused_with_the_reason(
        self, tmp_path: Path
    ) -> None:
        api = RestApi(tmp_path / "qdrant", synced=lambda name: name in ("documents", "documents-v1")).start()
        try:
            api.catalog.open("documents-v1", dim=DIM)
            api.catalog.switch("documents", "documents-v1")
            point = {"id": 1, "vector": [1.0] * DIM, "payload": {}}
            writes = [
                ("PUT", "/collections/documents/points", {"points": [point]}),
                ("PUT", "/collections/documents-v1/points", {"points": [point]}),
                ("POST", "/collections/documents/points/delete", {"points": [1]}),
                ("POST", "/collections/documents/points/payload", {"payload": {"a": 1}, "points": [1]}),
                ("POST", "/collections/documents/points/batch", {"operations": [{"delete": {"points": [1]}}]}),
                ("PUT", "/collections/documents/index", {"field_name": "owner", "field_schema": "keyword"}),
                ("PUT", "/collections/documents", {"vectors": {"size": DIM, "distance": "Cosine"}}),
                ("POST", "/collections/aliases", {"actions": [{"delete_alias": {"alias_name": "documents"}}]}),
            ]
            for method, path, body in writes:
                answer = httpx.request(method, f"{api.url}{path}", json=body)
                assert answer.status_code == 403, (method, path, answer.text)
                assert "version fence" in answer.json()["status"]["error"], (method, path)
            assert api.catalog.aliases() == {"documents": "documents-v1"}
            assert store_of(api, "documents-v1").count() == 0
        finally:
            api.stop()

    def test_a_collection_the_setting_does_not_name_is_refused_naming_the_setting(self, tmp_path: Path) -> None:
        api = RestApi(tmp_path / "qdrant", writable=frozenset({"scratch"})).start()
        try:
            body = {"vectors": {"size": DIM, "distance": "Cosine"}}
            assert httpx.put(f"{api.url}/collections/scratch", json=body).status_code == 200
            answer = httpx.put(f"{api.url}/collections/notes", json=body)
            assert answer.status_code == 403, answer.text
            assert "writable" in answer.json()["status"]["error"]
            assert api.catalog.collections() == ["scratch"]
        finally:
            api.stop()
