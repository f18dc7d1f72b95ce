"""The point and collection writes of Qdrant's REST API, served only for collections vecsync does not sync.

vecsync writes the points of a collection it syncs under its version fence (docs/design.md, "No stale
overwrite"): each write applies only over an older point. A point written from outside would bypass that fence,
and the next change of its document would not know of it, so every write here is refused (403) for a synced
collection and for a name that serves one. Another collection may be written where ``writable`` names it ("*":
any), with the requests a Qdrant server takes: the ones qdrant-client sends for vecsync's own server
implementation (vecsync.store.server), so that it can run against this API on Qdrant's engine (docs/design.md,
"The server implementation against the embedded REST API").

Each write runs through ``EmbeddedStore.engine(action, writes=True)``: under the store's lock, flushed as the
store's own writes are. A batch's operations are translated first and then applied in order, as Qdrant applies
them (one after another, not as one transaction). Options that change nothing a client can observe here are
accepted and ignored: those of a distributed server (``wait``, ``ordering``, shards, replication) and the tuning of
indexes and storage (HNSW, quantization, on-disk, optimizers, WAL: the engine searches exactly, see
vecsync.store.embedded). Options that would change what is stored or found (named or multi-vectors, another
distance, a text index's tokenizer, inference objects, shard keys) answer 501 naming them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import pydantic
import qdrant_edge as qe
from qdrant_client.http import models

from upserter.qdrant_rest import convert
from upserter.qdrant_rest.collections_view import Collections, Refusal
from upserter.qdrant_rest.convert import BadRequest, NotServed
from vecsync.store.embedded import EmbeddedStore

# The engine's payload index type of each of Qdrant's schema type names.
SCHEMA_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "geo": qe.PayloadSchemaType.Geo,
    "text": qe.PayloadSchemaType.Text,
    "bool": qe.PayloadSchemaType.Bool,
    "datetime": qe.PayloadSchemaType.Datetime,
    "uuid": qe.PayloadSchemaType.Uuid,
}

UPDATE_MODES = {
    "upsert": qe.UpdateMode.Upsert,
    "insert_only": qe.UpdateMode.InsertOnly,
    "update_only": qe.UpdateMode.UpdateOnly,
}

# A collection is a folder of the store: its name must be a plain folder name (no path, no hidden file).
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,254}")

# The operations of POST /collections/{name}/points/batch, each of one key.
BATCH_OPERATIONS = ("upsert", "delete", "set_payload", "overwrite_payload", "delete_payload", "clear_payload")


class Route(Protocol):
    """app.create_app's ``route``: registers a handler for ``path`` and ``methods``."""

    def __call__(
        self, path: str, methods: list[str], *, write: bool = False
    ) -> Callable[[Callable[..., Any]], Any]: ...


def register(route: Route, collections: Collections) -> None:
    """Serve the writes on ``route``, for the collections ``collections`` allows to be written."""
    operation_ids = itertools.count()

    def completed() -> dict[str, Any]:
        return {"operation_id": next(operation_ids), "status": "completed"}

    def apply(name: str, action: str, operations: Callable[[], list[qe.UpdateOperation]]) -> None:
        """Translate ``operations`` where ``name`` may be written (a refusal first: it says more than a request's
        fault), then apply them in order under the store's lock."""
        store = writable_store(collections, name)
        translated = operations()
        with store.engine(action, writes=True) as shard:
            for operation in translated:
                shard.update(operation)

    # Collections ------------------------------------------------------------------------------------------------

    @route("/collections/{name}", ["PUT"], write=True)
    def create_collection(body: Any, name: str) -> Any:
        require_writable(collections, name)
        if not COLLECTION_NAME.fullmatch(name):
            raise BadRequest(
                f"collection name {name!r} is not served: use letters, digits, '_', '-' and '.' (not first)"
            )
        if collections.catalog.resolve(name) is not None:
            raise Refusal(409, f"Wrong input: Collection `{name}` already exists!")
        size, sparse_vector = collection_config(validated(models.CreateCollection, body))
        collections.catalog.open(name, dim=size, sparse_model=sparse_vector)
        return True

    @route("/collections/{name}/index", ["PUT"], write=True)
    def create_index(body: Any, name: str) -> Any:
        def index() -> list[qe.UpdateOperation]:
            request = validated(models.CreateFieldIndex, body)
            return [qe.UpdateOperation.create_field_index(request.field_name, schema_type(request.field_schema))]

        apply(name, "create a payload index", index)
        return completed()

    @route("/collections/aliases", ["POST"], write=True)
    def update_aliases(body: Any) -> Any:
        request = validated(models.ChangeAliasesOperation, body)
        change_aliases(collections, request.actions)
        return True

    # Points -----------------------------------------------------------------------------------------------------

    @route("/collections/{name}/points", ["PUT"], write=True)
    def upsert(body: Any, name: str) -> Any:
        apply(name, "upsert points", lambda: [upsert_operation(body)])
        return completed()

    @route("/collections/{name}/points/delete", ["POST"], write=True)
    def delete(body: Any, name: str) -> Any:
        apply(name, "delete points", lambda: [delete_operation(body)])
        return completed()

    @route("/collections/{name}/points/payload", ["POST"], write=True)
    def set_payload(body: Any, name: str) -> Any:
        apply(name, "set payload", lambda: [payload_operation("set_payload", body)])
        return completed()

    @route("/collections/{name}/points/payload", ["PUT"], write=True)
    def overwrite_payload(body: Any, name: str) -> Any:
        apply(name, "overwrite payload", lambda: [payload_operation("overwrite_payload", body)])
        return completed()

    @route("/collections/{name}/points/payload/delete", ["POST"], write=True)
    def delete_payload(body: Any, name: str) -> Any:
        apply(name, "delete payload", lambda: [payload_operation("delete_payload", body)])
        return completed()

    @route("/collections/{name}/points/payload/clear", ["POST"], write=True)
    def clear_payload(body: Any, name: str) -> Any:
        apply(name, "clear payload", lambda: [payload_operation("clear_payload", body)])
        return completed()

    @route("/collections/{name}/points/batch", ["POST"], write=True)
    def batch(body: Any, name: str) -> Any:
        def operations() -> list[qe.UpdateOperation]:
            validated(models.UpdateOperations, body)
            return [batch_operation(raw) for raw in body["operations"]]

        apply(name, "apply a batch of updates", operations)
        return [completed() for _ in body["operations"]]  # one result per operation, as Qdrant answers


# Who may write ----------------------------------------------------------------------------------------------------


def require_writable(collections: Collections, name: str) -> None:
    """Refuse (403) a write to ``name`` where vecsync syncs it, or the setting does not allow it."""
    physical = collections.catalog.resolve(name)
    if collections.may_write(name) and (physical is None or collections.may_write(physical)):
        return
    if collections.synced(name) or (physical is not None and collections.synced(physical)):
        raise Refusal(
            403,
            f"Forbidden: collection `{name}` is synced by vecsync, which writes its points under its version fence "
            "(each write only over an older point); a write from outside would bypass that fence. Change the "
            "documents in MongoDB instead, or write to a collection vecsync does not sync.",
        )
    raise Refusal(
        403,
        f"Forbidden: writes to collection `{name}` are not allowed here; the upserter's setting of writable "
        "collections must name it (or '*' for every collection vecsync does not sync).",
    )


def writable_store(collections: Collections, name: str) -> EmbeddedStore:
    """The store of ``name``, where its points may be written; 404 where there is none, 403 where not allowed."""
    collections.physical(name)
    require_writable(collections, name)
    return collections.store(name)


# Collections ------------------------------------------------------------------------------------------------------


def collection_config(request: models.CreateCollection) -> tuple[int, str | None]:
    """The size of the collection's dense vectors and the name of its sparse vector, where the request asks for a
    collection the engine holds as vecsync's are: one unnamed cosine vector, at most one sparse vector with IDF."""
    vectors = request.vectors
    if not isinstance(vectors, models.VectorParams):
        raise NotServed("named vectors (create the collection with one unnamed vector)")
    if vectors.distance != models.Distance.COSINE:
        raise NotServed(f"the {vectors.distance.value} distance (only Cosine)")
    if vectors.multivector_config is not None:
        raise NotServed("multivectors")
    sparse = request.sparse_vectors or {}
    if len(sparse) > 1:
        raise NotServed("more than one sparse vector")
    for name, params in sparse.items():
        if params.modifier != models.Modifier.IDF:
            raise NotServed(f"sparse vector {name!r} without the IDF modifier (only IDF)")
    return vectors.size, next(iter(sparse), None)


def schema_type(schema: Any) -> qe.PayloadSchemaType:
    """The engine's index type of a CreateFieldIndex's ``field_schema``: a type's name, or its parameters where they
    name the type alone (other parameters, such as a text index's tokenizer, are not served)."""
    if isinstance(schema, models.PayloadSchemaType):
        return SCHEMA_TYPES[schema.value]
    if schema is None:
        raise BadRequest("'field_schema' is required: the type of the index, such as \"keyword\"")
    given = schema.model_dump(exclude_none=True, mode="json")
    kind = given.pop("type", None)
    if given or kind not in SCHEMA_TYPES:
        raise NotServed(f"payload index parameters {sorted(given)} (give the index type alone)")
    return SCHEMA_TYPES[kind]


def change_aliases(collections: Collections, actions: list[Any]) -> None:
    """Apply the alias actions in order, all of them or none (one rename of the catalog's file)."""
    for action in actions:
        for name in _alias_names(action):
            require_writable(collections, name)

    def changed(aliases: dict[str, str]) -> Mapping[str, str]:
        existing = set(collections.catalog.collections())
        for action in actions:
            if isinstance(action, models.CreateAliasOperation):
                alias, target = action.create_alias.alias_name, action.create_alias.collection_name
                if target not in existing:
                    raise Refusal(404, f"Not found: Collection `{target}` doesn't exist!")
                if alias in existing:
                    raise Refusal(
                        409, f"Wrong input: Collection `{alias}` already exists; an alias cannot take its name"
                    )
                aliases[alias] = target
            elif isinstance(action, models.DeleteAliasOperation):
                alias = action.delete_alias.alias_name
                if aliases.pop(alias, None) is None:
                    raise Refusal(404, f"Not found: Alias `{alias}` doesn't exist!")
            else:
                old, new = action.rename_alias.old_alias_name, action.rename_alias.new_alias_name
                if old not in aliases:
                    raise Refusal(404, f"Not found: Alias `{old}` doesn't exist!")
                aliases[new] = aliases.pop(old)
        return aliases

    collections.catalog.change_aliases(changed)


def _alias_names(action: Any) -> list[str]:
    """The names an alias action writes: the alias, and the collection it is given."""
    if isinstance(action, models.CreateAliasOperation):
        return [action.create_alias.alias_name, action.create_alias.collection_name]
    if isinstance(action, models.DeleteAliasOperation):
        return [action.delete_alias.alias_name]
    return [action.rename_alias.old_alias_name, action.rename_alias.new_alias_name]


# Points -----------------------------------------------------------------------------------------------------------


def batch_operation(raw: Any) -> qe.UpdateOperation:
    """One operation of a batch (its JSON, validated already) as the engine's."""
    kind = next(iter(raw)) if isinstance(raw, dict) and len(raw) == 1 else None
    if kind not in BATCH_OPERATIONS:
        raise NotServed(f"the batch operation {kind or raw!r}")
    if kind == "upsert":
        return upsert_operation(raw[kind])
    if kind == "delete":
        return delete_operation(raw[kind])
    return payload_operation(kind, raw[kind])


def upsert_operation(body: Any) -> qe.UpdateOperation:
    """PUT /points (PointsList or PointsBatch), with its ``update_filter`` (a point that exists is replaced only
    where it matches; Qdrant's conditional upsert) and ``update_mode``."""
    request = validated(models.PointInsertOperations, body)
    _no_shard_key(request.shard_key)
    raw = _object(body)
    if isinstance(request, models.PointsList):
        points = [_point(point) for point in raw["points"]]
    else:
        points = _batch_points(raw["batch"])
    condition = convert.engine_filter(raw.get("update_filter"))
    mode = UPDATE_MODES[request.update_mode.value] if request.update_mode is not None else None
    return qe.UpdateOperation.upsert_points(points, condition=condition, update_mode=mode)


def delete_operation(body: Any) -> qe.UpdateOperation:
    """POST /points/delete: by ids, or by a filter."""
    ids, selected = _selection(body)
    if ids is not None:
        return qe.UpdateOperation.delete_points(ids)
    return qe.UpdateOperation.delete_points_by_filter(selected)


def payload_operation(kind: str, body: Any) -> qe.UpdateOperation:
    """One of the payload writes (``kind``: set_payload, overwrite_payload, delete_payload, clear_payload) of the
    points its body selects by ids or by a filter."""
    if kind == "clear_payload":
        ids, selected = _selection(body)
        if ids is not None:
            return qe.UpdateOperation.clear_payload(ids)
        return qe.UpdateOperation.clear_payload_by_filter(selected)
    if kind == "delete_payload":
        keys = validated(models.DeletePayload, body).keys
        ids, selected = _selection(body)
        if ids is not None:
            return qe.UpdateOperation.delete_payload(ids, keys)
        return qe.UpdateOperation.delete_payload_by_filter(selected, keys)
    request = validated(models.SetPayload, body)
    ids, selected = _selection(body)
    payload = _object(body)["payload"]
    if kind == "set_payload":
        if ids is not None:
            return qe.UpdateOperation.set_payload(ids, payload, request.key)
        return qe.UpdateOperation.set_payload_by_filter(selected, payload, request.key)
    if ids is not None:
        return qe.UpdateOperation.overwrite_payload(ids, payload, request.key)
    return qe.UpdateOperation.overwrite_payload_by_filter(selected, payload, request.key)


def _selection(body: Any) -> tuple[list[Any] | None, qe.Filter]:
    """The points a write selects: its ``points`` (ids) where given, else its ``filter`` (all of its conditions;
    an empty filter selects every point, as on Qdrant)."""
    raw = _object(body)
    _no_shard_key(raw.get("shard_key"))
    if raw.get("points") is not None:
        if not isinstance(raw["points"], list):
            raise BadRequest("'points' must be a list of point ids")
        return convert.point_ids(raw["points"]), qe.Filter()
    if "filter" not in raw:
        raise BadRequest("select the points with 'points' (a list of ids) or 'filter'")
    return None, convert.engine_filter(raw["filter"]) or qe.Filter()


def _point(raw: dict[str, Any]) -> qe.Point:
    """One PointStruct (validated already) as the engine's point."""
    (point_id,) = convert.point_ids([raw["id"]])
    return qe.Point(point_id, _vector(raw.get("vector")), raw.get("payload"))


def _batch_points(raw: dict[str, Any]) -> list[qe.Point]:
    """A PointsBatch's columns (ids, vectors by name or unnamed, payloads) as the engine's points."""
    ids = convert.point_ids(raw["ids"])
    vectors = raw["vectors"]
    if isinstance(vectors, dict):
        columns = {name: list(column) for name, column in vectors.items()}
        if any(len(column) != len(ids) for column in columns.values()):
            raise BadRequest("every vector column of 'batch' must have one vector per id")
        each: list[Any] = [{name: column[i] for name, column in columns.items()} for i in range(len(ids))]
    else:
        each = list(vectors)
    payloads = raw.get("payloads") or [None] * len(ids)
    if len(each) != len(ids) or len(payloads) != len(ids):
        raise BadRequest("'batch' must have as many vectors and payloads as ids")
    return [qe.Point(pid, _vector(vector), payload) for pid, vector, payload in zip(ids, each, payloads, strict=True)]


def _vector(raw: Any) -> Any:
    """A point's vectors as the engine takes them: a dense list, or named vectors, sparse ones as SparseVector."""
    if isinstance(raw, list) and all(isinstance(value, (int, float)) for value in raw):
        return [float(value) for value in raw]
    if isinstance(raw, dict):
        return {str(name): _named_vector(name, value) for name, value in raw.items()}
    raise NotServed("vectors other than a dense list of numbers or named vectors (multivectors, inference objects)")


def _named_vector(name: str, raw: Any) -> Any:
    if isinstance(raw, list) and all(isinstance(value, (int, float)) for value in raw):
        return [float(value) for value in raw]
    if isinstance(raw, dict) and set(raw) == {"indices", "values"}:
        return qe.SparseVector(list(raw["indices"]), [float(value) for value in raw["values"]])
    raise NotServed(f"the vector {name!r} (only dense lists and sparse vectors of indices and values)")


def _no_shard_key(shard_key: Any) -> None:
    if shard_key is not None:
        raise NotServed("shard keys (the collection is one shard)")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def validated(model: Any, body: Any) -> Any:
    """``body`` validated as qdrant-client's model (or union of models) ``model``; BadRequest naming what is wrong."""
    try:
        return pydantic.TypeAdapter(model).validate_python(body)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors()[:5]
        )
        raise BadRequest(f"the request is not one Qdrant takes ({problems})") from None
