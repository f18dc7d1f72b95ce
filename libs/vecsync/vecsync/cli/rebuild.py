"""`vecsync rebuild`: recreate a Qdrant collection and refill it from stage 2, or from MongoDB where stage 2 was
trimmed or --from-mongo asks. A collection is recreated whole, so every sync writing into it is rebuilt with it."""

from __future__ import annotations

from dataclasses import dataclass

from vecsync.cli.context import EXIT_OK, Context, count
from vecsync.cli.maintenance import resync_one
from vecsync.constants import APPLIED_TEXT_PREVIOUS_KEY, APPLIED_VERSIONS_KEY, TRIMMED_KEY_PREFIX
from vecsync.consumer_groups import ensure_group
from vecsync.sync import Sync


def rebuild_command(ctx: Context, from_mongo: bool, batch_size: int, *, sync_name: str | None = None) -> int:
    """Recreate the Qdrant collection of one sync or of each. A collection is recreated whole, so every sync that
    writes into it is rebuilt with it."""
    chosen = ctx.chosen_syncs(sync_name)
    statuses = []
    for target in dict.fromkeys(sync.qdrant_collection for sync in chosen):
        ones = [ctx.for_sync(sync) for sync in ctx.syncs if sync.qdrant_collection == target]
        try:
            statuses.append(_rebuild(ones, from_mongo, batch_size))
        finally:
            for one in ones:
                one.release_store()
    return next((status for status in statuses if status != EXIT_OK), EXIT_OK)


@dataclass
class _RebuildPlan:
    ctx: Context
    use_mongo: bool
    how: str


def _rebuild_plan(ctx: Context, from_mongo: bool) -> _RebuildPlan:
    stage2, group = ctx.settings.stage2_stream, ctx.settings.stage2_group
    streams = ctx.settings.partitions.names(stage2)
    trimmed = next((bound for bound in (ctx.redis.get(TRIMMED_KEY_PREFIX + name) for name in streams) if bound), None)
    if trimmed and not from_mongo:
        print(f"{stage2} was trimmed (entries before {trimmed} are gone), so the rebuild reads MongoDB instead.")
    use_mongo = from_mongo or bool(trimmed)
    retained = count(sum(ctx.redis.xlen(name) for name in streams), "retained entry", "retained entries")
    how = (
        f"then snapshot {ctx.settings.source} into {ctx.settings.stage1_stream}, re-embedding every document"
        if use_mongo
        else f"then have group {group} re-apply the {retained} of {stage2} (no re-embedding)"
    )
    return _RebuildPlan(ctx, use_mongo, how)


def _rebuild(ones: list[Context], from_mongo: bool, batch_size: int) -> int:
    """Rebuild the syncs ``ones`` of one Qdrant collection: recreate it once, then refill it from each sync."""
    plans = [_rebuild_plan(one, from_mongo) for one in ones]
    first = ones[0]
    how = plans[0].how if len(plans) == 1 else "; ".join(f"for sync {p.ctx.sync.name}, {p.how}" for p in plans)
    first.confirm(
        f"Drop and recreate Qdrant collection {first.store.collection!r}, {how}. Deleted documents stay deleted: "
        "their tombstones are kept."
    )
    first.store.recreate()
    statuses = []
    for plan in plans:
        ctx, sync = plan.ctx, plan.ctx.sync
        partitions = ctx.settings.partitions
        # The points' versions went with the collection; the tombstones record MongoDB's deletes and stay. The
        # skip-unchanged hint describes points that are gone, and the applied-versions hash is no longer used.
        for key in [
            APPLIED_VERSIONS_KEY,
            *partitions.names(sync.applied_text_key),
            *partitions.names(_previous_hint_key(sync)),
        ]:
            ctx.redis.delete(key)  # one at a time: on a Redis Cluster, each lives in its partition's slot
        if plan.use_mongo:
            ctx.assume_yes = True  # already confirmed as a whole
            statuses.append(resync_one(ctx, None, restart=True, batch_size=batch_size, outside_filter=False))
            continue
        stage2, group = ctx.settings.stage2_stream, ctx.settings.stage2_group
        for name in partitions.names(stage2):
            ensure_group(ctx.redis, name, group)
            ctx.redis.xgroup_setid(name, group, "0")
        print(f"Collection recreated; the upserters are re-applying {stage2}. Follow it with `vecsync status`.")
        statuses.append(EXIT_OK)
    return next((status for status in statuses if status != EXIT_OK), EXIT_OK)


def _previous_hint_key(sync: Sync) -> str:
    """The previous generation of the sync's skip-unchanged hint (the seed's name for the environment's sync)."""
    return APPLIED_TEXT_PREVIOUS_KEY if not sync.structured else sync.applied_text_key + ":previous"
