"""The upserter's part of a model change: start it, switch the name once the new collection caught up, drop.

The configuration names the model a sync's collection is built with (EMBEDDING_MODEL, a sync's embedding_model);
the records (vecsync.reindex) say what the name serves. The upserter is the process that holds the store (on the
embedded default, the only one that may open it), so it is the one that creates, switches and drops collections.
Every REINDEX_CHECK_S it looks at each name, in this order:

1. *What the name serves* is recorded (``vecsync:collection:<name>``): at the first start, the collection the store
   resolves the name to, with the model its points name (or the configured one, for an empty collection). Where
   the store and the record disagree (a crash between a switch and its record), the store is right.
2. *A change is started* when the configured model differs from the served one and no change to it is building:
   a new physical collection ``<name>-v<n>`` is created, the change recorded as building. A change that is aborted
   or failed is not started again by itself (`vecsync reindex --retry` does); a change building towards a model the
   configuration no longer names is aborted (setting the old model back during a build keeps the old collection).
3. *The switch*, once the build caught up: for every sync of the name, the producer has published its snapshot up
   to a stage 1 watermark, the embedder-workers have handled every stage 1 entry up to it, and then the upserters
   every stage 2 entry up to the stage 2 watermark taken at that moment. Live changes were written to both
   collections meanwhile, so the new collection is as current as the old one, and the alias switches in one atomic
   step. Entries still in flight for the old collection are dropped from then on: each live one has its twin for
   the new collection, and the snapshot covers every change older than the build.
4. *Drops*: an aborted change's collection, and on `vecsync reindex --drop-old` every collection of the name that it
   neither serves nor builds.

Several upserters may run (on a Qdrant server): a lock per name (SET NX PX, renewed) lets one of them do the work.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence

import redis
from prometheus_client import Counter

from upserter.named_collections import NamedCollections
from vecsync import reindex
from vecsync.backoff import Backoff
from vecsync.errors import TransientError, VecsyncError
from vecsync.messages import parse_version
from vecsync.partitions import Partitions
from vecsync.reindex import Phase, Reindex, Serving
from vecsync.sync import Sync

log = logging.getLogger("vecsync.upserter")

REINDEX_CHECK_S = 1.0
# How long one upserter holds the right to act for a name without renewing it.
COORDINATOR_TTL_MS = 15_000
# How many points are read to learn the model of a collection that no record names.
MODEL_SAMPLE = 20

SWITCHES = Counter("vecsync_reindex_switches_total", "Model changes completed by switching the collection's name.")


class ModelChange:
    """Runs the steps of the module's docstring for every name the syncs write."""

    def __init__(
        self,
        names: NamedCollections,
        syncs: Sequence[Sync],
        client: redis.Redis,
        partitions: Partitions,
        *,
        stage1_group: str,
        stage2_group: str,
        holder: str,
    ) -> None:
        self.names = names
        self.client = client
        self.partitions = partitions
        self.stage1_group, self.stage2_group = stage1_group, stage2_group
        self.holder = holder
        # The consumer groups' positions at the last check of each name's build: while they move, a build whose
        # snapshot is embedded but not yet caught up still makes progress (VecsyncReindexStalled must not fire).
        self._positions: dict[str, list[str]] = {}
        self.syncs_of: dict[str, list[Sync]] = {}
        for sync in syncs:
            self.syncs_of.setdefault(sync.qdrant_collection, []).append(sync)

    def configured_model(self, alias: str) -> str | None:
        return self.syncs_of[alias][0].embedding_model  # vecsync.syncs makes the syncs of one name agree

    def run(self, stopping: threading.Event) -> None:
        """Check every name every REINDEX_CHECK_S until ``stopping``; outages are waited out."""
        backoff = Backoff(1.0, 30.0)
        while not stopping.is_set():
            try:
                for alias in self.syncs_of:
                    self.check(alias)
                backoff.attempts = 0
                stopping.wait(REINDEX_CHECK_S)
            except (redis.RedisError, TransientError) as exc:
                log.warning("Model change checks wait: %s", exc)
                backoff.wait(stopping)
            except Exception:
                log.exception("Model change check failed; retrying")
                backoff.wait(stopping)

    def record_serving(self) -> None:
        """Step 1 for every name, before the upserter applies anything: the consumers then find what it serves."""
        for alias in self.syncs_of:
            self._serving(alias)

    def check(self, alias: str) -> None:
        if not self._hold(alias):
            return
        serving = self._serving(alias)
        _serving, change = self.names.state(alias)  # as _serving read (and wrote) them, in this same check
        if change is not None and change.phase is Phase.ABORTED and "dropped" not in change.fields:
            self._drop_aborted(change, serving)
        if reindex.drop_old_requested(self.client, alias):
            self._drop_old(alias, serving, change)
        wanted = self.configured_model(alias)
        if change is not None and change.building:
            if wanted is not None and change.model != wanted:
                log.warning(
                    "Aborting the change of %r to %s: the configuration now names %s",
                    alias,
                    change.model,
                    wanted,
                )
                reindex.end(self.client, alias, change.number, Phase.ABORTED, f"the configuration names {wanted}")
                return
            self._switch_if_caught_up(change, serving)
            return
        if wanted is None or serving.model is None or serving.model == wanted:
            return
        if change is not None and change.model == wanted and change.phase in (Phase.ABORTED, Phase.FAILED):
            return  # not again by itself: `vecsync reindex --retry`
        self._start(alias, wanted, serving)

    # Step 1 --------------------------------------------------------------------------------------------------------

    def _serving(self, alias: str) -> Serving:
        recorded, change = self.names.refresh(self.client, alias)
        resolved = self.names.catalog.resolve(alias)
        if recorded is not None and (resolved is None or resolved == recorded.collection):
            learned = None if recorded.model is not None else self._points_model(alias, recorded.collection)
            if learned is not None:  # an empty collection's first points name its model
                return self._write_serving(alias, recorded.collection, learned)
            return recorded
        if resolved is None:  # a first start: the collection is created under the name, as before aliases
            resolved = alias
        if change is not None and change.collection == resolved:
            # The switch happened in the store, and the process stopped before recording it: record it now.
            serving = self._write_serving(alias, resolved, change.model, change.dim)
            reindex.end(self.client, alias, change.number, Phase.SWITCHED)
            self.names.refresh(self.client, alias)
            return serving
        return self._write_serving(alias, resolved, self._points_model(alias, resolved))

    def _points_model(self, alias: str, physical: str) -> str | None:
        store = self.names.store(alias, physical)
        page, _next = store.scroll(limit=MODEL_SAMPLE, offset=None, fields=["model"])
        models = [payload["model"] for payload in page.values() if isinstance(payload.get("model"), str)]
        if models:
            return str(max(set(models), key=models.count))
        return self.configured_model(alias) if not page else None

    def _write_serving(self, alias: str, physical: str, model: str | None, dim: int | None = None) -> Serving:
        size = dim or self.names.store(alias, physical).dim
        serving = Serving(physical, model, size, alias)
        reindex.write_serving(self.client, serving)
        self.names.refresh(self.client, alias)
        log.info("Qdrant collection name %r serves %r (model %s, %d dimensions)", alias, physical, model, size)
        return serving

    # Step 2 --------------------------------------------------------------------------------------------------------

    def _start(self, alias: str, model: str, serving: Serving) -> None:
        change = reindex.start(self.client, alias, model=model, dim=self.names.dim, serving=serving)
        try:
            self.names.store(alias, change.collection, dim=change.dim)
        except VecsyncError as exc:
            reindex.end(self.client, alias, change.number, Phase.FAILED, f"could not create the collection: {exc}")
            raise
        self.names.refresh(self.client, alias)
        log.info(
            "Model change of %r: building %r with %s (%d dimensions) beside %r (%s); searches keep using %r "
            "until the switch",
            alias,
            change.collection,
            model,
            change.dim,
            serving.collection,
            serving.model,
            serving.collection,
        )

    # Step 3 --------------------------------------------------------------------------------------------------------

    def _switch_if_caught_up(self, change: Reindex, serving: Serving) -> None:
        positions: list[str] = []
        try:
            for sync in self.syncs_of[change.alias]:
                watermark = change.watermark(sync.name)
                if watermark is None or not self._handled(watermark, self.stage1_group, positions):
                    return
                stage2 = change.stage2_watermark(sync.name)
                if stage2 is None:
                    stage2 = self._last_ids(self.partitions.names(sync.stage2_stream))
                    fields = {f"stage2_watermark:{sync.name}": json.dumps(stage2)}
                    reindex.record_fields(self.client, change.alias, fields)
                if not self._handled(stage2, self.stage2_group, positions):
                    return
        finally:
            if positions and self._positions.get(change.alias, positions) != positions:
                reindex.record_progress(self.client, change.alias, 0)
            self._positions[change.alias] = positions
        self.names.catalog.switch(change.alias, change.collection)
        self._write_serving(change.alias, change.collection, change.model, change.dim)
        reindex.end(self.client, change.alias, change.number, Phase.SWITCHED)
        SWITCHES.inc()
        log.info(
            "Model change of %r done: it now serves %r (%s); %r (%s) is kept until `vecsync reindex --drop-old`",
            change.alias,
            change.collection,
            change.model,
            serving.collection,
            serving.model,
        )

    def _last_ids(self, streams: Sequence[str]) -> dict[str, str]:
        ids = {}
        for stream in streams:
            try:
                ids[stream] = str(self.client.xinfo_stream(stream)["last-generated-id"])
            except redis.ResponseError:  # no such stream: nothing to wait for
                ids[stream] = "0-0"
        return ids

    def _handled(self, watermark: Mapping[str, str], group: str, positions: list[str]) -> bool:
        """Whether ``group`` has read and acknowledged every entry up to each stream's watermark; the group's
        positions it read are added to ``positions``."""
        for stream, last in watermark.items():
            if parse_version(last) == (0, 0):
                continue
            try:
                groups = {info["name"]: info for info in self.client.xinfo_groups(stream)}
            except redis.ResponseError:
                return False
            info = groups.get(group)
            positions.append(f"{stream}:{info and info['last-delivered-id']}")
            if info is None or parse_version(str(info["last-delivered-id"])) < parse_version(last):
                return False
            pending = self.client.xpending(stream, group)
            if pending["pending"] and parse_version(str(pending["min"])) <= parse_version(last):
                return False
        return True

    # Step 4 --------------------------------------------------------------------------------------------------------

    def _drop_aborted(self, change: Reindex, serving: Serving) -> None:
        dropped = []
        if change.collection != serving.collection:
            self.names.drop(change.collection)
            dropped.append(change.collection)
        reindex.record_fields(self.client, change.alias, {"dropped": json.dumps(dropped)})
        log.info(
            "Model change of %r aborted: dropped %s; it still serves %r", change.alias, dropped, serving.collection
        )

    def _drop_old(self, alias: str, serving: Serving, change: Reindex | None) -> None:
        if change is not None and change.building:
            reindex.record_fields(self.client, alias, {"dropped_old": json.dumps([])})
            reindex.clear_drop_old(self.client, alias)
            log.warning("`vecsync reindex --drop-old` for %r ignored: a model change is building", alias)
            return
        old = [name for name in self.names.catalog.collections() if _is_collection_of(alias, name)]
        dropped = [name for name in old if name != serving.collection]
        for name in dropped:
            self.names.drop(name)
        reindex.record_fields(self.client, alias, {"dropped_old": json.dumps(dropped), "dropped_old_at": time.time()})
        reindex.clear_drop_old(self.client, alias)
        log.info("Dropped the collections %r no longer serves: %s", alias, dropped or "none")

    def _hold(self, alias: str) -> bool:
        """Whether this upserter may act for ``alias`` now: it holds (or took) the name's lock."""
        key = reindex.reindex_key(alias) + ":coordinator"
        if self.client.set(key, self.holder, nx=True, px=COORDINATOR_TTL_MS):
            return True
        if self.client.get(key) == self.holder:
            self.client.pexpire(key, COORDINATOR_TTL_MS)
            return True
        return False


def _is_collection_of(alias: str, name: str) -> bool:
    """Whether ``name`` is a physical collection of ``alias``: the name itself (adopted) or ``<alias>-v<n>``."""
    suffix = name.removeprefix(alias + "-v")
    return name == alias or (suffix != name and suffix.isdigit())
