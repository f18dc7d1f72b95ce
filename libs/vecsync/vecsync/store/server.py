"""The collection on a Qdrant server, through qdrant-client (QDRANT_URL), over REST or gRPC (QDRANT_PREFER_GRPC).

Each batch of the fence's writes is one `batch_update_points` request with
strong write ordering; Qdrant evaluates each write's condition on the stored
point in the same operation as the write (an upsert's update_filter needs
Qdrant 1.16), and strong ordering makes every replica of a shard evaluate them
in the same order. The collection is
created with the distribution the settings give (QDRANT_SHARDS,
QDRANT_REPLICATION_FACTOR, QDRANT_WRITE_CONSISTENCY); an existing one is kept.

Past 400 lines: every operation of VectorStore in the server's terms, with the mapping of its errors, is one
implementation that reads best whole, as store.embedded is for the embedded engine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import grpc
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from vecsync.constants import SPARSE_MODELS
from vecsync.errors import ConfigurationError, PermanentError, TransientError
from vecsync.messages import parse_version
from vecsync.search_modes import RRF_K, SearchMode, prefetch_limit, rrf_weights
from vecsync.settings import QdrantSettings
from vecsync.store import sparse
from vecsync.vectorstore import (
    MONGO_ID,
    VERSION_MS,
    VERSION_SEQ,
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
    with_version_numbers,
)

log = logging.getLogger(__name__)

# The first Qdrant release with conditional upserts (an upsert's update_filter).
CONDITIONAL_WRITES_SINCE = (1, 16)

# Every write of the fence is conditional on the stored point, so its outcome on a replica depends on the writes that
# replica applied before it. With Qdrant's default (weak) ordering, replicas of a shard may apply writes in different
# orders: a payload-only write, which needs the text_sha256 and model of the upsert before it, is then skipped for good
# on a replica that sees it first, whatever the write consistency factor. Strong ordering sends every write of a shard
# through its one permanent leader, so every replica applies them in one order and the conditions agree.
FENCE_ORDERING = models.WriteOrdering.STRONG

# How Qdrant words its refusal of a point with a vector name the collection lacks.
NO_SUCH_VECTOR = "Not existing vector name"

# Qdrant's payload index type of each index type a sync's definition may name (vecsync.sync.INDEX_TYPES).
SCHEMA_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "datetime": models.PayloadSchemaType.DATETIME,
    "text": models.PayloadSchemaType.TEXT,
    "uuid": models.PayloadSchemaType.UUID,
}


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


def _older_points_of(older: OlderPoints) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key=MONGO_ID, match=models.MatchValue(value=older.mongo_id)),
            models.FieldCondition(key="source", match=models.MatchValue(value=older.source)),
            older_than(parse_version(older.version)),
        ]
    )


def _this_point_if_older(point_id: str, version: tuple[int, int]) -> list[models.Condition]:
    return [models.HasIdCondition(has_id=[point_id]), older_than(version)]


class ServerStore(VectorStore):
    """One collection on a Qdrant server (or any qdrant-client, such as the in-memory one tests use)."""

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        dim: int,
        *,
        payload_indexes: PayloadIndexes = (),
        distribution: Mapping[str, int] | None = None,
        sparse_model: str | None = None,
    ) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim
        self.indexed = index_types(payload_indexes)
        self.sparse_model = sparse_model
        # The collection's sparse vector as last read from the server (None also for a dense-only collection), and
        # whether it was read: a store that only searches never calls ensure_collection.
        self._sparse: str | None = None
        self._sparse_known = False
        # create_collection's shard_number, replication_factor and write_consistency_factor, where set.
        self.distribution = dict(distribution or {})

    @classmethod
    def connect(
        cls, settings: QdrantSettings, *, payload_indexes: PayloadIndexes = (), sparse_model: str | None = None
    ) -> ServerStore:
        return cls(
            server_client(settings),
            settings.qdrant_collection,
            settings.embedding_dim,
            payload_indexes=payload_indexes,
            distribution=settings.collection_distribution(),
            sparse_model=sparse_model,
        )

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
                self._warn_of_other_distribution(info.config.params)
                self._sparse, self._sparse_known = _sparse_vector_of(info), True
            else:
                distribution: dict[str, Any] = dict(self.distribution)  # only those set: the server's defaults apply
                sparse_config = (
                    {self.sparse_model: models.SparseVectorParams(modifier=models.Modifier.IDF)}
                    if self.sparse_model
                    else None
                )
                self.client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
                    sparse_vectors_config=sparse_config,
                    **distribution,
                )
                self._sparse, self._sparse_known = self.sparse_model, True
                log.info(
                    "Created Qdrant collection %r (%d dimensions, cosine%s%s)",
                    self.collection,
                    self.dim,
                    f", and {self.sparse_model} sparse vectors" if self.sparse_model else "",
                    "".join(f", {name} {value}" for name, value in self.distribution.items()),
                )
                existing = set()
            for name, kind in with_text_index(self.indexed, self.sparse_model).items():
                if name not in existing:
                    self.client.create_payload_index(self.collection, name, SCHEMA_TYPES[kind])

    def _warn_of_other_distribution(self, params: models.CollectionParams) -> None:
        """Log what to do where the existing collection is distributed otherwise than the settings ask; never fail.

        Qdrant applies these when it creates a collection; the upserter never recreates one that exists.
        """
        name = self.collection
        shards = params.shard_number
        wanted = self.distribution.get("shard_number")
        if wanted is not None and shards is not None and shards != wanted:
            log.warning(
                "Qdrant collection %r has %d shards, but QDRANT_SHARDS is %d. A self-hosted Qdrant cannot change the "
                "shard count of an existing collection (resharding is a Qdrant Cloud feature), so the collection "
                "keeps %d. To get %d shards, recreate it: run `vecsync rebuild` with QDRANT_SHARDS=%d (the collection "
                "is empty until the rebuild has refilled it). Otherwise set QDRANT_SHARDS=%d, or unset it.",
                name, shards, wanted, shards, wanted, wanted, shards,
            )  # fmt: skip
        factor = params.replication_factor
        wanted = self.distribution.get("replication_factor")
        if wanted is not None and factor is not None and factor != wanted:
            log.warning(
                "Qdrant collection %r has replication factor %d, but QDRANT_REPLICATION_FACTOR is %d. It applies when "
                "a collection is created; on a self-hosted Qdrant, changing it afterwards adds or drops no replica. "
                "Add each missing shard replica with Qdrant's cluster API (POST /collections/%s/cluster with "
                "replicate_shard, or drop_replica to remove one), then record the factor with PATCH /collections/%s "
                '{"params": {"replication_factor": %d}}; or recreate the collection with `vecsync rebuild`.',
                name, factor, wanted, name, name, wanted,
            )  # fmt: skip
        consistency = params.write_consistency_factor
        wanted = self.distribution.get("write_consistency_factor")
        if wanted is not None and consistency is not None and consistency != wanted:
            log.warning(
                "Qdrant collection %r has write consistency factor %d, but QDRANT_WRITE_CONSISTENCY is %d. It "
                'applies when a collection is created; change it in place with PATCH /collections/%s {"params": '
                '{"write_consistency_factor": %d}}, or set QDRANT_WRITE_CONSISTENCY=%d.',
                name, consistency, wanted, name, wanted, consistency,
            )  # fmt: skip

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

    def sparse_vector(self) -> str | None:
        if not self._sparse_known:
            with _mapped_errors("read the collection"):
                self._sparse = _sparse_vector_of(self.client.get_collection(self.collection))
            self._sparse_known = True
        return self._sparse

    def _sparse_vector_to_write(self) -> str | None:
        """The sparse vector to give the points written now: the collection's, as ensure_collection read it (a
        store without a sparse model that did not read it writes dense vectors, with no request more).

        Another process may make the collection again (`vecsync rebuild`) while this one writes. Where SPARSE_MODEL
        asks for a sparse vector that the collection lacked, it is read again before each write, so the points
        written after a rebuild that added it get theirs (this costs a request per batch only while the collection
        lacks the vector, which the upserter warns of at start). The other way round, a write that names a vector
        the collection no longer has fails, and ``_vectors_written`` has it read again for the retry.
        """
        if self.sparse_model and self._sparse != self.sparse_model:
            self._sparse_known = False
        if not self._sparse_known and not self.sparse_model:
            return None
        return self.sparse_vector()

    def upsert(self, points: list[Point]) -> None:
        if not points:
            return
        named = self._sparse_vector_to_write()
        structs = [models.PointStruct(id=p.id, vector=_vectors_of(p, named), payload=p.payload) for p in points]
        with self._vectors_written("upsert points"):
            self.client.upsert(self.collection, points=structs, wait=True, ordering=FENCE_ORDERING)

    def write_if_newer(
        self,
        *,
        upserts: Sequence[Point] = (),
        payloads: Mapping[str, dict[str, Any]] | None = None,
        deletes: Mapping[str, str] | None = None,
        prune: Sequence[OlderPoints] = (),
    ) -> None:
        operations: list[models.UpdateOperation] = []
        named = self._sparse_vector_to_write() if upserts else None
        for pid, version in (deletes or {}).items():
            selector = models.FilterSelector(
                filter=models.Filter(must=_this_point_if_older(pid, parse_version(version)))
            )
            operations.append(models.DeleteOperation(delete=selector))
        for point in upserts:
            payload = with_version_numbers(point.payload)
            struct = models.PointStruct(id=point.id, vector=_vectors_of(point, named), payload=payload)
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
        if prune:
            # One filter for the batch's documents: the server plans it on the mongo_id index.
            older = models.Filter(should=[_older_points_of(item) for item in prune])
            operations.append(models.DeleteOperation(delete=models.FilterSelector(filter=older)))
        if not operations:
            return
        with self._vectors_written("write points"):
            self.client.batch_update_points(
                self.collection, update_operations=operations, wait=True, ordering=FENCE_ORDERING
            )

    @contextmanager
    def _vectors_written(self, action: str) -> Iterator[None]:
        """_mapped_errors for a write of vectors, where a vector the collection lacks (it was made again without
        it) is a TransientError: the collection is read again, and the retry writes the vectors it has."""
        try:
            with _mapped_errors(action):
                yield
        except PermanentError as exc:
            if NO_SUCH_VECTOR not in str(exc):
                raise
            self._sparse_known = False
            raise TransientError(
                f"Qdrant collection {self.collection!r} has no vector of a name this write gave (made again since it "
                f"was read?); reading it again for the retry: {exc}"
            ) from exc

    def delete(self, point_ids: list[str]) -> None:
        if not point_ids:
            return
        with _mapped_errors("delete points"):
            self.client.delete(
                self.collection,
                points_selector=models.PointIdsList(points=point_ids),
                wait=True,
                ordering=FENCE_ORDERING,  # in one order with the fence's writes to the same points
            )

    def search(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        query = self._query(vector, text, limit, _filter(match))
        with _mapped_errors("search"):
            result = self.client.query_points(self.collection, limit=limit, with_payload=True, **query)
        return [Hit(str(point.id), point.score, point.payload or {}) for point in result.points]

    def search_documents(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        """Qdrant's grouped query: one group per `mongo_id`, each of its one nearest chunk, groups nearest first."""
        if limit < 1:
            return []
        query = self._query(vector, text, limit, _filter(match))
        with _mapped_errors("search documents"):
            result = self.client.query_points_groups(self.collection, MONGO_ID, limit=limit, group_size=1, **query)
        nearest = [group.hits[0] for group in result.groups if group.hits]
        return [Hit(str(point.id), point.score, point.payload or {}) for point in nearest]

    def _query(
        self, vector: list[float] | None, text: str | None, limit: int, query_filter: models.Filter | None
    ) -> dict[str, Any]:
        """The query arguments of query_points (and of its grouped form) for a search of the mode SearchMode.of
        gives: the nearest by ``vector`` or by ``text``'s BM25 terms, or the two fused by RRF, each branch under the
        filter (a prefetch does not take the outer query's filter)."""
        mode = SearchMode.of(vector, text)
        named = self.sparse_vector() if mode is not SearchMode.DENSE else None
        if mode is not SearchMode.DENSE and named is None:
            raise NoSparseVectors(f"Qdrant collection {self.collection!r} holds no sparse vectors.")
        if mode is SearchMode.DENSE:
            return {"query": vector, "query_filter": query_filter}
        terms = sparse.query_vector(text or "")
        sparse_query = models.SparseVector(indices=list(terms.indices), values=list(terms.values))
        if mode is SearchMode.SPARSE:
            return {"query": sparse_query, "using": named, "query_filter": query_filter}
        each = prefetch_limit(limit)
        return {
            "prefetch": [
                models.Prefetch(query=vector, limit=each, filter=query_filter),
                models.Prefetch(query=sparse_query, using=named, limit=each, filter=query_filter),
            ],
            "query": models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=list(rrf_weights(text or "")))),
        }

    def count(self) -> int:
        with _mapped_errors("count points"):
            return self.client.count(self.collection, exact=True).count

    def retrieve(self, point_ids: list[str], *, with_vectors: bool = False) -> list[Record]:
        with _mapped_errors("retrieve points"):
            records = self.client.retrieve(self.collection, ids=point_ids, with_payload=True, with_vectors=with_vectors)
        return [Record(str(r.id), r.payload or {}, dense_part(r.vector) if with_vectors else None) for r in records]

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
        self._sparse_known = False

    def recreate(self) -> None:
        """Drop the collection and create it empty, with the aliases that served it: Qdrant deletes a collection's
        aliases with it, and a name a model change switched to this collection must go on serving it."""
        with _mapped_errors("read the collection's aliases"):
            served = (
                [alias.alias_name for alias in self.client.get_collection_aliases(self.collection).aliases]
                if self.client.collection_exists(self.collection)
                else []
            )
        super().recreate()
        if served:
            with _mapped_errors("restore the collection's aliases"):
                self.client.update_collection_aliases(
                    [
                        models.CreateAliasOperation(
                            create_alias=models.CreateAlias(collection_name=self.collection, alias_name=alias)
                        )
                        for alias in served
                    ]
                )
            log.info("Qdrant collection %r made again, serving %s again", self.collection, ", ".join(served))

    def close(self) -> None:
        self.client.close()


def _filter(match: Mapping[str, Any] | None) -> models.Filter | None:
    """VectorStore.search's ``match`` as Qdrant's filter: every condition must hold."""
    return models.Filter(must=[_condition(*parts) for parts in match_conditions(match)]) if match else None


def _condition(key: str, value: Any, bounds: dict[str, Any] | None) -> models.Condition:
    """One condition of VectorStore.search's ``match`` in Qdrant's terms."""
    if bounds is None:
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))
    words = text_words(bounds)
    if words is not None:
        return models.FieldCondition(key=key, match=models.MatchText(text=words))
    if is_date_range(bounds):
        return models.FieldCondition(key=key, range=models.DatetimeRange(**bounds))
    return models.FieldCondition(key=key, range=models.Range(**bounds))


def _equals(key: str, value: Any) -> models.Condition:
    if value is None:
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _vectors_of(point: Point, sparse_vector: str | None) -> Any:
    """A point's vectors for Qdrant: its dense vector, with its text's BM25 vector beside it where the collection
    holds sparse vectors (a text without terms gets none, which Qdrant allows)."""
    if sparse_vector is None:
        return point.vector
    terms = sparse.document_vector(point.payload.get("text"))
    if terms is None:
        return {"": point.vector}
    return {"": point.vector, sparse_vector: models.SparseVector(indices=terms.indices, values=terms.values)}


def server_client(settings: QdrantSettings) -> QdrantClient:
    """A client of the Qdrant server at QDRANT_URL, as the settings configure it."""
    return QdrantClient(
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
        # The client takes whole seconds; rounding down would turn a timeout under 1 s into none at all.
        timeout=math.ceil(settings.qdrant_timeout_s),
        prefer_grpc=settings.qdrant_prefer_grpc,
        grpc_port=settings.qdrant_grpc_port,
    )


def _sparse_vector_of(info: models.CollectionInfo) -> str | None:
    """The collection's sparse vector that vecsync writes (a name of constants.SPARSE_MODELS), or None."""
    names = set(info.config.params.sparse_vectors or {})
    return next((name for name in SPARSE_MODELS if name in names), None)


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
        if isinstance(exc, grpc.RpcError):
            _map_grpc_error(exc, self.action)
        if isinstance(exc, ResourceExhaustedResponse):  # a 429 with Retry-After (REST and gRPC alike)
            raise TransientError(f"Qdrant could not {self.action}, it asks to slow down: {exc}") from exc
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


# With QDRANT_PREFER_GRPC the client raises grpc.RpcError instead of HTTP errors. A Qdrant server answers with
# INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED where HTTP has 5xx, 429 or a timeout (a shard without
# enough active replicas is INTERNAL), and with FAILED_PRECONDITION for a locked storage: all of them are transient,
# like an unreachable server (UNAVAILABLE from the client itself). Only refused credentials and rejected input are not.
_GRPC_REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
_GRPC_REJECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
}


def _map_grpc_error(exc: grpc.RpcError, action: str) -> NoReturn:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise TransientError(f"Qdrant could not {action}, it asks to slow down: {details}") from exc
    if code is grpc.StatusCode.NOT_FOUND and "Collection" in details:
        raise CollectionMissing(
            f"Qdrant could not {action}: the collection does not exist (deleted by hand or by a rebuild)"
        ) from exc
    if code in _GRPC_REFUSED:
        raise ConfigurationError(f"Qdrant refused the credentials (check QDRANT_API_KEY): {details}") from None
    if code in _GRPC_REJECTED or code is grpc.StatusCode.NOT_FOUND:
        raise PermanentError(f"Qdrant rejected the request to {action}: {details}") from exc
    if code is grpc.StatusCode.UNAVAILABLE:
        raise TransientError(f"Qdrant is unreachable, could not {action}: {details}") from exc
    raise TransientError(f"Qdrant could not {action}: {code.name if code else 'gRPC error'}: {details}") from exc


def _collection_missing(exc: BaseException) -> bool:
    """A server answers 404 "Collection `x` doesn't exist"; the in-memory client raises "Collection x not found"."""
    text = str(exc)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404 and "Collection" in text
    return isinstance(exc, ValueError) and text.startswith("Collection ") and text.endswith(" not found")
