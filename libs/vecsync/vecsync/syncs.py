"""The syncs a deployment runs: read from the definition file that VECSYNC_CONFIG names, or the environment's one.

Every service and the CLI call ``load_syncs`` at start. A definition file is checked whole before anything runs:
every problem is reported at once, each naming the file, the sync, the key and what is wrong, as one
ConfigurationError (exit 2). ``settings_for`` gives a stage the settings of one sync: its own settings with the
sync's fields in place, the sync itself found again by ``sync_of``.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from bson import json_util
from pydantic import BaseModel

from vecsync.constants import DEFAULT_MAX_DOCUMENT_CHARS, DEFAULT_OVERLAP_TOKENS, SPARSE_MODELS
from vecsync.errors import ConfigurationError
from vecsync.settings import CommonSettings
from vecsync.sync import DEFAULT_SYNC, INDEX_TYPES, OWN_PAYLOAD_KEYS, Sync, overlap_too_large

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A Qdrant collection is also a folder of the embedded store: no separators, no leading dot.
COLLECTION_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}$")

# The keys of a definition, and whether each must be given.
DEFINITION_KEYS = {
    "name": True,
    "mongo_database": False,
    "mongo_collection": True,
    "filter": False,
    "text_fields": True,
    "payload_fields": False,
    "payload_indexes": False,
    "qdrant_collection": False,
    "max_text_chars": False,
    "chunk_tokens": False,
    "chunk_overlap_tokens": False,
    "max_document_chars": False,
    "sparse_model": False,
    "embedding_model": False,
}

# The operators a query document may hold at its top, beside field names, and those a field's condition may hold.
QUERY_OPERATORS = {"$and", "$or", "$nor", "$expr", "$comment", "$jsonSchema", "$text", "$where"}
LIST_OPERATORS = {"$and", "$or", "$nor"}
FIELD_OPERATORS = {
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$type", "$regex", "$options", "$not",
    "$all", "$elemMatch", "$size", "$mod", "$bitsAllSet", "$bitsAllClear", "$bitsAnySet", "$bitsAnyClear",
}  # fmt: skip
ARRAY_ARGUMENT_OPERATORS = {"$in", "$nin", "$all"}

SettingsT = TypeVar("SettingsT", bound=BaseModel)


def load_syncs(settings: CommonSettings) -> list[Sync]:
    """The syncs to run: those of VECSYNC_CONFIG's file, or the environment's one sync (the seed's names)."""
    if settings.vecsync_config is None:
        return [default_sync(settings)]
    return read_definitions(settings.vecsync_config, settings)


def default_sync(settings: BaseModel) -> Sync:
    """The one sync that ``settings`` (built from the environment) describe, with the seed's streams and keys."""
    values = settings.model_dump()
    sync = Sync(
        name=DEFAULT_SYNC,
        mongo_database=values.get("mongo_database", "app"),
        mongo_collection=values.get("mongo_collection", "documents"),
        qdrant_collection=values.get("qdrant_collection", "documents"),
        text_fields=tuple(values.get("text_fields", ("subject", "content"))),
        payload_fields=tuple(values.get("payload_fields", ())),
        max_text_chars=values.get("max_text_chars", 8192),
        stage1_stream=values["stage1_stream"],
        stage2_stream=values["stage2_stream"],
        sparse_model=values.get("sparse_model"),
        embedding_model=values.get("embedding_model"),
        **_chunking(values),
    )
    problems = _Problems("the environment")
    for field in sync.text_fields:
        problems.check_path(field, "TEXT_FIELDS")
    for field in sync.payload_fields:
        problems.check_path(field, "PAYLOAD_FIELDS")
        problems.check_own_key(field, "PAYLOAD_FIELDS")
    problems.raise_any()
    return sync


def sync_of(settings: BaseModel) -> Sync:
    """The sync whose settings these are (see settings_for); the environment's one when they are not a sync's."""
    given = getattr(settings, "_sync", None)
    return given if isinstance(given, Sync) else default_sync(settings)


def settings_for(settings: SettingsT, sync: Sync) -> SettingsT:
    """``settings`` as the stages of ``sync`` see them: the sync's collection, fields, target and streams in place."""
    values: dict[str, Any] = {
        "mongo_database": sync.mongo_database,
        "mongo_collection": sync.mongo_collection,
        "qdrant_collection": sync.qdrant_collection,
        "text_fields": list(sync.text_fields),
        "payload_fields": list(sync.payload_fields),
        "max_text_chars": sync.max_text_chars,
        "chunk_tokens": sync.chunk_tokens,
        "chunk_overlap_tokens": sync.chunk_overlap_tokens,
        "max_document_chars": sync.max_document_chars,
        "sparse_model": sync.sparse_model,
        "embedding_model": sync.embedding_model,
        "stage1_stream": sync.stage1_stream,
        "stage2_stream": sync.stage2_stream,
    }
    fields = type(settings).model_fields
    copied = settings.model_copy(update={name: value for name, value in values.items() if name in fields})
    copied._sync = sync  # type: ignore[attr-defined]  # CommonSettings declares it, private to this module
    return copied


def read_definitions(path: Path, settings: CommonSettings) -> list[Sync]:
    """The syncs the file at ``path`` defines, or ConfigurationError listing every problem found in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"VECSYNC_CONFIG names {path}, which cannot be read: {exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"VECSYNC_CONFIG {path} is not valid YAML: {exc}") from None
    problems = _Problems(f"VECSYNC_CONFIG {path}")
    syncs = _parse_file(document, settings, problems)
    problems.raise_any()
    return syncs


def _parse_file(document: Any, settings: CommonSettings, problems: _Problems) -> list[Sync]:
    if not isinstance(document, dict) or not isinstance(document.get("syncs"), list) or not document["syncs"]:
        problems.add("the file must be a mapping whose key 'syncs' holds a list of one or more sync definitions")
        return []
    for key in document:
        if key != "syncs":
            problems.add(f"key {key!r} is not known at the top of the file{_suggestion(key, ['syncs'])}")
    syncs = []
    for index, definition in enumerate(document["syncs"]):
        sync = _parse_definition(definition, index, settings, problems)
        if sync is not None:
            syncs.append(sync)
    # Names are checked on every definition, valid or not, so that a duplicate shows beside its other problems.
    names = [definition.get("name") for definition in document["syncs"] if isinstance(definition, dict)]
    for name in sorted({name for name in names if isinstance(name, str) and names.count(name) > 1}):
        problems.add(f"sync {name!r}: the name is given to {names.count(name)} syncs; each needs its own")
    _check_together(syncs, problems)
    return syncs


def _parse_definition(definition: Any, index: int, settings: CommonSettings, problems: _Problems) -> Sync | None:
    given_name = definition.get("name") if isinstance(definition, dict) else None
    where = f"sync {given_name!r} (syncs[{index}])" if isinstance(given_name, str) else f"syncs[{index}]"
    if not isinstance(definition, dict):
        problems.add(f"{where}: must be a mapping of keys such as name, mongo_collection and text_fields")
        return None
    found = len(problems)
    for key in definition:
        if key not in DEFINITION_KEYS:
            problems.add(f"{where}: key {key!r} is not known{_suggestion(str(key), list(DEFINITION_KEYS))}")
    for key, required in DEFINITION_KEYS.items():
        if required and key not in definition:
            problems.add(f"{where}: key {key!r} is required")
    values = settings.model_dump()
    name = _string(definition, "name", where, problems, pattern=NAME_PATTERN, rule="letters, digits, - and _")
    database = _string(
        definition, "mongo_database", where, problems, default=values.get("mongo_database", "app"), forbidden="/. $"
    )
    collection = _string(definition, "mongo_collection", where, problems, forbidden="$")
    target = _string(
        definition,
        "qdrant_collection",
        where,
        problems,
        default=name,
        pattern=COLLECTION_PATTERN,
        rule="letters, digits, '.', - and _, not starting with '.'",
    )
    text_fields = _paths(definition, "text_fields", where, problems, required=True)
    payload_fields = _paths(definition, "payload_fields", where, problems, required=False)
    indexes = _indexes(definition, where, problems)
    payload_fields += [path for path in indexes if path not in payload_fields]
    for field in payload_fields:
        problems.check_own_key(field, f"{where}: payload field")
    max_chars = definition.get("max_text_chars", values.get("max_text_chars", 8192))
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        problems.add(f"{where}: key 'max_text_chars' must be a whole number, 1 or more (got {max_chars!r})")
    chunking = _definition_chunking(definition, values, where, problems)
    sparse_model = definition.get("sparse_model", values.get("sparse_model"))
    if sparse_model == "":
        sparse_model = None
    if sparse_model is not None and sparse_model not in SPARSE_MODELS:
        problems.add(
            f"{where}: key 'sparse_model' must be one of {', '.join(SPARSE_MODELS)}, or empty for dense vectors only "
            f"(got {sparse_model!r})"
        )
    embedding_model = definition.get("embedding_model", values.get("embedding_model")) or None
    if embedding_model is not None and not isinstance(embedding_model, str):
        problems.add(f"{where}: key 'embedding_model' must be a model's name, or empty for the embedding-api's default")
        embedding_model = None
    query = _filter(definition.get("filter"), where, problems)
    if len(problems) > found or name is None or collection is None:
        return None
    return Sync(
        name=name,
        mongo_database=database or "",
        mongo_collection=collection,
        qdrant_collection=target or name,
        text_fields=tuple(text_fields),
        payload_fields=tuple(payload_fields),
        max_text_chars=max_chars,
        # Its own stage streams, so that one sync's backlog or poison never stalls another's (design.md, "Syncs").
        stage1_stream=f"{settings.stage1_stream}.{name}",
        stage2_stream=f"{settings.stage2_stream}.{name}",
        filter=query,
        payload_indexes=indexes,
        structured=True,
        sparse_model=sparse_model,
        embedding_model=embedding_model,
        **chunking,
    )


def _chunking(values: Mapping[str, Any]) -> dict[str, Any]:
    """The chunking settings among ``values`` (the environment's), as Sync's fields."""
    return {
        "chunk_tokens": values.get("chunk_tokens"),
        "chunk_overlap_tokens": values.get("chunk_overlap_tokens", DEFAULT_OVERLAP_TOKENS),
        "max_document_chars": values.get("max_document_chars", DEFAULT_MAX_DOCUMENT_CHARS),
    }


def _definition_chunking(
    definition: dict[str, Any], values: Mapping[str, Any], where: str, problems: _Problems
) -> dict[str, Any]:
    """A definition's chunking keys, each defaulting to the environment's, checked as the settings check them."""
    chunking = _chunking(values) | {
        key: definition[key]
        for key in ("chunk_tokens", "chunk_overlap_tokens", "max_document_chars")
        if key in definition
    }
    lowest = {"chunk_tokens": 0, "chunk_overlap_tokens": 0, "max_document_chars": 1}
    for key, value in chunking.items():
        if key == "chunk_tokens" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest[key]:
            problems.add(f"{where}: key {key!r} must be a whole number, {lowest[key]} or more (got {value!r})")
            return {}
    tokens, overlap = chunking["chunk_tokens"], chunking["chunk_overlap_tokens"]
    if overlap_too_large(tokens, overlap):
        problems.add(
            f"{where}: key 'chunk_overlap_tokens' ({overlap}) must be below chunk_tokens ({tokens}): consecutive "
            "chunks share the overlap, so each must hold more than it"
        )
        return {}
    return chunking


def _check_together(syncs: list[Sync], problems: _Problems) -> None:
    """What no valid sync shows alone: two syncs writing one point, an index typed two ways, a collection with and
    without sparse vectors."""
    by_target: dict[tuple[str, str], Sync] = {}
    index_types: dict[tuple[str, str], tuple[str, Sync]] = {}
    by_collection: dict[str, Sync] = {}
    for sync in syncs:
        first = by_collection.setdefault(sync.qdrant_collection, sync)
        if first.sparse_model != sync.sparse_model:
            problems.add(
                f"syncs {first.name!r} and {sync.name!r} share Qdrant collection {sync.qdrant_collection!r} but give "
                f"it sparse_model {first.sparse_model or 'none'} and {sync.sparse_model or 'none'}; a collection's "
                "points all have the same vectors, so give both syncs the same sparse_model"
            )
        if first.embedding_model != sync.embedding_model:
            problems.add(
                f"syncs {first.name!r} and {sync.name!r} share Qdrant collection {sync.qdrant_collection!r} but give "
                f"it embedding_model {first.embedding_model or '(the default)'} and "
                f"{sync.embedding_model or '(the default)'}; a collection's points are all made by one model, so give "
                "both syncs the same embedding_model"
            )
        other = by_target.setdefault((sync.source, sync.qdrant_collection), sync)
        if other is not sync:
            problems.add(
                f"syncs {other.name!r} and {sync.name!r} both write {sync.source} into Qdrant collection "
                f"{sync.qdrant_collection!r}: their points would be the same points. Give one another "
                "qdrant_collection, or join their filters into one sync"
            )
        for path, kind in sync.indexed_payload().items():
            seen_kind, seen = index_types.setdefault((sync.qdrant_collection, path), (kind, sync))
            if seen_kind != kind:
                problems.add(
                    f"syncs {seen.name!r} and {sync.name!r} share Qdrant collection {sync.qdrant_collection!r} but "
                    f"index payload field {path!r} as {seen_kind} and as {kind}; one collection has one index per field"
                )


class _Problems:
    """The problems found so far, raised together as one ConfigurationError."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.found: list[str] = []

    def __len__(self) -> int:
        return len(self.found)

    def add(self, problem: str) -> None:
        self.found.append(problem)

    def check_path(self, path: str, where: str) -> None:
        if not path or any(not part for part in path.split(".")):
            self.add(f"{where}: the field path {path!r} has an empty part; write dotted paths such as meta.priority")
        elif path.startswith("$"):
            self.add(f"{where}: the field path {path!r} starts with $, which no MongoDB field name may")

    def check_own_key(self, path: str, where: str) -> None:
        top = path.split(".")[0]
        if top in OWN_PAYLOAD_KEYS:
            self.add(
                f"{where} {path!r} would overwrite vecsync's own payload key {top!r} ({OWN_PAYLOAD_KEYS[top]}), "
                "and be overwritten by it; leave it out of the payload fields"
            )

    def raise_any(self) -> None:
        if self.found:
            listed = "\n".join(f"  - {problem}" for problem in self.found)
            count = f"{len(self.found)} problem" + ("s" if len(self.found) > 1 else "")
            raise ConfigurationError(f"Invalid sync definitions in {self.origin} ({count}):\n{listed}")


def _suggestion(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; the keys are {', '.join(known)}"


def _string(
    definition: dict[str, Any],
    key: str,
    where: str,
    problems: _Problems,
    *,
    default: str | None = None,
    pattern: re.Pattern[str] | None = None,
    rule: str = "",
    forbidden: str = "",
) -> str | None:
    value = definition.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.add(f"{where}: key {key!r} must be a non-empty string (got {value!r})")
        return None
    if pattern is not None and not pattern.match(value):
        problems.add(f"{where}: key {key!r} must be {rule} (got {value!r})")
        return None
    bad = sorted({char for char in value if char in forbidden})
    if bad:
        problems.add(f"{where}: key {key!r} must not hold {' or '.join(repr(char) for char in bad)} (got {value!r})")
        return None
    return value


def _paths(definition: dict[str, Any], key: str, where: str, problems: _Problems, *, required: bool) -> list[str]:
    value = definition.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(path, str) for path in value):
        problems.add(f"{where}: key {key!r} must be a list of dotted field paths (got {value!r})")
        return []
    if required and not value and key in definition:
        problems.add(f"{where}: key {key!r} is empty; name at least one field to embed")
    for path in value:
        problems.check_path(path, f"{where}: key {key!r}")
    return list(dict.fromkeys(value))


def _indexes(definition: dict[str, Any], where: str, problems: _Problems) -> dict[str, str]:
    value = definition.get("payload_indexes", {})
    if not isinstance(value, dict):
        problems.add(f"{where}: key 'payload_indexes' must map field paths to index types (got {value!r})")
        return {}
    indexes = {}
    for path, kind in value.items():
        problems.check_path(str(path), f"{where}: key 'payload_indexes'")
        if kind not in INDEX_TYPES:
            problems.add(
                f"{where}: key 'payload_indexes': {path!r} has index type {kind!r}; "
                f"the types are {', '.join(INDEX_TYPES)}"
            )
        else:
            indexes[str(path)] = kind
    return indexes


def _filter(value: Any, where: str, problems: _Problems) -> dict[str, Any] | None:
    """The filter as the query document to send (Extended JSON such as {$oid: ...} read as BSON), or None."""
    if value is None:
        return None
    where = f"{where}: key 'filter'"
    if not isinstance(value, dict):
        problems.add(f"{where} must be a MongoDB query document, a mapping such as {{status: {{$ne: spam}}}}")
        return None
    found = len(problems)
    _check_query(value, where, problems)
    if len(problems) > found:
        return None
    try:
        converted: dict[str, Any] = json_util.loads(json.dumps(value, default=_yaml_scalar))
    except (TypeError, ValueError) as exc:
        problems.add(f"{where} holds a value that is not valid Extended JSON: {exc}")
        return None
    return converted


def _yaml_scalar(value: Any) -> Any:
    """A YAML timestamp as Extended JSON, so that it compares with MongoDB dates."""
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return {"$date": moment.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": f"{value.isoformat()}T00:00:00Z"}
    raise TypeError(f"{value!r} is not a value a query can hold")


def _check_query(query: Mapping[str, Any], where: str, problems: _Problems) -> None:
    for key, condition in query.items():
        key = str(key)
        if key.startswith("$"):
            if key not in QUERY_OPERATORS:
                problems.add(
                    f"{where}: {key!r} is not a query operator that may stand beside field names "
                    f"({', '.join(sorted(QUERY_OPERATORS))}); a field's condition goes under the field, "
                    f"as {{field: {{{key}: ...}}}}"
                )
            elif key in LIST_OPERATORS:
                if not isinstance(condition, list) or not condition or not all(isinstance(q, dict) for q in condition):
                    problems.add(f"{where}: {key!r} takes a non-empty list of query documents (got {condition!r})")
                else:
                    for part in condition:
                        _check_query(part, where, problems)
            continue
        problems.check_path(key, where)
        if isinstance(condition, dict) and any(str(name).startswith("$") for name in condition):
            _check_condition(key, condition, where, problems)


def _check_condition(field: str, condition: Mapping[str, Any], where: str, problems: _Problems) -> None:
    if set(condition) <= {"$oid", "$date", "$numberLong", "$numberDecimal", "$numberInt", "$numberDouble", "$uuid"}:
        return  # an Extended JSON value, compared for equality
    for operator, argument in condition.items():
        if operator not in FIELD_OPERATORS:
            close = difflib.get_close_matches(str(operator), sorted(FIELD_OPERATORS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add(f"{where}: {field!r} has {operator!r}, which is not a query operator{hint}")
        elif operator in ARRAY_ARGUMENT_OPERATORS and not isinstance(argument, list):
            problems.add(f"{where}: {field!r} has {operator!r}, which takes a list (got {argument!r})")
