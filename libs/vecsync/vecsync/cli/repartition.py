"""``vecsync repartition``: change STREAM_PARTITIONS of a drained pipeline.

The number of partitions decides which stream, and which of the keys beside it, each document's state lives in
(vecsync.partitions). Entries in flight cannot follow a change, so the pipeline must be drained and stopped; what
outlives the entries is moved here: the upserters' tombstones (which fence a late upsert of a deleted document),
their skip-unchanged hints, and the producer's resume token and snapshot. Then the new number is stored, which every
process checks at start-up (vecsync.partitions.check_count).
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from vecsync.cli.context import EXIT_OK, Context, count
from vecsync.constants import APPLIED_TEXT_KEY, APPLIED_TEXT_PREVIOUS_KEY, partitions_key, tombstones_key
from vecsync.errors import ConfigurationError, VecsyncError
from vecsync.messages import parse_version
from vecsync.partitions import Partitions, stored_count
from vecsync.producer_state import ProducerKeys, take_over_producer_state
from vecsync.stream_stats import stage_stats

# The skip-unchanged hint's two generations (see the upserter's hint upkeep).
HINT_KEYS = (APPLIED_TEXT_KEY, APPLIED_TEXT_PREVIOUS_KEY)
# Fields read per HSCAN step: each moved in one pipeline.
SCAN_COUNT = 500


class NotDrained(VecsyncError):
    """Raised when `vecsync repartition` finds entries unread or pending under the current partitions."""


def repartition_command(ctx: Context, from_count: int | None) -> int:
    settings = ctx.settings
    target = settings.partitions
    current = _current_count(ctx, from_count)
    old = Partitions(current, redis_cluster=settings.redis_cluster)
    _require_drained(ctx, old)
    collection = settings.qdrant_collection
    if current == target.count and from_count is None:
        print(f"The streams are already split into {count(current, 'partition')}; nothing to move.")
        return EXIT_OK
    ctx.confirm(
        f"Move the tombstones of the Qdrant collection {collection}, the skip-unchanged hints and the producer state "
        f"of {settings.source} from STREAM_PARTITIONS={current} to {target.count}, then store {target.count} as the "
        "pipeline's number of partitions. Every service must be stopped, and start again with "
        f"STREAM_PARTITIONS={target.count}."
    )
    tombstones = _move_by_point(ctx.redis, old, target, tombstones_key(collection), _newest_version)
    # Both generations of the hint (the upserter rotates them): a point keeps its generation.
    hints = sum(_move_by_point(ctx.redis, old, target, key, _drop_either) for key in HINT_KEYS)
    producer = _move_producer_state(ctx.redis, settings.source, old, target)
    for stream in settings.pipeline_streams():
        ctx.redis.set(partitions_key(stream), target.count)
    print(
        f"Moved {count(tombstones, 'tombstone')} and {count(hints, 'skip-unchanged hint')} to their partitions of "
        f"{target.count}; {producer}. The streams of STREAM_PARTITIONS={current} are left as they are, every entry "
        f"processed. Start every service with STREAM_PARTITIONS={target.count}."
    )
    return EXIT_OK


def _current_count(ctx: Context, from_count: int | None) -> int:
    """The number the pipeline runs with: the stored one; --from where none is stored (a pipeline older than the
    check), which must otherwise agree with it."""
    stored = {stream: stored_count(ctx.redis, stream) for stream in ctx.settings.pipeline_streams()}
    known = {value for value in stored.values() if value is not None}
    if len(known) > 1:
        raise ConfigurationError(
            "The pipeline's streams are stored with different numbers of partitions ("
            + ", ".join(f"{stream}: {value}" for stream, value in stored.items())
            + "): set each key vecsync:partitions:<stream> to the STREAM_PARTITIONS the processes ran with, then run "
            "`vecsync repartition` again."
        )
    if not known:
        if from_count is None:
            raise ConfigurationError(
                "No number of partitions is stored for this pipeline yet: pass --from N, the STREAM_PARTITIONS "
                "every process ran with until now."
            )
        return from_count
    current = known.pop()
    if from_count is not None and from_count != current:
        raise ConfigurationError(
            f"--from is {from_count}, but the pipeline's streams are stored as split into {current} partitions: "
            f"pass --from {current}, or leave --from out."
        )
    return current


def _require_drained(ctx: Context, partitions: Partitions) -> None:
    settings = ctx.settings
    stages = [(settings.stage1_stream, settings.stage1_group), (settings.stage2_stream, settings.stage2_group)]
    for stream, group in stages:
        stats = stage_stats(ctx.redis, [(name, group) for name in partitions.names(stream)], stream)
        if not stats.drained:
            raise NotDrained(
                f"The stream {stream} still holds {stats.lag} unread and {stats.pending} pending entries under "
                f"STREAM_PARTITIONS={partitions.count}; they would be in the wrong partition afterwards. Stop the "
                'producer, wait until `vecsync status --json` reports "drained": true, stop the workers and '
                "upserters, then run `vecsync repartition` again."
            )


def _move_by_point(
    client: redis.Redis, old: Partitions, new: Partitions, base: str, merge: Callable[[str, str], str | None]
) -> int:
    """Move each field (a point id) of the hashes ``base`` of the ``old`` partitions to its partition's hash under
    ``new``, combining it by ``merge`` (None: leave neither) with a value there already; the number moved.

    A field is written to its new hash before it is deleted from its old one, so a run that stops halfway can be
    run again. Partitions of two numbers may share a name: a field already in its place stays.
    """
    moved = 0
    for name in old.names(base):
        cursor = 0
        while True:
            cursor, fields = client.hscan(name, cursor, count=SCAN_COUNT)
            by_target: dict[str, dict[str, str]] = {}
            for point, value in fields.items():
                target = new.name(base, new.of(point))
                if target != name:
                    by_target.setdefault(target, {})[point] = value
            for target, values in by_target.items():
                present = dict(zip(values, client.hmget(target, list(values)), strict=True))
                merged = {
                    point: value if present[point] is None else merge(value, present[point])
                    for point, value in values.items()
                }
                keep = {point: value for point, value in merged.items() if value is not None}
                drop = [point for point, value in merged.items() if value is None]
                if keep:
                    client.hset(target, mapping=keep)
                if drop:
                    client.hdel(target, *drop)
                client.hdel(name, *values)
                moved += len(values)
            if cursor == 0:
                break
    return moved


def _newest_version(moved: str, present: str) -> str:
    """Of two tombstones of one point, the newer delete version."""
    return moved if parse_version(moved) > parse_version(present) else present


def _drop_either(_moved: str, _present: str) -> None:
    """Of two skip-unchanged hints of one point, neither: which is newer is unknown, and a missing hint costs only
    an embedding."""
    return None


def _move_producer_state(client: redis.Redis, source: str, old: Partitions, new: Partitions) -> str:
    """Move the producer's resume token and snapshot to their names under ``new`` (the producer's own takeover,
    vecsync.producer_state.take_over_producer_state), and delete what described the old partitions: their
    high-water marks, the batch each last received, and the keys of the waits for their replicas. The number of the
    last batch stays, so that numbers only grow."""
    moved = take_over_producer_state(client, source, new)
    old_keys = ProducerKeys.of(source, old)
    new_keys = ProducerKeys.of(source, new)
    for key in [*old_keys.positions, *old_keys.replicated, *([old_keys.marks] if old_keys.marks else [])]:
        client.delete(key)  # one by one: on a Redis Cluster, they live in different slots
    if new_keys.token != old_keys.token and not new.hash_tagged:
        client.delete(old_keys.batch)
    if moved is not None:
        return f"the producer's resume token and snapshot moved from {moved.token} to {new_keys.token}"
    if client.get(new_keys.token) or client.hget(new_keys.snapshot, "token"):
        return f"the producer's resume token and snapshot are already named {new_keys.token}"
    return f"no producer state of {source} was stored"
