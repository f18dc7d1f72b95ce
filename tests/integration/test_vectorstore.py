"""The embedded Qdrant store: its collections commit to a write-ahead log, and keep every write across a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vecsync.settings import QdrantSettings
from vecsync.vectorstore import Point, VectorStore


def journal_modes(folder: Path) -> set[str]:
    files = list(folder.rglob("storage.sqlite"))
    assert files, "the collection's SQLite file"
    return {sqlite3.connect(file).execute("PRAGMA journal_mode").fetchone()[0] for file in files}


def test_embedded_collections_commit_to_a_write_ahead_log_and_keep_every_write(tmp_path: Path) -> None:
    settings = QdrantSettings(qdrant_path=tmp_path / "qdrant", embedding_dim=4)
    store = VectorStore.open(settings, tmp_path)
    store.ensure_collection()
    assert journal_modes(tmp_path / "qdrant") == {"wal"}
    store.upsert([Point(f"00000000-0000-0000-0000-{n:012d}", [1.0, 0.0, 0.0, float(n)], {"n": n}) for n in range(50)])
    store.recreate()  # a new SQLite file, which must be switched too
    assert journal_modes(tmp_path / "qdrant") == {"wal"}
    store.upsert([Point(f"00000000-0000-0000-0000-{n:012d}", [1.0, 0.0, 0.0, float(n)], {"n": n}) for n in range(30)])
    store.close()

    reopened = VectorStore.open(settings, tmp_path)
    assert reopened.count() == 30
    reopened.close()


PID = "00000000-0000-0000-0000-000000000001"


def point(version: str, text: str, *, model: str = "m1") -> Point:
    payload = {"mongo_id": "a", "text": text, "text_sha256": f"sha of {text}", "model": model, "version": version}
    return Point(PID, [1.0, 0.0, 0.0, float(len(text))], payload)


def held(store: VectorStore) -> tuple[str, str] | None:
    records = store.retrieve([PID])
    if not records:
        return None
    payload = records[0].payload or {}
    return payload["version"], payload["text"]


class TestWritesIfNewer:
    """Every write of the pipeline is conditional in Qdrant itself: the point is the fence."""

    def store(self) -> VectorStore:
        from qdrant_client import QdrantClient

        store = VectorStore(QdrantClient(":memory:"), "documents", 4)
        store.ensure_collection()
        return store

    def test_an_upsert_applies_only_over_an_older_or_missing_point(self) -> None:
        store = self.store()
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

    def test_a_payload_applies_only_over_an_older_point_of_the_same_text_and_model(self) -> None:
        store = self.store()
        store.write_if_newer(upserts=[point("200-0", "b")])
        for version, text, model in [("100-0", "b", "m1"), ("300-0", "other", "m1"), ("300-0", "b", "m2")]:
            store.write_if_newer(payloads={PID: {**point(version, text, model=model).payload, "owner": "x"}})
            assert "owner" not in store.payloads([PID])[PID], (version, text, model)
        store.write_if_newer(payloads={PID: {**point("300-0", "b").payload, "owner": "Bob"}})
        assert store.payloads([PID])[PID]["owner"] == "Bob"
        assert held(store) == ("300-0", "b")

    def test_a_delete_removes_only_an_older_point(self) -> None:
        store = self.store()
        store.write_if_newer(upserts=[point("200-0", "b")])
        store.write_if_newer(deletes={PID: "100-0"})
        assert held(store) == ("200-0", "b")
        store.write_if_newer(deletes={PID: "200-1"})
        assert held(store) is None

    def test_a_point_without_a_numeric_version_counts_as_older(self) -> None:
        store = self.store()
        store.upsert([Point(PID, [1.0, 0.0, 0.0, 0.0], {"mongo_id": "a", "text": "by hand", "version": "900-0"})])
        store.write_if_newer(upserts=[point("100-0", "a")])
        assert held(store) == ("100-0", "a")


@pytest.mark.parametrize(("version", "accepted"), [("1.15.4", False), ("1.16.0", True), ("1.19.1", True)])
def test_the_fence_refuses_a_qdrant_server_without_conditional_writes(version: str, accepted: bool) -> None:
    from qdrant_client import QdrantClient

    from tests.support.fake_api import FakeApi
    from vecsync.errors import ConfigurationError

    qdrant = FakeApi()  # answers GET / as a Qdrant server does
    qdrant.body = {"title": "qdrant - vector search engine", "version": version, "commit": "0"}
    try:
        store = VectorStore(QdrantClient(url=qdrant.url, timeout=5, check_compatibility=False), "documents", 4)
        if accepted:
            store.require_conditional_writes()
        else:
            with pytest.raises(ConfigurationError, match=r"1\.16"):
                store.require_conditional_writes()
    finally:
        qdrant.close()
