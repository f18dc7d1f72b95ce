"""The version fence in Qdrant Edge's terms: the pipeline's writes as conditional operations of the engine.

Each write of ``write_if_newer`` becomes operations whose condition the engine
evaluates on the stored point (applied only over an older one), and a batch's
upserts are grouped into as few such operations as the stored versions allow.
vecsync.store.embedded calls it under its lock; this module knows nothing of
the store's folder, threads or durability.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import qdrant_edge as qe

from vecsync.messages import parse_version
from vecsync.store import sparse
from vecsync.vectorstore import MONGO_ID, VERSION_MS, VERSION_SEQ, OlderPoints, Point, with_version_numbers

# A stored version that the numbers do not give fully (version_ms without version_seq): left to a point's own write.
_UNKNOWN = (-1, -1)


def write_if_newer(
    shard: qe.EdgeShard,
    *,
    upserts: Sequence[Point],
    payloads: Mapping[str, dict[str, Any]],
    deletes: Mapping[str, str],
    prune: Sequence[OlderPoints] = (),
    vectors: Sequence[Any] | None = None,
) -> None:
    """Apply the writes of VectorStore.write_if_newer to ``shard``, each only over an older point; each upserted
    point with its engine vectors of ``vectors``, in order (``vectors_of``: the caller computes them, BM25 terms
    included, before it takes its lock), or its dense vector alone where none are given.

    The caller keeps every other writer of the shard out until this returns (see ``_upsert_if_newer``).
    """
    for pid, version in deletes.items():
        shard.update(qe.UpdateOperation.delete_points_by_filter(_this_point_if_older(pid, version)))
    _upsert_if_newer(shard, upserts, [point.vector for point in upserts] if vectors is None else vectors)
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
    for older in prune:
        # One operation per document, whose filter starts from the indexed mongo_id: it reads that document's
        # points only. One operation for the batch (a `should` of these filters) measured slower: 12.3 ms against
        # 10.7 for 100 documents over 20,000 points (5.7 without pruning), medians of 20 side by side.
        shard.update(qe.UpdateOperation.delete_points_by_filter(_older_points_of(older)))


def vectors_of(point: Point, sparse_vector: str | None) -> Any:
    """A point's vectors for the engine: its dense vector, with its text's BM25 vector beside it where the shard
    holds sparse vectors (a text without terms gets none, which the engine allows)."""
    if sparse_vector is None:
        return point.vector
    terms = sparse.document_vector(point.payload.get("text"))
    return {"": point.vector, sparse_vector: terms} if terms is not None else {"": point.vector}


def _upsert_if_newer(shard: qe.EdgeShard, upserts: Sequence[Point], vectors: Sequence[Any]) -> None:
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
    for point, point_vectors in zip(upserts, vectors, strict=True):
        payload = with_version_numbers(point.payload)
        version = (payload[VERSION_MS], payload[VERSION_SEQ])
        engine_point = qe.Point(point.id, point_vectors, payload)
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


def _older_points_of(older: OlderPoints) -> qe.Filter:
    return qe.Filter(
        must=[
            qe.FieldCondition(key=MONGO_ID, match=qe.MatchValue(older.mongo_id)),
            qe.FieldCondition(key="source", match=qe.MatchValue(older.source)),
            older_than(parse_version(older.version)),
        ]
    )


def _this_point_if_older(point_id: str, version: str) -> qe.Filter:
    return qe.Filter(must=[qe.HasIdCondition({point_id}), older_than(parse_version(version))])


def _equals(key: str, value: Any) -> qe.Filter:
    if value is None:
        return qe.Filter(must=[qe.IsEmptyCondition(key)])
    return qe.Filter(must=[qe.FieldCondition(key=key, match=qe.MatchValue(value))])


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
