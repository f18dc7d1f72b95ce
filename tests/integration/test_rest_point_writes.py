"""The point writes of the upserter's Qdrant REST API (upserter.qdrant_rest.writes) as qdrant-client sends them,
read back from the embedded store itself, not through the API: upserts (conditional ones, the version fence's),
deletes and payload writes by ids and by filter, and the batches vecsync.store.server sends.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

import httpx
import pytest
from qdrant_client import QdrantClient, models

from tests.integration.test_rest_writes import api, client, create, store_of
from tests.support.rest_api import RestApi
from vecsync.store.server import older_than

__all__ = ["api", "client"]  # the fixtures, shared with test_rest_writes


class TestPointWrites:
    """Each write as qdrant-client sends it, read back from the embedded store itself (not through the API)."""

    IDS: ClassVar[list[str]] = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"point-{n}")) for n in range(3)]

    def point(self, n: int, version_ms: int, **payload: object) -> models.PointStruct:
        return models.PointStruct(
            id=self.IDS[n],
            vector=[1.0, float(n), 0.0, 0.5],
            payload={"version_ms": version_ms, "version_seq": 0, **payload},
        )

    def test_an_upsert_writes_dense_and_sparse_vectors_and_payloads(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes", sparse=True)
        sparse = models.SparseVector(indices=[3, 7], values=[0.5, 1.5])
        client.upsert(
            "notes",
            [models.PointStruct(id=self.IDS[0], vector={"": [1.0, 0.0, 0.0, 0.0], "bm25": sparse}, payload={"a": 1})],
        )
        client.upsert("notes", models.Batch(ids=[7], vectors=[[0.0, 1.0, 0.0, 0.0]], payloads=[{"b": 2}]))
        records = {record.id: record for record in store_of(api, "notes").retrieve([self.IDS[0], 7], with_vectors=True)}
        assert records[self.IDS[0]].payload == {"a": 1}
        assert records[self.IDS[0]].vector == pytest.approx([1.0, 0.0, 0.0, 0.0])
        assert records["7"].payload == {"b": 2}
        with store_of(api, "notes").engine("read") as shard:
            (stored,) = shard.retrieve([self.IDS[0]], False, True)
        assert isinstance(stored.vector, dict)
        assert list(stored.vector["bm25"].indices) == [3, 7]

    def test_a_conditional_upsert_replaces_only_a_point_its_filter_matches_and_inserts_a_missing_one(
        self, api: RestApi, client: QdrantClient
    ) -> None:
        create(client, "notes")
        client.upsert("notes", [self.point(0, 5, text="stored")])
        client.upsert("notes", [self.point(0, 3, text="older")], update_filter=older_than((3, 0)))
        client.upsert("notes", [self.point(1, 3, text="new")], update_filter=older_than((3, 0)))
        payloads = store_of(api, "notes").payloads(self.IDS[:2], ["text"])
        assert payloads == {self.IDS[0]: {"text": "stored"}, self.IDS[1]: {"text": "new"}}
        client.upsert("notes", [self.point(0, 7, text="newer")], update_filter=older_than((7, 0)))
        assert store_of(api, "notes").payloads([self.IDS[0]], ["text"]) == {self.IDS[0]: {"text": "newer"}}

    def test_deletes_and_payload_writes_by_ids_and_by_filter(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes")
        client.upsert("notes", [self.point(n, 5, owner="ann", text=f"t{n}") for n in range(3)])
        selected = models.Filter(must=[models.HasIdCondition(has_id=[self.IDS[1]])])
        client.set_payload("notes", {"owner": "bob"}, points=models.FilterSelector(filter=selected))
        client.overwrite_payload("notes", {"only": True}, points=[self.IDS[2]])
        store = store_of(api, "notes")
        assert store.payloads(self.IDS, ["owner", "text", "only"]) == {
            self.IDS[0]: {"owner": "ann", "text": "t0"},
            self.IDS[1]: {"owner": "bob", "text": "t1"},
            self.IDS[2]: {"only": True},
        }
        client.delete("notes", points_selector=models.PointIdsList(points=[self.IDS[0]]))
        client.delete("notes", points_selector=models.FilterSelector(filter=selected))
        assert list(store.payloads(self.IDS)) == [self.IDS[2]]

    def test_payload_keys_are_deleted_and_payloads_cleared(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes")
        client.upsert("notes", [self.point(n, 5, owner="ann", text=f"t{n}") for n in range(2)])
        client.delete_payload("notes", ["owner"], points=[self.IDS[0]])
        client.clear_payload("notes", points_selector=models.PointIdsList(points=[self.IDS[1]]))
        assert store_of(api, "notes").payloads(self.IDS[:2]) == {
            self.IDS[0]: {"version_ms": 5, "version_seq": 0, "text": "t0"},
            self.IDS[1]: {},
        }

    def test_a_vector_the_engine_does_not_take_is_refused_naming_it(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes")
        answer = httpx.put(
            f"{api.url}/collections/notes/points",
            json={"points": [{"id": 1, "vector": {"text": {"text": "infer me", "model": "m"}}}]},
        )
        assert answer.status_code == 501, answer.text
        assert "vector 'text'" in answer.json()["status"]["error"]
        assert store_of(api, "notes").count() == 0

    def test_a_batch_applies_the_fences_operations_in_order(self, api: RestApi, client: QdrantClient) -> None:
        create(client, "notes")
        client.upsert("notes", [self.point(0, 5, text="stored"), self.point(1, 5, text="gone")])
        this_if_older = models.Filter(must=[models.HasIdCondition(has_id=[self.IDS[1]]), older_than((6, 0))])
        operations: list[models.UpdateOperation] = [
            models.DeleteOperation(delete=models.FilterSelector(filter=this_if_older)),
            models.UpsertOperation(
                upsert=models.PointsList(points=[self.point(0, 4, text="older")], update_filter=older_than((4, 0)))
            ),
            models.UpsertOperation(
                upsert=models.PointsList(points=[self.point(2, 6, text="new")], update_filter=older_than((6, 0)))
            ),
            models.OverwritePayloadOperation(
                overwrite_payload=models.SetPayload(
                    payload={"version_ms": 9, "version_seq": 0, "text": "moved"},
                    filter=models.Filter(must=[models.HasIdCondition(has_id=[self.IDS[2]]), older_than((9, 0))]),
                )
            ),
        ]
        results = client.batch_update_points("notes", update_operations=operations)
        assert [result.status for result in results] == [models.UpdateStatus.COMPLETED] * 4
        assert store_of(api, "notes").payloads(self.IDS, ["text"]) == {
            self.IDS[0]: {"text": "stored"},
            self.IDS[2]: {"text": "moved"},
        }
