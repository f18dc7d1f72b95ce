"""The embedded store's names and collections: ``QDRANT_PATH/aliases.json`` maps each alias to a shard's folder.

The file is replaced whole by a rename (written beside it, synced, then ``os.replace``, then the folder synced), so
a switch is atomic: a crash leaves the old mapping or the new one, never a mix, and a temporary file at most, which
the next switch overwrites. A name without an alias is served by the folder of its own name (a collection made
before aliases: adopted where it is, no copy). The catalog holds the folder's lock for as long as it is open, and
every store it opens shares it (vecsync.store.folder.FolderLock).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from vecsync.errors import ConfigurationError, PermanentError
from vecsync.store.embedded import CONFIG_FILE, EmbeddedStore, configured_size
from vecsync.store.folder import FolderLock, shard_path
from vecsync.vectorstore import Catalog, PayloadIndexes, VectorStore

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"


def read_aliases(folder: Path) -> dict[str, str]:
    """The aliases recorded in ``folder`` (none where the file is missing)."""
    try:
        value = json.loads((folder / ALIASES_FILE).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ConfigurationError(
            f"{folder / ALIASES_FILE} is not valid JSON ({exc}); it maps each collection name to the folder it "
            'serves, as {"documents": "documents-v2"}. Restore it, or delete it to serve each name\'s own folder.'
        ) from None
    return {str(name): str(target) for name, target in value.items()} if isinstance(value, dict) else {}


def resolve_in(folder: Path, name: str) -> str | None:
    """The physical collection ``name`` serves in the embedded store at ``folder`` (see Catalog.resolve)."""
    aliased = read_aliases(folder).get(name)
    if aliased is not None:
        return aliased
    return name if holds(folder, name) else None


def holds(folder: Path, physical: str) -> bool:
    """Whether the embedded store at ``folder`` holds the collection ``physical`` (its shard was created)."""
    return (shard_path(folder, physical) / CONFIG_FILE).exists()


class EmbeddedCatalog(Catalog):
    def __init__(self, folder: Path, *, flush_interval_s: float = 1.0) -> None:
        self.folder = folder
        self.flush_interval_s = flush_interval_s
        self._folder_lock = FolderLock(folder)
        self._stores: dict[str, EmbeddedStore] = {}
        self._lock = threading.RLock()

    def resolve(self, name: str) -> str | None:
        return resolve_in(self.folder, name)

    def aliases(self) -> dict[str, str]:
        return read_aliases(self.folder)

    def holds(self, physical: str) -> bool:
        return holds(self.folder, physical)

    def collections(self) -> list[str]:
        return sorted(path.name for path in self.folder.iterdir() if (path / CONFIG_FILE).exists())

    def open(
        self, physical: str, *, dim: int | None, payload_indexes: PayloadIndexes = (), sparse_model: str | None = None
    ) -> VectorStore:
        with self._lock:
            store = self._stores.get(physical)
            if store is not None:
                # Opened first without them (by the Qdrant REST API, say): the indexes asked for now are added.
                store.index_also(payload_indexes)
                return store
            size = configured_size(shard_path(self.folder, physical)) or dim
            if size is None:
                raise PermanentError(
                    f"The embedded Qdrant collection {physical!r} does not exist, and no size was given."
                )
            store = EmbeddedStore(
                self.folder,
                physical,
                size,
                payload_indexes=payload_indexes,
                sparse_model=sparse_model,
                flush_interval_s=self.flush_interval_s,
                folder_lock=self._folder_lock.share(),
            )
            try:
                store.ensure_collection()
            except BaseException:
                store.close()
                raise
            self._stores[physical] = store
            return store

    def switch(self, name: str, physical: str) -> None:
        def pointed(aliases: dict[str, str]) -> dict[str, str]:
            if not self.holds(physical):
                raise PermanentError(f"Cannot point {name!r} at {physical!r}: no such embedded Qdrant collection.")
            return aliases | {name: physical}

        self.change_aliases(pointed)
        log.info("Collection name %r now serves the embedded Qdrant collection %r", name, physical)

    def change_aliases(self, change: Callable[[dict[str, str]], Mapping[str, str]]) -> None:
        """Replace the aliases with what ``change`` makes of them, atomically: no other change comes between its
        read and the rename of the file, and an exception from ``change`` leaves the aliases as they were (the
        REST API's alias actions, applied all or none, as Qdrant applies them)."""
        with self._lock:
            aliases = dict(change(self.aliases()))
            partial = self.folder / (ALIASES_FILE + ".partial")
            with open(partial, "w") as file:
                json.dump(aliases, file, indent=2, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.folder / ALIASES_FILE)
            directory = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def drop(self, physical: str) -> None:
        with self._lock:
            serving = sorted(name for name, target in self.aliases().items() if target == physical)
            if serving:
                raise PermanentError(f"Cannot drop {physical!r}: {', '.join(map(repr, serving))} serves it.")
            store = self._stores.pop(physical, None)
            if store is not None:
                store.drop()
                store.close()
            shutil.rmtree(shard_path(self.folder, physical), ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()
            self._folder_lock.release()
