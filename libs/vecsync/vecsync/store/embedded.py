"""The collection in Qdrant's own engine, embedded in this process (Qdrant Edge, under QDRANT_PATH).

Layout: ``QDRANT_PATH/<collection>/`` is one Edge shard (its write-ahead log,
segments and config). ``QDRANT_PATH/.lock`` is locked (flock) by the one
process that has the store open, for as long as it has it open, and names its
PID, so a second process is refused with a message naming the first instead of
failing deep in the engine (vecsync.store.folder). A process that serves
several collections opens one EmbeddedStore for each, all holding one shared
lock of the folder (vecsync.store.open_vector_stores). The kernel releases the lock
when the process dies, even by SIGKILL; holding it also makes it safe to remove
what an interrupted optimisation left behind before the shard is loaded.

Writes: the conditional writes of the version fence are built by
vecsync.store.edge_fence; this module runs them under its lock, with the
engine's errors mapped to vecsync's.

Within the process, one lock serialises every call into the engine: the
upserter's writes, the HTTP read routes, the background flush, and `recreate`,
which closes the shard and removes its folder.

Durability: each write is in the shard's write-ahead log when ``update``
returns, which survives the process being killed, but the log is a
memory-mapped file the engine does not sync. ``flush()`` writes everything to
disk; a background thread calls it every ``flush_interval_s`` while there are
writes, so a power loss or an operating system crash can take at most the
writes of that interval (0 flushes before every write returns instead).

Indexing: shards are created with vector indexing off (``indexing_threshold=0``),
so searches are exact and ``optimize()`` never builds an HNSW graph. Building
one holds Python's GIL for its whole run (about a minute at 50,000 points
on 2 cores, `make bench` Q), stopping every thread of the upserter. Payload
indexes (keyword, or the type a sync's definition gives) keep filtered searches
fast; the background thread runs the engine's vacuum (``optimize()``) after
deletes, which takes a fraction of a second.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from vecsync.constants import SPARSE_MODELS
from vecsync.errors import ConfigurationError, PermanentError, TransientError, VecsyncError
from vecsync.search_modes import RRF_K, SearchMode, prefetch_limit, rrf_weights
from vecsync.store import edge_fence, local_mode, sparse
from vecsync.store.folder import FolderLock, shard_config, shard_path
from vecsync.vectorstore import (
    CollectionMissing,
    Hit,
    NoSparseVectors,
    OlderPoints,
    PayloadIndexes,
    Point,
    Record,
    VectorStore,
    dense_part,
    index_types,
    is_date_range,
    match_conditions,
    text_words,
    with_text_index,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "edge_config.json"
# Leftovers of an optimisation the process did not live to finish; the engine does not remove them itself.
TEMP_SEGMENTS = "temp_segments"
# Deletes after which the background thread asks the engine to vacuum (it does so only past its own threshold:
# a fifth of a segment's points deleted).
VACUUM_AFTER_DELETES = 1000

# The engine's payload index type of each index type a sync's definition may name (vecsync.sync.INDEX_TYPES).
SCHEMA_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
    "datetime": qe.PayloadSchemaType.Datetime,
    "text": qe.PayloadSchemaType.Text,
    "uuid": qe.PayloadSchemaType.Uuid,
}


class EmbeddedStore(VectorStore):
    """One collection as a Qdrant Edge shard in this process; see the module's docstring for its policies."""

    def __init__(
        self,
        folder: Path,
        collection: str,
        dim: int,
        *,
        payload_indexes: PayloadIndexes = (),
        sparse_model: str | None = None,
        flush_interval_s: float = 1.0,
        folder_lock: FolderLock | None = None,
    ) -> None:
        """``sparse_model``: the sparse vector a new collection gets (constants.SPARSE_MODELS); ``folder_lock``: a
        share of the folder's lock (FolderLock.share), which this store releases on close; without one, the store
        takes the folder's lock itself."""
        self.folder = folder
        self.collection = collection
        self.dim = dim
        self.path = shard_path(folder, collection)
        self.indexed = index_types(payload_indexes)
        self.sparse_model = sparse_model
        # The sparse vector the shard holds, as read from its configuration when it is loaded or created.
        self._sparse: str | None = None
        self.flush_interval_s = flush_interval_s
        self._lock = threading.RLock()
        self._shard: qe.EdgeShard | None = None
        self._closed = False
        self._unflushed = False
        self._deletes = 0
        self._folder_lock = folder_lock or FolderLock(folder)
        try:
            if local_mode.holds_local_mode_store(folder):
                raise local_mode.refusal(folder)
            if (self.path / CONFIG_FILE).exists():
                self._shard = self._load()
        except BaseException:
            self._folder_lock.release()
            raise
        self._stopping = threading.Event()
        self._maintainer: threading.Thread | None = None
        if flush_interval_s > 0:
            self._maintainer = threading.Thread(target=self._maintain, name="embedded-store-flush", daemon=True)
            self._maintainer.start()

    # The collection -----------------------------------------------------------

    def _load(self) -> qe.EdgeShard:
        size = configured_size(self.path)
        if size is not None and size != self.dim:
            raise ConfigurationError(
                f"The embedded Qdrant collection {self.collection!r} at {self.path} holds vectors of {size} "
                f"dimensions, but EMBEDDING_DIM is {self.dim}. Use another QDRANT_COLLECTION, or rebuild the "
                "collection."
            )
        leftovers = self.path / TEMP_SEGMENTS
        if leftovers.is_dir() and any(leftovers.iterdir()):
            log.warning("Removing %s, left by an optimisation that was interrupted", leftovers)
            shutil.rmtree(leftovers)
        self._sparse = _configured_sparse_vector(self.path)
        with _engine_errors("open the embedded Qdrant store"):
            return qe.EdgeShard.load(str(self.path), shard_config(self.dim))

    def ensure_collection(self) -> None:
        with self._lock, _engine_errors("create the collection"):
            self._require_open()
            if self._shard is None:
                self._shard = qe.EdgeShard.create(str(self.path), shard_config(self.dim, self.sparse_model))
                self._sparse = self.sparse_model
                log.info(
                    "Created the embedded Qdrant collection %r at %s (%d dimensions, cosine%s)",
                    self.collection,
                    self.path,
                    self.dim,
                    f", and {self.sparse_model} sparse vectors" if self.sparse_model else "",
                )
            existing = set(self._shard.info().payload_schema)
            for name, kind in with_text_index(self.indexed, self.sparse_model).items():
                if name not in existing:
                    self._shard.update(qe.UpdateOperation.create_field_index(name, SCHEMA_TYPES[kind]))
                    self._unflushed = True

    def index_also(self, payload_indexes: PayloadIndexes) -> None:
        """Create the payload indexes of ``payload_indexes`` this store was not opened with (a no-op when it has
        them all, as on every call but the first)."""
        wanted = index_types(payload_indexes)
        with self._lock:
            if wanted.items() <= self.indexed.items():
                return
            self.indexed = {**self.indexed, **wanted}
        self.ensure_collection()

    def require_conditional_writes(self) -> None:
        """The engine is pinned (qdrant-edge-py), and applies conditional upserts, deletes and payload writes."""

    def sparse_vector(self) -> str | None:
        with self._lock:
            return self._sparse

    def drop(self) -> None:
        with self._lock:
            self._require_open()
            if self._shard is not None:
                with _engine_errors("close the collection"):
                    self._shard.close()
                self._shard = None
            self._sparse = None
            self._unflushed = False
            shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        if self._maintainer is not None:
            self._stopping.set()
            self._maintainer.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._shard is not None:
                    with _engine_errors("write the embedded Qdrant store to disk"):
                        self._shard.flush()
                        self._shard.close()
                    self._shard = None
            finally:
                self._folder_lock.release()

    # Writes ---------------------------------------------------------------------

    def upsert(self, points: list[Point]) -> None:
        if not points:
            return
        with self._lock:
            engine_points = [qe.Point(p.id, edge_fence.vectors_of(p, self._sparse), p.payload) for p in points]
        self._write([qe.UpdateOperation.upsert_points(engine_points)], "upsert points")

    def write_if_newer(
        self,
        *,
        upserts: Sequence[Point] = (),
        payloads: Mapping[str, dict[str, Any]] | None = None,
        deletes: Mapping[str, str] | None = None,
        prune: Sequence[OlderPoints] = (),
    ) -> None:
        deletes, payloads = deletes or {}, payloads or {}
        if not (upserts or payloads or deletes or prune):
            return
        # The BM25 terms are computed before the lock is taken, so that searches do not wait for them (some 5 ms a
        # batch of 64); again under it in the rare case that the collection was made again meanwhile.
        sparse_vector = self.sparse_vector()
        vectors = [edge_fence.vectors_of(point, sparse_vector) for point in upserts]
        with self._lock, _engine_errors("write points"):
            shard = self._open_shard()
            if self._sparse != sparse_vector:
                vectors = [edge_fence.vectors_of(point, self._sparse) for point in upserts]
            edge_fence.write_if_newer(
                shard, upserts=upserts, vectors=vectors, payloads=payloads, deletes=deletes, prune=prune
            )
            self._written(shard, deletes=len(deletes) + len(prune))

    def delete(self, point_ids: list[str]) -> None:
        if point_ids:
            self._write([qe.UpdateOperation.delete_points(list(point_ids))], "delete points", deletes=len(point_ids))

    def _write(self, operations: list[qe.UpdateOperation], action: str, *, deletes: int = 0) -> None:
        with self._lock, _engine_errors(action):
            shard = self._open_shard()
            for operation in operations:
                shard.update(operation)
            self._written(shard, deletes=deletes)

    def _written(self, shard: qe.EdgeShard, *, deletes: int) -> None:
        """Note what was written for the background flush, or flush now when there is no interval."""
        self._unflushed = True
        self._deletes += deletes
        if self.flush_interval_s <= 0:
            shard.flush()
            self._unflushed = False

    # Reads ----------------------------------------------------------------------

    def search(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        mode = SearchMode.of(vector, text)
        query_filter = qe.Filter(must=[_condition(*parts) for parts in match_conditions(match)]) if match else None
        with self._lock, _engine_errors("search"):
            shard = self._open_shard()
            if mode is not SearchMode.DENSE and self._sparse is None:
                raise NoSparseVectors(f"The embedded Qdrant collection {self.collection!r} holds no sparse vectors.")
            dense = qe.Query.Nearest(vector) if vector is not None else None
            terms = qe.Query.Nearest(sparse.query_vector(text), using=self._sparse) if text is not None else None
            if mode is SearchMode.HYBRID:
                each = prefetch_limit(limit)
                request = qe.QueryRequest(
                    prefetches=[
                        qe.Prefetch(limit=each, query=dense, filter=query_filter),
                        qe.Prefetch(limit=each, query=terms, filter=query_filter),
                    ],
                    # The stub types a fusion as Fusion, whose inner class Rrf the engine takes.
                    query=qe.Fusion.Rrf(k=RRF_K, weights=list(rrf_weights(text or ""))),  # type: ignore[arg-type]
                    limit=limit,
                    with_payload=True,
                )
            else:
                query = dense if dense is not None else terms
                request = qe.QueryRequest(query=query, limit=limit, filter=query_filter, with_payload=True)
            points = shard.query(request)
        return [Hit(str(point.id), point.score, dict(point.payload or {})) for point in points]

    def count(self) -> int:
        with self._lock, _engine_errors("count points"):
            return self._open_shard().count(qe.CountRequest(exact=True))

    def retrieve(self, point_ids: list[str], *, with_vectors: bool = False) -> list[Record]:
        if not point_ids:
            return []
        with self._lock, _engine_errors("retrieve points"):
            records = self._open_shard().retrieve(list(point_ids), True, with_vectors)
        return [
            Record(str(r.id), dict(r.payload or {}), dense_part(r.vector) if with_vectors else None) for r in records
        ]

    def payloads(self, point_ids: list[str], fields: list[str] | None = None) -> dict[str, dict[str, Any]]:
        if not point_ids:
            return {}
        with self._lock, _engine_errors("retrieve points"):
            records = self._open_shard().retrieve(list(point_ids), fields or True, False)
        return {str(record.id): dict(record.payload or {}) for record in records}

    def scroll(
        self, *, limit: int, offset: str | None, fields: list[str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], str | None]:
        request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=fields or True, with_vector=False)
        with self._lock, _engine_errors("scroll points"):
            records, next_offset = self._open_shard().scroll(request)
        page = {str(record.id): dict(record.payload or {}) for record in records}
        return page, None if next_offset is None else str(next_offset)

    @contextmanager
    def engine(self, action: str, *, writes: bool = False) -> Iterator[qe.EdgeShard]:
        """The engine's shard, under this store's lock, for Qdrant's REST API (the upserter serves it): its reads, and
        with ``writes`` the writes of a collection vecsync does not sync, flushed as the store's own are. The engine's
        errors are mapped as for the store's own calls."""
        with self._lock, _engine_errors(action):
            shard = self._open_shard()
            yield shard
            if writes:
                self._written(shard, deletes=0)

    # Keeping it on disk -----------------------------------------------------------

    def _maintain(self) -> None:
        """Flush what was written since the last round, and vacuum after many deletes; until close()."""
        while not self._stopping.wait(self.flush_interval_s):
            with self._lock:
                if self._shard is None or self._closed:
                    continue
                try:
                    if self._unflushed:
                        self._shard.flush()
                        self._unflushed = False
                    if self._deletes >= VACUUM_AFTER_DELETES:
                        self._deletes = 0
                        self._shard.optimize()
                except Exception:  # the next round tries again; the writes stay in the log meanwhile
                    log.exception("Could not write the embedded Qdrant store %s to disk", self.path)

    def _require_open(self) -> None:
        if self._closed:
            raise TransientError(f"the embedded Qdrant store at {self.folder} is closed (the process is stopping)")

    def _open_shard(self) -> qe.EdgeShard:
        self._require_open()
        if self._shard is None:
            raise CollectionMissing(
                f"the embedded Qdrant collection {self.collection!r} does not exist (deleted by a rebuild)"
            )
        return self._shard


def _condition(key: str, value: Any, bounds: dict[str, Any] | None) -> qe.FieldCondition:
    """One condition of VectorStore.search's ``match`` in the engine's terms."""
    if bounds is None:
        return qe.FieldCondition(key=key, match=qe.MatchValue(value))
    words = text_words(bounds)
    if words is not None:
        return qe.FieldCondition(key=key, match=qe.MatchText(words))
    if is_date_range(bounds):
        return qe.FieldCondition(key=key, range=qe.RangeDateTime(**bounds))
    return qe.FieldCondition(key=key, range=qe.RangeFloat(**bounds))


def configured_size(path: Path) -> int | None:
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        return int(config["vectors"][""]["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the engine checks the size itself as it loads


def _configured_sparse_vector(path: Path) -> str | None:
    """The sparse vector the shard at ``path`` was created with, or None (a shard of dense vectors only)."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        names = set(config.get("sparse_vectors") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return next((name for name in SPARSE_MODELS if name in names), None)


# The engine raises bare exceptions; their messages tell a bad input from a full disk. The last four are requests
# of Qdrant's REST API the engine refuses (a vector name it lacks, a sparse or multi-vector query of the wrong kind,
# order_by without a range index, a fusion without prefetches): Qdrant answers them 400.
_PERMANENT = (
    "Vector dimension error",
    "Wrong input",
    "Validation error",
    "Type error",
    "Bad request",
    "Not existing vector name",
    "Wrong usage of",
    "No range index",
    "Validation failed",
)
_TRANSIENT = ("No space left", "Out of memory", "Too many open files", "os error")


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    """Turn the engine's errors into PermanentError (a bad input) or TransientError (the disk or memory)."""
    try:
        yield
    except VecsyncError:
        raise
    except Exception as exc:
        text = str(exc)
        if any(marker in text for marker in _PERMANENT):
            raise PermanentError(f"The embedded Qdrant store rejected the request to {action}: {text}") from exc
        if any(marker in text for marker in _TRANSIENT):
            raise TransientError(f"The embedded Qdrant store could not {action}: {text}") from exc
        raise
