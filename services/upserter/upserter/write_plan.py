"""What one batch writes: each point's newest entry sorted by what it needs, given its point and its tombstone.

An upsert is written over an older point; a delete, or an entry that a newer
delete overtook, removes the point; an entry older than its point is
superseded. A payload-only entry (its text was unchanged) is written only if
its point still holds that text, embedded by the same model; otherwise it
needs a vector and goes back to stage 1 to be embedded (upserter.embed_again).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vecsync.messages import EmbeddedDocument, parse_version
from vecsync.vectorstore import Point, version_of

# The fields of a point that decide whether an entry still applies to it.
STATE_FIELDS = ["version", "text_sha256", "model"]


@dataclass
class WritePlan:
    """What one batch writes, once the points' versions and tombstones are known."""

    upserts: dict[str, EmbeddedDocument] = field(default_factory=dict)
    payloads: dict[str, EmbeddedDocument] = field(default_factory=dict)
    # Point id -> version of a delete: the batch's deletes, and points that a newer tombstone buries.
    deletes: dict[str, str] = field(default_factory=dict)
    needs_vector: list[str] = field(default_factory=list)
    superseded: int = 0
    # Points that have no point, or will have none: their skip-unchanged hints go.
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
            if point is not None:
                plan.deletes[pid] = version_text(deleted_at)
            continue
        if held_version is not None and held_version >= version:
            plan.superseded += 1
        elif doc.op == "upsert":
            plan.upserts[pid] = doc
        elif point is not None and _same_text_and_model(point, doc.payload or {}):
            plan.payloads[pid] = doc
        else:
            plan.needs_vector.append(pid)
    return plan


def _same_text_and_model(point: dict[str, Any], payload: dict[str, Any]) -> bool:
    return point.get("text_sha256") == payload.get("text_sha256") and point.get("model") == payload.get("model")


def with_vector_of_same_text(document: EmbeddedDocument, upserts: list[EmbeddedDocument]) -> EmbeddedDocument:
    """A payload-only entry as an upsert, when its batch holds an older upsert of the same text by the same model.

    Collapsing a batch to the newest entry per point would otherwise lose the vector that a replay of stage 2
    (a rebuild) carries, and send the change back to be embedded although its vector is at hand.
    """
    payload = document.payload or {}
    for upsert in reversed(upserts):
        if _same_text_and_model(upsert.payload or {}, payload):
            return replace(document, op="upsert", vector=upsert.vector)
    return document


def payload_of(doc: EmbeddedDocument) -> dict[str, Any]:
    """The payload to write for ``doc``."""
    # The entry's version is the one the fence compares, whatever its payload says.
    return {**(doc.payload or {}), "version": doc.version}


def point_of(pid: str, doc: EmbeddedDocument) -> Point:
    """The point to write for an upsert."""
    assert doc.vector is not None
    return Point(pid, doc.vector, payload_of(doc))


def version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}-{version[1]}"
