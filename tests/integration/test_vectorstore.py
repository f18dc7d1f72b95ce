"""The store, on both implementations: the version fence in the engine, equal results, and the embedded store's own
duties (one opener, its files across a reopen, flushing, the store of an earlier release).

``server`` runs the implementation for a Qdrant server on qdrant-client's in-memory mode, which stands in for a
Qdrant server (no Qdrant server binary runs here); ``embedded`` runs Qdrant's engine in this process, on disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stores import ALL_KINDS, KINDS, make_store
from vecsync.errors import ConfigurationError
from vecsync.settings import QdrantSettings
from vecsync.store import open_vector_store
from vecsync.store.embedded import EmbeddedStore
from vecsync.vectorstore import CollectionMissing, Point, StoreInUse, VectorStore, with_version_numbers

PID = "00000000-0000-0000-0000-000000000001"


def pid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def point(version: str, text: str, *, model: str = "m1") -> Point:
    payload = {"mongo_id": "a", "text": text, "text_sha256": f"sha of {text}", "model": model, "version": version}
    return Point(PID, [1.0, 0.0, 0.0, float(len(text))], payload)


def held(store: VectorStore) -> tuple[str, str] | None:
    records = store.retrieve([PID])
    if not records:
        return None
    payload = records[0].payload
    return payload["version"], payload["text"]


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    store = make_store(request.param, tmp_path, dim=4)
    yield store
    store.close()


class TestWritesIfNewer:
    """Every write of the pipeline is conditional in the engine itself: the point is the fence."""

    def test_an_upsert_applies_only_over_an_older_or_missing_point(self, store: VectorStore) -> None:
        store.write_if_newer(upserts=[point("200-0", "b")])
        assert held(store) == ("200-0", "b"), "a missing point is inserted"
        store.write_if_newer(upserts=[point("100-0", "a")])
        assert held(store) == ("200-0", "b"), "an older version never overwrites"
        store.write_if_newer(upserts=[point("200-0", "b again")])
        assert held(store) == ("200-0", "b"), "the same version again is a no-op"
        store.write_if_newer(upserts=[point("200-1", "c")])
        assert held(store) == ("200-1", "c")
        store.write_if_newer(upserts=[point("1000-0", "d")])  # newer as a number, older as a string
        assert held(store) == ("1000-0", "d")
        payload = store.payloads([PID])[PID]
        assert (payload["version_ms"], payload["version_seq"]) == (1000, 0)

    def test_the_newest_of_two_writes_of_one_point_in_one_call_wins(self, store: VectorStore) -> None:
        store.write_if_newer(upserts=[point("300-0", "c"), point("200-0", "b")])
        assert held(store) == ("300-0", "c")
        store.write_if_newer(upserts=[point("400-0", "d"), point("500-0", "e")])
        assert held(store) == ("500-0", "e")

    def test_a_payload_applies_only_over_an_older_point_of_the_same_text_and_model(self, store: VectorStore) -> None:
        store.write_if_newer(upserts=[point("200-0", "b")])
        for version, text, model in [("100-0", "b", "m1"), ("300-0", "other", "m1"), ("300-0", "b", "m2")]:
            store.write_if_newer(payloads={PID: {**point(version, text, model=model).payload, "owner": "x"}})
            assert "owner" not in store.payloads([PID])[PID], (version, text, model)
        store.write_if_newer(payloads={PID: {**point("300-0", "b").payload, "owner": "Bob"}})
        assert store.payloads([PID])[PID]["owner"] == "Bob"
        assert held(store) == ("300-0", "b")

    def test_a_payload_never_creates_a_point(self, store: VectorStore) -> None:
        store.write_if_newer(payloads={PID: point("300-0", "b").payload})
        assert held(store) is None

    def test_a_delete_removes_only_an_older_point(self, store: VectorStore) -> None:
        store.write_if_newer(upserts=[point("200-0", "b")])
        store.write_if_newer(deletes={PID: "100-0"})
        assert held(store) == ("200-0", "b")
        store.write_if_newer(deletes={PID: "200-0"})
        assert held(store) == ("200-0", "b"), "a delete of the same version leaves the point"
        store.write_if_newer(deletes={PID: "200-1"})
        assert held(store) is None

    def test_a_point_without_a_numeric_version_counts_as_older(self, store: VectorStore) -> None:
        store.upsert([Point(PID, [1.0, 0.0, 0.0, 0.0], {"mongo_id": "a", "text": "by hand", "version": "900-0"})])
        store.write_if_newer(upserts=[point("100-0", "a")])
        assert held(store) == ("100-0", "a")

    def test_one_call_applies_each_write_against_its_own_point(self, store: VectorStore) -> None:
        old = {n: Point(pid(n), [1.0, float(n), 0.0, 0.0], {"mongo_id": str(n), "version": f"{n}00-0"}) for n in (1, 2)}
        store.write_if_newer(upserts=list(old.values()))
        newer = Point(pid(1), [0.0, 1.0, 0.0, 0.0], {"mongo_id": "1", "version": "150-0"})
        older = Point(pid(2), [0.0, 1.0, 0.0, 0.0], {"mongo_id": "2", "version": "150-0"})
        fresh = Point(pid(3), [0.0, 0.0, 1.0, 0.0], {"mongo_id": "3", "version": "1-0"})
        store.write_if_newer(upserts=[newer, older, fresh], deletes={pid(2): "199-0"})
        versions = {p: payload["version"] for p, payload in store.payloads([pid(1), pid(2), pid(3)]).items()}
        assert versions == {pid(1): "150-0", pid(2): "200-0", pid(3): "1-0"}

    def test_a_batch_over_existing_points_moves_each_only_forward(self, store: VectorStore) -> None:
        def at(n: int, version: str) -> Point:
            return Point(pid(n), [1.0, float(n), 0.0, 0.5], {"mongo_id": str(n), "version": version})

        store.write_if_newer(upserts=[at(1, "100-0"), at(2, "250-0"), at(3, "400-0")])
        store.upsert([at(4, "900-0")])  # by hand: no version numbers, so older than any write
        store.write_if_newer(upserts=[at(1, "300-0"), at(2, "300-0"), at(3, "200-0"), at(4, "350-0"), at(5, "1-0")])
        versions = {p: payload["version"] for p, payload in store.payloads([pid(n) for n in range(1, 6)]).items()}
        assert versions == {pid(1): "300-0", pid(2): "300-0", pid(3): "400-0", pid(4): "350-0", pid(5): "1-0"}


class TestCollection:
    def test_a_dropped_collection_is_missing_until_created_again(self, store: VectorStore) -> None:
        store.write_if_newer(upserts=[point("200-0", "b")])
        store.drop()
        with pytest.raises(CollectionMissing):
            store.write_if_newer(upserts=[point("300-0", "c")])
        with pytest.raises(CollectionMissing):
            store.count()
        store.ensure_collection()
        assert store.count() == 0
        store.write_if_newer(upserts=[point("100-0", "a")])
        assert held(store) == ("100-0", "a"), "a recreated collection has no fence left"

    def test_recreate_empties_the_collection(self, store: VectorStore) -> None:
        store.upsert([Point(pid(n), [1.0, 0.0, 0.0, float(n)], {"n": n}) for n in range(5)])
        store.recreate()
        assert store.count() == 0
        assert store.scroll(limit=10, offset=None) == ({}, None)


def sample(n: int) -> Point:
    products = ["Brambleway Print 400", "Lumen Router", "Quill Scanner"]
    vector = [1.0, (n % 7) / 7.0, (n % 5) / 5.0, (n % 3) / 3.0]
    payload = {
        "mongo_id": f"d{n}",
        "product": products[n % 3],
        "text": f"ticket {n}",
        "date": {"$date": 1_700_000_000_000 + n},
        "tags": ["a", "b"] if n % 2 else [],
        "version": f"{100 + n}-{n % 4}",
    }
    return Point(pid(n), vector, payload)


def test_both_implementations_give_the_same_results(tmp_path: Path) -> None:
    """Ids as strings, scores and payloads: identical through either implementation, for every operation."""
    stores = {kind: make_store(kind, tmp_path / kind, dim=4, collection="same") for kind in ALL_KINDS}
    try:
        answers: dict[str, list[Any]] = {kind: [] for kind in ALL_KINDS}
        for kind, store in stores.items():
            store.write_if_newer(upserts=[sample(n) for n in range(40)], deletes={pid(3): "999-0"})
            store.write_if_newer(payloads={pid(5): {**sample(5).payload, "owner": "Cy", "version": "999-9"}})
            answer = answers[kind]
            hits = store.search([1.0, 0.5, 0.2, 0.1], limit=7)
            filtered = store.search([1.0, 0.5, 0.2, 0.1], limit=5, match={"product": "Lumen Router"})
            answer.append([(hit.id, hit.payload) for hit in hits])
            answer.append([(hit.id, hit.payload) for hit in filtered])
            answer.append([round(hit.score, 5) for hit in hits + filtered])
            answer.append(store.count())
            answer.append(store.payloads([pid(1), pid(3), pid(5)], fields=["product", "owner"]))
            answer.append(store.payloads([pid(2)]))
            records = store.retrieve([pid(7), pid(3)], with_vectors=True)
            answer.append([(r.id, r.payload, [round(x, 5) for x in r.vector or []]) for r in records])
            pages, offset = [], None
            while True:
                page, offset = store.scroll(limit=9, offset=offset, fields=["mongo_id"])
                pages.append(page)
                if offset is None:
                    break
            answer.append(pages)
        assert answers["server"] == answers["embedded"]
        assert answers["rest"] == answers["server"], "the server implementation over HTTP, on Qdrant's engine"
        assert all(isinstance(hit_id, str) for hit_id, _payload in answers["embedded"][0])
    finally:
        for store in stores.values():
            store.close()


@pytest.mark.parametrize(("version", "accepted"), [("1.15.4", False), ("1.16.0", True), ("1.19.1", True)])
def test_the_fence_refuses_a_qdrant_server_without_conditional_writes(version: str, accepted: bool) -> None:
    from qdrant_client import QdrantClient

    from tests.support.fake_api import FakeApi
    from vecsync.store.server import ServerStore

    qdrant = FakeApi()  # answers GET / as a Qdrant server does
    qdrant.body = {"title": "qdrant - vector search engine", "version": version, "commit": "0"}
    try:
        store = ServerStore(QdrantClient(url=qdrant.url, timeout=5, check_compatibility=False), "documents", 4)
        if accepted:
            store.require_conditional_writes()
        else:
            with pytest.raises(ConfigurationError, match=r"1\.16"):
                store.require_conditional_writes()
    finally:
        qdrant.close()


class TestEmbeddedStore:
    def settings(self, tmp_path: Path) -> QdrantSettings:
        return QdrantSettings(qdrant_path=tmp_path / "qdrant", embedding_dim=4)

    def test_the_embedded_default_opens_qdrants_engine_and_keeps_every_write_across_a_reopen(
        self, tmp_path: Path
    ) -> None:
        store = open_vector_store(self.settings(tmp_path), tmp_path)
        assert isinstance(store, EmbeddedStore)
        store.ensure_collection()
        store.upsert([Point(pid(n), [1.0, 0.0, 0.0, float(n)], {"n": n}) for n in range(50)])
        store.recreate()
        store.write_if_newer(
            upserts=[Point(pid(n), [1.0, 0.0, 0.0, float(n)], {"n": n, "version": f"{n}-0"}) for n in range(30)]
        )
        store.close()
        store.close()  # twice is harmless

        reopened = open_vector_store(self.settings(tmp_path), tmp_path)
        assert reopened.count() == 30
        assert reopened.payloads([pid(29)])[pid(29)]["version_ms"] == 29
        reopened.close()

    def test_only_one_process_may_open_it_and_the_refusal_says_what_to_do(self, tmp_path: Path) -> None:
        store = open_vector_store(self.settings(tmp_path), tmp_path)
        try:
            with pytest.raises(StoreInUse, match=rf"in use by PID {os.getpid()} .*QDRANT_URL"):
                open_vector_store(self.settings(tmp_path), tmp_path)
            opener = (
                "import sys; from pathlib import Path; from vecsync.settings import QdrantSettings;"
                "from vecsync.store import open_vector_store; from vecsync.vectorstore import StoreInUse\n"
                "try:\n"
                "    open_vector_store(QdrantSettings(qdrant_path=Path(sys.argv[1]), embedding_dim=4), Path('.'))\n"
                "except StoreInUse:\n"
                "    sys.exit(7)\n"
            )
            other = subprocess.run([sys.executable, "-c", opener, str(tmp_path / "qdrant")], timeout=120, check=False)
            assert other.returncode == 7
        finally:
            store.close()
        open_vector_store(self.settings(tmp_path), tmp_path).close()  # released on close

    def test_a_collection_of_another_size_is_refused_with_both_sizes(self, tmp_path: Path) -> None:
        store = open_vector_store(self.settings(tmp_path), tmp_path)
        store.ensure_collection()
        store.close()
        other = QdrantSettings(qdrant_path=tmp_path / "qdrant", embedding_dim=8)
        with pytest.raises(ConfigurationError, match="4 dimensions, but EMBEDDING_DIM is 8"):
            open_vector_store(other, tmp_path)
        open_vector_store(self.settings(tmp_path), tmp_path).close()  # the refusal released the folder

    def test_filtered_fields_get_a_keyword_index(self, tmp_path: Path) -> None:
        import qdrant_edge as qe

        store = open_vector_store(self.settings(tmp_path), tmp_path, payload_indexes=["product", "owner"])
        store.ensure_collection()
        path = store.path  # type: ignore[attr-defined]
        store.close()
        shard = qe.EdgeShard.load(str(path))
        try:
            schema = shard.info().payload_schema
            assert {name: schema[name].data_type for name in schema} == dict.fromkeys(
                ["mongo_id", "product", "owner"], qe.PayloadSchemaType.Keyword
            )
        finally:
            shard.close()


class FlushCounter:
    """Stands in front of the engine's shard and counts its flushes."""

    def __init__(self, shard: Any) -> None:
        self._shard = shard
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        self._shard.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)


def test_with_no_flush_interval_every_write_is_flushed_before_it_returns(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, "documents", 4, flush_interval_s=0)
    store.ensure_collection()
    counter = FlushCounter(store._shard)
    store._shard = counter  # type: ignore[assignment]
    store.write_if_newer(upserts=[point("200-0", "b")])
    assert counter.flushes == 1
    store.write_if_newer(deletes={PID: "300-0"})
    assert counter.flushes == 2
    store.close()
    assert counter.flushes == 3, "close() flushes too"


class TestStoreOfAnEarlierRelease:
    """Earlier releases kept the embedded store in qdrant-client's local mode; the test writes one the same way."""

    def old_store(self, folder: Path, points: int) -> dict[str, Any]:
        from qdrant_client import QdrantClient, models

        client = QdrantClient(path=str(folder))
        client.create_collection(
            "documents", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
        )
        client.create_collection("other", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
        structs = [
            models.PointStruct(
                id=pid(n), vector=[1.0, 0.5, 0.0, float(n)], payload=with_version_numbers(sample(n).payload)
            )
            for n in range(points)
        ]
        client.upsert("documents", structs)
        client.upsert("other", structs[:3])
        before = {
            str(r.id): (r.payload, r.vector) for r in client.retrieve("documents", [pid(0), pid(7)], with_vectors=True)
        }
        client.close()
        return before

    def test_it_is_refused_at_start_with_the_command_that_migrates_it(self, tmp_path: Path) -> None:
        self.old_store(tmp_path / "qdrant", 3)
        with pytest.raises(ConfigurationError, match=r"local mode.*`vecsync-upserter migrate-store`"):
            open_vector_store(QdrantSettings(qdrant_path=tmp_path / "qdrant", embedding_dim=4), tmp_path)

    def test_make_run_stops_before_starting_anything_and_names_the_command(self, tmp_path: Path) -> None:
        from tests.support.stack import stack_settings
        from vecsync_local.stack import LocalStack

        self.old_store(tmp_path / "data" / "qdrant", 3)
        stack = LocalStack(stack_settings(tmp_path / "data"))
        with pytest.raises(ConfigurationError, match=r"`vecsync-upserter migrate-store`"):
            stack.start()
        assert not stack.servers and not stack.stages

    def test_the_command_migrates_the_store_the_upserter_would_open(self, tmp_path: Path) -> None:
        self.old_store(tmp_path / "qdrant", 5)
        command = [str(Path(sys.executable).parent / "vecsync-upserter"), "migrate-store"]
        env = {**os.environ, "DATA_DIR": str(tmp_path), "EMBEDDING_DIM": "4"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert "Migrated collection 'documents': 5 points." in done.stdout
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert again.returncode == 0 and "Nothing to migrate" in again.stdout
        store = open_vector_store(QdrantSettings(qdrant_path=tmp_path / "qdrant", embedding_dim=4), tmp_path)
        assert store.count() == 5
        store.close()

    def test_the_migration_copies_every_point_and_keeps_the_old_files(self, tmp_path: Path) -> None:
        from vecsync.store import local_mode

        folder = tmp_path / "qdrant"
        before = self.old_store(folder, 700)
        assert local_mode.migrate(folder) == {"documents": 700, "other": 3}
        assert (folder / "local-mode-backup" / "meta.json").is_file()
        assert (folder / "local-mode-backup" / "collection" / "documents" / "storage.sqlite").is_file()
        assert local_mode.migrate(folder) == {}, "a second run has nothing to do"

        store = open_vector_store(QdrantSettings(qdrant_path=folder, embedding_dim=4), tmp_path)
        try:
            store.ensure_collection()
            assert store.count() == 700
            records = store.retrieve([pid(0), pid(7)], with_vectors=True)
            after = {r.id: (r.payload, r.vector) for r in records}
            assert after.keys() == before.keys()
            for key, (payload, vector) in before.items():
                assert after[key][0] == payload
                assert after[key][1] == pytest.approx(vector, abs=1e-6)
            # The versions came along, so the fence holds at once.
            store.write_if_newer(upserts=[Point(pid(7), [0.0, 1.0, 0.0, 0.0], {"mongo_id": "d7", "version": "1-0"})])
            assert store.payloads([pid(7)])[pid(7)]["version"] == before[pid(7)][0]["version"]
        finally:
            store.close()

    def test_an_interrupted_migration_runs_again_from_the_start(self, tmp_path: Path) -> None:
        from vecsync.store import local_mode

        folder = tmp_path / "qdrant"
        self.old_store(folder, 10)
        (folder / "documents.partial" / "segments").mkdir(parents=True)  # a copy cut short
        assert local_mode.migrate(folder)["documents"] == 10
        assert not (folder / "documents.partial").exists()


def test_the_upserters_read_routes_answer_as_the_embedded_store_does(tmp_path: Path) -> None:
    """What the CLI gets through the upserter that holds the store: the same as from the store itself."""
    from upserter.store_api import store_routes
    from vecsync.authenticated_routes import AuthenticatedRoutes
    from vecsync.cli.store import UpserterStore
    from vecsync.runtime import MetricsServer

    store = make_store("embedded", tmp_path, dim=4)
    server = MetricsServer(
        "127.0.0.1", 0, post_routes=AuthenticatedRoutes(store_routes(store), "a key of the upserter")
    ).start()
    try:
        store.write_if_newer(upserts=[sample(n) for n in range(30)])
        remote = UpserterStore(f"http://127.0.0.1:{server.port}", "documents", 30, api_key="a key of the upserter")
        query = [1.0, 0.5, 0.2, 0.1]
        assert remote.search(query, limit=5, match={"product": "Quill Scanner"}) == store.search(
            query, limit=5, match={"product": "Quill Scanner"}
        )
        assert remote.search(query, limit=5) == store.search(query, limit=5)
        assert remote.count() == store.count() == 30
        assert remote.payloads([pid(4), pid(99)], ["mongo_id"]) == {pid(4): {"mongo_id": "d4"}}
        assert remote.scroll(limit=7, offset=pid(3)) == store.scroll(limit=7, offset=pid(3))
        remote.recreate()
        assert store.count() == 0
    finally:
        server.close()
        store.close()
