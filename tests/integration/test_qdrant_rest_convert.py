"""The translation of Qdrant's REST JSON to the embedded engine and back (upserter.qdrant_rest.convert).

The same points go into a real embedded store (Qdrant's engine, on disk) and into qdrant-client's in-memory mode,
which stands in for a Qdrant server; the same JSON requests (filters of each kind, searches, queries with
prefetches and fusion, scroll pages, counts, groups) then run through the translation and the engine, and through
qdrant-client's own models and methods, and must find the same points in the same order with the same payloads
(scores to float precision). Parts the engine or the translation does not serve answer NotServed naming them; a
malformed body answers BadRequest naming its field.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient
from qdrant_client.http import models

from upserter.qdrant_rest import convert
from upserter.qdrant_rest.convert import BadRequest, NotServed
from vecsync.errors import PermanentError
from vecsync.store.embedded import EmbeddedStore
from vecsync.store.sparse import query_vector
from vecsync.vectorstore import Point

COLLECTION = "docs"
DIM = 4
CITIES = ["Berlin", "Paris", "Rome", "Oslo"]
TOPICS = ["billing refund", "shipping delay", "login problem", "damaged parcel"]


def point_uuid(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ticket-{n}"))


def vector_of(n: int) -> list[float]:
    # Distinct directions, so that no two points tie for a query.
    return [math.cos(0.07 * n), math.sin(0.07 * n), 0.3 + 0.01 * n, (n % 7) * 0.05]


def payload_of(n: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "mongo_id": f"m{n}",
        "city": CITIES[n % 4],
        "count": n,
        "price": n * 1.5 + 0.25,
        "created": f"2024-01-{n % 28 + 1:02d}T10:00:00Z",
        "tags": ["vip", "eu"][: n % 3],
        "nested": {"level": n % 3, "name": f"level-{n % 3}"},
        "items": [{"sku": "a", "qty": n % 4}, {"sku": "b", "qty": 2}],
        # Texts of distinct lengths, so that no two points tie for a BM25 query either.
        "text": f"ticket {n} about a {TOPICS[n % 4]}" + " note" * n,
        "location": {"lon": 13.0 + n * 0.1, "lat": 52.0 + n * 0.05},
    }
    if n % 5 == 0:
        payload["optional"] = None
    if n % 10 == 0:
        payload["rare"] = f"r{n}"  # on three points only: grouping by it needs more than one round of hits
    return payload


POINTS = 30


@dataclass
class Pair:
    """One collection twice: the embedded store and qdrant-client's in-memory mode, holding the same points."""

    store: EmbeddedStore
    client: QdrantClient
    sparse: bool

    def shard(self) -> Any:
        return self.store.engine("test")


def make_pair(folder: Path, *, sparse: bool) -> Pair:
    store = EmbeddedStore(
        folder,
        COLLECTION,
        DIM,
        payload_indexes={"count": "integer", "city": "keyword"},
        sparse_model="bm25" if sparse else None,
        flush_interval_s=0,
    )
    store.ensure_collection()
    store.upsert([Point(point_uuid(n), vector_of(n), payload_of(n)) for n in range(POINTS)])
    client = QdrantClient(":memory:")
    client.create_collection(
        COLLECTION,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)} if sparse else None,
    )
    with store.engine("read the vectors") as shard:
        records = shard.retrieve([point_uuid(n) for n in range(POINTS)], True, True)
    client.upsert(
        COLLECTION,
        [
            models.PointStruct(id=str(r.id), vector=convert.record(r)["vector"], payload=dict(r.payload or {}))
            for r in records
        ],
    )
    return Pair(store, client, sparse)


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    pair = make_pair(tmp_path_factory.mktemp("dense"), sparse=False)
    yield pair
    pair.store.close()


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    pair = make_pair(tmp_path_factory.mktemp("hybrid"), sparse=True)
    yield pair
    pair.store.close()


# Running one request both ways -------------------------------------------------------------------------------------


def engine_query(pair: Pair, body: dict[str, Any]) -> list[dict[str, Any]]:
    with pair.store.engine("query") as shard:
        request = convert.query_request(body, shard)
        points = [convert.scored_point(p) for p in shard.query(request)]
    json.dumps(points)  # JSON-able, as the app sends it
    return points


def client_query(pair: Pair, body: dict[str, Any]) -> list[dict[str, Any]]:
    model = models.QueryRequest.model_validate(body)
    result = pair.client.query_points(
        COLLECTION,
        query=model.query,
        prefetch=model.prefetch,
        using=model.using,
        query_filter=model.filter,
        limit=model.limit or 10,
        offset=model.offset,
        score_threshold=model.score_threshold,
        with_payload=model.with_payload if model.with_payload is not None else False,
        with_vectors=model.with_vector if model.with_vector is not None else False,
    )
    return [point.model_dump(exclude={"shard_key", "order_value"}) for point in result.points]


def ranked(points: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """Ids in score order, ties (equal to 5 places, as fused ranks often are) in id order."""
    return sorted((-round(p["score"], 5), str(p["id"])) for p in points)


def assert_same_hits(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert ranked(ours) == ranked(theirs)
    by_id = {str(p["id"]): p for p in theirs}
    for point in ours:
        other = by_id[str(point["id"])]
        assert point["payload"] == (other["payload"] or None if point["payload"] is None else other["payload"])
        assert_same_vector(point["vector"], other["vector"])
        # The engine's version of the point, as a Qdrant server gives it (qdrant-client's in-memory mode gives 0).
        assert isinstance(point["version"], int) and point["version"] >= 0


def assert_same_vector(ours: Any, theirs: Any) -> None:
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs)
        for name in theirs:
            assert_same_vector(ours[name], theirs[name])
    elif isinstance(theirs, list):
        assert ours == pytest.approx(theirs, abs=1e-6)
    else:
        assert ours == theirs


def engine_scroll(pair: Pair, body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    with pair.store.engine("scroll") as shard:
        points, next_offset = shard.scroll(convert.scroll_request(body))
    page = [convert.record(p) for p in points]
    next_id = convert.json_point_id(next_offset)
    json.dumps([page, next_id])
    return page, next_id


def client_scroll(pair: Pair, body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    model = models.ScrollRequest.model_validate(body)
    points, next_offset = pair.client.scroll(
        COLLECTION,
        scroll_filter=model.filter,
        limit=model.limit or 10,
        offset=model.offset,
        with_payload=True if model.with_payload is None else model.with_payload,
        with_vectors=False if model.with_vector is None else model.with_vector,
        order_by=model.order_by,
    )
    return [p.model_dump(exclude={"shard_key", "order_value"}) for p in points], next_offset


def engine_count(pair: Pair, body: dict[str, Any]) -> int:
    with pair.store.engine("count") as shard:
        return shard.count(convert.count_request(body))


def client_count(pair: Pair, body: dict[str, Any]) -> int:
    model = models.CountRequest.model_validate(body)
    return pair.client.count(COLLECTION, count_filter=model.filter, exact=True).count


# Filters -----------------------------------------------------------------------------------------------------------

FILTERS: list[dict[str, Any]] = [
    {"must": [{"key": "city", "match": {"value": "Paris"}}]},
    {"must": {"key": "count", "match": {"value": 7}}},  # one condition, not a list
    {"should": [{"key": "tags", "match": {"any": ["vip"]}}, {"key": "city", "match": {"value": "Oslo"}}]},
    {"must_not": [{"key": "city", "match": {"except": ["Rome", "Oslo"]}}]},
    {"must": [{"key": "count", "range": {"gte": 5, "lt": 12}}]},
    {"must": [{"key": "price", "range": {"gt": 10.25, "lte": 30}}]},
    {"must": [{"key": "created", "range": {"gte": "2024-01-05T00:00:00Z", "lt": "2024-01-10T10:00:00+00:00"}}]},
    {"must": [{"key": "created", "range": {"lte": "2024-01-03"}}]},
    {"must": [{"key": "tags", "values_count": {"gte": 2}}]},
    {"must": [{"is_empty": {"key": "tags"}}]},  # an empty list, or no field at all
    {"must_not": [{"is_empty": {"key": "tags"}}]},
    {"must": [{"is_null": {"key": "optional"}}]},
    {"must": [{"has_id": [point_uuid(1), point_uuid(2), point_uuid(3).replace("-", "")]}]},
    {"must": [{"key": "nested.level", "match": {"value": 2}}]},
    {
        "must": [
            {
                "nested": {
                    "key": "items",
                    "filter": {"must": [{"key": "sku", "match": {"value": "a"}}, {"key": "qty", "range": {"gte": 3}}]},
                }
            }
        ]
    },
    {"must": [{"should": [{"key": "count", "range": {"lt": 3}}, {"key": "count", "range": {"gt": 26}}]}]},
    {
        "min_should": {
            "conditions": [
                {"key": "city", "match": {"value": "Berlin"}},
                {"key": "tags", "match": {"value": "vip"}},
                {"key": "count", "range": {"gte": 10}},
            ],
            "min_count": 2,
        }
    },
    {"must": [{"key": "text", "match": {"text": "refund"}}]},
    {"must": [{"key": "text", "match": {"phrase": "shipping delay"}}]},
    {"must": [{"key": "location", "geo_radius": {"center": {"lon": 13.0, "lat": 52.0}, "radius": 60000}}]},
    {
        "must": [
            {
                "key": "location",
                "geo_bounding_box": {
                    "top_left": {"lon": 13.0, "lat": 53.0},
                    "bottom_right": {"lon": 14.0, "lat": 52.0},
                },
            }
        ]
    },
]


@pytest.mark.parametrize("query_filter", FILTERS, ids=[json.dumps(f)[:60] for f in FILTERS])
def test_each_kind_of_filter_finds_what_qdrant_finds(dense: Pair, query_filter: dict[str, Any]) -> None:
    body = {"filter": query_filter, "limit": 100, "with_payload": False}
    ours, _ = engine_scroll(dense, body)
    theirs, _ = client_scroll(dense, body)
    assert [p["id"] for p in ours] == [p["id"] for p in theirs]
    assert 0 < len(ours) < POINTS, "each filter keeps some points and leaves others"
    assert engine_count(dense, {"filter": query_filter}) == client_count(dense, {"filter": query_filter}) == len(ours)


def test_a_filter_is_translated_to_the_engines_classes() -> None:
    translated = convert.engine_filter({"must": [{"key": "a", "match": {"value": "x"}}], "must_not": [{"has_id": [1]}]})
    assert isinstance(translated, qe.Filter)
    assert isinstance(translated.must[0], qe.FieldCondition)  # type: ignore[index]
    assert convert.engine_filter(None) is None


def test_a_malformed_filter_is_a_bad_request_naming_the_field() -> None:
    with pytest.raises(BadRequest, match=r"range\.gte"):
        convert.engine_filter({"must": [{"key": "count", "range": {"gte": [1]}}]})
    with pytest.raises(BadRequest):
        convert.engine_filter({"must": [{"kee": "count"}]})
    with pytest.raises(BadRequest, match="has no condition"):
        convert.engine_filter({"must": [{"key": "count"}]})


def test_a_slice_condition_is_not_served() -> None:
    with pytest.raises(NotServed, match="SliceCondition"):
        convert.engine_filter({"must": [{"slice": {"index": 0, "total": 2}}]})


# Searches and queries ----------------------------------------------------------------------------------------------

QUERY = [0.9, 0.5, 0.4, 0.1]


def test_the_legacy_search_finds_what_a_query_finds_in_qdrant(dense: Pair) -> None:
    body = {
        "vector": QUERY,
        "filter": {"must": [{"key": "city", "match": {"any": ["Paris", "Rome"]}}]},
        "limit": 5,
        "offset": 1,
        "with_payload": True,
    }
    with dense.store.engine("search") as shard:
        ours = [convert.scored_point(p) for p in shard.query(convert.search_request(body))]
    theirs = client_query(dense, {key: value for key, value in body.items() if key != "vector"} | {"query": QUERY})
    assert len(ours) == 5
    assert_same_hits(ours, theirs)
    with dense.store.engine("search") as shard:
        named = shard.query(convert.search_request({"vector": {"name": "", "vector": QUERY}, "limit": 3}))
    assert [convert.scored_point(p)["id"] for p in named] == [
        p["id"] for p in client_query(dense, {"query": QUERY, "limit": 3})
    ]


def test_the_legacy_search_takes_a_named_sparse_vector(hybrid: Pair) -> None:
    terms = query_vector("refund")
    sparse = {"indices": list(terms.indices), "values": list(terms.values)}
    with hybrid.store.engine("search") as shard:
        ours = [
            convert.scored_point(p)
            for p in shard.query(
                convert.search_request({"vector": {"name": "bm25", "vector": sparse}, "limit": 5, "with_payload": True})
            )
        ]
    theirs = client_query(hybrid, {"query": sparse, "using": "bm25", "limit": 5, "with_payload": True})
    assert ours and all("refund" in p["payload"]["text"] for p in ours)
    assert_same_hits(ours, theirs)


def test_the_legacy_search_refuses_a_body_without_vector_or_limit() -> None:
    with pytest.raises(BadRequest, match="limit"):
        convert.search_request({"vector": QUERY})
    with pytest.raises(BadRequest, match="vector"):
        convert.search_request({"limit": 3})
    with pytest.raises(BadRequest, match="unknown fields: vectors"):
        convert.search_request({"vectors": QUERY, "limit": 3})


def dense_queries() -> list[dict[str, Any]]:
    return [
        {"query": QUERY, "limit": 4},
        {"query": {"nearest": QUERY}, "limit": 4, "with_payload": True, "with_vector": True},
        {"query": QUERY, "limit": 4, "offset": 3, "with_payload": ["city", "nested.level"]},
        {"query": QUERY, "limit": 10, "with_payload": {"exclude": ["text", "items"]}, "score_threshold": 0.95},
        {"query": QUERY, "limit": 6, "filter": {"must_not": [{"key": "city", "match": {"value": "Berlin"}}]}},
        {"query": point_uuid(4), "limit": 3, "with_payload": True},  # nearest to point 4, which is left out
        {"query": {"nearest": point_uuid(9)}, "limit": 3, "filter": {"must": [{"key": "count", "range": {"lt": 20}}]}},
        {"prefetch": {"query": QUERY, "limit": 10}, "query": {"order_by": "count"}, "limit": 5},
        {"query": {"order_by": {"key": "count", "direction": "desc", "start_from": 20}}, "limit": 4},
        {
            "prefetch": [
                {"query": QUERY, "limit": 8},
                {"query": [0.1, 0.9, 0.2, 0.3], "limit": 8, "filter": {"must": [{"key": "count", "range": {"gt": 5}}]}},
            ],
            "query": {"fusion": "rrf"},
            "limit": 6,
            "with_payload": True,
        },
        {
            "prefetch": [{"query": QUERY, "limit": 8}, {"query": [0.1, 0.9, 0.2, 0.3], "limit": 8}],
            "query": {"rrf": {"k": 10}},
            "limit": 6,
        },
        {
            "prefetch": {"prefetch": {"query": [0.1, 0.9, 0.2, 0.3], "limit": 15}, "query": QUERY, "limit": 5},
            "query": {"nearest": [0.5, 0.5, 0.5, 0.5]},
            "limit": 3,
        },
        {"filter": {"must": [{"key": "city", "match": {"value": "Rome"}}]}, "limit": 4},  # no query: id order
    ]


@pytest.mark.parametrize("body", dense_queries(), ids=[json.dumps(q)[:70] for q in dense_queries()])
def test_a_query_finds_what_qdrant_finds(dense: Pair, body: dict[str, Any]) -> None:
    ours = engine_query(dense, body)
    theirs = client_query(dense, body)
    assert ours
    assert_same_hits(ours, theirs)
    if "order_by" in json.dumps(body):
        assert [p["id"] for p in ours] == [p["id"] for p in theirs]


def test_a_hybrid_query_fuses_dense_and_sparse_prefetches_as_qdrant_does(hybrid: Pair) -> None:
    terms = query_vector("shipping delay")
    sparse = {"indices": list(terms.indices), "values": list(terms.values)}
    for fusion in ({"fusion": "rrf"}, {"rrf": {"k": 5}}):
        body = {
            "prefetch": [{"query": QUERY, "limit": 10}, {"query": sparse, "using": "bm25", "limit": 10}],
            "query": fusion,
            "limit": 20,  # every fused hit: those tied at a cut-off may come in either order
            "with_payload": True,
            "with_vector": True,
        }
        ours = engine_query(hybrid, body)
        assert_same_hits(ours, client_query(hybrid, body))
    with_sparse = next(p for p in ours if "shipping" in p["payload"]["text"])
    assert list(with_sparse["vector"]) == ["", "bm25"]
    assert set(with_sparse["vector"]["bm25"]) == {"indices", "values"}
    only_sparse = {"query": sparse, "using": "bm25", "limit": 3, "with_vector": ["bm25"]}
    ours = engine_query(hybrid, only_sparse)
    assert_same_hits(ours, client_query(hybrid, only_sparse))
    assert all(set(p["vector"]) == {"bm25"} for p in ours)
    with hybrid.store.engine("query") as shard, pytest.raises(BadRequest, match="using"):
        convert.query_request({"query": sparse}, shard)


@pytest.mark.parametrize("strategy", [None, "average_vector", "best_score", "sum_scores"])
def test_recommend_ranks_as_qdrant_does(dense: Pair, strategy: str | None) -> None:
    recommend: dict[str, Any] = {"positive": [point_uuid(3), QUERY], "negative": [point_uuid(20)]}
    if strategy is not None:
        recommend["strategy"] = strategy
    body = {"query": {"recommend": recommend}, "limit": 6, "filter": {"must_not": [{"has_id": [point_uuid(5)]}]}}
    ours, theirs = engine_query(dense, body), client_query(dense, body)
    assert point_uuid(3) not in {p["id"] for p in ours}, "an example named by id is not its own hit"
    assert_same_hits(ours, theirs)


@pytest.mark.parametrize(
    "query",
    [
        {"discover": {"target": QUERY, "context": [{"positive": point_uuid(2), "negative": point_uuid(25)}]}},
        {"discover": {"target": point_uuid(12), "context": {"positive": [0.1, 0.9, 0.2, 0.3], "negative": QUERY}}},
        {
            "context": [
                {"positive": point_uuid(2), "negative": point_uuid(25)},
                {"positive": QUERY, "negative": point_uuid(14)},
            ]
        },
    ],
)
def test_discover_and_context_rank_as_qdrant_does(dense: Pair, query: dict[str, Any]) -> None:
    body = {"query": query, "limit": 5 if "discover" in query else POINTS}
    ours, theirs = engine_query(dense, body), client_query(dense, body)
    assert ours
    assert_same_hits(ours, theirs)


@pytest.mark.parametrize("mmr", [{}, {"diversity": 0.8, "candidates_limit": 20}, {"diversity": 0.2}])
def test_mmr_diversifies_as_qdrant_does(dense: Pair, mmr: dict[str, Any]) -> None:
    body = {"query": {"nearest": QUERY, "mmr": mmr}, "limit": 5, "with_payload": ["count"]}
    ours, theirs = engine_query(dense, body), client_query(dense, body)
    assert [p["id"] for p in ours] == [p["id"] for p in theirs]
    assert [p["score"] for p in ours] == pytest.approx([p["score"] for p in theirs], abs=1e-5)


def test_dbsf_fusion_ranks_as_qdrant_does(hybrid: Pair) -> None:
    body = {
        "prefetch": [{"query": QUERY, "limit": 10}, {"query": [0.1, 0.9, 0.2, 0.3], "limit": 10}],
        "query": {"fusion": "dbsf"},
        "limit": 5,
    }
    ours, theirs = engine_query(hybrid, body), client_query(hybrid, body)
    assert [p["id"] for p in ours] == [p["id"] for p in theirs]
    assert [p["score"] for p in ours] == pytest.approx([p["score"] for p in theirs], rel=1e-3)


def test_a_random_sample_gives_the_points_asked_for(dense: Pair) -> None:
    ours = engine_query(dense, {"query": {"sample": "random"}, "limit": 5})
    assert len({p["id"] for p in ours}) == 5


def test_records_and_scored_points_have_qdrants_vector_shape(hybrid: Pair, dense: Pair) -> None:
    ids = [point_uuid(n) for n in range(POINTS)]
    for pair in (hybrid, dense):
        with pair.store.engine("retrieve") as shard:
            ours = [convert.record(r) for r in shard.retrieve(convert.point_ids(ids), True, True)]
        theirs = {str(r.id): r.model_dump() for r in pair.client.retrieve(COLLECTION, ids, with_vectors=True)}
        json.dumps(ours)
        for point in ours:
            assert point["payload"] == theirs[point["id"]]["payload"]
            assert_same_vector(point["vector"], theirs[point["id"]]["vector"])
            if not pair.sparse:
                assert isinstance(point["vector"], list)
    sparse_values = [
        v
        for p in ours
        for v in (p["vector"].get("bm25", {}).get("values", []) if isinstance(p["vector"], dict) else [])
    ]
    assert all(len(repr(v)) < 12 for v in sparse_values), "32-bit floats in their shortest form"


def test_unserved_queries_name_what_is_not_served(dense: Pair) -> None:
    unserved = {
        "formula": {"query": {"formula": {"sum": ["$score", 1.0]}}},
        "lookup_from": {"query": QUERY, "lookup_from": {"collection": "other"}},
        "document": {"query": {"text": "hello", "model": "bm25"}},
        "shard_key": {"query": QUERY, "shard_key": "a"},
    }
    with dense.store.engine("query") as shard:
        for name, body in unserved.items():
            with pytest.raises(NotServed, match=name):
                convert.query_request(body, shard)


def test_a_query_by_a_missing_point_or_a_malformed_query_is_a_bad_request(dense: Pair) -> None:
    with dense.store.engine("query") as shard:
        with pytest.raises(BadRequest, match="No point"):
            convert.query_request({"query": point_uuid(999)}, shard)
        with pytest.raises(BadRequest, match="limit"):
            convert.query_request({"query": QUERY, "limit": "many"}, shard)


@pytest.mark.parametrize(
    "body",
    [
        {"query": QUERY, "using": "nope"},
        {"query": [[0.1, 0.2, 0.3, 0.4]]},
        {"query": {"order_by": "price"}},  # no range index on price
        {"query": {"fusion": "rrf"}},
    ],
)
def test_a_query_the_engine_refuses_is_a_permanent_error(dense: Pair, body: dict[str, Any]) -> None:
    # The REST API answers PermanentError with 400, as Qdrant answers these requests; a bare exception would be a 500.
    with pytest.raises(PermanentError), dense.store.engine("query") as shard:
        shard.query(convert.query_request(body, shard))


# Scroll and count --------------------------------------------------------------------------------------------------


def test_scroll_pages_walk_the_points_as_qdrant_does(dense: Pair) -> None:
    for body in ({"limit": 7}, {"limit": 4, "filter": {"must": [{"key": "city", "match": {"value": "Paris"}}]}}):
        offset: Any = None
        seen = 0
        while True:
            page = body | ({"offset": offset} if offset is not None else {})
            ours, our_next = engine_scroll(dense, page)
            theirs, their_next = client_scroll(dense, page)
            assert [p["id"] for p in ours] == [p["id"] for p in theirs]
            assert [p["payload"] for p in ours] == [p["payload"] for p in theirs]
            assert our_next == their_next
            seen += len(ours)
            if our_next is None:
                break
            offset = our_next
        assert seen == client_count(dense, {"filter": body.get("filter")})


def test_scroll_orders_by_a_payload_field_and_selects_payload_and_vectors(dense: Pair) -> None:
    body = {
        "limit": 5,
        "order_by": {"key": "count", "direction": "desc"},
        "with_payload": ["count"],
        "with_vector": True,
    }
    ours, our_next = engine_scroll(dense, body)
    theirs, their_next = client_scroll(dense, body)
    assert our_next == their_next  # none: a page ordered by a field goes on with order_by's start_from
    assert [p["id"] for p in ours] == [p["id"] for p in theirs]
    assert [p["payload"] for p in ours] == [{"count": n} for n in range(POINTS - 1, POINTS - 6, -1)]
    for point, other in zip(ours, theirs, strict=True):
        assert_same_vector(point["vector"], other["vector"])


def test_count_counts_everything_or_what_a_filter_keeps(dense: Pair) -> None:
    assert engine_count(dense, {}) == POINTS
    assert engine_count(dense, {"exact": True, "filter": FILTERS[0]}) == client_count(dense, {"filter": FILTERS[0]})


# Groups ------------------------------------------------------------------------------------------------------------


def client_groups(pair: Pair, body: dict[str, Any]) -> list[dict[str, Any]]:
    model = models.QueryGroupsRequest.model_validate(body)
    result = pair.client.query_points_groups(
        COLLECTION,
        group_by=model.group_by,
        query=model.query,
        prefetch=model.prefetch,
        query_filter=model.filter,
        limit=model.limit or 10,
        group_size=model.group_size or 3,
        with_payload=model.with_payload if model.with_payload is not None else False,
        with_vectors=model.with_vector if model.with_vector is not None else False,
    )
    return [group.model_dump(exclude={"lookup"}) for group in result.groups]


@pytest.mark.parametrize(
    "body",
    [
        {"query": QUERY, "group_by": "city", "group_size": 2, "limit": 3, "with_payload": True},
        {"query": QUERY, "group_by": "tags", "group_size": 3, "limit": 5},
        {"query": QUERY, "group_by": "nested.level", "limit": 2, "with_payload": ["city"], "with_vector": True},
        {"query": QUERY, "group_by": "rare", "group_size": 1, "limit": 3, "with_payload": ["rare"]},
        {
            "query": QUERY,
            "group_by": "count",
            "group_size": 1,
            "limit": 25,  # more groups than the first round's hits hold
            "filter": {"must_not": [{"key": "city", "match": {"value": "Oslo"}}]},
        },
    ],
)
def test_query_groups_groups_as_qdrant_does(dense: Pair, body: dict[str, Any]) -> None:
    with dense.store.engine("groups") as shard:
        ours = convert.query_groups(body, shard)["groups"]
    json.dumps(ours)
    theirs = client_groups(dense, body)
    assert [g["id"] for g in ours] == [g["id"] for g in theirs]
    for group, other in zip(ours, theirs, strict=True):
        assert [h["id"] for h in group["hits"]] == [h["id"] for h in other["hits"]]
        for hit, other_hit in zip(group["hits"], other["hits"], strict=True):
            assert hit["score"] == pytest.approx(other_hit["score"], abs=1e-5)
            assert hit["payload"] == other_hit["payload"]
            assert_same_vector(hit["vector"], other_hit["vector"])


def test_query_groups_refuses_a_lookup(dense: Pair) -> None:
    with dense.store.engine("groups") as shard, pytest.raises(NotServed, match="with_lookup"):
        convert.query_groups({"query": QUERY, "group_by": "city", "with_lookup": "other"}, shard)


# Ids and selectors -------------------------------------------------------------------------------------------------


def test_point_ids_are_unsigned_integers_or_uuids() -> None:
    written = point_uuid(1)
    assert convert.point_ids([1, written, written.replace("-", "").upper()]) == [1, written, written]
    for wrong in ([-1], [1.5], [True], ["not-a-uuid"], [2**64], "1"):
        with pytest.raises(BadRequest):
            convert.point_ids(wrong)


def test_selectors_take_qdrants_forms() -> None:
    assert convert.payload_selector(True) is True
    assert convert.payload_selector(["a", "b"]) == ["a", "b"]
    assert isinstance(convert.payload_selector({"include": ["a"]}), qe.PayloadSelector)
    assert isinstance(convert.payload_selector({"exclude": ["a"]}), qe.PayloadSelector)
    assert convert.vector_selector(["", "bm25"]) == ["", "bm25"]
    assert convert.vector_selector(None) is False
    for wrong in ({"only": ["a"]}, "a", [1]):
        with pytest.raises(BadRequest):
            convert.payload_selector(wrong)
    with pytest.raises(BadRequest):
        convert.vector_selector("all")
