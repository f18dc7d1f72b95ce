"""What the chaos test expects Qdrant to hold of each MongoDB document, chunk by chunk, and how a point differs.

The stack embeds with the hash backend, which splits a text by whitespace word count
(``vecsync.chunking.word_spans``, CHUNK_TOKENS less its two stand-in special tokens): the chunks a document must have
are that split of its current text, chunk 0 under the document's point id and chunk i at ``chunk_point_id``. A text
that fits is one chunk, its whole text, so a run of short texts expects one point per document.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embedding_api.backends import HashEncoder
from vecsync.bson_codec import mongo_id_of
from vecsync.chunking import chunk_point_id, word_spans
from vecsync.documents import mapped_payload, point_id, text_of, text_sha256
from vecsync.sync import Sync

# The hash backend counts a text's words plus two, as a BERT model adds [CLS] and [SEP] (embedding_api.chunker).
HASH_SPECIAL_TOKENS = 2
# The hash backend's window: the chunk size when CHUNK_TOKENS is unset.
HASH_MAX_TOKENS = 256
HASH_DIMENSIONS = 384


def chunk_spans(text: str, tokens: int, overlap: int) -> list[tuple[int, int]]:
    """The chunk spans the hash backend gives ``text`` at CHUNK_TOKENS=``tokens`` (0: no chunking, one span)."""
    if tokens == 0:
        return [(0, len(text))]
    return word_spans(text, tokens - HASH_SPECIAL_TOKENS, overlap)


@dataclass
class ExpectedChunk:
    """A chunk that a MongoDB document must have: its document, its point id and its document's, and its place."""

    document: dict[str, Any]
    point_id: str
    first_id: str
    text: str
    index: int
    count: int
    span: list[int]

    def name(self) -> str:
        return f"chunk {self.index}/{self.count} of {mongo_id_of(self.document['_id'])}"


def expected_chunks(document: dict[str, Any], sync: Sync, tokens: int, overlap: int) -> list[ExpectedChunk]:
    """The chunks ``document`` of ``sync`` must have: none without text."""
    text = text_of(document, sync)
    if not text:
        return []
    first_id = point_id(sync.source, mongo_id_of(document["_id"]))
    spans = chunk_spans(text, tokens, overlap)
    return [
        ExpectedChunk(
            document, chunk_point_id(first_id, index), first_id, text[start:end], index, len(spans), [start, end]
        )
        for index, (start, end) in enumerate(spans)
    ]


def point_name(payload: dict[str, Any]) -> str:
    """A point as a chunk of its document, for the report of an extra one."""
    return (
        f"chunk {payload.get('chunk_index')}/{payload.get('chunk_count')} of {payload.get('mongo_id')} at version "
        f"{payload.get('version')}"
    )


def chunk_differences(
    chunk: ExpectedChunk, record: Any, first: Any, sync: Sync, plain_fields: Sequence[str]
) -> list[str]:
    """What the point ``record`` holds otherwise than ``chunk`` should: its text, place, identity, fields, vector,
    or a version other than its document's first point's (``first``). ``plain_fields`` are the payload fields of
    the environment's sync, copied from the document as they are."""
    payload = record.payload or {}
    document = chunk.document
    wrong = []
    if payload.get("text") != chunk.text:
        wrong.append(f"text of {len(str(payload.get('text')))} characters {payload.get('text')!r:.80}")
    if payload.get("text_sha256") != text_sha256(chunk.text):
        wrong.append("text_sha256")
    place = (payload.get("chunk_index"), payload.get("chunk_count"), payload.get("chunk_span"))
    if place != (chunk.index, chunk.count, chunk.span):
        wrong.append(f"place {place}, not {(chunk.index, chunk.count, chunk.span)}")
    if payload.get("mongo_id") != mongo_id_of(document["_id"]) or payload.get("truncated") is not False:
        wrong.append(f"mongo_id {payload.get('mongo_id')}, truncated {payload.get('truncated')}")
    if sync.structured:
        fields = mapped_payload(document, sync.payload_fields)
        same_fields = all(payload.get(name) == value for name, value in fields.items()) and all(
            payload.get(name) is None for name in {path.split(".")[0] for path in sync.payload_fields} - set(fields)
        )
    else:
        same_fields = all(payload.get(name) == document.get(name) for name in plain_fields)
    if not same_fields:
        wrong.append("payload fields")
    first_version = (first.payload or {}).get("version") if first is not None else None
    if payload.get("version") != first_version:
        wrong.append(f"version {payload.get('version')}, chunk 0's {first_version}")
    fresh = HashEncoder(HASH_DIMENSIONS).encode([chunk.text])[0]
    if not math.isclose(sum(a * b for a, b in zip(fresh, record.vector, strict=True)), 1.0, abs_tol=1e-4):
        wrong.append("vector")
    return wrong
