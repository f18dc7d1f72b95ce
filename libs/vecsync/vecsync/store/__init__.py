"""The implementations of vecsync.vectorstore.VectorStore, and ``open_vector_store``, which picks one from the settings.

vecsync.store.server is a Qdrant server, vecsync.store.embedded Qdrant's engine
in this process. Both depend only on the interface (vecsync.vectorstore); the
choice between them lives here, the one place that may know both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vecsync.settings import QdrantSettings
from vecsync.vectorstore import VectorStore


def open_vector_store(
    settings: QdrantSettings,
    data_dir: Path,
    *,
    payload_indexes: Sequence[str] = (),
    flush_interval_s: float = 1.0,
) -> VectorStore:
    """The collection the settings name: on the Qdrant server at QDRANT_URL, else in the embedded store.

    ``payload_indexes`` are the payload fields that get a keyword index (filtered searches on them stay fast);
    ``flush_interval_s`` applies to the embedded store only (see vecsync.store.embedded).
    """
    # Imported here, so that a process loads only the client library of the store it opens.
    path = settings.embedded_path(data_dir)
    if path is None:
        from vecsync.store.server import ServerStore

        return ServerStore.connect(settings, payload_indexes=payload_indexes)
    from vecsync.store.embedded import EmbeddedStore

    return EmbeddedStore(
        path,
        settings.qdrant_collection,
        settings.embedding_dim,
        payload_indexes=payload_indexes,
        flush_interval_s=flush_interval_s,
    )
