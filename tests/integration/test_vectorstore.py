"""The embedded Qdrant store: its collections commit to a write-ahead log, and keep every write across a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
