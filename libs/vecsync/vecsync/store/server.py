"""The collection on a Qdrant server, through qdrant-client (QDRANT_URL).

Each batch of the fence's writes is one `batch_update_points` request; Qdrant
evaluates each write's condition on the stored point in the same operation as
the write (an upsert's update_filter needs Qdrant 1.16).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from vecsync.errors import ConfigurationError, PermanentError, TransientError
from vecsync.messages import parse_version
from vecsync.settings import QdrantSettings
from vecsync.vectorstore import (
    VERSION_MS,
    VERSION_SEQ,
    CollectionMissing,
    Hit,
    Point,
    Record,
    VectorStore,
    indexed_fields,
    with_version_numbers,
)

log = logging.getLogger(__name__)

# The first Qdrant release with conditional upserts (an upsert's update_filter).
CONDITIONAL_WRITES_SINCE = (1, 16)


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


class ServerStore(VectorStore):
    """One collection on a Qdrant server (or any qdrant-client, such as the in-memory one tests use)."""

    def __init__(self, client: QdrantClient, collection: str, dim: int, *, payload_indexes: Sequence[str] = ()) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim
        self.indexed = indexed_fields(payload_indexes)

    @classmethod
    def connect(cls, settings: QdrantSettings, *, payload_indexes: Sequence[str] = ()) -> ServerStore:
        client = QdrantClient(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            # The client takes whole seconds; rounding down would turn a timeout under 1 s into none at all.
            timeout=math.ceil(settings.qdrant_timeout_s),
        )
        return cls(client, settings.qdrant_collection, settings.embedding_dim, payload_indexes=payload_indexes)

    def ensure_collection(self) -> None:
        with _mapped_errors("check the collection"):
            if self.client.collection_exists(self.collection):
                info = self.client.get_collection(self.collection)
                size = _vector_size(info)
                if size != self.dim:
                    raise ConfigurationError(
                        f"Qdrant collection {self.collection!r} holds vectors of {size} dimensions, but "
                        f"EMBEDDING_DIM is {self.dim}. Use another QDRANT_COLLECTION, or rebuild the collection."
                    )
                existing = set(info.payload_schema or {})
            else:
                self.client.create_collection(
                    self.collection, vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE)
                )
                log.info("Created Qdrant collection %r (%d dimensions, cosine)", self.collection, self.dim)
                existing = set()
            for name in self.indexed:
                if name not in existing:
                    self.client.create_payload_index(self.collection, name, models.PayloadSchemaType.KEYWORD)

    def require_conditional_writes(self) -> None:
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

    def retrieve(self, point_ids: list[str], *, with_vectors: bool = False) -> list[Record]:
        with _mapped_errors("retrieve points"):
            records = self.client.retrieve(self.collection, ids=point_ids, with_payload=True, with_vectors=with_vectors)
        return [Record(str(r.id), r.payload or {}, _dense(r.vector) if with_vectors else None) for r in records]

    def payloads(self, point_ids: list[str], fields: list[str] | None = None) -> dict[str, dict[str, Any]]:
        if not point_ids:
            return {}
        with _mapped_errors("retrieve points"):
            records = self.client.retrieve(self.collection, ids=point_ids, with_payload=fields or True)
        return {str(record.id): record.payload or {} for record in records}

    def scroll(
        self, *, limit: int, offset: str | None, fields: list[str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], str | None]:
        with _mapped_errors("scroll points"):
            records, next_offset = self.client.scroll(
                self.collection, limit=limit, offset=offset, with_payload=fields or True, with_vectors=False
            )
        page = {str(record.id): record.payload or {} for record in records}
        return page, None if next_offset is None else str(next_offset)

    def drop(self) -> None:
        with _mapped_errors("delete the collection"):
            self.client.delete_collection(self.collection)

    def close(self) -> None:
        self.client.close()


def _equals(key: str, value: Any) -> models.Condition:
    if value is None:
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _dense(vector: Any) -> list[float] | None:
    return [float(x) for x in vector] if isinstance(vector, list) else None


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
    """A server answers 404 "Collection `x` doesn't exist"; the in-memory client raises "Collection x not found"."""
    text = str(exc)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404 and "Collection" in text
    return isinstance(exc, ValueError) and text.startswith("Collection ") and text.endswith(" not found")
