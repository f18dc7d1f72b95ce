"""The store's two implementations, for the tests that must hold on both.

``server`` is vecsync.store.server.ServerStore, the implementation for a Qdrant
server, on qdrant-client's in-memory mode: no Qdrant server binary can run
here, and the in-memory client answers qdrant-client's API as a server would.
``embedded`` is vecsync.store.embedded.EmbeddedStore, Qdrant's engine in this
process, on disk in a temporary folder, as the embedded default runs it.
``rest`` is ServerStore again, over HTTP against the upserter's Qdrant REST API
(tests/support/rest_api.py), which serves an embedded store: the server
implementation's requests, on Qdrant's own engine.
"""

from __future__ import annotations

from pathlib import Path

from qdrant_client import QdrantClient

from tests.support.rest_api import RestApi
from vecsync.store.embedded import EmbeddedStore
from vecsync.store.server import ServerStore
from vecsync.vectorstore import VectorStore

KINDS = ("server", "embedded")
# Every kind make_store makes: the server implementation over HTTP too, for the tests that run on it.
ALL_KINDS = (*KINDS, "rest")


class RestStore(ServerStore):
    """ServerStore against its own REST API (a RestApi over an embedded store), which it stops when closed."""

    def __init__(self, api: RestApi, collection: str, dim: int, *, sparse_model: str | None = None) -> None:
        # Without the version check qdrant-client runs on a thread of its own, which could outlive the server.
        client = QdrantClient(url=api.url, check_compatibility=False)
        super().__init__(client, collection, dim, sparse_model=sparse_model)
        self.api = api

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.api.stop()


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
    elif kind == "rest":
        store = RestStore(RestApi(folder / "qdrant-rest").start(), collection, dim, sparse_model=sparse_model)
    elif kind == "embedded":
        store = EmbeddedStore(folder / "qdrant", collection, dim, sparse_model=sparse_model)
    else:
        raise ValueError(f"no store of kind {kind!r}; use one of {ALL_KINDS}")
    try:
        store.ensure_collection()
    except BaseException:
        store.close()
        raise
    return store


def index_types(store: VectorStore) -> dict[str, str]:
    """The payload indexes of an embedded store's collection, path -> type ("keyword", "integer", ...)."""
    assert isinstance(store, EmbeddedStore)
    schema = store._open_shard().info().payload_schema
    return {name: str(info.data_type).rsplit(".", 1)[-1].lower() for name, info in schema.items()}
