"""A Qdrant server's names and collections: Qdrant's own collection aliases.

A switch is one ``update_collection_aliases`` request holding the removal of the name's alias and its creation on
the new collection, which Qdrant applies atomically: a query of the name meanwhile reaches one collection or the
other. Qdrant cannot give an alias the name of an existing collection, so a collection made before aliases under
the name itself (adopted, served by its own name) is deleted at its first switch, and the alias created in the
very next request: direct clients of the name see it missing for that moment, and that collection is not kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from qdrant_client import QdrantClient, models

from vecsync.errors import PermanentError, VecsyncError
from vecsync.store.server import ServerStore, _mapped_errors, _vector_size
from vecsync.vectorstore import Catalog, PayloadIndexes, VectorStore

log = logging.getLogger(__name__)


class ServerCatalog(Catalog):
    def __init__(self, client: QdrantClient, *, distribution: Mapping[str, int] | None = None) -> None:
        """``distribution``: create_collection's shard and replication arguments, for the collections it creates."""
        self.client = client
        self.distribution = dict(distribution or {})
        self._stores: dict[str, ServerStore] = {}
        self._lock = threading.Lock()

    def aliases(self) -> dict[str, str]:
        with _mapped_errors("list the collection aliases"):
            return {alias.alias_name: alias.collection_name for alias in self.client.get_aliases().aliases}

    def collections(self) -> list[str]:
        with _mapped_errors("list the collections"):
            return sorted(collection.name for collection in self.client.get_collections().collections)

    def resolve(self, name: str) -> str | None:
        aliased = self.aliases().get(name)
        if aliased is not None:
            return aliased
        return name if name in self.collections() else None

    def open(
        self, physical: str, *, dim: int | None, payload_indexes: PayloadIndexes = (), sparse_model: str | None = None
    ) -> VectorStore:
        with self._lock:
            store = self._stores.get(physical)
            if store is not None:
                return store
            size = dim
            if physical in self.collections():
                with _mapped_errors("read the collection"):
                    size = _vector_size(self.client.get_collection(physical)) or dim
            if size is None:
                raise PermanentError(f"Qdrant collection {physical!r} does not exist, and no size was given.")
            store = ServerStore(
                self.client,
                physical,
                size,
                payload_indexes=payload_indexes,
                distribution=self.distribution,
                sparse_model=sparse_model,
            )
            store.ensure_collection()
            self._stores[physical] = store
            return store

    def switch(self, name: str, physical: str) -> None:
        operations: list[models.CreateAliasOperation | models.DeleteAliasOperation] = []
        if name in self.aliases():
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name)))
        elif name in self.collections():
            log.warning(
                "Qdrant collection %r was made before aliases; Qdrant cannot give an alias its name while it exists, "
                "so it is deleted now and %r takes its name",
                name,
                physical,
            )
            with _mapped_errors("delete the collection the alias replaces"):
                self.client.delete_collection(name)
            with self._lock:
                self._stores.pop(name, None)
        operations.append(
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=physical, alias_name=name))
        )
        with _mapped_errors("switch the collection alias"):
            self.client.update_collection_aliases(change_aliases_operations=operations)
        log.info("Collection name %r now serves Qdrant collection %r", name, physical)

    def drop(self, physical: str) -> None:
        serving = sorted(name for name, target in self.aliases().items() if target == physical)
        if serving:
            raise PermanentError(f"Cannot drop {physical!r}: {', '.join(map(repr, serving))} serves it.")
        with self._lock:
            self._stores.pop(physical, None)
        with _mapped_errors("delete the collection"):
            self.client.delete_collection(physical)

    def close(self) -> None:
        with self._lock:
            self._stores.clear()
        self.client.close()


def follow_alias(store: ServerStore) -> None:
    """Point ``store`` at the collection its name serves, where that name is an alias, with that collection's size;
    as it is while the server cannot say (the store reports that itself when used)."""
    try:
        catalog = ServerCatalog(store.client)
        physical = catalog.aliases().get(store.collection)
        if physical is None:
            return
        with _mapped_errors("read the collection"):
            size = _vector_size(store.client.get_collection(physical))
    except VecsyncError:
        return
    store.collection, store.dim = physical, size or store.dim
