"""How a MongoDB document becomes a point: its id, the text to embed and the payload.

Two mappings: the seed's (``build_text``, ``build_payload``), which the environment's one sync keeps exactly, and
the structured one of a definition file's syncs (``mapped_text``, ``mapped_payload``), which reads arrays element by
element, numbers and booleans as text, and keeps nested payload fields nested. ``text_of`` and ``payload_of`` pick
the one a sync uses.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

from vecsync.sync import Sync

# Fixed forever: changing it would give every document a new point id.
POINT_NAMESPACE = uuid.UUID("eb512e3c-27ae-4921-bab1-dc8dc3279bfd")

TEXT_SEPARATOR = "\n\n"


def point_id(source: str, mongo_id: str) -> str:
    """The deterministic Qdrant point id of a document: UUIDv5 of "<database>.<collection>:<id>"."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{source}:{mongo_id}"))


def lookup(document: dict[str, Any], dotted_path: str) -> Any:
    """The value at ``a.b.c`` in nested objects, or None when any step is missing."""
    value: Any = document
    for key in dotted_path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def source_projection(text_fields: Sequence[str], payload_fields: Sequence[str]) -> dict[str, int]:
    """The MongoDB projection of what the later stages read from a document: its _id, text and payload fields.

    Whole top-level fields (``meta`` for ``meta.owner``): the same projection then works on every server.
    """
    return {"_id": 1} | {field.split(".")[0]: 1 for field in [*text_fields, *payload_fields]}


def build_text(document: dict[str, Any], text_fields: Sequence[str], max_chars: int) -> str:
    """The text to embed: the non-empty string values of ``text_fields``, in order, joined by a blank line.

    Values that are not strings (numbers, arrays, nulls) are left out rather than
    guessed at. The result is cut at ``max_chars``.
    """
    parts = []
    for field in text_fields:
        value = lookup(document, field)
        if isinstance(value, str) and value.strip():
            parts.append(value)
    text = TEXT_SEPARATOR.join(parts)[:max_chars]
    # A lone surrogate cannot be encoded as UTF-8 for the embedding-api: replace it rather than fail.
    return text.encode("utf-8", "replace").decode("utf-8")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_fingerprint(sha256: str, model: str | None) -> str:
    """What decides that a point's vector is still right: the hash of its text and the model that embedded it.

    Two models (or the hash backend and a model) make vectors of different spaces, so the same text embedded by
    another model is not unchanged.
    """
    return f"{model or '?'}:{sha256}"


def build_payload(
    document: dict[str, Any],
    payload_fields: Sequence[str],
    *,
    source: str,
    mongo_id: str,
    text: str,
    version: str,
    model: str,
) -> dict[str, Any]:
    """The Qdrant payload of a document: identity, text, version, the model that embedded it, then the fields."""
    payload: dict[str, Any] = {}
    for field in payload_fields:
        value = lookup(document, field)
        if value is not None:
            payload[field] = value
    payload.update(
        {
            "mongo_id": mongo_id,
            "source": source,
            "text": text,
            "text_sha256": text_sha256(text),
            "version": version,
            "model": model,
        }
    )
    return payload


def text_of(document: dict[str, Any], sync: Sync) -> str:
    """The text to embed of a document of ``sync``, by the sync's mapping, cut at the sync's bound (Sync.text_bound)."""
    return cut_text_of(document, sync)[0]


def cut_text_of(document: dict[str, Any], sync: Sync) -> tuple[str, bool]:
    """``text_of`` the document, and whether its text was longer than the sync's bound (so cut there)."""
    build = mapped_text if sync.structured else build_text
    # One character past the bound tells whether there was more, without building the rest.
    text = build(document, sync.text_fields, sync.text_bound + 1)
    return text[: sync.text_bound], len(text) > sync.text_bound


def payload_of(
    document: dict[str, Any],
    sync: Sync,
    *,
    mongo_id: str,
    text: str,
    version: str,
    model: str,
    source: str | None = None,
) -> dict[str, Any]:
    """The Qdrant payload of a document of ``sync``, by the sync's mapping.

    ``source`` is the database and collection the change names, where it may differ from the sync's: the
    environment's sync embeds a change that a CLI run with another MONGO_COLLECTION published, and its payload names
    that change's collection, as its point id does (default: the sync's source).
    """
    if not sync.structured:
        identity = {"source": source or sync.source, "mongo_id": mongo_id}
        return build_payload(document, sync.payload_fields, **identity, text=text, version=version, model=model)
    payload = mapped_payload(document, sync.payload_fields)
    payload.update(
        {
            "mongo_id": mongo_id,
            "source": sync.source,
            "sync": sync.name,
            "text": text,
            "text_sha256": text_sha256(text),
            "version": version,
            "model": model,
        }
    )
    return payload


def values_at(document: Any, dotted_path: str) -> list[Any]:
    """Every value at ``a.b.c``, as MongoDB's queries see the path: an array on the way is followed into each of
    its elements, and an array at the end gives its elements. Empty when nothing is there."""
    found = [document]
    for key in dotted_path.split("."):
        found = [
            item[key]
            for value in found
            for item in (value if isinstance(value, list) else [value])
            if isinstance(item, dict) and key in item
        ]
    return [item for value in found for item in _flatten(value)]


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for element in value for item in _flatten(element)]
    return [value]


def _as_text(value: Any) -> str | None:
    """A value as part of the text to embed: strings as they are, numbers and booleans written out; objects and
    nulls have no text of their own (name their fields to embed them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def mapped_text(document: dict[str, Any], text_fields: Sequence[str], max_chars: int) -> str:
    """The text to embed by the structured mapping: every value of each field in order (arrays element by element),
    joined by a blank line, cut at ``max_chars``."""
    parts = [text for field in text_fields for value in values_at(document, field) if (text := _as_text(value))]
    text = TEXT_SEPARATOR.join(parts)[:max_chars]
    return text.encode("utf-8", "replace").decode("utf-8")


def mapped_payload(document: dict[str, Any], payload_fields: Sequence[str]) -> dict[str, Any]:
    """The user's part of the payload by the structured mapping: each field at its own path, so that ``meta.priority``
    is ``{"meta": {"priority": ...}}`` and a Qdrant filter on ``meta.priority`` finds it. A path through an array of
    objects (``comments.author``) holds the list of the values found."""
    payload: dict[str, Any] = {}
    for field in payload_fields:
        through_array = _crosses_array(document, field)
        values = values_at(document, field)
        if not values:
            continue
        value = values if through_array or isinstance(lookup(document, field), list) else values[0]
        _put(payload, field.split("."), value)
    return payload


def _crosses_array(document: dict[str, Any], dotted_path: str) -> bool:
    value: Any = document
    for key in dotted_path.split(".")[:-1]:
        if isinstance(value, list):
            return True
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    return isinstance(value, list)


def _put(payload: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``value`` at ``keys`` in ``payload``; a field already holding the whole object (``meta`` and
    ``meta.priority`` both named) keeps it."""
    target = payload
    for key in keys[:-1]:
        inner = target.setdefault(key, {})
        if not isinstance(inner, dict):
            return
        target = inner
    target.setdefault(keys[-1], value)
