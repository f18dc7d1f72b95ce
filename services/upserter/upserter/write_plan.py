"""What one batch writes: each document's newest entry sorted by what it needs, given its points and its tombstone.

An upsert is written over older points; a delete, or an entry that a newer
delete overtook, removes the document's points; an entry older than its
document's first point is superseded. A payload-only entry (its text was
unchanged), or an unchanged chunk of a document of several, is written only if
its point still holds that text, embedded by the same model; otherwise the
document needs vectors and goes back to stage 1 to be embedded
(upserter.embed_again).

A document of several chunks is one entry, expanded here into one point per
chunk (``point_writes``): chunk 0 under the document's point id, whose version
stands for the document's (docs/design.md, "Long documents").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vecsync.chunking import chunk_point_id
from vecsync.messages import EmbeddedChunk, EmbeddedDocument, parse_version
from vecsync.vectorstore import OlderPoints, Point, version_of

# The fields of a point that decide whether an entry still applies to it, and how many chunks its document has.
STATE_FIELDS = ["version", "text_sha256", "model", "chunk_count"]


@dataclass
class WritePlan:
    """What one batch writes, once the points' versions and tombstones are known; keyed by each document's point id
    (its first chunk's)."""

    upserts: dict[str, EmbeddedDocument] = field(default_factory=dict)
    payloads: dict[str, EmbeddedDocument] = field(default_factory=dict)
    # Point id -> version of a delete: the batch's deletes, and documents that a newer tombstone buries.
    deletes: dict[str, str] = field(default_factory=dict)
    needs_vector: list[str] = field(default_factory=list)
    superseded: int = 0
    # Documents that have no point, or will have none: their skip-unchanged hints go.
    gone: set[str] = field(default_factory=set)

    def written(self) -> dict[str, EmbeddedDocument]:
        return {**self.upserts, **self.payloads}


def plan_writes(
    newest: dict[str, EmbeddedDocument],
    tombstones: dict[str, tuple[int, int]],
    current: dict[str, dict[str, Any]],
) -> WritePlan:
    """Sort the batch's entries by what each needs, given their points as they are and their tombstones."""
    plan = WritePlan()
    for pid, doc in newest.items():
        version, point = parse_version(doc.version), current.get(pid)
        # Read from the `version` string, which points written before the numeric fields also carry.
        held_version = version_of(point) if point is not None else None
        tombstone = tombstones.get(pid)
        if doc.op == "delete" or (tombstone is not None and tombstone >= version):
            # A delete, or an entry that a newer delete overtook: no point may keep an older state (a write that
            # lost its locks could have left one behind).
            deleted_at = version if doc.op == "delete" else tombstone
            assert deleted_at is not None
            if held_version is not None and held_version >= deleted_at:
                plan.superseded += 1  # the document was written again since
                continue
            if doc.op != "delete":
                plan.superseded += 1
            plan.gone.add(pid)
            # Whether or not its first point exists: a write a crash interrupted may have left other chunks.
            plan.deletes[pid] = version_text(deleted_at)
            continue
        # An entry of the version its first point holds is written again (a no-op on every point already written):
        # a crash between the writes of a document of several chunks leaves the first written and others not.
        if held_version is not None and held_version > version:
            plan.superseded += 1
        elif not _holds_unchanged_texts(pid, doc, current):
            plan.needs_vector.append(pid)
        elif doc.op == "upsert":
            plan.upserts[pid] = doc
        else:
            plan.payloads[pid] = doc
    return plan


def states_to_read(newest: dict[str, EmbeddedDocument]) -> list[str]:
    """The points whose state ``plan_writes`` needs: each document's first point, and every unchanged chunk's."""
    ids = list(newest)
    for pid, doc in newest.items():
        ids += [chunk_point_id(pid, i) for i, chunk in enumerate(doc.chunks) if i and chunk.vector is None]
    return ids


def _holds_unchanged_texts(pid: str, doc: EmbeddedDocument, current: dict[str, dict[str, Any]]) -> bool:
    """Whether every point that ``doc`` leaves unchanged (writes no vector for) holds that text by that model."""
    model = (doc.payload or {}).get("model")
    if not doc.chunks:
        point = current.get(pid)
        return doc.op == "upsert" or (point is not None and _same_text_and_model(point, doc.payload or {}))
    for index, chunk in enumerate(doc.chunks):
        point = current.get(chunk_point_id(pid, index))
        if chunk.vector is None and (point is None or not _same_text_and_model(point, _chunk_text(chunk, model))):
            return False
    return True


def _chunk_text(chunk: EmbeddedChunk, model: Any) -> dict[str, Any]:
    return {"text_sha256": chunk.text_sha256, "model": model}


def _same_text_and_model(point: dict[str, Any], payload: dict[str, Any]) -> bool:
    return point.get("text_sha256") == payload.get("text_sha256") and point.get("model") == payload.get("model")


def with_vector_of_same_text(document: EmbeddedDocument, upserts: list[EmbeddedDocument]) -> EmbeddedDocument:
    """An entry with the vectors it leaves out taken from older upserts of its batch, of the same text by the same
    model: a payload-only entry becomes an upsert, and an unchanged chunk gets its vector.

    Collapsing a batch to the newest entry per document would otherwise lose the vectors that a replay of stage 2
    (a rebuild) carries, and send the change back to be embedded although its vectors are at hand.
    """
    model = (document.payload or {}).get("model")
    at_hand: dict[str, list[float]] = {}
    for upsert in upserts:
        if (upsert.payload or {}).get("model") != model:
            continue
        if upsert.vector is not None:
            at_hand[str((upsert.payload or {}).get("text_sha256"))] = upsert.vector
        for chunk in upsert.chunks:
            if chunk.vector is not None:
                at_hand[chunk.text_sha256] = chunk.vector
    if not document.chunks:
        vector = at_hand.get(str((document.payload or {}).get("text_sha256")))
        return document if vector is None else replace(document, op="upsert", vector=vector)
    chunks = tuple(
        chunk if chunk.vector is not None else replace(chunk, vector=at_hand.get(chunk.text_sha256))
        for chunk in document.chunks
    )
    embedded = any(chunk.vector is not None for chunk in chunks)
    return replace(document, op="upsert" if embedded else document.op, chunks=chunks)


def payload_of(doc: EmbeddedDocument) -> dict[str, Any]:
    """What every point of ``doc`` holds besides its own chunk's text and place."""
    # The entry's version is the one the fence compares, whatever its payload says.
    return {**(doc.payload or {}), "version": doc.version}


def point_writes(pid: str, doc: EmbeddedDocument) -> tuple[list[Point], dict[str, dict[str, Any]]]:
    """The points of ``doc`` to write: those with a vector, and the payloads of those whose vector is kept."""
    points: list[Point] = []
    payloads: dict[str, dict[str, Any]] = {}
    shared = payload_of(doc)
    if not doc.chunks:
        text = str(shared.get("text", ""))
        parts = [(pid, doc.vector, shared | _place(0, 1, 0, len(text)))]
    else:
        count = len(doc.chunks)
        parts = [
            (
                chunk_point_id(pid, index),
                chunk.vector,
                shared
                | {"text": chunk.text, "text_sha256": chunk.text_sha256}
                | _place(index, count, chunk.start, chunk.end),
            )
            for index, chunk in enumerate(doc.chunks)
        ]
    for point_id, vector, payload in parts:
        if vector is not None:
            points.append(Point(point_id, vector, payload))
        else:
            payloads[point_id] = payload
    return points, payloads


def _place(index: int, count: int, start: int, end: int) -> dict[str, Any]:
    return {"chunk_index": index, "chunk_count": count, "chunk_span": [start, end]}


def older_points(doc: EmbeddedDocument, version: str) -> OlderPoints:
    """``doc``'s points older than ``version``: what a write or a delete at that version leaves to remove."""
    return OlderPoints(doc.source, doc.mongo_id, version)


def chunk_ids(pid: str, count: Any) -> list[str]:
    """The point ids of a document of ``count`` chunks (a point's `chunk_count`; 1 when it records none)."""
    total = count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1
    return [chunk_point_id(pid, index) for index in range(total)]


def version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}-{version[1]}"
