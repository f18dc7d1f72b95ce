"""The implementations of vecsync.vectorstore.VectorStore, and ``open_vector_store``, which picks one from the settings.

vecsync.store.server is a Qdrant server, vecsync.store.embedded Qdrant's engine
in this process. Both depend only on the interface (vecsync.vectorstore); the
choice between them lives here, the one place that may know both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vecsync.settings import QdrantSettings
from vecsync.vectorstore import Catalog, PayloadIndexes, VectorStore


def open_vector_store(
    settings: QdrantSettings,
    data_dir: Path,
    *,
    payload_indexes: PayloadIndexes = (),
    sparse_model: str | None = None,
    flush_interval_s: float = 1.0,
) -> VectorStore:
    """The collection the settings name (QDRANT_COLLECTION): on the Qdrant server at QDRANT_URL, else in the
    embedded store.

    ``payload_indexes`` maps the payload fields to index (filtered searches on them stay fast) to their index types
    (vecsync.sync.INDEX_TYPES); a plain list of fields gets a keyword index on each. ``sparse_model`` is the sparse
    vector a collection gets when this store creates it (constants.SPARSE_MODELS; None: dense vectors only).
    ``flush_interval_s`` applies to the embedded store only (see vecsync.store.embedded).
    """
    collection = settings.qdrant_collection
    stores = open_vector_stores(
        settings,
        data_dir,
        {collection: payload_indexes},
        sparse_models={collection: sparse_model},
        flush_interval_s=flush_interval_s,
    )
    return stores[collection]


def open_vector_stores(
    settings: QdrantSettings,
    data_dir: Path,
    collections: Mapping[str, PayloadIndexes],
    *,
    sparse_models: Mapping[str, str | None] | None = None,
    flush_interval_s: float = 1.0,
) -> dict[str, VectorStore]:
    """A store of each Qdrant collection of ``collections`` (name -> its payload indexes, as for open_vector_store),
    on the server at QDRANT_URL, else in the embedded store, by name. ``sparse_models`` gives a collection's sparse
    model, as for open_vector_store (a collection it leaves out has none).

    The embedded stores of one process share one lock of QDRANT_PATH (vecsync.store.folder.FolderLock): another
    process is refused, and the folder is released once every store is closed.
    """
    # Imported here, so that a process loads only the client library of the store it opens.
    path = settings.embedded_path(data_dir)
    sparse_of = dict(sparse_models or {})
    if path is None:
        from vecsync.store.server import ServerStore
        from vecsync.store.server_catalog import follow_alias

        servers: dict[str, VectorStore] = {}
        for name, indexes in collections.items():
            store = ServerStore.connect(
                settings.model_copy(update={"qdrant_collection": name}),
                payload_indexes=indexes,
                sparse_model=sparse_of.get(name),
            )
            follow_alias(store)  # a name that is an alias opens the collection it serves
            servers[name] = store
        return servers
    from vecsync.store.embedded import EmbeddedStore, configured_size
    from vecsync.store.embedded_catalog import resolve_in
    from vecsync.store.folder import FolderLock, shard_path

    lock = FolderLock(path)
    stores: dict[str, VectorStore] = {}
    try:
        for name, indexes in collections.items():
            physical = resolve_in(path, name) or name
            stores[name] = EmbeddedStore(
                path,
                physical,
                # An alias's collection may be of another model, with its own size (vecsync.reindex).
                (configured_size(shard_path(path, physical)) if physical != name else None) or settings.embedding_dim,
                payload_indexes=indexes,
                sparse_model=sparse_of.get(name),
                flush_interval_s=flush_interval_s,
                folder_lock=lock.share(),
            )
    except BaseException:
        for opened in stores.values():
            opened.close()
        raise
    finally:
        lock.release()  # this function's own hold: the stores hold theirs
    return stores


def open_catalog(settings: QdrantSettings, data_dir: Path, *, flush_interval_s: float = 1.0) -> Catalog:
    """The names and physical collections of the Qdrant the settings name: the server at QDRANT_URL, else the
    embedded store (whose folder lock the catalog holds until closed)."""
    path = settings.embedded_path(data_dir)
    if path is None:
        from vecsync.store.server import server_client
        from vecsync.store.server_catalog import ServerCatalog

        return ServerCatalog(server_client(settings), distribution=settings.collection_distribution())
    from vecsync.store.embedded_catalog import EmbeddedCatalog

    return EmbeddedCatalog(path, flush_interval_s=flush_interval_s)
