"""The embedded store's folder as both of its users see it: the engine store and the migration of local mode's format.

``QDRANT_PATH/.lock`` is locked (flock) by the one process that has the folder
open, for as long as it has it open, and names its PID; ``QDRANT_PATH/<collection>/``
is one Edge shard, created with the configuration of ``shard_config``. Both
vecsync.store.embedded and vecsync.store.local_mode need these, and neither
needs the other's code for them, so they live here, below both.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import IO

import qdrant_edge as qe

from vecsync.vectorstore import StoreInUse

LOCK_FILE = ".lock"  # the name local mode locked too, so a release still on local mode and this one exclude each other


def shard_path(folder: Path, collection: str) -> Path:
    """Where the shard of ``collection`` lives in the embedded store at ``folder``."""
    return folder / collection


def shard_config(dim: int, sparse_vector: str | None = None) -> qe.EdgeConfig:
    """The engine's configuration of a vecsync shard: cosine vectors of ``dim`` dimensions, exact search, and a
    sparse vector of that name with the IDF modifier where one is given.

    Without ``sparse_vector``, a shard that exists keeps the sparse vectors it was created with (the engine takes
    what a configuration leaves unset from the shard); it cannot gain one."""
    sparse = {sparse_vector: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if sparse_vector else None
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        sparse_vectors=sparse,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
    )


class FolderLock:
    """An exclusive lock on the embedded store's folder, held from open to close by one process.

    Each FolderLock takes the lock anew, so a second one in the same process is refused as another process would be
    (a store opened twice would have two engines writing one shard). The stores of several collections that one
    process opens together share one lock instead: each holds a ``share()`` of it, and the folder is released when
    the last holder releases it.
    """

    def __init__(self, folder: Path) -> None:
        self._holders = 1
        self._count_lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(folder / LOCK_FILE, "a+")  # held until release()
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip()
            self._file.close()
            self._file = None
            by = f"by PID {holder}" if holder.isdigit() else "by another process"
            raise StoreInUse(
                f"The embedded Qdrant store at {folder} is in use {by} (an upserter, a `vecsync` command or a "
                "migration). Only one process may open it: stop that process, or point the CLI at the upserter "
                "that holds it (UPSERTER_URL), or run a Qdrant server and set QDRANT_URL."
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def share(self) -> FolderLock:
        """This lock, with one more holder that must release it."""
        with self._count_lock:
            if self._file is None:
                raise RuntimeError("a released FolderLock cannot be shared")
            self._holders += 1
        return self

    def release(self) -> None:
        """Give up one hold; the folder is released with the last."""
        with self._count_lock:
            self._holders -= 1
            if self._holders > 0:
                return
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
