"""Qdrant's REST request and response JSON, to and from the embedded engine's (qdrant_edge) objects.

Requests are validated with qdrant-client's own pydantic models (those Qdrant's API is described by), so that a
malformed body is refused as Qdrant refuses it, naming the field; the validated model is then translated part by
part into the engine's objects. A part this server does not translate raises NotServed naming it (answered 501),
never an answer that quietly differs from Qdrant's.

Results go back in Qdrant's JSON: ids as numbers or UUID strings, a dense vector as a list (its exact 32-bit values),
a named sparse one as ``{"indices", "values"}``, and scores and sparse values in the shortest form of their 32-bit
floats, as Qdrant writes them (0.7, not 0.699999988).
"""

from __future__ import annotations

import json
import re
import struct
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pydantic
import qdrant_edge as qe
from qdrant_client.http import models

from vecsync.store.embedded import CONFIG_FILE

# Qdrant's defaults where a request leaves a number out.
DEFAULT_LIMIT = 10
DEFAULT_RRF_K = 2
DEFAULT_GROUP_SIZE = 3
# Grouping (the engine has none): each round asks the engine for this many hits per wanted hit, then twice as many
# as the round before while groups are missing and hits remain, up to GROUP_HITS_CAP hits (a bound on the time one
# request takes; a Qdrant server also groups in a bounded number of rounds), so that groups of values that are rare
# far down the ranking may be missing or short.
GROUP_ROUND_FACTOR = 2
GROUP_HITS_CAP = 10_000
# The largest point id Qdrant takes: an unsigned 64-bit integer.
MAX_POINT_ID = 2**64 - 1

Model = TypeVar("Model", bound=pydantic.BaseModel)
Condition = (
    qe.FieldCondition
    | qe.IsEmptyCondition
    | qe.IsNullCondition
    | qe.HasIdCondition
    | qe.HasVectorCondition
    | qe.NestedCondition
    | qe.Filter
)


class BadRequest(Exception):
    """A request Qdrant would refuse with 400: its message says what is wrong."""


class NotServed(Exception):
    """A part of Qdrant's API this server does not serve (answered 501): its message names the part."""


# Validation --------------------------------------------------------------------------------------------------------

# The parts of a pydantic error location that are field names or list positions, not the names of union branches
# (a model's name, "list[...]", or a plain type: "bool", "int", "str"...).
_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_BRANCH_TYPES = frozenset({"bool", "int", "float", "str", "uuid", "date", "datetime", "none"})


def _validated(model: type[Model], body: Any, what: str) -> Model:
    """``body`` as qdrant-client's ``model``; BadRequest naming the wrong field where it is not one."""
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise BadRequest(_validation_message(exc, what)) from None


def _validation_message(exc: pydantic.ValidationError, what: str) -> str:
    """Pydantic's most specific error as one sentence naming the field. A union reports an error for each of its
    branches: the deepest one about a value the body gave (not a field another branch misses) is the branch the
    body meant; where several branches fail at that field, none of its forms fits."""
    ranked: list[tuple[int, bool, str, str]] = []
    for error in exc.errors():
        path = [
            str(part)
            for part in error["loc"]
            if isinstance(part, int) or (_FIELD_NAME.match(part) and part not in _BRANCH_TYPES)
        ]
        ranked.append((len(path), error["type"] != "missing", ".".join(path), error["msg"]))
    depth, given, field, message = max(ranked, key=lambda each: each[:2])
    alternatives = {each[3] for each in ranked if each[:3] == (depth, given, field)}
    if len(alternatives) > 1:
        message = "it is none of the forms this field takes"
    return (
        f"the {what} request is not valid at `{field or 'the body'}`: {message} (see Qdrant's API reference for "
        "the field's forms)"
    )


def _at_least(value: int | None, minimum: int, field: str) -> None:
    """Qdrant's bounds of a number of points (the engine takes unsigned numbers and fails on others)."""
    if value is not None and value < minimum:
        raise BadRequest(f"`{field}` must be at least {minimum}, not {value}")


# Filters -----------------------------------------------------------------------------------------------------------


def engine_filter(body: Any) -> qe.Filter | None:
    """Qdrant's Filter JSON as the engine's Filter; None for none."""
    if body is None:
        return None
    return _filter(_validated(models.Filter, body, "filter"))


def _filter(model: models.Filter) -> qe.Filter:
    min_should = None
    if model.min_should is not None:
        min_should = qe.MinShould(
            [_condition(each) for each in model.min_should.conditions], model.min_should.min_count
        )
    return qe.Filter(
        must=_conditions(model.must),
        should=_conditions(model.should),
        must_not=_conditions(model.must_not),
        min_should=min_should,
    )


def _conditions(value: Any) -> list[Condition] | None:
    """A clause of a filter: Qdrant takes one condition or a list of them."""
    if value is None:
        return None
    return [_condition(each) for each in (value if isinstance(value, list) else [value])]


def _condition(condition: Any) -> Condition:
    if isinstance(condition, models.Filter):
        return _filter(condition)
    if isinstance(condition, models.FieldCondition):
        return _field_condition(condition)
    if isinstance(condition, models.IsEmptyCondition):
        return qe.IsEmptyCondition(condition.is_empty.key)
    if isinstance(condition, models.IsNullCondition):
        return qe.IsNullCondition(condition.is_null.key)
    if isinstance(condition, models.HasIdCondition):
        return qe.HasIdCondition(set(point_ids(list(condition.has_id))))
    if isinstance(condition, models.HasVectorCondition):
        return qe.HasVectorCondition(condition.has_vector)
    if isinstance(condition, models.NestedCondition):
        return qe.NestedCondition(condition.nested.key, _filter(condition.nested.filter))
    # SliceCondition, and any condition a later qdrant-client adds: the engine has no such condition.
    raise NotServed(f"the filter condition {type(condition).__name__}")


def _field_condition(condition: models.FieldCondition) -> qe.FieldCondition:
    parts = (
        condition.match,
        condition.range,
        condition.geo_bounding_box,
        condition.geo_radius,
        condition.geo_polygon,
        condition.values_count,
        condition.is_empty,
        condition.is_null,
    )
    if all(part is None for part in parts):
        raise BadRequest(
            f"the field condition on `{condition.key}` has no condition: give one of match, range, "
            "geo_bounding_box, geo_radius, geo_polygon, values_count, is_empty or is_null"
        )
    return qe.FieldCondition(
        key=condition.key,
        match=_match(condition.match),
        range=_range(condition.range),
        geo_bounding_box=_bounding_box(condition.geo_bounding_box),
        geo_radius=_radius(condition.geo_radius),
        geo_polygon=_polygon(condition.geo_polygon),
        values_count=_values_count(condition.values_count),
        is_empty=condition.is_empty,
        is_null=condition.is_null,
    )


def _match(match: Any) -> Any:
    if match is None:
        return None
    if isinstance(match, models.MatchValue):
        return qe.MatchValue(match.value)
    if isinstance(match, models.MatchAny):
        return qe.MatchAny(match.any)
    if isinstance(match, models.MatchExcept):
        return qe.MatchExcept(match.except_)
    if isinstance(match, models.MatchText):
        return qe.MatchText(match.text)
    if isinstance(match, models.MatchTextAny):
        return qe.MatchTextAny(match.text_any)
    if isinstance(match, models.MatchPhrase):
        return qe.MatchPhrase(match.phrase)
    if isinstance(match, models.MatchPrefix):
        return qe.MatchPrefix(match.prefix)
    if isinstance(match, models.MatchSubstring):
        return qe.MatchSubstring(match.substring)
    raise NotServed(f"the match condition {type(match).__name__}")


def _range(bounds: models.Range | models.DatetimeRange | None) -> qe.RangeFloat | qe.RangeDateTime | None:
    if bounds is None:
        return None
    if isinstance(bounds, models.DatetimeRange):
        return qe.RangeDateTime(
            gte=_datetime(bounds.gte), gt=_datetime(bounds.gt), lte=_datetime(bounds.lte), lt=_datetime(bounds.lt)
        )
    return qe.RangeFloat(gte=bounds.gte, gt=bounds.gt, lte=bounds.lte, lt=bounds.lt)


def _datetime(value: datetime | date | None) -> str | None:
    """An RFC 3339 time for the engine: a time without a zone is UTC, as Qdrant reads it, and a date its midnight."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _geo_point(point: models.GeoPoint) -> qe.GeoPoint:
    return qe.GeoPoint(lon=point.lon, lat=point.lat)


def _bounding_box(box: models.GeoBoundingBox | None) -> qe.GeoBoundingBox | None:
    if box is None:
        return None
    return qe.GeoBoundingBox(_geo_point(box.top_left), _geo_point(box.bottom_right))


def _radius(radius: models.GeoRadius | None) -> qe.GeoRadius | None:
    return None if radius is None else qe.GeoRadius(_geo_point(radius.center), radius.radius)


def _polygon(polygon: models.GeoPolygon | None) -> qe.GeoPolygon | None:
    if polygon is None:
        return None
    interiors = [[_geo_point(p) for p in ring.points] for ring in polygon.interiors or []]
    return qe.GeoPolygon([_geo_point(p) for p in polygon.exterior.points], interiors or None)


def _values_count(count: models.ValuesCount | None) -> qe.ValuesCount | None:
    return None if count is None else qe.ValuesCount(lt=count.lt, gt=count.gt, lte=count.lte, gte=count.gte)


# Ids and selectors -------------------------------------------------------------------------------------------------


def point_ids(values: Any) -> list[int | UUID | str]:
    """Qdrant's point ids (unsigned integers, or UUIDs in any of their written forms) for the engine: integers,
    and UUIDs in their canonical form; BadRequest naming the first that is neither."""
    if not isinstance(values, list):
        raise BadRequest("the point ids must be a list of unsigned integers or UUID strings")
    return [_point_id(value) for value in values]


def _point_id(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_POINT_ID:
        return value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(UUID(value))
        except ValueError:
            pass
    raise BadRequest(f"{json.dumps(value, default=str)} is not a point id: give an unsigned integer or a UUID string")


def json_point_id(value: Any) -> int | str | None:
    """A point id from the engine as JSON: an integer as it is, a UUID as its string (the engine gives UUID
    objects); None stays None (scroll's last page has no next offset)."""
    if value is None or isinstance(value, int):
        return value
    return str(value)


def payload_selector(with_payload: Any) -> bool | list[str] | qe.PayloadSelector:
    """Qdrant's ``with_payload``: true/false, a list of fields, ``{"include": [...]}`` or ``{"exclude": [...]}``
    (None: no payload, the default of searches and queries)."""
    if isinstance(with_payload, pydantic.BaseModel):
        with_payload = with_payload.model_dump(exclude_none=True)
    if with_payload is None:
        return False
    if isinstance(with_payload, bool):
        return with_payload
    if _is_names(with_payload):
        return list(with_payload)
    if isinstance(with_payload, dict) and len(with_payload) == 1:
        ((kind, fields),) = with_payload.items()
        if kind == "include" and _is_names(fields):
            return qe.PayloadSelector.Include(list(fields))
        if kind == "exclude" and _is_names(fields):
            return qe.PayloadSelector.Exclude(list(fields))
    raise BadRequest(
        '`with_payload` must be true, false, a list of payload fields, {"include": [fields]} or {"exclude": [fields]}'
    )


def vector_selector(with_vector: Any) -> bool | list[str]:
    """Qdrant's ``with_vector``: true/false or a list of vector names (None: no vectors, Qdrant's default)."""
    if with_vector is None:
        return False
    if isinstance(with_vector, bool):
        return with_vector
    if _is_names(with_vector):
        return list(with_vector)
    raise BadRequest("`with_vector` must be true, false or a list of vector names")


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(each, str) for each in value)


# Searches and queries ----------------------------------------------------------------------------------------------

# The fields of the legacy search request (POST points/search) besides its vector; qdrant-client no longer ships
# its model, so its vector is translated into a query request's and the rest validated as one.
_SEARCH_FIELDS = {"filter", "params", "limit", "offset", "with_payload", "with_vector", "score_threshold", "shard_key"}


def search_request(body: dict[str, Any]) -> qe.QueryRequest:
    """The legacy search (POST points/search): ``vector`` a list, ``{"name", "vector"}`` (a named dense vector,
    or a named sparse one as ``{"indices", "values"}``); ``limit`` is required, as Qdrant has it."""
    unknown = sorted(set(body) - _SEARCH_FIELDS - {"vector"})
    if unknown:
        raise BadRequest(f"the search request has unknown fields: {', '.join(unknown)}")
    if "vector" not in body:
        raise BadRequest("the search request has no `vector`: give the query vector")
    if "limit" not in body:
        raise BadRequest("the search request has no `limit`: give the number of hits wanted")
    vector = body["vector"]
    query = {key: value for key, value in body.items() if key != "vector"}
    if isinstance(vector, dict):
        if set(vector) != {"name", "vector"}:
            raise BadRequest('the search request\'s `vector` must be a list of numbers or {"name", "vector"}')
        query["using"], query["query"] = vector["name"], vector["vector"]
    else:
        query["query"] = vector
    model = _validated(models.QueryRequest, query, "search")
    if not isinstance(model.query, (list, models.SparseVector)):
        raise BadRequest('the search request\'s `vector` must be a list of numbers, or {"indices", "values"}')
    return _query_request(model, None)


def query_request(body: dict[str, Any], shard: qe.EdgeShard) -> qe.QueryRequest:
    """The universal query (POST points/query); ``shard`` gives the vectors of points a query names by id."""
    return _query_request(_validated(models.QueryRequest, body, "query"), shard)


def _query_request(model: models.QueryRequest, shard: qe.EdgeShard | None) -> qe.QueryRequest:
    _refuse_unserved(model)
    _at_least(model.limit, 1, "limit")
    _at_least(model.offset, 0, "offset")
    limit = DEFAULT_LIMIT if model.limit is None else model.limit
    query, mentioned = _scoring_query(model.query, model.using, shard, limit)
    return qe.QueryRequest(
        limit=limit,
        offset=model.offset,
        query=query,
        prefetches=_prefetches(model.prefetch, shard),
        with_vector=vector_selector(model.with_vector),
        with_payload=payload_selector(model.with_payload),
        filter=_without_ids(model.filter, mentioned),
        score_threshold=model.score_threshold,
        params=_params(model.params),
    )


def _refuse_unserved(model: models.QueryRequest | models.QueryGroupsRequest | models.Prefetch) -> None:
    if getattr(model, "shard_key", None) is not None:
        raise NotServed("`shard_key` (the embedded collection has one shard, without keys)")
    if model.lookup_from is not None:
        raise NotServed("`lookup_from` (queries read vectors of their own collection only)")


def _prefetches(prefetch: Any, shard: qe.EdgeShard | None) -> list[qe.Prefetch] | None:
    if prefetch is None:
        return None
    stages = prefetch if isinstance(prefetch, list) else [prefetch]
    return [_prefetch(stage, shard) for stage in stages]


def _prefetch(stage: models.Prefetch, shard: qe.EdgeShard | None) -> qe.Prefetch:
    _refuse_unserved(stage)
    _at_least(stage.limit, 1, "prefetch.limit")
    limit = DEFAULT_LIMIT if stage.limit is None else stage.limit
    query, mentioned = _scoring_query(stage.query, stage.using, shard, limit)
    return qe.Prefetch(
        limit=limit,
        query=query,
        prefetches=_prefetches(stage.prefetch, shard),
        params=_params(stage.params),
        filter=_without_ids(stage.filter, mentioned),
        score_threshold=stage.score_threshold,
    )


def _scoring_query(
    query: Any, using: str | None, shard: qe.EdgeShard | None, limit: int
) -> tuple[Any, list[int | str]]:
    """The engine's query of Qdrant's ``query``, and the ids of the points it names (Qdrant leaves those out of
    the hits: a point is not its own neighbour)."""
    if query is None:
        return None, []
    if isinstance(query, models.NearestQuery):
        if query.mmr is not None:
            return _mmr(query.nearest, query.mmr, using, shard, limit)
        query = query.nearest
    if isinstance(query, models.FusionQuery):
        if query.fusion == models.Fusion.RRF:
            return qe.Fusion.Rrf(k=DEFAULT_RRF_K), []
        return qe.Fusion.Dbsf(), []
    if isinstance(query, models.RrfQuery):
        k = DEFAULT_RRF_K if query.rrf.k is None else query.rrf.k
        return qe.Fusion.Rrf(k=k, weights=query.rrf.weights), []
    if isinstance(query, models.OrderByQuery):
        return _order_by(query.order_by), []
    if isinstance(query, models.SampleQuery):
        return qe.Sample.Random, []
    if isinstance(query, models.RecommendQuery):
        return _recommend(query.recommend, using, shard)
    if isinstance(query, models.DiscoverQuery):
        target, mentioned = _vector_input(query.discover.target, using, shard)
        pairs = _context_pairs(query.discover.context, using, shard, mentioned)
        return qe.Query.Discover(qe.DiscoverQuery(target, pairs), using=using), mentioned
    if isinstance(query, models.ContextQuery):
        mentioned = []
        pairs = _context_pairs(query.context, using, shard, mentioned)
        if not pairs:
            raise BadRequest("`context` needs at least one pair of a positive and a negative example")
        return qe.Query.Context(qe.ContextQuery(pairs), using=using), mentioned
    if isinstance(query, (models.Document, models.Image, models.InferenceObject)):
        raise NotServed(f"a query by {type(query).__name__.lower()} (this server embeds no model: give a vector)")
    if isinstance(query, pydantic.BaseModel) and not isinstance(query, models.SparseVector):
        # FormulaQuery, RelevanceFeedbackQuery, TextQuery.
        kind = next(iter(query.model_fields_set), type(query).__name__)
        raise NotServed(f"the query `{kind}`")
    vector, mentioned = _vector_input(query, using, shard)
    return qe.Query.Nearest(vector, using=using), mentioned


def _mmr(
    nearest: Any, mmr: models.Mmr, using: str | None, shard: qe.EdgeShard | None, limit: int
) -> tuple[Any, list[int | str]]:
    """Nearest with maximal marginal relevance: Qdrant's ``diversity`` (0 relevance only, 1 diversity only; 0.5
    by default) is one minus the engine's ``lambda_``; the candidates are ``limit`` by default, as in Qdrant."""
    diversity = 0.5 if mmr.diversity is None else mmr.diversity
    if not 0 <= diversity <= 1:
        raise BadRequest(f"`mmr.diversity` must be between 0 and 1, not {diversity}")
    candidates = limit if mmr.candidates_limit is None else mmr.candidates_limit
    vector, mentioned = _vector_input(nearest, using, shard)
    return qe.Mmr(vector, lambda_=1 - diversity, candidates_limit=candidates, using=using), mentioned


def _recommend(
    recommend: models.RecommendInput, using: str | None, shard: qe.EdgeShard | None
) -> tuple[Any, list[int | str]]:
    """A recommendation from positive and negative examples (vectors, or points by id, which are left out of the
    hits). ``best_score`` and ``sum_scores`` are the engine's own; ``average_vector``, Qdrant's default, is the
    nearest query to ``avg(positive) + avg(positive) - avg(negative)``, as Qdrant computes it."""
    positives: list[Any] = []
    negatives: list[Any] = []
    mentioned: list[int | str] = []
    for examples, vectors in ((recommend.positive, positives), (recommend.negative, negatives)):
        for example in examples or []:
            vector, ids = _vector_input(example, using, shard)
            vectors.append(vector)
            mentioned.extend(ids)
    strategy = recommend.strategy or models.RecommendStrategy.AVERAGE_VECTOR
    if strategy == models.RecommendStrategy.BEST_SCORE:
        if not positives and not negatives:
            raise BadRequest("`recommend` needs at least one positive or negative example")
        return qe.Query.RecommendBestScore(qe.RecommendQuery(positives, negatives), using=using), mentioned
    if strategy == models.RecommendStrategy.SUM_SCORES:
        if not positives and not negatives:
            raise BadRequest("`recommend` needs at least one positive or negative example")
        return qe.Query.RecommendSumScores(qe.RecommendQuery(positives, negatives), using=using), mentioned
    if not positives:
        raise BadRequest("`recommend` with the average_vector strategy needs at least one positive example")
    if not all(_is_dense(vector) for vector in positives + negatives):
        raise NotServed("`recommend` with the average_vector strategy over sparse or multi-vectors")
    average = _mean(positives)
    if negatives:
        average_negative = _mean(negatives)
        average = [2 * pos - neg for pos, neg in zip(average, average_negative, strict=True)]
    return qe.Query.Nearest(average, using=using), mentioned


def _context_pairs(
    context: Any, using: str | None, shard: qe.EdgeShard | None, mentioned: list[int | str]
) -> list[qe.ContextPair]:
    """The pairs of a discover or context query (one pair or a list), noting the points they name by id."""
    pairs = []
    for pair in context if isinstance(context, list) else [] if context is None else [context]:
        positive, positive_ids = _vector_input(pair.positive, using, shard)
        negative, negative_ids = _vector_input(pair.negative, using, shard)
        mentioned.extend(positive_ids + negative_ids)
        pairs.append(qe.ContextPair(positive, negative))
    return pairs


def _is_dense(vector: Any) -> bool:
    return isinstance(vector, list) and all(isinstance(each, (int, float)) for each in vector)


def _mean(vectors: list[list[float]]) -> list[float]:
    if len({len(vector) for vector in vectors}) != 1:
        raise BadRequest("the examples of `recommend` must be vectors of one size")
    return [sum(values) / len(vectors) for values in zip(*vectors, strict=True)]


def _vector_input(value: Any, using: str | None, shard: qe.EdgeShard | None) -> tuple[Any, list[int | str]]:
    """A query's vector: given (dense, multi-dense or sparse), or the vector ``using`` names of a point given by id."""
    if isinstance(value, models.SparseVector):
        if not using:
            raise BadRequest("a sparse query vector needs `using`: the name of the collection's sparse vector")
        return qe.SparseVector(list(value.indices), list(value.values)), []
    if isinstance(value, list):
        return value, []
    if shard is None:
        raise BadRequest("a search takes a vector, not a point id")
    point_id = _point_id(value)
    name = using or ""
    found = shard.retrieve([point_id], False, [name])
    if not found:
        raise BadRequest(f"No point with id {point_id} found (a query by id needs the point)")
    vector: Any = found[0].vector
    if isinstance(vector, dict):
        vector = vector.get(name)
    elif name:
        vector = None  # a list is the unnamed vector: the point has no vector of that name
    if vector is None:
        raise BadRequest(f"the point {point_id} has no vector {name!r} to query with")
    return vector, [point_id]


def _without_ids(body: models.Filter | None, ids: list[int | str]) -> qe.Filter | None:
    """A stage's filter, also leaving out the points its query names by id."""
    query_filter = None if body is None else _filter(body)
    if not ids:
        return query_filter
    exclusion = qe.HasIdCondition(set(ids))
    if query_filter is None:
        return qe.Filter(must_not=[exclusion])
    return qe.Filter(must=[query_filter], must_not=[exclusion])


def _order_by(order: Any) -> qe.OrderBy:
    if isinstance(order, str):
        return qe.OrderBy(order)
    direction = None
    if order.direction is not None:
        direction = qe.Direction.Desc if order.direction == models.Direction.DESC else qe.Direction.Asc
    start = order.start_from
    if isinstance(start, (datetime, date)):
        start = _datetime(start)
    return qe.OrderBy(order.key, direction=direction, start_from=start)


def _params(params: models.SearchParams | None) -> qe.SearchParams | None:
    if params is None:
        return None
    if params.idf is not None:
        raise NotServed("`params.idf`")
    quantization = params.quantization
    acorn = params.acorn
    return qe.SearchParams(
        hnsw_ef=params.hnsw_ef,
        exact=bool(params.exact),
        quantization=None
        if quantization is None
        else qe.QuantizationSearchParams(
            ignore=bool(quantization.ignore), rescore=quantization.rescore, oversampling=quantization.oversampling
        ),
        indexed_only=bool(params.indexed_only),
        acorn=None
        if acorn is None
        else qe.AcornSearchParams(enable=bool(acorn.enable), max_selectivity=acorn.max_selectivity),
    )


# Scroll, count, groups ---------------------------------------------------------------------------------------------


def scroll_request(body: dict[str, Any]) -> qe.ScrollRequest:
    """POST points/scroll: a page from ``offset`` (a point id), in id order or ``order_by`` a payload field; its
    payload comes with it unless ``with_payload`` says otherwise, as in Qdrant."""
    model = _validated(models.ScrollRequest, body, "scroll")
    _at_least(model.limit, 1, "limit")
    if model.shard_key is not None:
        raise NotServed("`shard_key` (the embedded collection has one shard, without keys)")
    return qe.ScrollRequest(
        offset=None if model.offset is None else _point_id(model.offset),
        limit=DEFAULT_LIMIT if model.limit is None else model.limit,
        filter=None if model.filter is None else _filter(model.filter),
        with_payload=True if model.with_payload is None else payload_selector(model.with_payload),
        with_vector=vector_selector(model.with_vector),
        order_by=None if model.order_by is None else _order_by(model.order_by),
    )


def count_request(body: dict[str, Any]) -> qe.CountRequest:
    """POST points/count: the points ``filter`` matches (every point without one); ``exact`` as Qdrant's default."""
    model = _validated(models.CountRequest, body, "count")
    if model.shard_key is not None:
        raise NotServed("`shard_key` (the embedded collection has one shard, without keys)")
    return qe.CountRequest(
        exact=True if model.exact is None else model.exact,
        filter=None if model.filter is None else _filter(model.filter),
    )


def query_groups(body: dict[str, Any], shard: qe.EdgeShard) -> dict[str, Any]:
    """POST points/query/groups: the best hits of the query, grouped by the payload field ``group_by`` (a point
    whose field holds several values joins each of their groups; a point without it joins none).

    The engine has no grouping: hits are asked for in rounds that grow while groups are missing and hits remain
    (GROUP_ROUND_FACTOR, capped at GROUP_HITS_CAP hits), grouped here, and the hits kept are read again with the
    request's payload and vector selectors."""
    model = _validated(models.QueryGroupsRequest, body, "query groups")
    if model.with_lookup is not None:
        raise NotServed("`with_lookup` (groups are answered without looking up another collection)")
    group_size = DEFAULT_GROUP_SIZE if model.group_size is None else model.group_size
    limit = DEFAULT_LIMIT if model.limit is None else model.limit
    _at_least(group_size, 1, "group_size")
    _at_least(limit, 1, "limit")
    query = models.QueryRequest(
        prefetch=model.prefetch,
        query=model.query,
        using=model.using,
        filter=model.filter,
        params=model.params,
        score_threshold=model.score_threshold,
        lookup_from=model.lookup_from,
    )
    wanted = min(limit * group_size * GROUP_ROUND_FACTOR, GROUP_HITS_CAP)
    while True:
        query.limit = wanted
        request = _query_request(query, shard)
        hits = shard.query(
            qe.QueryRequest(
                limit=wanted,
                query=request.query,
                prefetches=request.prefetches,
                filter=request.filter,
                score_threshold=request.score_threshold,
                params=request.params,
                with_payload=True,
                with_vector=False,
            )
        )
        groups = _grouped(hits, model.group_by, group_size, limit)
        complete = len(groups) >= limit and all(len(members) >= group_size for members in groups.values())
        if complete or len(hits) < wanted or wanted >= GROUP_HITS_CAP:
            break
        wanted = min(wanted * 2, GROUP_HITS_CAP)
    return {"groups": _group_replies(groups, model, shard)}


def _grouped(hits: list[qe.ScoredPoint], group_by: str, group_size: int, limit: int) -> dict[Any, list[qe.ScoredPoint]]:
    """The first ``limit`` groups (in the order of their best hit) with their first ``group_size`` hits."""
    groups: dict[Any, list[qe.ScoredPoint]] = {}
    for hit in hits:
        for value in _group_values(hit.payload or {}, group_by):
            # A group's key: its value with its type, so that 1 and "1" stay apart.
            key = (type(value).__name__, value)
            if key in groups:
                if len(groups[key]) < group_size:
                    groups[key].append(hit)
            elif len(groups) < limit:
                groups[key] = [hit]
    return groups


def _group_values(payload: dict[str, Any], path: str) -> list[Any]:
    """The values ``path`` ("a.b", "a[].b") reaches in ``payload`` that Qdrant groups by: strings and integers."""
    values: list[Any] = [payload]
    for part in path.replace("[]", "").split("."):
        reached: list[Any] = []
        for value in values:
            if isinstance(value, dict) and part in value:
                found = value[part]
                reached.extend(found if isinstance(found, list) else [found])
        values = reached
    unique: list[Any] = []
    for value in values:
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value not in unique:
            unique.append(value)
    return unique


def _group_replies(
    groups: dict[Any, list[qe.ScoredPoint]], model: models.QueryGroupsRequest, shard: qe.EdgeShard
) -> list[dict[str, Any]]:
    ids: list[int | UUID | str] = list(
        dict.fromkeys(_point_id(json_point_id(hit.id)) for members in groups.values() for hit in members)
    )
    with_payload = payload_selector(model.with_payload)
    with_vector = vector_selector(model.with_vector)
    records: dict[Any, qe.Record] = {}
    if ids and (with_payload is not False or with_vector is not False):
        records = {json_point_id(r.id): r for r in shard.retrieve(ids, with_payload, with_vector)}
    replies = []
    for (_, value), members in groups.items():
        hits = []
        for hit in members:
            found = records.get(json_point_id(hit.id))
            hits.append(
                {
                    "id": json_point_id(hit.id),
                    "version": hit.version,
                    "score": _f32(hit.score),
                    "payload": None if found is None else _payload(found.payload),
                    "vector": None if found is None else _vector(found.vector),
                }
            )
        replies.append({"id": value, "hits": hits})
    return replies


# Results -----------------------------------------------------------------------------------------------------------


def collection_info(info: Any, path: Path) -> dict[str, Any]:
    """Qdrant's CollectionInfo of the shard at ``path``: its counts (``info``, the engine's ShardInfo), its
    vectors as created (the shard's config file) and its payload indexes."""
    config = json.loads((path / CONFIG_FILE).read_text())
    vectors = config.get("vectors") or {}
    dense = vectors.get("")
    params: dict[str, Any] = {
        "vectors": {"size": dense["size"], "distance": dense["distance"]} if dense else {},
        "shard_number": 1,
        "replication_factor": 1,
        "write_consistency_factor": 1,
        "on_disk_payload": True,
    }
    if config.get("sparse_vectors"):
        params["sparse_vectors"] = {
            name: {"modifier": sparse.get("modifier", "none")} if sparse.get("modifier") else {}
            for name, sparse in config["sparse_vectors"].items()
        }
    optimizers = config.get("optimizers") or {}
    return {
        "status": "green",
        "optimizer_status": "ok",
        "indexed_vectors_count": info.indexed_vectors_count,
        "points_count": info.points_count,
        "segments_count": info.segments_count,
        "config": {
            "params": params,
            # The engine searches exactly (no HNSW graph: vecsync.store.embedded); these are Qdrant's defaults.
            "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
            "optimizer_config": {
                "deleted_threshold": optimizers.get("deleted_threshold") or 0.2,
                "vacuum_min_vector_number": optimizers.get("vacuum_min_vector_number") or 1000,
                "default_segment_number": optimizers.get("default_segment_number") or 0,
                "indexing_threshold": optimizers.get("indexing_threshold", 0),
                "flush_interval_sec": 5,
            },
            "quantization_config": None,
        },
        "payload_schema": {name: payload_index(index) for name, index in info.payload_schema.items()},
    }


def payload_index(index: Any) -> dict[str, Any]:
    """Qdrant's PayloadIndexInfo of one of the engine's payload indexes."""
    kind = str(index.data_type).rsplit(".", 1)[-1].lower()
    return {"data_type": kind, "points": int(getattr(index, "points", 0) or 0)}


def scored_point(point: qe.ScoredPoint) -> dict[str, Any]:
    """Qdrant's ScoredPoint: id, version, score, payload and vector (null where not asked for), and the value
    ordered by where a query orders by a payload field."""
    reply: dict[str, Any] = {
        "id": json_point_id(point.id),
        "version": point.version,
        "score": _f32(point.score),
        "payload": _payload(point.payload),
        "vector": _vector(point.vector),
    }
    if point.order_value is not None:
        reply["order_value"] = point.order_value
    return reply


def record(point: qe.Record) -> dict[str, Any]:
    """Qdrant's Record: id, payload and vector (null where not asked for), and the value scroll ordered by."""
    reply: dict[str, Any] = {
        "id": json_point_id(point.id),
        "payload": _payload(point.payload),
        "vector": _vector(point.vector),
    }
    if point.order_value is not None:
        reply["order_value"] = point.order_value
    return reply


def _payload(payload: Any) -> dict[str, Any] | None:
    return None if payload is None else dict(payload)


def _vector(vector: Any) -> Any:
    """A point's vectors as Qdrant writes them: the unnamed dense vector alone as a list; several as an object of
    lists, a sparse one as ``{"indices", "values"}``."""
    if vector is None:
        return None
    if isinstance(vector, dict):
        # The unnamed vector first, as Qdrant writes it.
        return {name: _vector(each) for name, each in sorted(vector.items())}
    if isinstance(vector, qe.SparseVector):
        return {"indices": list(vector.indices), "values": [_f32(value) for value in vector.values]}
    # A dense vector goes as the engine widened it: exactly its 32-bit values (a client reading them as 32-bit
    # floats gets Qdrant's), without the shortest form's cost (about 2 ms for 768 dimensions in Python).
    return [_vector(each) if isinstance(each, list) else float(each) for each in vector]


def _f32(value: float) -> float:
    """A 32-bit float of the engine in the shortest decimal form that is the same 32-bit float, as Qdrant writes
    it (the engine hands it over widened: 0.699999988079071 for 0.7)."""
    single = struct.unpack("f", struct.pack("f", value))[0]
    for digits in range(6, 10):
        shortest = float(f"{single:.{digits}g}")
        if struct.unpack("f", struct.pack("f", shortest))[0] == single:
            return shortest
    return float(single)
