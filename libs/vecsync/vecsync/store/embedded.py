"""The collection in Qdrant's own engine, embedded in this process (Qdrant Edge, under QDRANT_PATH).

Layout: ``QDRANT_PATH/<collection>/`` is one Edge shard (its write-ahead log,
segments and config). ``QDRANT_PATH/.lock`` is locked (flock) by the one
process that has the store open, for as long as it has it open, and names its
PID, so a second process is refused with a message naming the first instead of
failing deep in the engine. The kernel releases the lock when the process dies,
even by SIGKILL; holding it also makes it safe to remove what an interrupted
optimisation left behind before the shard is loaded.

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
on 2 cores, `make bench` Q), stopping every thread of the upserter. Keyword payload
indexes keep filtered searches fast; the background thread runs the engine's
vacuum (``optimize()``) after deletes, which takes a fraction of a second.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe

from vecsync.errors import ConfigurationError, PermanentError, TransientError, VecsyncError
from vecsync.messages import parse_version
from vecsync.store import local_mode
from vecsync.vectorstore import (
    VERSION_MS,
    VERSION_SEQ,
    CollectionMissing,
    Hit,
    Point,
    Record,
    StoreInUse,
    VectorStore,
    indexed_fields,
    with_version_numbers,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"  # the name local mode locked too, so a release still on local mode and this one exclude each other
CONFIG_FILE = "edge_config.json"
# Leftovers of an optimisation the process did not live to finish; the engine does not remove them itself.
TEMP_SEGMENTS = "temp_segments"
# Deletes after which the background thread asks the engine to vacuum (it does so only past its own threshold:
# a fifth of a segment's points deleted).
VACUUM_AFTER_DELETES = 1000


def shard_path(folder: Path, collection: str) -> Path:
    """Where the shard of ``collection`` lives in the embedded store at ``folder``."""
    return folder / collection


def shard_config(dim: int) -> qe.EdgeConfig:
    """The engine's configuration of a vecsync shard: cosine vectors of ``dim`` dimensions, exact search."""
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
    )


class FolderLock:
    """An exclusive lock on the embedded store's folder, held from open to close by one process."""

    def __init__(self, folder: Path) -> None:
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

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class EmbeddedStore(VectorStore):
    """One collection as a Qdrant Edge shard in this process; see the module's docstring for its policies."""

    def __init__(
        self,
        folder: Path,
        collection: str,
        dim: int,
        *,
        payload_indexes: Sequence[str] = (),
        flush_interval_s: float = 1.0,
    ) -> None:
        self.folder = folder
        self.collection = collection
        self.dim = dim
        self.path = shard_path(folder, collection)
        self.indexed = indexed_fields(payload_indexes)
        self.flush_interval_s = flush_interval_s
        self._lock = threading.RLock()
        self._shard: qe.EdgeShard | None = None
        self._closed = False
        self._unflushed = False
        self._deletes = 0
        self._folder_lock = FolderLock(folder)
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
        size = _configured_size(self.path)
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
        with _engine_errors("open the embedded Qdrant store"):
            return qe.EdgeShard.load(str(self.path), shard_config(self.dim))

    def ensure_collection(self) -> None:
        with self._lock, _engine_errors("create the collection"):
            self._require_open()
            if self._shard is None:
                self._shard = qe.EdgeShard.create(str(self.path), shard_config(self.dim))
                log.info(
                    "Created the embedded Qdrant collection %r at %s (%d dimensions, cosine)",
                    self.collection,
                    self.path,
                    self.dim,
                )
            existing = set(self._shard.info().payload_schema)
            for name in self.indexed:
                if name not in existing:
                    self._shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
                    self._unflushed = True

    def require_conditional_writes(self) -> None:
        """The engine is pinned (qdrant-edge-py), and applies conditional upserts, deletes and payload writes."""

    def drop(self) -> None:
        with self._lock:
            self._require_open()
            if self._shard is not None:
                with _engine_errors("close the collection"):
                    self._shard.close()
                self._shard = None
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
        operation = qe.UpdateOperation.upsert_points([_point(p.id, p.vector, p.payload) for p in points])
        self._write([operation], "upsert points")

    def write_if_newer(
        self,
        *,
        upserts: Sequence[Point] = (),
        payloads: Mapping[str, dict[str, Any]] | None = None,
        deletes: Mapping[str, str] | None = None,
    ) -> None:
        deletes, payloads = deletes or {}, payloads or {}
        if not (upserts or payloads or deletes):
            return
        with self._lock, _engine_errors("write points"):
            shard = self._open_shard()
            for pid, version in deletes.items():
                shard.update(qe.UpdateOperation.delete_points_by_filter(_this_point_if_older(pid, version)))
            self._upsert_if_newer(shard, upserts)
            for pid, raw in payloads.items():
                payload = with_version_numbers(raw)
                condition = qe.Filter(
                    must=[
                        _this_point_if_older(pid, payload["version"]),
                        _equals("text_sha256", payload.get("text_sha256")),
                        _equals("model", payload.get("model")),
                    ]
                )
                shard.update(qe.UpdateOperation.overwrite_payload_by_filter(condition, payload))
            self._written(shard, deletes=len(deletes))

    def _upsert_if_newer(self, shard: qe.EdgeShard, upserts: Sequence[Point]) -> None:
        """Write each point only over an older one, in as few of the engine's operations as the versions allow.

        Every write stays conditional in the engine, and the store's lock keeps every other writer out between the
        read of the stored versions and the writes, so the read tells which operation each point needs:

        - missing points go in one insert-only operation, which never replaces a point;
        - existing points older than the oldest version this call writes go in one operation on the condition
          "older than that version", which each of them meets, and which moves none of them backwards;
        - any other point (stored between that version and its own, or written twice in this call) gets an
          operation of its own on "older than me".

        One operation per point measured 2-3 times slower than one per batch (docs/performance.md, E).
        """
        if not upserts:
            return
        records = shard.retrieve([p.id for p in upserts], [VERSION_MS, VERSION_SEQ], False)
        stored = {_canonical(r.id): _stored_version(r.payload) for r in records}
        fresh: dict[str, qe.Point] = {}
        existing: dict[str, tuple[qe.Point, tuple[int, int]]] = {}
        one_by_one: list[tuple[qe.Point, tuple[int, int]]] = []
        for point in upserts:
            payload = with_version_numbers(point.payload)
            version = (payload[VERSION_MS], payload[VERSION_SEQ])
            engine_point = _point(point.id, point.vector, payload)
            key = _canonical(point.id)
            if key in fresh or key in existing:
                one_by_one.append((engine_point, version))
            elif key in stored:
                existing[key] = (engine_point, version)
            else:
                fresh[key] = engine_point
        if fresh:
            shard.update(qe.UpdateOperation.upsert_points(list(fresh.values()), update_mode=qe.UpdateMode.InsertOnly))
        if existing:
            floor = min(version for _point, version in existing.values())
            together = []
            for key, (engine_point, version) in existing.items():
                held = stored[key]
                if held is not _UNKNOWN and (held is None or held < floor):
                    together.append(engine_point)
                else:
                    one_by_one.insert(0, (engine_point, version))
            if together:
                shard.update(qe.UpdateOperation.upsert_points(together, condition=older_than(floor)))
        for engine_point, version in one_by_one:
            shard.update(qe.UpdateOperation.upsert_points([engine_point], condition=older_than(version)))

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

    def search(self, vector: list[float], *, limit: int, match: dict[str, str] | None = None) -> list[Hit]:
        query_filter = None
        if match:
            query_filter = qe.Filter(
                must=[qe.FieldCondition(key=key, match=qe.MatchValue(value)) for key, value in match.items()]
            )
        request = qe.QueryRequest(query=qe.Query.Nearest(vector), limit=limit, filter=query_filter, with_payload=True)
        with self._lock, _engine_errors("search"):
            points = self._open_shard().query(request)
        return [Hit(str(point.id), point.score, dict(point.payload or {})) for point in points]

    def count(self) -> int:
        with self._lock, _engine_errors("count points"):
            return self._open_shard().count(qe.CountRequest(exact=True))

    def retrieve(self, point_ids: list[str], *, with_vectors: bool = False) -> list[Record]:
        if not point_ids:
            return []
        with self._lock, _engine_errors("retrieve points"):
            records = self._open_shard().retrieve(list(point_ids), True, with_vectors)
        return [Record(str(r.id), dict(r.payload or {}), _dense(r.vector) if with_vectors else None) for r in records]

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


def older_than(version: tuple[int, int]) -> qe.Filter:
    """Matches a point whose version is older than ``version``, or that records none as numbers."""
    millis, seq = version
    return qe.Filter(
        should=[
            qe.IsEmptyCondition(VERSION_MS),
            qe.FieldCondition(key=VERSION_MS, range=qe.RangeFloat(lt=millis)),
            qe.Filter(
                must=[
                    qe.FieldCondition(key=VERSION_MS, match=qe.MatchValue(millis)),
                    qe.FieldCondition(key=VERSION_SEQ, range=qe.RangeFloat(lt=seq)),
                ]
            ),
        ]
    )


def _this_point_if_older(point_id: str, version: str) -> qe.Filter:
    return qe.Filter(must=[qe.HasIdCondition({point_id}), older_than(parse_version(version))])


def _equals(key: str, value: Any) -> qe.Filter:
    if value is None:
        return qe.Filter(must=[qe.IsEmptyCondition(key)])
    return qe.Filter(must=[qe.FieldCondition(key=key, match=qe.MatchValue(value))])


def _point(point_id: str, vector: list[float], payload: dict[str, Any]) -> qe.Point:
    return qe.Point(point_id, vector, payload)


# A stored version that the numbers do not give fully (version_ms without version_seq): left to a point's own write.
_UNKNOWN = (-1, -1)


def _stored_version(payload: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The version a stored point records as numbers; None when it records none (it counts as older than any)."""
    millis, seq = (payload or {}).get(VERSION_MS), (payload or {}).get(VERSION_SEQ)
    if millis is None:
        return None
    if not isinstance(millis, (int, float)) or not isinstance(seq, (int, float)):
        return _UNKNOWN
    return int(millis), int(seq)


def _canonical(point_id: object) -> str:
    """A point id as the engine returns it (a UUID object) or as vecsync writes it, in one spelling."""
    if isinstance(point_id, uuid.UUID):
        return str(point_id)
    text = str(point_id)
    if len(text) == 36 and text == text.lower():
        return text  # how uuid5 ids are written: canonical already
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text


def _dense(vector: Any) -> list[float] | None:
    return [float(x) for x in vector] if isinstance(vector, list) else None


def _configured_size(path: Path) -> int | None:
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        return int(config["vectors"][""]["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the engine checks the size itself as it loads


# The engine raises bare exceptions; their messages tell a bad input from a full disk.
_PERMANENT = ("Vector dimension error", "Wrong input", "Validation error", "Type error", "Bad request")
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
