"""`vecsync search`: semantic, keyword or hybrid search over one sync's Qdrant collection, with --filter conditions
on its payload.

It finds documents, each shown by its nearest chunk (VectorStore.search_documents); --chunks finds the nearest
chunks themselves, several of one document among them. --json prints either as a list of {id, score, payload}.
--mode picks what is compared: dense (the query's embedding), sparse (its BM25 terms) or hybrid (both fused), the
default where the collection has sparse vectors (SPARSE_MODEL); a collection without them is searched dense, with
a one-line note on stderr where they were asked for or are configured.

A --filter is ``FIELD=VALUE`` (the payload field equals the value) or ``FIELD>=VALUE``, ``FIELD>VALUE``,
``FIELD<=VALUE``, ``FIELD<VALUE`` (a range, on a field with an integer, float or datetime payload index), or
``FIELD~WORDS`` (the field's text holds every one of those words: ``text~refund`` keeps the chunks whose text says
"refund"). Values are read by the field's index type: numbers for integer and float, ISO 8601 dates for datetime (a
date without a zone is UTC), true or false for bool, text otherwise. Several filters must all hold; those on one
field join into one range, or into one text match of all their words. They travel to the store as ``match``: a
field's value, a mapping of range bounds (gt, gte, lt, lte), or a mapping ``{"words": WORDS}``, which the store
turns into Qdrant's MatchValue, Range, DatetimeRange or MatchText conditions.

A text match is a keyword filter, not a ranking: it keeps or drops each point, whatever the search mode, and the
mode ranks what it keeps. Qdrant splits both texts into words at every character that is no letter or digit and
compares them without case, so ``text~ORD-48213-KX`` holds for "order ord-48213-kx" as for "ORD 48213 KX"; a word
matches a whole word only, never a part of one ("refund" does not match "refunds" or "nonrefundable"). The field is
``text`` (the chunk's text) or any payload field holding text (each string of a list on its own). Each chunk is
matched on its own: a long document is found through a chunk that holds all the words, not through words spread
over several of its chunks. A collection made with SPARSE_MODEL has a full-text index on `text` that makes
``text~WORDS`` fast; in one without, the engine reads the text of every point the other filters leave (about half a
second for 20,000 points of 1 KB on the embedded store; see vecsync.vectorstore.with_text_index), with the same
result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from typing import Any

from vecsync.cli.context import EXIT_OK, Context
from vecsync.cli.store import CollectionSwitched, embed_query, served, store_of_physical
from vecsync.errors import ConfigurationError
from vecsync.search_modes import SearchMode, choose_search_mode
from vecsync.sync import Sync
from vecsync.vectorstore import TEXT_WORDS, Hit, has_words

# Where a chunk lies in its document, in every chunk's payload (see docs/design.md, "Long documents").
CHUNK_PAYLOAD = ("chunk_index", "chunk_count", "chunk_span", "truncated")

# What the plain output leaves out of a hit's fields line: shown elsewhere (mongo_id, subject, text, the chunk's
# place), or of no use to a reader.
HIDDEN_PAYLOAD = {"mongo_id", "subject", "text", "text_sha256", "source", "version"} | {*CHUNK_PAYLOAD}
# What every point's payload holds besides PAYLOAD_FIELDS (see vecsync.documents.build_payload); points written
# before chunking lack the chunk fields.
IDENTITY_PAYLOAD = ["mongo_id", "source", "text", "text_sha256", "version", "model", *CHUNK_PAYLOAD]
# How a --filter reads a value of those identity fields that are no text (a payload field's index type says it for
# the payload fields).
IDENTITY_KINDS = {"chunk_index": "integer", "chunk_count": "integer", "truncated": "bool"}

FILTER_HELP = (
    "a condition on the payload, repeatable (all must hold): FIELD=VALUE, or a range FIELD>=VALUE, FIELD>VALUE, "
    "FIELD<=VALUE, FIELD<VALUE on a field with an integer, float or datetime payload index; e.g. "
    "--filter product=Ledger --filter meta.priority>=2 --filter meta.priority<5 --filter date>=2024-01-01. "
    "Numbers for integer and float indexes, ISO 8601 dates for datetime ones (UTC unless a zone is given). "
    "FIELD~WORDS keeps the points whose FIELD holds every one of the words, whole words without case, e.g. "
    "--filter text~refund (the chunk's text) or --filter 'text~late refund': a keyword filter, whatever the --mode"
)

# The field, the operator and the value; a field name holds none of <, >, = and ~, so the first of them starts the
# operator, and the value may hold any character.
CONDITION = re.compile(r"^(?P<field>[^<>=~]+)(?P<operator>>=|<=|>|<|=|~)(?P<value>.*)$", re.DOTALL)
RANGE_BOUNDS = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}
RANGE_INDEXES = ("integer", "float", "datetime")
# The index types of the fields whose values a text match (FIELD~WORDS) can hold words of: strings.
TEXT_INDEXES = ("keyword", "text")
# The plain output's snippet of a hit's text, in characters.
SNIPPET_CHARS = 160


def search_command(ctx: Context, args: argparse.Namespace) -> int:
    sync = searched_sync(ctx, args.sync)
    one = ctx.for_sync(sync)
    match = parse_filters(args.filter, sync)
    if args.limit < 1:
        raise ConfigurationError(f"--limit must be at least 1, got {args.limit}")
    try:
        return _search(one, sync, args, match)
    except CollectionSwitched:  # the collection the query was embedded for went meanwhile: embed it for the new one
        return _search(one, sync, args, match)


def _search(one: Context, sync: Sync, args: argparse.Namespace, match: dict[str, Any]) -> int:
    # The query is embedded with the model of the collection the name serves now, and searched in that collection,
    # which stays readable for the search even if the name switches to another one meanwhile (vecsync.reindex).
    serving = served(one.redis, one.settings)
    model = serving.model if serving else None
    # Every mode but sparse needs the query's embedding: asked for first, as the embedding-api is what a search
    # most often cannot reach.
    vector = embed_query(one.settings, args.text, model) if args.mode != SearchMode.SPARSE else None
    store = store_of_physical(one.store, one.settings, serving.collection) if serving else one.store
    sparse = store.sparse_vector()
    mode, note = choose_search_mode(args.mode, vector=True, text=True, sparse=sparse is not None)
    if note is None and sparse is None and sync.sparse_model:
        note = f"SPARSE_MODEL is {sync.sparse_model}, but the collection has no sparse vectors: search is dense only"
    if note is not None:
        print(
            f"note: Qdrant collection {one.store.collection!r}: {note}; `vecsync rebuild` makes it again with them "
            '(docs/operations.md, "Hybrid search").',
            file=sys.stderr,
        )
    if mode is not SearchMode.SPARSE and vector is None:  # sparse was asked for, of a collection without
        vector = embed_query(one.settings, args.text, model)
    find = store.search if args.chunks else store.search_documents
    hits = find(
        vector if mode is not SearchMode.SPARSE else None,
        limit=args.limit,
        match=match or None,
        text=args.text if mode is not SearchMode.DENSE else None,
    )
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not hits:
        print("No hits.")
    for hit in hits:
        print_hit(hit)
    return EXIT_OK


def print_hit(hit: Hit) -> None:
    """A hit in three lines: score, document and where its chunk lies; the payload fields; the chunk's text."""
    payload = hit.payload
    print(f"{hit.score:.3f}  {payload.get('mongo_id')}  {payload.get('subject', '')}{chunk_note(payload)}")
    fields = {key: value for key, value in payload.items() if key not in HIDDEN_PAYLOAD}
    if fields:
        print("       " + ", ".join(f"{key}={value}" for key, value in fields.items()))
    snippet = " ".join(str(payload.get("text", "")).split())
    print(f"       {snippet[:SNIPPET_CHARS]}{'...' if len(snippet) > SNIPPET_CHARS else ''}")


def chunk_note(payload: dict[str, Any]) -> str:
    """ "  (chunk 3/12)" for the third of a document's twelve chunks, with a word where the document's text was cut
    at its bound; nothing for a document of one chunk (as every point written before chunking reads)."""
    notes = []
    index, count = payload.get("chunk_index"), payload.get("chunk_count")
    if isinstance(index, int) and isinstance(count, int) and count > 1:
        notes.append(f"chunk {index + 1}/{count}")
    if payload.get("truncated") is True:
        notes.append("the document's text was cut at its bound")
    return f"  ({', '.join(notes)})" if notes else ""


def searched_sync(ctx: Context, name: str | None) -> Sync:
    """The sync --sync names; the only one when there is one. Each sync is its own collection and mapping, so a
    search over several would mix scores of different collections."""
    if name is not None:
        return ctx.sync_named(name)
    if len(ctx.syncs) > 1:
        names = ", ".join(sync.name for sync in ctx.syncs)
        raise ConfigurationError(
            f"There are {len(ctx.syncs)} syncs ({names}): name the one to search with --sync NAME."
        )
    return ctx.syncs[0]


def parse_filters(filters: list[str], sync: Sync) -> dict[str, Any]:
    """The --filter conditions as the store's ``match``: ConfigurationError (exit 2) for one that cannot hold."""
    indexes = sync.indexed_payload()
    known = [*sync.payload_fields, *IDENTITY_PAYLOAD, *(["sync"] if sync.structured else [])]
    match: dict[str, Any] = {}
    for item in filters:
        found = CONDITION.match(item)
        if found is None or not found["field"].strip():
            raise ConfigurationError(
                f"--filter takes FIELD=VALUE or a range such as FIELD>=VALUE, or FIELD~WORDS (a text match), got "
                f"{item!r} (see `vecsync search --help`)."
            )
        field, operator, text = found["field"].strip(), found["operator"], found["value"]
        kind = indexes.get(field, IDENTITY_KINDS.get(field, "keyword"))
        if operator == "~":
            _warn_of_unknown(field, known, sync)
            words = _text_words(item, field, kind, text)
            earlier = _condition_of(match, field, "words")
            match[field] = {TEXT_WORDS: f"{earlier[TEXT_WORDS]} {words}" if earlier else words}
            continue
        if operator != "=":
            bounds = _condition_of(match, field, "a range")
            bounds[RANGE_BOUNDS[operator]] = _range_value(item, field, kind, text, sync)
            match[field] = bounds
            continue
        _warn_of_unknown(field, known, sync)
        if isinstance(match.get(field), dict):
            raise ConfigurationError(
                f"--filter gives {field!r} both a value and {_what(match[field])}; give one or the other."
            )
        match[field] = _equal_value(item, field, kind, text)
    return match


def _condition_of(match: dict[str, Any], field: str, wanted: str) -> dict[str, Any]:
    """The conditions given so far on ``field`` of the kind ``wanted`` ("a range" or "words"), to join the next one
    to; ConfigurationError where the field already has a condition of another kind."""
    earlier = match.get(field)
    if earlier is None:
        return {}
    if isinstance(earlier, dict) and (TEXT_WORDS in earlier) == (wanted == "words"):
        return earlier
    raise ConfigurationError(f"--filter gives {field!r} both {_what(earlier)} and {wanted}; give one or the other.")


def _what(condition: Any) -> str:
    """What a condition of ``match`` is, in words: a value, a range or words."""
    if not isinstance(condition, dict):
        return "a value"
    return "words" if TEXT_WORDS in condition else "a range"


def _warn_of_unknown(field: str, known: list[str], sync: Sync) -> None:
    if field not in known:
        print(
            f"warning: {field!r} is not a payload field, so no point is likely to match it. The payload holds "
            f"the payload fields ({', '.join(sync.payload_fields)}) and {', '.join(IDENTITY_PAYLOAD)}.",
            file=sys.stderr,
        )


def _text_words(item: str, field: str, kind: str, text: str) -> str:
    """The words of ``FIELD~WORDS``: ConfigurationError where there are none, or the field holds no text."""
    words = " ".join(text.split())
    if not has_words(words):
        raise ConfigurationError(
            f"--filter {item!r}: FIELD~WORDS needs one or more words (letters or digits) after the ~ that {field!r} "
            f"must hold, such as {field}~refund; got {text!r}."
        )
    if kind not in TEXT_INDEXES:
        raise ConfigurationError(
            f"--filter {item!r}: {field!r} has {_indexed(kind)} index, so it holds no text whose words ~ could "
            f"match. Filter it with {field}=VALUE{' or a range' if kind in RANGE_INDEXES else ''} instead."
        )
    return words


def _range_value(item: str, field: str, kind: str, text: str, sync: Sync) -> Any:
    if field not in sync.payload_fields:
        raise ConfigurationError(
            f"--filter {item!r}: {field!r} is not a payload field of sync {sync.name!r}, so no range can apply to it. "
            f"Its payload fields are: {', '.join(sync.payload_fields) or 'none'}."
        )
    if kind not in RANGE_INDEXES:
        raise ConfigurationError(
            f"--filter {item!r}: payload field {field!r} of sync {sync.name!r} has {_indexed(kind)} index, on "
            "which a range cannot be compared. Give it an integer, float or datetime index in the sync's "
            f"payload_indexes, or filter with {field}=VALUE."
        )
    if kind == "datetime":
        return _moment(item, field, text)
    return _number(item, field, kind, text)


def _equal_value(item: str, field: str, kind: str, text: str) -> Any:
    if kind == "integer":
        number = _number(item, field, kind, text)
        if not float(number).is_integer():
            raise ConfigurationError(f"--filter {item!r}: {field!r} has an integer index; give a whole number.")
        return int(number)
    if kind == "float":
        number = _number(item, field, kind, text)
        return {"gte": number, "lte": number}  # Qdrant matches no float for equality: the range of one value
    if kind == "datetime":
        moment = _moment(item, field, text)
        return {"gte": moment, "lte": moment}
    if kind == "bool":
        if text.strip().lower() not in ("true", "false"):
            raise ConfigurationError(f"--filter {item!r}: {field!r} has a bool index; give true or false.")
        return text.strip().lower() == "true"
    return text


def _number(item: str, field: str, kind: str, text: str) -> int | float:
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):  # not a number, or no finite one
        raise ConfigurationError(
            f"--filter {item!r}: {field!r} has {_indexed(kind)} index, so the value must be a number (got {text!r})."
        )
    return int(number) if number.is_integer() and kind == "integer" else number


def _moment(item: str, field: str, text: str) -> str:
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"--filter {item!r}: {field!r} has a datetime index, so the value must be an ISO 8601 date such as "
            f"2024-05-01 or 2024-05-01T12:00:00Z (got {text!r})."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.isoformat()


def _indexed(kind: str) -> str:
    """ "an integer", "a datetime": the index type with its article."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
