"""How a MongoDB document becomes a point: its id, the text to embed and the payload."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

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
