"""The Qdrant collection: on a Qdrant server (QDRANT_URL), or in the embedded engine (QDRANT_PATH).

``VectorStore`` is what the pipeline and the operator CLI need of a collection.
Its implementations depend on this module, never the other way round:
vecsync.store.server talks to a Qdrant server through qdrant-client, and
vecsync.store.embedded runs Qdrant's own engine in this process (Qdrant Edge);
``vecsync.store.open_vector_store`` picks one from the settings.
Only one process may open an embedded store. In the embedded default that is
the upserter, which also answers the operator CLI's reads over HTTP; with a
Qdrant server every process talks to it directly.

The pipeline's writes are conditional (``write_if_newer``): each point carries
its version in its payload, and the engine applies a write only over a point
older than it, so the collection itself is the version fence (see docs/design.md).

A long document is several points, one per chunk, all with the document's `mongo_id`. ``search`` finds
chunks; ``search_documents`` finds documents, each as its nearest chunk: a Qdrant server groups them itself, the
embedded engine has no grouped query, so the base class reads enough chunks and groups them here.

A collection made with a sparse model (SPARSE_MODEL) also holds each point's BM25 vector (vecsync.store.sparse),
which the store computes from the point's text as it writes it. A search is then dense (the query's vector),
sparse (the query's text) or hybrid (both, fused by reciprocal rank fusion in the engine; see vecsync.search_modes).
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vecsync.errors import ConfigurationError, InvalidEntry, PermanentError, TransientError
from vecsync.messages import parse_version

log = logging.getLogger(__name__)

# A point's version as numbers, beside the `version` string: Qdrant's range conditions compare numbers as
# floats, so one combined integer of milliseconds and sequence would lose precision; each part alone is exact.
VERSION_MS = "version_ms"
VERSION_SEQ = "version_seq"

# Every collection has a keyword index on this field, whatever else is indexed.
MONGO_ID = "mongo_id"
# The chunk's text in every point's payload, which a collection for keyword search indexes (with_text_index).
TEXT = "text"

# Where a store's engine has no grouped query, search_documents first asks it for this many chunks per document
# wanted, and for this many times more in each further round that found too few documents.
CHUNKS_PER_DOCUMENT = 4
# The most chunk hits one search_documents reads from an engine without a grouped query. Every hit carries its
# payload (a chunk's text, about 1 KB), and a search of the embedded store holds the store's lock, which the
# upserter's writes wait for: 10,000 hits are near 10 MB, and took 0.15 s from 20,000 points of 384 dimensions
# with 1 KB texts on 2 cores (0.02 s for 1,000). A document has at most about 560 chunks at the default
# MAX_DOCUMENT_CHARS, so `limit` documents are found whenever they exist unless the nearest 10,000 chunks belong
# to fewer documents; then fewer come back, still the nearest ones, in order.
MAX_CHUNK_HITS = 10_000

# The file under DATA_DIR where an upserter holding an embedded store keeps the key of its store routes.
STORE_KEY_FILE = "upserter-api-key"


def store_key_file(data_dir: Path) -> Path:
    """Where the embedded upserter writes the key that its collection operations require (mode 0600)."""
    return data_dir / STORE_KEY_FILE


class CollectionMissing(TransientError):
    """Raised when the collection does not exist (deleted by hand or by a rebuild); create it and try again."""


class StoreInUse(ConfigurationError):
    """Raised when another process has the embedded store open; only one process may."""


class NoSparseVectors(PermanentError):
    """Raised by a sparse or hybrid search of a collection that holds no sparse vectors."""


def version_of(payload: Mapping[str, Any]) -> tuple[int, int] | None:
    """The version a point's payload records, or None when it has none that parses."""
    version = payload.get("version")
    if not isinstance(version, str):
        return None
    try:
        return parse_version(version)
    except InvalidEntry:
        return None


def with_version_numbers(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with its `version` string also as the numbers that Qdrant's conditions compare."""
    version = version_of(payload)
    if version is None:
        given = payload.get("version")
        raise ValueError(f"a payload written under the version fence needs a 'version' like '1-0', got {given!r}")
    return {**payload, VERSION_MS: version[0], VERSION_SEQ: version[1]}


@dataclass
class Point:
    id: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass(frozen=True)
class OlderPoints:
    """The points of one document (its ``source`` and ``mongo_id``) older than ``version``: after a write of that
    version, the chunks it no longer has; after a delete at that version, all of them."""

    source: str
    mongo_id: str
    version: str


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass
class Record:
    """A stored point as read back: its id as a string, its payload, and its vector when asked for."""

    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None


class VectorStore(ABC):
    """The operations the pipeline needs on one collection, with errors mapped to transient or permanent.

    Both implementations give the same results (ids as strings, scores, payloads) and the same guarantees:
    every write of ``write_if_newer`` is conditional in the engine itself.
    """

    collection: str
    dim: int

    @abstractmethod
    def ensure_collection(self) -> None:
        """Create the collection if missing, with its payload indexes; refuse a collection of another vector size."""

    @abstractmethod
    def require_conditional_writes(self) -> None:
        """ConfigurationError unless the engine applies conditional upserts, which the fence relies on."""

    @abstractmethod
    def upsert(self, points: list[Point]) -> None:
        """Write ``points`` unconditionally, past the version fence: for tools and tests, never the pipeline."""

    @abstractmethod
    def write_if_newer(
        self,
        *,
        upserts: Sequence[Point] = (),
        payloads: Mapping[str, dict[str, Any]] | None = None,
        deletes: Mapping[str, str] | None = None,
        prune: Sequence[OlderPoints] = (),
    ) -> None:
        """Apply the writes, each only over a point older than the write's version, and return once applied.

        ``upserts`` and ``payloads`` carry their version in their payload's `version`; ``deletes`` maps point ids
        to the version of the delete. An upsert inserts a missing point; a payload replaces the payload of an
        existing point that also holds the same `text_sha256` and `model` (the vector is kept, so it must be the
        vector of that text by that model); a delete removes an existing point. ``prune`` removes, after every
        other write, each document's points older than its version (matched on `mongo_id`, `source` and the
        version). Versions are compared in the engine, so a writer that lost its locks can never move a point
        backwards.
        """

    @abstractmethod
    def delete(self, point_ids: list[str]) -> None:
        """Delete points unconditionally, past the version fence: for tools and tests, never the pipeline."""

    @abstractmethod
    def sparse_vector(self) -> str | None:
        """The name of the collection's sparse vector (a name of constants.SPARSE_MODELS), or None where it has
        none: a collection made without SPARSE_MODEL, or made before it existed. Qdrant cannot add a vector to an
        existing collection, so this stays as the collection was made until it is made again (`vecsync rebuild`)."""

    @abstractmethod
    def search(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        """The ``limit`` points nearest the query, among those whose payload meets every condition of ``match``
        (see ``match_conditions``).

        The query is ``vector`` (dense: cosine), ``text`` (sparse: BM25 over the collection's sparse vectors), or
        both (hybrid: the two fused by RRF, RRF_K and rrf_weights(text) over prefetch_limit(limit) points of each,
        both under ``match``); see vecsync.search_modes. Scores of the three modes are not comparable.
        NoSparseVectors where ``text`` is given and the collection has no sparse vector.
        """

    def search_documents(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        """The ``limit`` documents nearest the query (as for ``search``), nearest first, each as the hit of its
        nearest chunk (that chunk's point id, score and payload), among the points that meet ``match``.

        A document is the points that share a `mongo_id`. This engine-neutral version asks ``search`` for
        ``CHUNKS_PER_DOCUMENT`` chunks per document wanted and groups them, asking again for that many times more
        while it found fewer than ``limit`` documents and the engine had more to give, up to ``MAX_CHUNK_HITS``.
        Every round's documents are exactly the nearest ones: a document left out has no chunk among those read,
        so all of its chunks are farther than every document found. A store whose engine groups overrides this.
        """
        if limit < 1:
            return []
        most = max(MAX_CHUNK_HITS, limit)
        asked = min(limit * CHUNKS_PER_DOCUMENT, most)
        while True:
            hits = self.search(vector, limit=asked, match=match, text=text)
            documents = nearest_chunk_per_document(hits)
            if len(documents) >= limit or len(hits) < asked:
                return documents[:limit]
            if asked >= most:
                log.warning(
                    "The nearest %d chunks in Qdrant collection %r belong to %d documents, fewer than the %d asked "
                    "for; returning those. Search with a smaller limit, or a filter, to reach farther documents.",
                    asked, self.collection, len(documents), limit,
                )  # fmt: skip
                return documents
            asked = min(asked * CHUNKS_PER_DOCUMENT, most)

    @abstractmethod
    def count(self) -> int:
        """The exact number of points."""

    @abstractmethod
    def retrieve(self, point_ids: list[str], *, with_vectors: bool = False) -> list[Record]:
        """Those of ``point_ids`` that exist, with their payloads (and vectors)."""

    @abstractmethod
    def payloads(self, point_ids: list[str], fields: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """The payloads (or just ``fields`` of them) of those ``point_ids`` that exist."""

    @abstractmethod
    def scroll(
        self, *, limit: int, offset: str | None, fields: list[str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], str | None]:
        """One page of points in id order: their payloads by id, and the offset of the next page (None at the end)."""

    @abstractmethod
    def drop(self) -> None:
        """Delete the collection with every point; ``ensure_collection`` creates it again, empty."""

    def recreate(self) -> None:
        """Drop the collection and create it empty."""
        self.drop()
        self.ensure_collection()

    @abstractmethod
    def close(self) -> None:
        """Release the connection or the embedded store; an embedded store writes everything to disk first."""


def dense_part(vector: Any) -> list[float] | None:
    """The dense vector of a point as an engine gives it back: the vector itself, or the unnamed one among the
    named vectors of a collection that also holds sparse vectors."""
    if isinstance(vector, Mapping):
        vector = vector.get("")
    return [float(x) for x in vector] if isinstance(vector, list) else None


def nearest_chunk_per_document(hits: Iterable[Hit]) -> list[Hit]:
    """The first hit of each document (`mongo_id`) in ``hits``, in their order: of hits nearest first, each
    document's nearest chunk, documents nearest first.

    A hit without a `mongo_id` belongs to no document and is left out, as Qdrant's grouped query leaves it out;
    every point the pipeline writes has one.
    """
    documents: dict[Any, Hit] = {}
    for hit in hits:
        key = hit.payload.get(MONGO_ID)
        if isinstance(key, (str, int)) and key not in documents:  # the values Qdrant groups by
            documents[key] = hit
    return list(documents.values())


# A payload index's type, as a sync's definition names it (vecsync.sync.INDEX_TYPES).
PayloadIndexes = Mapping[str, str] | Sequence[str]


class Catalog(ABC):
    """The physical collections of one Qdrant (a server, or the embedded store's folder) and the names that serve
    them: each name a user queries (QDRANT_COLLECTION) is an alias of one physical collection, switched atomically
    (docs/design.md, "Changing the embedding model"). A collection made before aliases, under the name itself, is
    served by that name as long as no alias takes it."""

    @abstractmethod
    def resolve(self, name: str) -> str | None:
        """The physical collection ``name`` serves: its alias's target, else ``name`` itself where such a collection
        exists, else None."""

    @abstractmethod
    def open(
        self, physical: str, *, dim: int | None, payload_indexes: PayloadIndexes = (), sparse_model: str | None = None
    ) -> VectorStore:
        """A store of ``physical``, created with ``dim`` dimensions where it does not exist; None takes an existing
        collection's own size. One process opens a collection once: a second call returns the same store."""

    @abstractmethod
    def switch(self, name: str, physical: str) -> None:
        """Make ``name`` serve ``physical`` in one atomic step."""

    @abstractmethod
    def drop(self, physical: str) -> None:
        """Delete ``physical``; PermanentError where an alias serves it."""

    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """Every alias and the physical collection it serves."""

    @abstractmethod
    def collections(self) -> list[str]:
        """Every physical collection."""

    @abstractmethod
    def close(self) -> None:
        """Close every store this catalog opened, and release what it holds."""


# The bounds a range condition of ``match`` may hold, as Qdrant's Range names them.
RANGE_BOUNDS = ("gt", "gte", "lt", "lte")
# The key of a text match's mapping in ``match``: the words that the field's text must all hold.
TEXT_WORDS = "words"
# What a word of a text match is made of: Qdrant's word tokenizer splits at every other character.
WORD_CHARACTER = re.compile(r"[^\W_]")


def index_types(payload_indexes: PayloadIndexes) -> dict[str, str]:
    """The payload indexes to create, path -> type: `mongo_id` (keyword) first, then ``payload_indexes``, each once.

    A plain list of paths (what callers gave before index types existed) means a keyword index on each.
    """
    given = payload_indexes if isinstance(payload_indexes, Mapping) else dict.fromkeys(payload_indexes, "keyword")
    return {MONGO_ID: "keyword", **{path: kind for path, kind in given.items() if path != MONGO_ID}}


def with_text_index(indexed: Mapping[str, str], sparse_model: str | None) -> dict[str, str]:
    """The payload indexes of a collection: ``indexed`` (see ``index_types``), and a full-text index on `text`
    where the collection is one made for keyword search (``sparse_model``, SPARSE_MODEL, is set), new or existing.

    The full-text index makes a text match on `text` (``{"text": {"words": ...}}``, `vecsync search --filter
    text~WORDS`) fast, and changes no result: without it the engine reads and splits the text of every point the
    rest of the filter leaves, and it splits and compares them as the index does (checked on both stores, and so
    does a Qdrant server since 1.19.1; an older one matches a substring, with case, where there is no index).
    Measured on the embedded store, 20,000 points of 384 dimensions and 1 KB texts, 2 shared cores: a search
    filtered by one word took 440-525 ms without the index and 0.1-1.1 ms with it; building it over those points
    took 1.1-1.5 s and about 36 MB of disk; each point written then costs 0.04-0.07 ms more CPU. That is 18% more
    on the writes of a collection with BM25 vectors (4.5 against 5.3 CPU seconds for the 20,000), but 95% more on
    dense-only writes (1.6 against 3.0), so a dense-only collection goes without: its text matches still hold,
    read point by point, and are fast beside an indexed condition such as an equality (0.1 ms).
    """
    if not sparse_model or TEXT in indexed:
        return dict(indexed)
    return {**indexed, TEXT: "text"}


def match_conditions(match: Mapping[str, Any]) -> list[tuple[str, Any, dict[str, Any] | None]]:
    """``match`` as conditions: (key, value, None) for "equals value", (key, None, bounds) for a range, and
    (key, None, {"words": text}) for a text match (see ``text_words``).

    A value that is a mapping of RANGE_BOUNDS (``{"gte": 2, "lt": 5}``) is a range on the key: numbers compare
    as numbers (an integer or float index), strings as RFC 3339 dates (a datetime index). A mapping of TEXT_WORDS
    alone (``{"words": "refund late"}``) is a text match: the key's text holds every one of those words (Qdrant's
    MatchText: the texts are split into words at every character that is no letter or digit, and compared
    without case; a word matches a whole word only, never a part of one or another form of it). Any other value
    must equal the payload's. A nested field is named by its dotted path (``meta.priority``). Both stores build
    their engine's filter from these, so they read ``match`` alike.
    """
    conditions: list[tuple[str, Any, dict[str, Any] | None]] = []
    for key, value in match.items():
        if isinstance(value, Mapping) and TEXT_WORDS in value:
            conditions.append((key, None, {TEXT_WORDS: _words(key, value)}))
        elif isinstance(value, Mapping):
            unknown = sorted(set(value) - set(RANGE_BOUNDS))
            if unknown or not value:
                raise PermanentError(
                    f"The condition on {key!r} is a mapping, so it must be a range with one or more of "
                    f"{', '.join(RANGE_BOUNDS)}, or a text match {{{TEXT_WORDS!r}: WORDS}}, not "
                    f"{', '.join(map(repr, unknown)) or 'nothing'}."
                )
            conditions.append((key, None, dict(value)))
        else:
            conditions.append((key, value, None))
    return conditions


def _words(key: str, condition: Mapping[str, Any]) -> str:
    """The words of a text match on ``key``: PermanentError for a condition that is not one, or that holds no word
    (Qdrant would match nothing, silently)."""
    if len(condition) > 1:
        others = ", ".join(repr(name) for name in condition if name != TEXT_WORDS)
        raise PermanentError(
            f"The condition on {key!r} is a text match ({TEXT_WORDS!r}), so it can hold nothing else, not {others}; "
            "a text field takes no range. Give the range to another field, or the words alone."
        )
    words = condition[TEXT_WORDS]
    if not isinstance(words, str) or not has_words(words):
        raise PermanentError(
            f"The text match on {key!r} needs one or more words (letters or digits) as a string, got {words!r}."
        )
    return words


def has_words(text: str) -> bool:
    """Whether ``text`` holds a word as a text match reads one: a letter or a digit."""
    return WORD_CHARACTER.search(text) is not None


def text_words(condition: Mapping[str, Any]) -> str | None:
    """The words of a condition's mapping that is a text match (as ``match_conditions`` gives it), else None."""
    words = condition.get(TEXT_WORDS)
    return words if isinstance(words, str) else None


def is_date_range(bounds: Mapping[str, Any]) -> bool:
    """Whether a range compares dates (its bounds are strings) rather than numbers."""
    return any(isinstance(bound, str) for bound in bounds.values())
