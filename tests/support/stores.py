"""The store's two implementations, for the tests that must hold on both.

``server`` is vecsync.store.server.ServerStore, the implementation for a Qdrant
server, on qdrant-client's in-memory mode: no Qdrant server binary can run
here, and the in-memory client answers qdrant-client's API as a server would.
``embedded`` is vecsync.store.embedded.EmbeddedStore, Qdrant's engine in this
process, on disk in a temporary folder, as the embedded default runs it.
"""

from __future__ import annotations

from pathlib import Path

from qdrant_client import QdrantClient

from vecsync.store.embedded import EmbeddedStore
from vecsync.store.server import ServerStore
from vecsync.vectorstore import VectorStore

KINDS = ("server", "embedded")


def make_store(
    kind: str,
    folder: Path,
    *,
    dim: int = 384,
    collection: str = "documents",
    sparse_model: str | None = None,
) -> VectorStore:
    """A store of ``kind`` with its collection created; the embedded one keeps its files under ``folder``.
    ``sparse_model`` is the sparse vector the collection gets (SPARSE_MODEL: "bm25", or None for dense only)."""
    store: VectorStore
    if kind == "server":
        store = ServerStore(QdrantClient(":memory:"), collection, dim, sparse_model=sparse_model)
    elif kind == "embedded":
        store = EmbeddedStore(folder / "qdrant", collection, dim, sparse_model=sparse_model)
    else:
        raise ValueError(f"no store of kind {kind!r}; use one of {KINDS}")
    store.ensure_collection()
    return store


def index_types(store: VectorStore) -> dict[str, str]:
    """The payload indexes of an embedded store's collection, path -> type ("keyword", "integer", ...)."""
    assert isinstance(store, EmbeddedStore)
    schema = store._open_shard().info().payload_schema
    return {name: str(info.data_type).rsplit(".", 1)[-1].lower() for name, info in schema.items()}
