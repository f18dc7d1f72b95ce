"""The physical collections behind each Qdrant collection name the upserter writes, and an open store of each.

A name (QDRANT_COLLECTION, a sync's qdrant_collection) serves one physical collection; while a model change runs, a
second one is built beside it (vecsync.reindex). Every stage 2 entry names the physical collection it is for (an
entry of an earlier release names none: it is for the one the name serves). This module answers, for an entry,
which store to write, or that its collection is retired (a build that was aborted, the collection served before a
switch): such an entry was written where it still mattered, and is acknowledged without a write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from vecsync import reindex
from vecsync.reindex import Reindex, Serving
from vecsync.vectorstore import Catalog, PayloadIndexes, VectorStore

log = logging.getLogger("vecsync.upserter")


@dataclass(frozen=True)
class CollectionSpec:
    """What every physical collection of a name is created with: its payload indexes and sparse vector."""

    payload_indexes: PayloadIndexes
    sparse_model: str | None


class NamedCollections:
    """Which physical collection each name serves and builds, as the Redis records say, and their stores.

    Shared by every consumer thread of the upserter, its model-change coordinator and its store routes; stores are
    opened on first use and closed when their collection is dropped.
    """

    def __init__(self, catalog: Catalog, specs: Mapping[str, CollectionSpec], dim: int) -> None:
        self.catalog = catalog
        self.specs = dict(specs)
        self.dim = dim  # EMBEDDING_DIM: the size of a collection this upserter creates
        self._states: dict[str, tuple[Serving | None, Reindex | None]] = {}
        self._lock = threading.RLock()

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def writes(self, collection: str) -> bool:
        """Whether the upserter's syncs write ``collection``: one of their names, or a physical collection of one."""
        return any(is_collection_of(name, collection) for name in self.specs)

    def refresh(self, client: redis.Redis, alias: str) -> tuple[Serving | None, Reindex | None]:
        """Read what ``alias`` serves and builds now (one round trip), and keep it for the calls that follow."""
        state = reindex.read_state(client, alias)
        with self._lock:
            self._states[alias] = state
        return state

    def state(self, alias: str) -> tuple[Serving | None, Reindex | None]:
        with self._lock:
            return self._states.get(alias, (None, None))

    def serving_collection(self, alias: str) -> str:
        """The physical collection ``alias`` serves: as recorded, else as the store resolves it, else the name."""
        serving, _change = self.state(alias)
        if serving is not None:
            return serving.collection
        return self.catalog.resolve(alias) or alias

    def building(self, alias: str) -> Reindex | None:
        _serving, change = self.state(alias)
        return change if change is not None and change.building else None

    def target(self, alias: str, collection: str | None) -> VectorStore | None:
        """The store an entry naming ``collection`` is written to: what ``alias`` serves (for None too) or builds;
        None for a retired collection."""
        serving = self.serving_collection(alias)
        if collection is None or collection == serving:
            return self.store(alias, serving)
        change = self.building(alias)
        if change is not None and collection == change.collection:
            return self.store(alias, collection, dim=change.dim)
        return None

    def is_serving(self, alias: str, store: VectorStore) -> bool:
        return store.collection == self.serving_collection(alias)

    def store(self, alias: str, physical: str, *, dim: int | None = None) -> VectorStore:
        """The store of ``physical``, a collection of ``alias``: opened (created, with ``dim`` or else EMBEDDING_DIM,
        where it does not exist) on first use; the catalog keeps it open."""
        spec = self.specs[alias]
        return self.catalog.open(
            physical, dim=dim or self.dim, payload_indexes=spec.payload_indexes, sparse_model=spec.sparse_model
        )

    def drop(self, physical: str) -> None:
        """Delete the collection ``physical`` (closing this process's store of it)."""
        if physical in self.catalog.collections():
            self.catalog.drop(physical)
            log.info("Dropped Qdrant collection %r", physical)

    def close(self) -> None:
        self.catalog.close()


def is_collection_of(alias: str, name: str) -> bool:
    """Whether ``name`` is a physical collection of ``alias``: the name itself (adopted) or ``<alias>-v<n>``."""
    suffix = name.removeprefix(alias + "-v")
    return name == alias or (suffix != name and suffix.isdigit())
