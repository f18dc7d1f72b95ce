"""`vecsync resync`, `verify` and `trim`: the recoveries that used to be done by hand (`rebuild`: vecsync.cli.rebuild).

Each of resync, verify and rebuild works on one sync (--sync NAME) or on every sync, one after the other, each
through the context of its sync (Context.for_sync): its MongoDB collection and filter, its mapping, its Qdrant
collection and streams, and progress keys named after its state name, so that the environment's sync keeps the
seed's keys. Resync and verify share the scans, the projection and the per-sync loop, hence the length.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import redis
from bson import json_util

from vecsync.bson_codec import ejson_id, id_candidates, mongo_id_of
from vecsync.cli.chunk_check import ID_ONLY, PLACE_FIELDS, check_documents, check_points
from vecsync.cli.context import EXIT_DRIFT, EXIT_OK, Context, count, progress
from vecsync.cli.store import served_model, wait_for_model
from vecsync.constants import (
    RESYNC_PROGRESS_PREFIX,
    VERIFY_PROGRESS_PREFIX,
)
from vecsync.documents import source_projection
from vecsync.errors import ConfigurationError
from vecsync.flow import FlowControl
from vecsync.mongo_reads import chunks_after, read_current
from vecsync.retention import trim_bound, trim_to
from vecsync.stage1 import publish_current_states
from vecsync.stream_stats import stream_stats

# Verify reports this many example ids per kind of difference, and this many lines of what differs in them.
EXAMPLES = 20


def _projection(ctx: Context) -> dict[str, int]:
    return source_projection(ctx.settings.text_fields, ctx.settings.payload_fields)


# Resync ---------------------------------------------------------------------


def parse_filter(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        query = json_util.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"--filter must be a MongoDB query in (Extended) JSON: {exc}") from None
    if not isinstance(query, dict):
        raise ConfigurationError('--filter must be a JSON object, e.g. \'{"owner": "Ann"}\'.')
    return query


def each_sync(ctx: Context, sync_name: str | None, command: Callable[[Context], int]) -> int:
    """Run ``command`` in the context of the sync --sync names, or of every sync one after the other; the exit
    status of the first that does not succeed, else success."""
    statuses = []
    for sync in ctx.chosen_syncs(sync_name):
        if len(ctx.syncs) > 1:
            print(f"Sync {sync.name}:")
        one = ctx.for_sync(sync)
        try:
            statuses.append(command(one))
        finally:
            one.release_store()  # one store open at a time: the embedded store's folder is locked per process
    return next((status for status in statuses if status != EXIT_OK), EXIT_OK)


def resync_command(
    ctx: Context, filter_text: str | None, restart: bool, batch_size: int, *, sync_name: str | None = None
) -> int:
    parse_filter(filter_text)  # checked once, before any sync is touched
    return each_sync(ctx, sync_name, lambda one: resync_one(one, filter_text, restart, batch_size))


def resync_one(
    ctx: Context, filter_text: str | None, restart: bool, batch_size: int, *, outside_filter: bool = True
) -> int:
    """Publish the current state of the sync's documents (of those matching ``filter_text``), then, with
    ``outside_filter`` and a sync with a filter, the deletes of its points whose documents are outside it."""
    sync = ctx.sync
    source, stream = ctx.settings.source, ctx.settings.stage1_stream
    key = RESYNC_PROGRESS_PREFIX + sync.state_name
    query = sync.query(parse_filter(filter_text))
    if restart:
        ctx.redis.delete(key)
    state = ctx.redis.hgetall(key)
    if state and state.get("filter", "") != (filter_text or ""):
        raise ConfigurationError(
            f"An interrupted resync with --filter {state.get('filter') or '(none)'} is pending. "
            "Rerun it with the same filter to finish it, or pass --restart to start this one instead."
        )
    last_id = state.get("last_id") or None
    published = int(state.get("published", 0))
    total = ctx.collection.count_documents(query)
    where = f" matching {filter_text}" if filter_text else ""
    resumed = f", resuming after _id {last_id} ({published} already published)" if last_id else ""
    ctx.confirm(
        f"Publish the current state of {count(total, 'document')} of {source}{where} to {stream}, in _id order"
        f"{resumed}. "
        "The pipeline may keep running: a change made meanwhile is never overwritten by an older state."
    )
    with progress(total, "docs", "resync") as bar:
        bar.update(min(published, total))

        def waiting(backlog: int) -> None:
            bar.note(
                f"The pipeline holds {backlog} unprocessed entries (PRODUCER_MAX_BACKLOG="
                f"{ctx.settings.producer_max_backlog}): waiting for the stages to work them off."
            )

        # Like the producer's snapshot, a resync of a big collection must not publish faster than the stages work.
        flow = FlowControl(ctx.redis, ctx.settings, ctx.settings, threading.Event(), on_wait=waiting)
        # The scan names the documents; _publish_chunk reads each one's state (see there), so it reads only _ids.
        chunks = chunks_after(ctx.collection, last_id, size=batch_size, projection=ID_ONLY, query=query)
        try:
            while True:
                flow.wait_for_room()
                chunk = next(chunks, None)
                if chunk is None:
                    break
                _publish_chunk(ctx, key, filter_text, chunk, published)
                published += len(chunk)
                bar.update(len(chunk))
        finally:
            chunks.close()
    outside = _publish_points_outside_filter(ctx, batch_size) if outside_filter and sync.filter is not None else 0
    ctx.redis.delete(key)
    deleted = f", and the deletes of {count(outside, 'point')} outside the sync's filter" if outside else ""
    print(f"Resync published {count(published, 'document')} of {source} to {stream}{deleted}.")
    return EXIT_OK


def _publish_points_outside_filter(ctx: Context, batch_size: int) -> int:
    """Publish the current state of every document whose point is in Qdrant but which is outside the sync's filter
    (or gone): each reads as gone, so its point is deleted. The scan of documents reads only those inside."""
    sync, offset, published = ctx.sync, None, 0
    with progress(ctx.store.count(), "points", "resync points outside the filter") as bar:
        while True:
            page, offset = ctx.store.scroll(limit=batch_size, offset=offset, fields=["mongo_id", "source"])
            mongo_ids = [p["mongo_id"] for p in page.values() if p.get("source") == sync.source and p.get("mongo_id")]
            inside = read_current(ctx.collection, _keys(mongo_ids), ID_ONLY, sync_filter=sync.filter)
            outside = [mongo_id for mongo_id in mongo_ids if mongo_id not in inside]
            if outside:
                publish_current_states(
                    ctx.redis, ctx.settings, ctx.collection, sync.source, outside, projection=_projection(ctx)
                )
                published += len(outside)
            bar.update(len(page))
            if offset is None:
                return published


def _publish_chunk(
    ctx: Context, key: str, filter_text: str | None, chunk: list[dict[str, Any]], published: int
) -> None:
    """Publish the current state of a chunk of the scan and save the resync's position in the same transaction.

    The scan only names the documents: each is read again inside publish_current_states, after the producer's
    position is read. What the cursor fetched before that may be older than a state the producer published in
    between; published after that state, it would stay in Qdrant until the document changed again.
    """
    source = ctx.settings.source
    mongo_ids = [mongo_id_of(document["_id"]) for document in chunk]

    def save_progress(pipe: redis.client.Pipeline) -> None:
        mark = {"last_id": ejson_id(chunk[-1]["_id"]), "filter": filter_text or "", "published": published + len(chunk)}
        pipe.hset(key, mapping=mark)

    publish_current_states(
        ctx.redis, ctx.settings, ctx.collection, source, mongo_ids, projection=_projection(ctx), also=save_progress
    )


# Verify ---------------------------------------------------------------------


@dataclass
class VerifyState:
    """Progress and findings of a verify run, saved after every batch so an interrupted run resumes."""

    repair: bool
    phase: str = "documents"  # then "points"
    last_id: str | None = None
    offset: str | None = None
    checked_documents: int = 0
    checked_points: int = 0
    found: dict[str, int] = field(default_factory=lambda: {"missing": 0, "stale": 0, "extra": 0})
    examples: dict[str, list[str]] = field(default_factory=lambda: {"missing": [], "stale": [], "extra": []})
    repaired: int = 0
    # What was found wrong with the chunks of the first documents that differ, one line each.
    details: list[str] = field(default_factory=list)
    # The model the embedding-api runs now (None when it could not be asked), and the other models found in points.
    model: str | None = None
    other_models: list[str] = field(default_factory=list)

    def record(self, kind: str, mongo_ids: list[str]) -> None:
        self.found[kind] = self.found.get(kind, 0) + len(mongo_ids)
        examples = self.examples.setdefault(kind, [])
        examples.extend(mongo_ids[: max(EXAMPLES - len(examples), 0)])

    def note(self, details: list[str]) -> None:
        self.details.extend(details[: max(EXAMPLES - len(self.details), 0)])

    @property
    def differences(self) -> int:
        return self.found["missing"] + self.found["stale"] + self.found["extra"]


def verify_command(
    ctx: Context,
    repair: bool,
    restart: bool,
    batch_size: int,
    *,
    ready_timeout_s: float = 120.0,
    skip_model_check: bool = False,
    sync_name: str | None = None,
) -> int:
    """Compare MongoDB with Qdrant, and with ``repair`` re-enqueue what differs, for one sync or each in turn.

    Each point's model is checked against the one the embedding-api runs, which is waited for up to
    ``ready_timeout_s`` (it may still be loading); a verify that cannot learn it fails (CheckNotRun) instead of
    reporting no difference, unless ``skip_model_check``.
    """

    def verify(one: Context) -> int:
        return _verify(
            one, repair, restart, batch_size, ready_timeout_s=ready_timeout_s, skip_model_check=skip_model_check
        )

    return each_sync(ctx, sync_name, verify)


def _verify(
    ctx: Context, repair: bool, restart: bool, batch_size: int, *, ready_timeout_s: float, skip_model_check: bool
) -> int:
    source = ctx.settings.source
    key = VERIFY_PROGRESS_PREFIX + ctx.sync.state_name
    if restart:
        ctx.redis.delete(*_run_keys(key))
    saved = ctx.redis.get(key)
    state = VerifyState(**json.loads(saved)) if saved else VerifyState(repair=repair)
    if saved and state.repair != repair:
        raise ConfigurationError(
            f"An interrupted verify {'with' if state.repair else 'without'} --repair is pending. Rerun it the same "
            "way to finish it, or pass --restart."
        )
    if not saved:
        ctx.redis.delete(*_run_keys(key)[1:])  # left by a run that stopped before it saved its progress
        if skip_model_check:
            print("--skip-model-check: points are not checked for vectors of another model.")
        elif (built_with := served_model(ctx)) is not None:
            # The collection the name serves records the model it is built with (vecsync.reindex): its points
            # must all be of that one, whichever model the embedding-api serves by default.
            state.model = built_with
        else:
            # Before anything is saved: a verify that cannot learn the model fails and leaves nothing to resume.
            state.model = wait_for_model(ctx.settings, ready_timeout_s, on_wait=_note)
    in_flight = _in_flight(ctx)
    action = "re-enqueue every document that differs" if repair else "report the differences"
    resumed = f" Resuming the {state.phase} phase of an interrupted run." if saved else ""
    plan = f"Compare {source} with Qdrant collection {ctx.store.collection!r} and {action}.{resumed}"
    if in_flight:
        plan += (
            f"\nNote: {count(in_flight, 'change')} {'is' if in_flight == 1 else 'are'} still in flight in the "
            "streams; they may show up as differences."
        )
    if repair:
        ctx.confirm(plan)
    else:
        print(plan)
    if state.phase == "documents":
        _verify_documents(ctx, state, key, batch_size)
        state.phase = "points"
        ctx.redis.set(key, json.dumps(state.__dict__))
    _verify_points(ctx, state, key, batch_size)
    ctx.redis.delete(*_run_keys(key))
    _report(state)
    if state.differences and not repair:
        return EXIT_DRIFT
    return EXIT_OK


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _in_flight(ctx: Context) -> int:
    total = 0
    for stream, group in ctx.settings.stage1_groups() + ctx.settings.stage2_groups():
        stats = stream_stats(ctx.redis, stream, group)
        total += (stats.lag or 0) + stats.pending
    return total


def _verify_documents(ctx: Context, state: VerifyState, key: str, batch_size: int) -> None:
    """Every document with text must have its chunk points, holding its current text and payload fields (see
    vecsync.cli.chunk_check); one without text, no point. Each document is counted once per kind it differs in."""
    query = ctx.sync.query()
    chunks = chunks_after(ctx.collection, state.last_id, size=batch_size, projection=_projection(ctx), query=query)
    with progress(ctx.collection.estimated_document_count(), "docs", "verify documents") as bar, closing(chunks):
        bar.update(state.checked_documents)
        while True:
            documents = next(chunks, None)
            if documents is None:
                return
            found = check_documents(ctx.store, ctx.sync, ctx.settings.source, documents, state.model)
            state.other_models.extend(sorted(found.other_models - set(state.other_models)))
            state.note(found.details)
            repaired = _repair_and_record(ctx, state, key, found.differences)
            state.last_id = ejson_id(documents[-1]["_id"])
            state.checked_documents += len(documents)
            _save(ctx, key, state, repaired=repaired)
            bar.update(len(documents))


def _verify_points(ctx: Context, state: VerifyState, key: str, batch_size: int) -> None:
    """Every point of this source must be a chunk of its document as its chunk 0 records it, of a document that
    still exists and is inside the sync's filter (chunk_check.check_points).

    A document's chunks are spread over many pages; one found extra is remembered in a Redis set beside the
    progress (_run_set: the collection may be larger than memory), so it is counted and re-enqueued once in a run
    however many pages hold its points.
    """
    with progress(ctx.store.count(), "points", "verify points") as bar:
        bar.update(state.checked_points)
        while True:
            page, next_offset = ctx.store.scroll(limit=batch_size, offset=state.offset, fields=PLACE_FIELDS)
            found = check_points(ctx.store, ctx.collection, ctx.sync, ctx.settings.source, page)
            extra = _not_yet_in(ctx, _run_set(key, "extra"), found.differences["extra"])
            state.note(found.details)
            repaired = _repair_and_record(ctx, state, key, {"extra": extra})
            state.offset = next_offset
            state.checked_points += len(page)
            _save(ctx, key, state, extra=extra, repaired=repaired)
            bar.update(len(page))
            if next_offset is None:
                return


def _run_set(key: str, name: str) -> str:
    """A Redis set of this run's documents beside its progress key ``key``: ``extra``, those the scan of points
    counted extra; ``repaired``, those re-enqueued. Each is added with the progress of its page (_save)."""
    return f"{key}:{name}"


def _run_keys(key: str) -> list[str]:
    return [key, _run_set(key, "extra"), _run_set(key, "repaired")]


def _not_yet_in(ctx: Context, set_key: str, mongo_ids: list[str]) -> list[str]:
    """Those of ``mongo_ids`` that the run's set ``set_key`` does not hold yet."""
    if not mongo_ids:
        return []
    held = ctx.redis.smismember(set_key, mongo_ids)
    return [mongo_id for mongo_id, seen in zip(mongo_ids, held, strict=True) if not seen]


def _save(ctx: Context, key: str, state: VerifyState, **new_members: list[str]) -> None:
    """Save the run's progress and add a page's documents to its sets (_run_set), in one transaction: a run
    interrupted before counts the page again when resumed, and one after does not."""
    with ctx.redis.pipeline(transaction=True) as pipe:
        for name, mongo_ids in new_members.items():
            if mongo_ids:
                pipe.sadd(_run_set(key, name), *mongo_ids)
        pipe.set(key, json.dumps(state.__dict__))
        pipe.execute()


def _keys(mongo_ids: list[str]) -> list[Any]:
    return [key for mongo_id in mongo_ids for key in id_candidates(mongo_id)]


def _repair_and_record(ctx: Context, state: VerifyState, key: str, differences: dict[str, list[str]]) -> list[str]:
    """Count the differences; with --repair, re-enqueue the documents that differ and that this run has not
    re-enqueued yet (the scan of points finds again a document the scan of documents found): those it did."""
    for kind, mongo_ids in differences.items():
        state.record(kind, mongo_ids)
    if not state.repair:
        return []
    differing = sorted({mongo_id for mongo_ids in differences.values() for mongo_id in mongo_ids})
    to_repair = _not_yet_in(ctx, _run_set(key, "repaired"), differing)
    if to_repair:
        # Embedded again even where the text looks unchanged: the point's vector is not to be trusted either.
        publish_current_states(
            ctx.redis,
            ctx.settings,
            ctx.collection,
            ctx.settings.source,
            to_repair,
            projection=_projection(ctx),
            force_embed=True,
        )
        state.repaired += len(to_repair)
    return to_repair


def _report(state: VerifyState) -> None:
    print(
        f"Checked {count(state.checked_documents, 'document')} and {count(state.checked_points, 'point')}: "
        f"{state.found['missing']} missing, {state.found['extra']} extra, {state.found['stale']} stale "
        "(documents: one counts once per kind, whichever of its chunks differ)."
    )
    for kind, examples in state.examples.items():
        if examples:
            more = state.found[kind] - len(examples)
            label = kind
            if kind == "other_model":
                label = f"made by another model than {state.model} ({', '.join(sorted(state.other_models))})"
            print(f"  {label}: {', '.join(examples)}{f' and {more} more' if more > 0 else ''}")
    if state.details:
        print("  in detail:\n" + "\n".join(f"    {line}" for line in state.details))
    if state.repair:
        they = "it reaches" if state.repaired == 1 else "they reach"
        print(f"Re-enqueued {count(state.repaired, 'document')}; {they} Qdrant as the pipeline drains.")


# Trim -----------------------------------------------------------------------


def trim_command(ctx: Context) -> int:
    settings = ctx.settings
    plans = {}
    each = [ctx.for_sync(sync).settings for sync in ctx.syncs]
    for stream, _group in [group for one in each for group in one.stage1_groups() + one.stage2_groups()]:
        keep_count = settings.retention_count(stream)
        bound = trim_bound(ctx.redis, stream, keep_count=keep_count, keep_age_s=settings.stream_retention_age_s)
        if bound:
            plans[stream] = bound
    if not plans:
        print("Nothing to trim: every entry is unacknowledged or inside the retention window.")
        return EXIT_OK
    ctx.confirm(
        "Remove the acknowledged entries outside the retention window: "
        + "; ".join(f"{stream} before {bound}" for stream, bound in plans.items())
    )
    for stream, bound in plans.items():
        removed = trim_to(ctx.redis, stream, bound)  # exactly what was confirmed
        print(f"Trimmed {count(removed, 'entry', 'entries')} from {stream}.")
    return EXIT_OK
