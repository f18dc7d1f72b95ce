"""Embedded stores written by earlier releases, which kept them in qdrant-client's local mode.

Local mode keeps a folder with `meta.json` (its collections' configurations) and
`collection/<name>/storage.sqlite` (the points). This release stores points in
Qdrant's own engine instead (vecsync.store.embedded) and refuses to open such a
folder until it is migrated: ``migrate`` copies every point of every collection,
payload and vector as they are (the versions the fence compares included), into
a shard of the engine, then moves local mode's files into `local-mode-backup/`.

The order makes an interrupted migration safe to run again from the start: the
shards are written under temporary names, local mode's points move into the
backup (a shard may take the name of their folder, `collection`), the shards
are renamed into place, and `meta.json`, whose presence is what makes the
folder count as not migrated, moves last.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vecsync.errors import ConfigurationError

log = logging.getLogger(__name__)

META_FILE = "meta.json"
COLLECTIONS = "collection"
BACKUP = "local-mode-backup"
MIGRATE_COMMAND = "vecsync-upserter migrate-store"
BATCH = 256


def holds_local_mode_store(folder: Path) -> bool:
    """Whether ``folder`` holds a store that qdrant-client's local mode wrote and that is not migrated yet."""
    return (folder / META_FILE).is_file()


def refusal(folder: Path) -> ConfigurationError:
    """The error that stops a process from opening a store still in local mode's format."""
    return ConfigurationError(
        f"The embedded Qdrant store at {folder} was written by an earlier release, in qdrant-client's local "
        "mode, which this release no longer reads. Stop every vecsync process, then migrate it once with "
        f"`{MIGRATE_COMMAND}` (with the same DATA_DIR or QDRANT_PATH): it copies every point into Qdrant's own "
        f"engine and keeps the old files in {folder / BACKUP}. Or delete {folder} and rebuild the collection "
        "from the streams (docs/operations.md)."
    )


def collections(folder: Path) -> dict[str, dict[str, Any]]:
    """The collections that local mode's `meta.json` lists, with their vector parameters."""
    meta = json.loads((folder / META_FILE).read_text())
    return {str(name): dict(config.get("vectors") or {}) for name, config in meta.get("collections", {}).items()}


def read_points(source: Path, name: str) -> Iterator[tuple[str, list[float], dict[str, Any]]]:
    """Every point of local mode's collection ``name`` at ``source``: id, vector and payload.

    Read through qdrant-client's own reader of local mode's files, without opening local mode itself.
    """
    from qdrant_client.local.persistence import CollectionPersistence

    storage = CollectionPersistence(str(source))
    try:
        for point in storage.load():
            vector = point.vector
            if not isinstance(vector, list) or not all(isinstance(x, (int, float)) for x in vector):
                raise ConfigurationError(
                    f"Point {point.id} of local-mode collection {name!r} has named, sparse or multiple vectors, "
                    "which vecsync never writes; migrate this collection by hand or delete it."
                )
            yield str(point.id), [float(x) for x in vector if isinstance(x, (int, float))], dict(point.payload or {})
    finally:
        storage.close()


def migrate(folder: Path, progress: Callable[[str, int], None] = lambda name, n: None) -> dict[str, int]:
    """Copy every collection of the local-mode store at ``folder`` into the engine; the points copied, by name."""
    from vecsync.store.folder import FolderLock, shard_path

    lock = FolderLock(folder)  # no upserter of either release may run meanwhile
    try:
        if not holds_local_mode_store(folder):
            return {}
        backup = folder / BACKUP
        backup.mkdir(exist_ok=True)
        listed = collections(folder)
        copied = {name: _copy(folder, name, vectors, progress) for name, vectors in listed.items()}
        if (folder / COLLECTIONS).exists():
            shutil.rmtree(backup / COLLECTIONS, ignore_errors=True)
            (folder / COLLECTIONS).replace(backup / COLLECTIONS)
        for name in listed:
            target = shard_path(folder, name)
            shutil.rmtree(target, ignore_errors=True)  # a copy from an interrupted run
            _partial(target).replace(target)
        (folder / META_FILE).replace(backup / META_FILE)  # from here on the folder counts as migrated
        return copied
    finally:
        lock.release()


def _partial(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def _copy(folder: Path, name: str, vectors: dict[str, Any], progress: Callable[[str, int], None]) -> int:
    """Copy local mode's collection ``name`` into a shard beside its final place; the number of points."""
    import qdrant_edge as qe

    from vecsync.store.folder import shard_config, shard_path

    size = vectors.get("size")
    if not isinstance(size, int) or vectors.get("distance", "Cosine") != "Cosine":
        raise ConfigurationError(
            f"Local-mode collection {name!r} in {folder / META_FILE} has vectors vecsync never writes "
            f"({vectors}); migrate it by hand or delete it."
        )
    source = folder / COLLECTIONS / name
    if not source.exists():  # moved into the backup by an interrupted run
        source = folder / BACKUP / COLLECTIONS / name
    partial = _partial(shard_path(folder, name))
    shutil.rmtree(partial, ignore_errors=True)
    shard = qe.EdgeShard.create(str(partial), shard_config(size))
    count = 0
    try:
        batch: list[Any] = []
        for point_id, vector, payload in read_points(source, name):
            batch.append(qe.Point(point_id, vector, payload))
            if len(batch) == BATCH:
                shard.update(qe.UpdateOperation.upsert_points(batch))
                count += len(batch)
                progress(name, count)
                batch = []
        if batch:
            shard.update(qe.UpdateOperation.upsert_points(batch))
            count += len(batch)
            progress(name, count)
        shard.flush()
    finally:
        shard.close()
    log.info("Copied %d points of local-mode collection %r", count, name)
    return count
