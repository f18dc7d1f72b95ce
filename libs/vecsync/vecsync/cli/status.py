"""What `vecsync status` reports: each stage's backlog, lag, pending entries, consumers and dead letters, and
each sync's own.

The top-level figures (``stage1``, ``stage2``, ``drained``, ``producer``, ``pipeline``) are those of the whole
pipeline: with the environment's one sync exactly what they always were, with a definition file the totals over
every sync's streams. ``syncs`` gives each sync's: its streams' backlog, its snapshot in progress and its points.

Each sync's model (vecsync.reindex; the same for the syncs that share a collection):

- ``serving``: ``{"collection", "model", "dim"}``, the physical collection its collection name serves now, or None
  before the upserter recorded one;
- ``embedding_model``: the model configured for it (EMBEDDING_MODEL, a definition's ``embedding_model``), None for
  the embedding-api's default (then no change is ever started);
- ``model_change_due``: True while the configured model differs from the served one and no change to it is
  building or has ended without a switch: the upserter starts one when it next looks;
- ``model_change``: the newest model change, or None before the first: ``{"number", "phase"
  (building|switched|aborted|failed), "model", "from_model", "collection", "from_collection" (the physical
  collections built and built beside), "embedded" (snapshot documents embedded for the new collection), "total"
  (the snapshots' documents, None until counted), "rate_per_s" (documents embedded per second since the change
  started, until it ended), "eta_s" (seconds left at that rate while building, else None), "started_at",
  "finished_at" (Unix times; finished_at None while building), "progress_age_s" (since the last document was
  embedded for it), "error", "dropped" (what the upserter dropped after an abort or failure), "dropped_old" (what
  `vecsync reindex --drop-old` had it drop)}``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from vecsync.cli.context import Context, count
from vecsync.cli.reindex import ModelState, change_summary, model_text, read_model_state
from vecsync.errors import VecsyncError
from vecsync.flow import RedisMemory
from vecsync.producer_state import ProducerKeys, stored_snapshot
from vecsync.redaction import redact, redact_url
from vecsync.stream_stats import StreamStats, stage_stats, unprocessed


def status_report(ctx: Context) -> dict[str, Any]:
    settings = ctx.settings
    each = [ctx.for_sync(sync) for sync in ctx.syncs]
    stage1_groups = [group for one in each for group in one.settings.stage1_groups()]
    stage2_groups = [group for one in each for group in one.settings.stage2_groups()]
    stages = {
        "stage1": stage_stats(ctx.redis, stage1_groups, settings.stage1_stream, with_consumers=True),
        "stage2": stage_stats(ctx.redis, stage2_groups, settings.stage2_stream, with_consumers=True),
    }
    report: dict[str, Any] = {name: stats.as_dict() for name, stats in stages.items()}
    # True when every group of every partition of every sync has nothing unread or pending: the state in which
    # STREAM_PARTITIONS may change, and in which a test or a migration may compare Qdrant with MongoDB.
    report["drained"] = all(stats.drained for stats in stages.values())
    now = time.time()
    syncs = {one.sync.name: _sync_report(one, now) for one in each}
    report["producer"] = _producer_report(list(syncs.values()))
    report["pipeline"] = {
        "backlog": sum(sync["backlog"] for sync in syncs.values()),  # each sync's streams, read once
        "max_backlog": settings.producer_max_backlog,
        "redis_memory_share": RedisMemory(ctx.redis).share(),
        "redis_memory_high_water": settings.redis_memory_high_water,
    }
    report["syncs"] = syncs
    return report


def _sync_report(one: Context, now: float) -> dict[str, Any]:
    sync, settings = one.sync, one.settings
    stages = {
        "stage1": stage_stats(one.redis, settings.stage1_groups(), sync.stage1_stream),
        "stage2": stage_stats(one.redis, settings.stage2_groups(), sync.stage2_stream),
    }
    keys = ProducerKeys.of(sync.state_name, settings.partitions)
    updated = one.redis.get(keys.token_updated)
    snapshot = stored_snapshot(one.redis, keys.snapshot)
    points, points_error = _points(one)
    model = read_model_state(one.redis, sync.qdrant_collection, sync.embedding_model)
    return {
        "source": sync.source,
        "qdrant_collection": sync.qdrant_collection,
        "filter": None if sync.filter is None else json.loads(json.dumps(sync.filter, default=str)),
        **{
            name: {
                "stream": stats.stream,
                "length": stats.length,
                "lag": stats.lag,
                "pending": stats.pending,
                "dlq_length": stats.dlq_length,
            }
            for name, stats in stages.items()
        },
        "backlog": sum(
            unprocessed(one.redis, stream, group)
            for stream, group in settings.stage1_groups() + settings.stage2_groups()
        ),
        "drained": all(stats.drained for stats in stages.values()),
        "resume_token_age_s": now - float(updated) if updated else None,
        "snapshot": None
        if snapshot is None
        else {
            "documents_done": snapshot.published,
            "documents_estimated": snapshot.estimated,
            "rate_per_s": snapshot.rate_per_s(now),
            "seconds_left": snapshot.seconds_left(now),
        },
        "points": points,
        "points_error": points_error,
        **_model_report(model),
    }


def _model_report(model: ModelState) -> dict[str, Any]:
    serving = model.serving
    return {
        "serving": None
        if serving is None
        else {"collection": serving.collection, "model": serving.model, "dim": serving.dim},
        "embedding_model": model.configured,
        "model_change_due": model.due,
        "model_change": model.change_report(),
    }


def _points(one: Context) -> tuple[int | None, str | None]:
    """The sync's Qdrant collection's point count, or why it is not known: status reports what it can reach."""
    try:
        return one.store.count(), None
    except (VecsyncError, requests.RequestException) as exc:
        return None, redact(str(exc))
    finally:
        one.release_store()  # an embedded store opened here is not held between two looks (status --watch)


def _producer_report(syncs: list[dict[str, Any]]) -> dict[str, Any]:
    """The producer's figures over every sync: the oldest resume token (None while any sync has none), and the
    snapshots in progress together."""
    ages = [sync["resume_token_age_s"] for sync in syncs]
    snapshots = [sync["snapshot"] for sync in syncs if sync["snapshot"] is not None]
    if len(syncs) == 1:
        return {"resume_token_age_s": ages[0], "snapshot": syncs[0]["snapshot"]}
    lefts = [snapshot["seconds_left"] for snapshot in snapshots]
    return {
        "resume_token_age_s": None if None in ages else max(ages),
        "snapshot": None
        if not snapshots
        else {
            "documents_done": sum(snapshot["documents_done"] for snapshot in snapshots),
            "documents_estimated": sum(snapshot["documents_estimated"] for snapshot in snapshots),
            "rate_per_s": sum(snapshot["rate_per_s"] for snapshot in snapshots),
            "seconds_left": None if None in lefts else max(lefts),
        },
    }


def print_status(ctx: Context, report: dict[str, Any]) -> None:
    print(f"Redis {redact_url(ctx.settings.redis_url)}")
    several = len(report["syncs"]) > 1
    for name in ("stage1", "stage2"):
        stats = StreamStats(**{**report[name], "consumers": [], "partitions": []})
        lag = "unknown" if stats.lag is None else str(stats.lag)
        partitions = len(report[name].get("partitions", []))
        across = ""
        if several:
            across = f" (over the {partitions} streams of {len(report['syncs'])} syncs)"
        elif partitions:
            across = f" (over {partitions} partitions)"
        print(
            f"{name} {stats.stream} / {stats.group}{across}: length {stats.length}, lag {lag}, "
            f"pending {stats.pending}, oldest pending {stats.oldest_pending_age_s:.1f} s, "
            f"dead letters {stats.dlq_length}"
        )
        if not stats.group_exists:
            print("  (no consumer group yet: no worker has started)")
        for consumer in report[name]["consumers"]:
            print(f"  consumer {consumer['name']}: pending {consumer['pending']}, idle {consumer['idle_s']:.1f} s")
    age = report["producer"]["resume_token_age_s"]
    print(f"producer resume token: {'never stored' if age is None else f'advanced {age:.1f} s ago'}")
    snapshot = report["producer"]["snapshot"]
    if snapshot is not None:
        print(f"producer snapshot: {_snapshot_text(snapshot)}")
    pipeline = report["pipeline"]
    memory = (
        f", Redis at {pipeline['redis_memory_share']:.0%} of its maxmemory "
        f"(writers wait above {pipeline['redis_memory_high_water']:.0%})"
        if pipeline["redis_memory_share"]
        else ""
    )
    print(
        f"pipeline: {count(pipeline['backlog'], 'entry', 'entries')} not yet processed "
        f"(writers of stage 1 wait above {pipeline['max_backlog']}){memory}"
    )
    for name, sync in report["syncs"].items():
        _print_sync(name, sync)


def _print_sync(name: str, sync: dict[str, Any]) -> None:
    points = sync["points"] if sync["points"] is not None else f"unknown ({sync['points_error']})"
    dead = sync["stage1"]["dlq_length"] + sync["stage2"]["dlq_length"]
    print(
        f"sync {name}: {sync['source']} -> Qdrant collection {sync['qdrant_collection']!r}: "
        f"{count(sync['backlog'], 'entry', 'entries')} not yet processed "
        f"(stage 1 lag {sync['stage1']['lag']}, pending {sync['stage1']['pending']}; "
        f"stage 2 lag {sync['stage2']['lag']}, pending {sync['stage2']['pending']}), "
        f"{count(dead, 'dead letter')}, points {points}"
    )
    if sync["snapshot"] is not None:
        print(f"  snapshot: {_snapshot_text(sync['snapshot'])}")
    serving, change = sync["serving"], sync["model_change"]
    if serving is not None or sync["embedding_model"] is not None or change is not None:
        served = (
            "nothing recorded yet" if serving is None else f"{serving['collection']} ({model_text(serving['model'])})"
        )
        print(f"  model: serves {served}; configured {model_text(sync['embedding_model'])}")
    if sync["model_change_due"]:
        print(
            f"  model change to {model_text(sync['embedding_model'])}: due, the upserter starts it when it next looks"
        )
    if change is not None:
        print(f"  model change {change['number']}: {change_summary(change)}")


def _snapshot_text(snapshot: dict[str, Any]) -> str:
    left = snapshot["seconds_left"]
    return (
        f"{snapshot['documents_done']} of about {snapshot['documents_estimated']} documents, "
        f"{snapshot['rate_per_s']:.0f}/s, {'time left unknown' if left is None else f'about {left:.0f} s left'}"
    )
