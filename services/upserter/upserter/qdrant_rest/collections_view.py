"""The embedded store's collections as Qdrant's REST API sees them (upserter.qdrant_rest): names resolved through
aliases, stores opened on first use (the catalog shares them with the upserter), who may write to which, and the
refusal every route answers in Qdrant's error shape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import qdrant_edge as qe

from vecsync.store.embedded import EmbeddedStore
from vecsync.store.embedded_catalog import EmbeddedCatalog


class Refusal(Exception):
    """A request answered with Qdrant's error shape and ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Collections:
    """The embedded store's collections, by the names requests give."""

    def __init__(self, catalog: EmbeddedCatalog, *, synced: Callable[[str], bool], writable: frozenset[str]) -> None:
        self.catalog = catalog
        self.synced = synced
        self.writable = writable

    def physical(self, name: str) -> str:
        """The physical collection ``name`` (an alias or a collection) is; 404 where there is none."""
        physical = self.catalog.resolve(name)
        if physical is None or not self.catalog.holds(physical):
            raise Refusal(404, f"Not found: Collection `{name}` doesn't exist!")
        return physical

    def store(self, name: str) -> EmbeddedStore:
        store = self.catalog.open(self.physical(name), dim=None)
        assert isinstance(store, EmbeddedStore)
        return store

    @contextmanager
    def engine(self, name: str, action: str) -> Iterator[qe.EdgeShard]:
        """The engine's shard of ``name``, under its store's lock, for one read."""
        with self.store(name).engine(action) as shard:
            yield shard

    def may_write(self, name: str) -> bool:
        """Whether points of ``name`` may be written from outside: not synced by vecsync, and allowed by setting."""
        return not self.synced(name) and (name in self.writable or "*" in self.writable)
