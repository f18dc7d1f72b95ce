"""The entries each stage writes, and the checks each stage applies when reading them.

Stage 1 (``raw_document_changes``) carries one document change::

    v=1  op=upsert|delete  source=<db>.<collection>  mongo_id=<id>
    changed_at=<unix seconds>  doc=<the document as plain JSON, upserts only>
    version=<stage 1 id of the original change>  force=1   (only on a change queued again for embedding)
    build=<physical collection>   (only on a model change's snapshot: embed for that collection alone)

Stage 2 (``embedded_documents``) carries what the upserter writes::

    v=1  op=upsert|delete|payload  source  mongo_id  changed_at
    version=<the stage 1 entry id, which orders changes of one document>
    vector=<base64 of little-endian float32>   (upserts only)
    payload=<JSON object>                       (upserts, and payload: a change that left the text as it was)
    collection=<physical collection>            (the one it is for, as the worker found it: see vecsync.reindex;
                                                 absent on entries of earlier releases: the one the name serves)

A document of several chunks (docs/design.md, "Long documents") is still one
stage 2 entry, so that the upserter writes all its chunks under one version::

    op=upsert|payload  payload=<the document's payload, without text>
    chunks=<JSON list of [start, end, text, embedded]: each chunk's span in the document's text, its text, and
            1 when its vector is in `vectors`, 0 when the point holds it already (its text is unchanged)>
    vectors=<base64 of the embedded chunks' vectors, one after another, in order>   (when any chunk is embedded)

A reader that finds a missing or garbled field, or another schema version,
raises InvalidEntry, and the consumer loop dead-letters that entry.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

from vecsync.constants import SCHEMA_VERSION
from vecsync.documents import text_sha256
from vecsync.errors import InvalidEntry

Operation = Literal["upsert", "delete", "payload"]
CHANGE_OPERATIONS = ("upsert", "delete")
# "payload": the text, so the vector, is unchanged; only the payload is written.
EMBEDDED_OPERATIONS = ("upsert", "delete", "payload")


@dataclass(frozen=True)
class DocumentChange:
    """A stage 1 entry: the state of one document after a change."""

    op: Operation
    source: str
    mongo_id: str
    changed_at: float
    document: dict[str, Any] | None = None
    # Set on a change queued again because its vector is needed after all: it keeps its original place in the
    # order of changes, and must be embedded even if its text looks unchanged.
    version: str | None = None
    force_embed: bool = False
    # Set on the entries of a model change's snapshot (vecsync.reindex): the physical collection being built, the
    # one collection this change is embedded for. Live changes have none: they go to every collection kept current.
    build: str | None = None

    def to_fields(self) -> dict[str, str]:
        fields = _common_fields(self.op, self.source, self.mongo_id, self.changed_at)
        if self.op == "upsert":
            fields["doc"] = json.dumps(self.document, ensure_ascii=False, separators=(",", ":"))
        if self.version is not None:
            fields["version"] = self.version
        if self.force_embed:
            fields["force"] = "1"
        if self.build is not None:
            fields["build"] = self.build
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> DocumentChange:
        op, source, mongo_id, changed_at = _read_common_fields(fields, CHANGE_OPERATIONS)
        document = None
        if op == "upsert":
            document = _json_object(fields, "doc")
        version = fields.get("version") or None
        if version is not None:
            parse_version(version)
        build = fields.get("build") or None
        return cls(op, source, mongo_id, changed_at, document, version, fields.get("force") == "1", build)


@dataclass(frozen=True)
class EmbeddedChunk:
    """One chunk of a document of several: its span in the document's text, its text, and its vector (None when
    its text is unchanged, so the point holds the vector already)."""

    start: int
    end: int
    text: str
    vector: list[float] | None = None

    @functools.cached_property
    def text_sha256(self) -> str:
        """The hash of the chunk's text, as its point records it: the upserter compares, writes and hints it."""
        return text_sha256(self.text)


@dataclass(frozen=True)
class EmbeddedDocument:
    """A stage 2 entry: what the upserter applies to one document's points.

    A document of one chunk (its whole text) is one point: ``vector`` and ``payload`` (with its ``text``). A document
    of several has ``chunks`` instead, and ``payload`` holds what every chunk's point shares (no text).
    """

    op: Operation
    source: str
    mongo_id: str
    changed_at: float
    version: str
    vector: list[float] | None = None
    payload: dict[str, Any] | None = None
    chunks: tuple[EmbeddedChunk, ...] = ()
    # The physical collection the entry is for (vecsync.reindex); None: the one its Qdrant collection's name serves.
    collection: str | None = None

    def vectors(self) -> list[list[float]]:
        """Every vector the entry carries: its one point's, or those of its embedded chunks."""
        if self.chunks:
            return [chunk.vector for chunk in self.chunks if chunk.vector is not None]
        return [self.vector] if self.vector is not None else []

    def to_fields(self) -> dict[str, str]:
        fields = _common_fields(self.op, self.source, self.mongo_id, self.changed_at)
        fields["version"] = self.version
        if self.chunks:
            embedded = [chunk.vector for chunk in self.chunks if chunk.vector is not None]
            listed = [[chunk.start, chunk.end, chunk.text, int(chunk.vector is not None)] for chunk in self.chunks]
            fields["chunks"] = json.dumps(listed, ensure_ascii=False, separators=(",", ":"))
            if embedded:
                fields["vectors"] = pack_vector([value for vector in embedded for value in vector])
        elif self.op == "upsert":
            assert self.vector is not None
            fields["vector"] = pack_vector(self.vector)
        if self.op in ("upsert", "payload"):
            assert self.payload is not None
            fields["payload"] = json.dumps(self.payload, ensure_ascii=False, separators=(",", ":"))
        if self.collection is not None:
            fields["collection"] = self.collection
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> EmbeddedDocument:
        op, source, mongo_id, changed_at = _read_common_fields(fields, EMBEDDED_OPERATIONS)
        version = _required(fields, "version")
        parse_version(version)
        collection = fields.get("collection") or None
        if op == "delete":
            return cls(op, source, mongo_id, changed_at, version, collection=collection)
        payload = _json_object(fields, "payload")
        if "chunks" in fields:
            chunks = _read_chunks(fields, op)
            return cls(op, source, mongo_id, changed_at, version, None, payload, chunks, collection)
        if op == "payload":
            if not isinstance(payload.get("text_sha256"), str):
                raise InvalidEntry("a payload-only entry must carry the text_sha256 of its unchanged text")
            return cls(op, source, mongo_id, changed_at, version, None, payload, collection=collection)
        vector = unpack_vector(_required(fields, "vector"))
        return cls(op, source, mongo_id, changed_at, version, vector, payload, collection=collection)


def _read_chunks(fields: dict[str, str], op: str) -> tuple[EmbeddedChunk, ...]:
    """The chunks of a document of several, with their vectors, checked."""
    try:
        listed = json.loads(fields["chunks"])
    except ValueError as exc:
        raise InvalidEntry(f"field 'chunks' is not valid JSON: {exc}") from None
    if not isinstance(listed, list) or len(listed) < 2:
        raise InvalidEntry("field 'chunks' must be a list of two or more [start, end, text, embedded] items")
    for item in listed:
        if not (
            isinstance(item, list)
            and len(item) == 4
            and all(isinstance(n, int) and not isinstance(n, bool) for n in (item[0], item[1], item[3]))
            and isinstance(item[2], str)
            and 0 <= item[0] <= item[1]
            and item[3] in (0, 1)
        ):
            raise InvalidEntry(f"field 'chunks' holds {str(item)[:80]!r}, not [start, end, text, 0 or 1]")
    embedded = sum(item[3] for item in listed)
    if (op == "upsert") != (embedded > 0):
        raise InvalidEntry(
            f"an entry of op {op!r} must {'carry' if op == 'upsert' else 'not carry'} chunks that are embedded"
        )
    values = unpack_vector(_required(fields, "vectors")) if embedded else []
    if len(values) % max(embedded, 1):
        raise InvalidEntry(f"field 'vectors' holds {len(values)} values, not {embedded} vectors of one size")
    size = len(values) // max(embedded, 1)
    chunks, taken = [], 0
    for start, end, text, has_vector in listed:
        vector = values[taken * size : (taken + 1) * size] if has_vector else None
        taken += has_vector
        chunks.append(EmbeddedChunk(start, end, text, vector))
    return tuple(chunks)


def pack_vector(vector: list[float]) -> str:
    """Encode a vector as base64 of little-endian float32: a third of the size of JSON text, and exact."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def unpack_vector(text: str) -> list[float]:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise InvalidEntry(f"field 'vector' is not valid base64: {exc}") from None
    if not raw or len(raw) % 4:
        raise InvalidEntry(f"field 'vector' holds {len(raw)} bytes, not a non-empty whole number of float32 values")
    vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    # One sum instead of a test per value: any NaN or infinity makes the sum NaN or infinite, and float32 values
    # cannot add up to an infinite double (the upserter spent a quarter of its time in the per-value test).
    if not math.isfinite(sum(vector)):
        raise InvalidEntry("field 'vector' contains NaN or infinite values")
    return vector


def parse_version(version: str) -> tuple[int, int]:
    """Split a stream entry id ``<ms>-<seq>`` into a tuple that sorts like the stream does."""
    millis, sep, seq = version.partition("-")
    if not sep or not millis.isdigit() or not seq.isdigit():
        raise InvalidEntry(f"field 'version' must be a stream entry id like '1700000000000-0', got {version!r}")
    return int(millis), int(seq)


def _common_fields(op: str, source: str, mongo_id: str, changed_at: float) -> dict[str, str]:
    return {"v": SCHEMA_VERSION, "op": op, "source": source, "mongo_id": mongo_id, "changed_at": repr(changed_at)}


def _read_common_fields(fields: dict[str, str], operations: tuple[str, ...]) -> tuple[Operation, str, str, float]:
    version = fields.get("v")
    if version != SCHEMA_VERSION:
        raise InvalidEntry(f"unknown schema version {version!r}; this build reads version {SCHEMA_VERSION!r}")
    op = _required(fields, "op")
    if op not in operations:
        raise InvalidEntry(f"field 'op' must be one of {', '.join(operations)}; got {op!r}")
    source = _required(fields, "source")
    mongo_id = _required(fields, "mongo_id")
    try:
        changed_at = float(_required(fields, "changed_at"))
    except ValueError:
        raise InvalidEntry(f"field 'changed_at' is not a number: {fields['changed_at']!r}") from None
    return op, source, mongo_id, changed_at  # type: ignore[return-value]


def _required(fields: dict[str, str], name: str) -> str:
    value = fields.get(name)
    if not value:
        raise InvalidEntry(f"field {name!r} is missing or empty")
    return value


def _json_object(fields: dict[str, str], name: str) -> dict[str, Any]:
    try:
        value = json.loads(_required(fields, name))
    except ValueError as exc:
        raise InvalidEntry(f"field {name!r} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidEntry(f"field {name!r} must be a JSON object, got {type(value).__name__}")
    return value
