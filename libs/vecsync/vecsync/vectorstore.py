"""The Qdrant collection: a server (QDRANT_URL) or embedded local mode (QDRANT_PATH).

Only one process may open an embedded path. In the embedded default that is
the upserter, which also answers the operator CLI's reads over HTTP; with a
Qdrant server every process talks to it directly.

The pipeline's writes are conditional (``write_if_newer``): each point carries
its version in its payload, and Qdrant applies a write only over a point older
than it, so the collection itself is the version fence (see docs/design.md).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from vecsync.errors import ConfigurationError, InvalidEntry, PermanentError, TransientError
from vecsync.messages import parse_version
from vecsync.settings import QdrantSettings

log = logging.getLogger(__name__)

# A point's version as numbers, beside the `version` string: Qdrant's range conditions compare numbers as
# floats, so one combined integer of milliseconds and sequence would lose precision; each part alone is exact.
VERSION_MS = "version_ms"
VERSION_SEQ = "version_seq"

# The first Qdrant release with conditional upserts (an upsert's update_filter).
CONDITIONAL_WRITES_SINCE = (1, 16)

# The file under DATA_DIR where an upserter holding an embedded store keeps the key of its store routes.
STORE_KEY_FILE = "upserter-api-key"


def store_key_file(data_dir: Path) -> Path:
    """Where the embedded upserter writes the key that its collection operations require (mode 0600)."""
    return data_dir / STORE_KEY_FILE


class CollectionMissing(TransientError):
    """Raised when the collection does not exist (deleted by hand or by a rebuild); create it and try again."""


def version_of(payload: Mapping[str, Any]) -> tuple[int, int] | None:
    """The version a point's payload records, or None when it has none that parses."""
    version = payload.get("version")
    if not isinstance(version, str):
        return None
    try:
        return parse_version(version)
    except InvalidEntry:
        return None


def with_version_numbers(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with its `version` string also as the numbers that Qdrant's conditions compare."""
    version = version_of(payload)
    if version is None:
        given = payload.get("version")
        raise ValueError(f"a payload written under the version fence needs a 'version' like '1-0', got {given!r}")
    return {**payload, VERSION_MS: version[0], VERSION_SEQ: version[1]}


def older_than(version: tuple[int, int]) -> models.Filter:
    """Matches a point whose version is older than ``version``, or that records none as numbers."""
    millis, seq = version
    return models.Filter(
        should=[
            models.IsEmptyCondition(is_empty=models.PayloadField(key=VERSION_MS)),
            models.FieldCondition(key=VERSION_MS, range=models.Range(lt=millis)),
            models.Filter(
                must=[
                    models.FieldCondition(key=VERSION_MS, match=models.MatchValue(value=millis)),
                    models.FieldCondition(key=VERSION_SEQ, range=models.Range(lt=seq)),
                ]
            ),
        ]
    )


def _this_point_if_older(point_id: str, version: tuple[int, int]) -> list[models.Condition]:
    return [models.HasIdCondition(has_id=[point_id]), older_than(version)]


@dataclass
class Point:
    id: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore:
    """The operations the pipeline needs on one collection, with errors mapped to transient or permanent."""

    def __init__(self, client: QdrantClient, collection: str, dim: int) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim

    @classmethod
    def open(cls, settings: QdrantSettings, data_dir: Path) -> VectorStore:
        path = settings.embedded_path(data_dir)
        if path is None:
            client = QdrantClient(
                url=settings.qdrant_url,
                api_key=settings.qdrant_api_key,
                # The client takes whole seconds; rounding down would turn a timeout under 1 s into none at all.
                timeout=math.ceil(settings.qdrant_timeout_s),
            )
        else:
            path.mkdir(parents=True, exist_ok=True)
            try:
                client = QdrantClient(path=str(path))
            except RuntimeError as exc:
                raise ConfigurationError(
                    f"The embedded Qdrant store at {path} is already open in another process ({exc}). "
                    "Only one process may open it: stop that process, or run a Qdrant server and set QDRANT_URL."
                ) from None
            use_write_ahead_log(client)
        return cls(client, settings.qdrant_collection, settings.embedding_dim)

    def ensure_collection(self) -> None:
        """Create the collection if missing; refuse to start if it exists with another vector size."""
        with _mapped_errors("check the collection"):
            if self.client.collection_exists(self.collection):
                size = _vector_size(self.client.get_collection(self.collection))
                if size != self.dim:
                    raise ConfigurationError(
                        f"Qdrant collection {self.collection!r} holds vectors of {size} dimensions, but "
                        f"EMBEDDING_DIM is {self.dim}. Use another QDRANT_COLLECTION, or rebuild the collection."
                    )
                return
            self.client.create_collection(
                self.collection, vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE)
            )
            self.client.create_payload_index(self.collection, "mongo_id", models.PayloadSchemaType.KEYWORD)
            use_write_ahead_log(self.client)
            log.info("Created Qdrant collection %r (%d dimensions, cosine)", self.collection, self.dim)

    def require_conditional_writes(self) -> None:
        """ConfigurationError unless Qdrant applies conditional upserts (update_filter), which the fence relies on."""
        with _mapped_errors("read the server's version"):
            version = self.client.info().version
        parts = version.split(".")[:2]
        if len(parts) == 2 and all(part.isdigit() for part in parts):
            if (int(parts[0]), int(parts[1])) < CONDITIONAL_WRITES_SINCE:
                since = ".".join(map(str, CONDITIONAL_WRITES_SINCE))
                raise ConfigurationError(
                    f"The Qdrant server runs version {version}, older than {since}, the first that applies an "
                    "upsert only over the points its update_filter matches. The upserter relies on that to never "
                    f"write a change over a newer one: upgrade Qdrant to {since} or later."
                )
            return
        log.warning("Qdrant reports version %r; assuming it applies conditional upserts (since 1.16)", version)

    def upsert(self, points: list[Point]) -> None:
        """Write ``points`` unconditionally, past the version fence: for tools and tests, never the pipeline."""
        if not points:
            return
        structs = [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points]
        with _mapped_errors("upsert points"):
            self.client.upsert(self.collection, points=structs, wait=True)

    def write_if_newer(
        self,
        *,
        upserts: Sequence[Point] = (),
        payloads: Mapping[str, dict[str, Any]] | None = None,
        deletes: Mapping[str, str] | None = None,
    ) -> None:
        """Apply the writes in one request, each only over a point older than the write's version.

        ``upserts`` and ``payloads`` carry their version in their payload's `version`; ``deletes`` maps point ids
        to the version of the delete. An upsert inserts a missing point; a payload replaces the payload of an
        existing point that also holds the same `text_sha256` and `model` (the vector is kept, so it must be the
        vector of that text by that model); a delete removes an existing point. Versions are compared in Qdrant,
        so a writer that lost its locks can never move a point backwards.
        """
        operations: list[models.UpdateOperation] = []
        for pid, version in (deletes or {}).items():
            selector = models.FilterSelector(
                filter=models.Filter(must=_this_point_if_older(pid, parse_version(version)))
            )
            operations.append(models.DeleteOperation(delete=selector))
        for point in upserts:
            payload = with_version_numbers(point.payload)
            struct = models.PointStruct(id=point.id, vector=point.vector, payload=payload)
            update_filter = older_than((payload[VERSION_MS], payload[VERSION_SEQ]))
            operations.append(
                models.UpsertOperation(upsert=models.PointsList(points=[struct], update_filter=update_filter))
            )
        for pid, raw in (payloads or {}).items():
            payload = with_version_numbers(raw)
            must = _this_point_if_older(pid, (payload[VERSION_MS], payload[VERSION_SEQ]))
            must += [_equals("text_sha256", payload.get("text_sha256")), _equals("model", payload.get("model"))]
            selection = models.SetPayload(payload=payload, filter=models.Filter(must=must))
            operations.append(models.OverwritePayloadOperation(overwrite_payload=selection))
        if not operations:
            return
        with _mapped_errors("write points"):
            self.client.batch_update_points(self.collection, update_operations=operations, wait=True)

    def delete(self, point_ids: list[str]) -> None:
        """Delete points unconditionally, past the version fence: for tools and tests, never the pipeline."""
        if not point_ids:
            return
        with _mapped_errors("delete points"):
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=point_ids), wait=True)

    def search(self, vector: list[float], *, limit: int, match: dict[str, str] | None = None) -> list[Hit]:
        query_filter = None
        if match:
            query_filter = models.Filter(
                must=[
                    models.FieldCondition(key=key, match=models.MatchValue(value=value)) for key, value in match.items()
                ]
            )
        with _mapped_errors("search"):
            result = self.client.query_points(
                self.collection, query=vector, limit=limit, query_filter=query_filter, with_payload=True
            )
        return [Hit(str(point.id), point.score, point.payload or {}) for point in result.points]

    def count(self) -> int:
        with _mapped_errors("count points"):
            return self.client.count(self.collection, exact=True).count

    def retrieve(self, point_ids: list[str], *, with_vectors: bool = False) -> list[models.Record]:
        with _mapped_errors("retrieve points"):
            return self.client.retrieve(
                self.collection,
                ids=point_ids,
                with_payload=True,
                with_vectors=with_vectors,
            )

    def payloads(self, point_ids: list[str], fields: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """The payloads (or just ``fields`` of them) of those ``point_ids`` that exist."""
        if not point_ids:
            return {}
        with _mapped_errors("retrieve points"):
            records = self.client.retrieve(self.collection, ids=point_ids, with_payload=fields or True)
        return {str(record.id): record.payload or {} for record in records}

    def scroll(
        self, *, limit: int, offset: str | None, fields: list[str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], str | None]:
        """One page of points in id order: their payloads by id, and the offset of the next page (None at the end)."""
        with _mapped_errors("scroll points"):
            records, next_offset = self.client.scroll(
                self.collection, limit=limit, offset=offset, with_payload=fields or True, with_vectors=False
            )
        page = {str(record.id): record.payload or {} for record in records}
        return page, None if next_offset is None else str(next_offset)

    def recreate(self) -> None:
        """Drop the collection and create it empty."""
        with _mapped_errors("delete the collection"):
            self.client.delete_collection(self.collection)
        self.ensure_collection()

    def close(self) -> None:
        self.client.close()


def use_write_ahead_log(client: QdrantClient) -> None:
    """Embedded mode: let each collection's SQLite file commit to a write-ahead log, synced at checkpoints.

    qdrant-client's local mode commits every point in a transaction of its own, and SQLite's default journal syncs
    each commit to disk: about a thousand points a second, which bounded the whole pipeline here. With a
    write-ahead log and synchronous=NORMAL (measured: ten times the rate), a commit still survives the crash of
    the process; a power loss may take the last moments of writes, as it takes the last second of Redis's
    default AOF, and `vecsync verify --repair` restores them. This reaches into the local mode's storage; where it
    has another shape, the store keeps its defaults and says so in the log.
    """
    local = getattr(client, "_client", None)
    collections = getattr(local, "collections", None)
    if not isinstance(collections, dict):
        return  # a Qdrant server, or an in-memory store
    for name, collection in collections.items():
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if not isinstance(connection, sqlite3.Connection):
            if getattr(collection, "storage", None) is not None:
                log.warning("The embedded Qdrant collection %r keeps SQLite's default journal: unknown layout", name)
            continue
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")


def _equals(key: str, value: Any) -> models.Condition:
    if value is None:
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _vector_size(info: models.CollectionInfo) -> int | None:
    vectors = info.config.params.vectors
    if isinstance(vectors, models.VectorParams):
        return vectors.size
    return None


class _mapped_errors:  # noqa: N801 - used as a context manager
    """Turn Qdrant client errors into TransientError (unreachable, 5xx) or PermanentError (4xx)."""

    def __init__(self, action: str) -> None:
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None or isinstance(exc, (ConfigurationError, TransientError, PermanentError)):
            return
        if _collection_missing(exc):
            raise CollectionMissing(
                f"Qdrant could not {self.action}: the collection does not exist (deleted by hand or by a rebuild)"
            ) from exc
        if isinstance(exc, UnexpectedResponse):
            status = exc.status_code or 0
            if status in (401, 403):
                raise ConfigurationError(f"Qdrant refused the credentials (check QDRANT_API_KEY): {exc}") from None
            if status >= 500 or status in (408, 429):
                raise TransientError(f"Qdrant could not {self.action}: {exc}") from exc
            raise PermanentError(f"Qdrant rejected the request to {self.action}: {exc}") from exc
        if isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError, OSError)):
            raise TransientError(f"Qdrant is unreachable, could not {self.action}: {exc}") from exc


def _collection_missing(exc: BaseException) -> bool:
    """A server answers 404 "Collection `x` doesn't exist"; local mode raises ValueError "Collection x not found"."""
    text = str(exc)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404 and "Collection" in text
    return isinstance(exc, ValueError) and text.startswith("Collection ") and text.endswith(" not found")
