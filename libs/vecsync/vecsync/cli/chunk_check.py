"""The judgement of `vecsync verify`, chunk by chunk: which documents of a page miss a chunk or hold a stale one,
and which points of a page of the store are no chunk of a document as it is now.

vecsync.cli.maintenance runs the scans, keeps their progress, counts and repairs; this module reads what one page
needs and judges it. A document's points are chunk 0, under the document's point id, and, when chunk 0 records
chunk_count n > 1, chunks 1..n-1 at vecsync.chunking.chunk_point_id; a point written before chunking has no chunk
field and reads as chunk 0 of 1, spanning its whole text. No tokenizer is needed: each chunk is checked against its
own span of the document's text, so the embedding-api's split is never redone here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.collection import Collection

from vecsync.bson_codec import id_candidates, mongo_id_of, to_plain
from vecsync.chunking import chunk_point_id
from vecsync.cli.store import Store
from vecsync.documents import cut_text_of, payload_of, point_id, text_sha256
from vecsync.mongo_reads import read_current
from vecsync.sync import Sync

CHUNK_KEYS = ("chunk_index", "chunk_count", "chunk_span")
# The payload keys that say which version a point is of: every chunk of a document must hold chunk 0's.
VERSION_KEYS = ("version", "version_ms", "version_seq")
# What the scan of points reads of each point: enough to place it, never its text.
PLACE_FIELDS = ["mongo_id", "source", *CHUNK_KEYS, *VERSION_KEYS]
# At most this many point ids in one read of payloads: a page of long documents names many chunks.
POINTS_PER_READ = 1000
ID_ONLY = {"_id": 1}


def _whole_number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def is_legacy(payload: Mapping[str, Any]) -> bool:
    """Whether the point was written before chunking: it has no chunk field, and reads as chunk 0 of 1."""
    return not any(key in payload for key in CHUNK_KEYS)


def chunk_index_of(payload: Mapping[str, Any]) -> int | None:
    """The chunk's place in its document (0 for a point written before chunking); None when it records none."""
    return 0 if is_legacy(payload) else _whole_number(payload.get("chunk_index"))


def chunk_count_of(payload: Mapping[str, Any]) -> int | None:
    """How many chunks the point says its document has (1 before chunking); None when not a positive number."""
    count = 1 if is_legacy(payload) else _whole_number(payload.get("chunk_count"))
    return count if count is not None and count >= 1 else None


def chunk_span_of(payload: Mapping[str, Any]) -> tuple[int, int] | None:
    """The chunk's [start, end] in its document's text ([0, len(text)] before chunking); None when malformed."""
    if is_legacy(payload):
        text = payload.get("text")
        return (0, len(text)) if isinstance(text, str) else None
    span = payload.get("chunk_span")
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        return None
    start, end = (_whole_number(value) for value in span)
    return None if start is None or end is None else (start, end)


def versions_of(payload: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(payload.get(key) for key in VERSION_KEYS)


def uncovered(text: str, spans: list[tuple[int, int]]) -> str | None:
    """Why the chunks at ``spans`` do not cover ``text``, or None when they do.

    They cover it when each span lies inside the text and is not empty, each starts and ends after the one before
    (in order, so chunk i is the i-th part of the text; consecutive spans may overlap, by the chunker's overlap),
    and every character that is in no span is whitespace: before the first, between two that do not overlap, after
    the last. Whitespace is allowed outside the spans because the chunker trims it at a chunk's edges and the
    model's tokenizer drops it anyway, so it changes no vector; every other character must be in a chunk, or a
    search could never find the words it belongs to. A text that grew past its last chunk leaves text after it.
    """
    covered_to = 0  # every character before it is in a span or whitespace
    previous: tuple[int, int] | None = None
    for index, (start, end) in enumerate(spans):
        if not 0 <= start < end <= len(text):
            return f"chunk {index}'s span [{start}, {end}] is not inside the text of {len(text)} characters"
        if previous is not None and not (start > previous[0] and end > previous[1]):
            return f"chunk {index}'s span [{start}, {end}] does not follow chunk {index - 1}'s {list(previous)}"
        if text[covered_to:start].strip():
            return f"the text at [{covered_to}, {start}] is in no chunk"
        covered_to, previous = max(covered_to, end), (start, end)
    if text[covered_to:].strip():
        return f"the text after character {covered_to} of {len(text)} is in no chunk"
    return None


@dataclass
class DocumentFindings:
    """What is wrong with one document's chunks: the indexes of those missing, and why the others differ."""

    missing: list[int] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    def details(self, mongo_id: str) -> list[str]:
        lost = [f"{mongo_id}: chunk {index} is missing" for index in self.missing[:3]]
        return lost + [f"{mongo_id}: {reason}" for reason in self.stale[:3]]


def check_document(
    text: str,
    truncated: bool,
    expected: Mapping[str, Any],
    first: Mapping[str, Any],
    others: Sequence[Mapping[str, Any] | None],
) -> DocumentFindings:
    """Compare the document's chunk points with its text now: ``first`` is chunk 0's payload, ``others`` those of
    chunks 1..n-1, for the n that chunk 0 records, at their index less one (None for one that is missing).

    ``expected`` holds the other payload fields each chunk must hold (the document's fields, identity, model);
    ``truncated`` whether the document's text was cut at the sync's bound. Each chunk is compared with the document
    itself, never with its own text_sha256 alone: a payload edited behind the pipeline's back keeps its hash.
    """
    found = DocumentFindings()
    chunks = [first, *others]
    count = chunk_count_of(first)
    if count is None or count != len(chunks):
        found.stale.append(f"chunk 0 records chunk_count {first.get('chunk_count')!r}, not a number of its chunks")
        return found
    spans: list[tuple[int, int]] = []
    for index, payload in enumerate(chunks):
        if payload is None:
            found.missing.append(index)
            continue
        reasons = _chunk_differs(index, count, text, truncated, expected, payload, versions_of(first))
        found.stale.extend(f"chunk {index} {reason}" for reason in reasons)
        span = chunk_span_of(payload)
        if span is not None:
            spans.append(span)
    if not found.missing and len(spans) == count and (reason := uncovered(text, spans)):
        found.stale.append(reason)
    return found


def _chunk_differs(
    index: int,
    count: int,
    text: str,
    truncated: bool,
    expected: Mapping[str, Any],
    payload: Mapping[str, Any],
    first_versions: tuple[Any, ...],
) -> list[str]:
    reasons = []
    if chunk_index_of(payload) != index:
        reasons.append(f"records chunk_index {payload.get('chunk_index')!r}")
    if chunk_count_of(payload) != count:
        reasons.append(f"records chunk_count {payload.get('chunk_count')!r}, chunk 0 {count}")
    if versions_of(payload) != first_versions:
        reasons.append(f"is of version {payload.get('version')!r}, chunk 0 of {first_versions[0]!r}")
    span, chunk_text = chunk_span_of(payload), payload.get("text")
    if span is None:
        reasons.append(f"records no span it can be checked at (chunk_span {payload.get('chunk_span')!r})")
    elif chunk_text != text[span[0] : span[1]]:
        reasons.append(f"holds another text than the document's at {list(span)}")
    if not isinstance(chunk_text, str) or payload.get("text_sha256") != text_sha256(chunk_text):
        reasons.append("holds a text_sha256 that is not its text's")
    if "truncated" in payload and payload["truncated"] is not truncated:
        reasons.append(
            f"records truncated {payload['truncated']!r}, the document's text {'is' if truncated else 'is not'} cut"
        )
    # An absent field and a None value are the same: the payload leaves out fields the document lacks.
    fields = sorted(key for key, value in expected.items() if payload.get(key) != value)
    if fields:
        reasons.append(f"holds other values of {', '.join(fields)}")
    return reasons


def extra_chunks(
    mongo_id: str, points: Mapping[str, Mapping[str, Any]], document_point_id: str, first: Mapping[str, Any] | None
) -> list[str]:
    """Why those of ``points`` (one document's, found by a page of the scan of points, with PLACE_FIELDS) that are
    no chunk of it as chunk 0 (``first``, None when missing) records it are extra: their id is no chunk's id, their
    chunk 0 is missing, or they are beyond its chunk_count (chunks left behind by a longer version).

    Chunk 0 and the chunks within its chunk_count are judged by the scan of documents (check_document): one of
    another version there is stale, not extra, so that no chunk counts twice.

    Re-enqueued, the document gets a version newer than any of its points, and the pipeline removes every point of
    the document older than that: each of these goes. That holds too for a chunk beyond chunk_count of chunk 0's
    own version, which can happen: a stage 1 entry embedded twice (delivered again after a crash) with another
    chunking between (the embedding-api's model or CHUNK_TOKENS changed), the first write of more chunks cut
    short, the second of fewer complete. Older than the new version, it is pruned with the rest, so verify deletes
    no point itself (and the CLI's store over the upserter's port could not).
    """
    reasons = []
    count = None if first is None else chunk_count_of(first)
    for pid, payload in points.items():
        if pid == document_point_id:
            continue
        index = chunk_index_of(payload)
        if index is None or index < 1 or pid != chunk_point_id(document_point_id, index):
            reasons.append(f"{mongo_id}: point {pid} is at no chunk's id (chunk_index {payload.get('chunk_index')!r})")
        elif first is None:
            reasons.append(f"{mongo_id}: chunk {index} is left without its document's chunk 0")
        elif count is not None and index >= count:
            reasons.append(f"{mongo_id}: chunk {index} is beyond the {count} chunks chunk 0 records")
    return reasons


# Pages ----------------------------------------------------------------------


@dataclass
class PageFindings:
    """The documents of a page that differ, by kind (missing, stale, extra; other_model: the stale ones of which a
    chunk was embedded by another model than ``model``), those other models, and one line per chunk that differs."""

    differences: dict[str, list[str]] = field(
        default_factory=lambda: {"missing": [], "stale": [], "extra": [], "other_model": []}
    )
    other_models: set[str] = field(default_factory=set)
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Expected:
    """What a document's chunk points must hold, as the embedder-worker would write them now: its text (each
    chunk's text is this at its span), whether it was cut at the sync's bound, and every chunk's other fields."""

    text: str
    truncated: bool
    payload: dict[str, Any]


def expected_of(sync: Sync, document: dict[str, Any], model: str | None) -> Expected | None:
    """What the chunk points of ``document`` must hold; None if it has no text (so no point).

    With ``model`` known, the points must also have been embedded by it: another model's vector is of another space.
    Built by the sync's own mapping (vecsync.documents), so that a structured payload is compared as written.
    """
    plain = to_plain(document)  # as the producer publishes it
    text, truncated = cut_text_of(plain, sync)
    if not text:
        return None
    mongo_id = mongo_id_of(document["_id"])
    expected = payload_of(plain, sync, mongo_id=mongo_id, text=text, version="", model=model or "")
    # Each chunk's own, checked against its span; and the version fence moves on with every change.
    for own in ("text", "text_sha256", *VERSION_KEYS):
        expected.pop(own, None)
    if model is None:
        del expected["model"]
    # A payload field the document lacks must be absent from the point too (None reads as absent).
    for path in sync.payload_fields:
        expected.setdefault(path.split(".")[0] if sync.structured else path, None)
    return Expected(text, truncated, expected)


def check_documents(
    store: Store, sync: Sync, source: str, documents: list[dict[str, Any]], model: str | None
) -> PageFindings:
    """Judge a page of documents (read with the sync's projection) against their chunk points: a document with text
    must have chunks 0..n-1 that are its text now; one without, no point. Two reads of the store: the chunk 0s,
    then the other chunks they record."""
    wanted = {mongo_id_of(d["_id"]): expected_of(sync, d, model) for d in documents}
    ids = {mongo_id: point_id(source, mongo_id) for mongo_id in wanted}
    firsts = store.payloads(list(ids.values()))
    more: dict[str, range] = {}
    for mongo_id, want in wanted.items():
        count = chunk_count_of(firsts.get(ids[mongo_id]) or {})
        # Each chunk holds at least one character of the text: a larger count is wrong, and is not read.
        if want is not None and count is not None and 1 < count <= len(want.text):
            more[mongo_id] = range(1, count)
    rest = payloads(store, [chunk_point_id(ids[m], i) for m, indexes in more.items() for i in indexes])
    page = PageFindings()
    for mongo_id, want in wanted.items():
        first = firsts.get(ids[mongo_id])
        if want is None or first is None:
            if (want is None) != (first is None):
                page.differences["extra" if want is None else "missing"].append(mongo_id)
            continue
        others = [rest.get(chunk_point_id(ids[mongo_id], i)) for i in more.get(mongo_id, ())]
        found = check_document(want.text, want.truncated, want.payload, first, others)
        page.details.extend(found.details(mongo_id))
        if found.missing:
            page.differences["missing"].append(mongo_id)
        if found.stale:
            page.differences["stale"].append(mongo_id)
            models = {str(p.get("model")) for p in [first, *others] if p is not None and p.get("model") != model}
            if model and models:
                page.differences["other_model"].append(mongo_id)
                page.other_models |= models
    return page


def check_points(
    store: Store, collection: Collection[dict[str, Any]], sync: Sync, source: str, page: Mapping[str, dict[str, Any]]
) -> PageFindings:
    """Judge a page of the scan of points (read with PLACE_FIELDS): the documents of ``source`` it holds a point of
    that is extra, because the document is gone or outside the sync's filter, or because the point is no chunk of
    the document as its chunk 0 records it (extra_chunks).

    A document's chunks are spread over many pages (their ids are hashes), so its points are grouped by document
    here: each document is judged once per page, with one read of the chunk 0s for the whole page.
    """
    by_document: dict[str, dict[str, dict[str, Any]]] = {}
    for pid, payload in page.items():
        if payload.get("source") == source and payload.get("mongo_id"):
            by_document.setdefault(payload["mongo_id"], {})[pid] = payload
    keys = [key for mongo_id in by_document for key in id_candidates(mongo_id)]
    existing = read_current(collection, keys, ID_ONLY, sync_filter=sync.filter)
    found = PageFindings()
    found.differences["extra"] = [mongo_id for mongo_id in by_document if mongo_id not in existing]
    # The documents of which the page holds a point besides chunk 0, and the chunk 0 each is judged by.
    ids = {mongo_id: point_id(source, mongo_id) for mongo_id in by_document if mongo_id in existing}
    ids = {mongo_id: pid for mongo_id, pid in ids.items() if set(by_document[mongo_id]) - {pid}}
    firsts = store.payloads(list(ids.values()), PLACE_FIELDS)
    for mongo_id, document_point_id in ids.items():
        reasons = extra_chunks(mongo_id, by_document[mongo_id], document_point_id, firsts.get(document_point_id))
        if reasons:
            found.differences["extra"].append(mongo_id)
            found.details.extend(reasons)
    return found


def payloads(store: Store, point_ids: list[str], fields: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The payloads of those of ``point_ids`` that exist, read in requests of at most POINTS_PER_READ ids."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(point_ids), POINTS_PER_READ):
        found.update(store.payloads(point_ids[start : start + POINTS_PER_READ], fields))
    return found
