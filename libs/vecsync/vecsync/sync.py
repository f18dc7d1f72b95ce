"""One sync: a MongoDB collection, which of its documents, how each becomes a point, and the Qdrant collection
they go to, with the Redis names its entries and state live under.

Plain data, built by vecsync.syncs from the definition file (VECSYNC_CONFIG) or from the environment. Every stage
looks up what it needs of a sync here, so the rules a definition sets are written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vecsync import constants
from vecsync.constants import DEFAULT_MAX_DOCUMENT_CHARS, DEFAULT_OVERLAP_TOKENS

# The name of the one sync that the environment describes when no definition file is given.
DEFAULT_SYNC = "default"

# vecsync's own payload keys: no payload field may write one (vecsync.syncs refuses such a definition).
OWN_PAYLOAD_KEYS = {
    "mongo_id": "the document's _id",
    "source": "the document's database and collection",
    "sync": "the sync that wrote the point",
    "text": "the embedded text",
    "text_sha256": "the hash of the embedded text",
    "version": "the version fence",
    "version_ms": "the version fence",
    "version_seq": "the version fence",
    "model": "the model that embedded the text",
    "chunk_index": "the chunk's place in its document",
    "chunk_count": "the number of chunks of its document",
    "chunk_span": "the chunk's span in its document's text",
    "truncated": "whether the document's text was cut",
}

# The Qdrant payload index types a definition may ask for; every other payload field gets a keyword index.
INDEX_TYPES = ("keyword", "integer", "float", "bool", "datetime", "text", "uuid")


def overlap_too_large(chunk_tokens: int | None, overlap_tokens: int) -> bool:
    """Whether chunks of ``chunk_tokens`` cannot share ``overlap_tokens``: consecutive chunks share the overlap, so
    each must hold more than it (None, the model's window, is checked by the embedding-api, which knows it)."""
    return bool(chunk_tokens) and overlap_tokens >= (chunk_tokens or 0)


@dataclass(frozen=True)
class Sync:
    """Everything one sync decides. ``structured`` says how documents are mapped: True for a definition file's syncs
    (arrays read element by element, numbers and booleans in the text, nested payload fields keep their structure,
    the payload names the sync), False for the environment's one sync, which keeps the seed's mapping exactly."""

    name: str
    mongo_database: str
    mongo_collection: str
    qdrant_collection: str
    text_fields: tuple[str, ...]
    payload_fields: tuple[str, ...]
    max_text_chars: int
    stage1_stream: str
    stage2_stream: str
    filter: Mapping[str, Any] | None = None
    payload_indexes: Mapping[str, str] = field(default_factory=dict)
    structured: bool = False
    # None: chunks of the model's window (the embedding-api names it); 0: no chunking, the text cut at
    # max_text_chars as before chunking existed.
    chunk_tokens: int | None = None
    chunk_overlap_tokens: int = DEFAULT_OVERLAP_TOKENS
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS
    # The sparse vector its collection is created with beside the dense one (constants.SPARSE_MODELS); None: none.
    sparse_model: str | None = None
    # The model its collection is built with (EMBEDDING_MODEL); None: the embedding-api's default model, and no
    # model change is ever started for it (vecsync.reindex).
    embedding_model: str | None = None

    @property
    def source(self) -> str:
        """The database and collection, "<database>.<collection>": what point ids derive from, with each _id."""
        return f"{self.mongo_database}.{self.mongo_collection}"

    @property
    def state_name(self) -> str:
        """What the producer's keys and the CLI's progress keys are named after: the source for the environment's
        sync (the seed's keys), the sync's name for a definition's, as two syncs may follow one collection."""
        return self.name if self.structured else self.source

    @property
    def applied_text_key(self) -> str:
        """The skip-unchanged hint of this sync's points (see constants.APPLIED_TEXT_KEY)."""
        return constants.APPLIED_TEXT_KEY if not self.structured else f"{constants.APPLIED_TEXT_KEY}.{self.name}"

    @property
    def applied_text_previous_key(self) -> str:
        """The hint's previous generation (see constants.APPLIED_TEXT_PREVIOUS_KEY), named as the hint is."""
        return self.applied_text_key + constants.APPLIED_TEXT_PREVIOUS_KEY.removeprefix(constants.APPLIED_TEXT_KEY)

    @property
    def chunking(self) -> bool:
        """Whether long documents are split into chunks (CHUNK_TOKENS is not 0)."""
        return self.chunk_tokens != 0

    @property
    def text_bound(self) -> int:
        """Where a document's text is cut: MAX_DOCUMENT_CHARS when it is chunked, MAX_TEXT_CHARS when it is not."""
        return self.max_document_chars if self.chunking else self.max_text_chars

    def indexed_payload(self) -> dict[str, str]:
        """The payload index type of every payload field: keyword unless the definition says otherwise."""
        return {path: self.payload_indexes.get(path, "keyword") for path in self.payload_fields}

    def query(self, query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``query`` restricted to the documents this sync keeps a point of (its filter)."""
        parts = [dict(part) for part in (query, self.filter) if part]
        if len(parts) == 2:
            return {"$and": parts}
        return parts[0] if parts else {}
