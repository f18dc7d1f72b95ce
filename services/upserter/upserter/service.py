"""The upserter: stage 2 entries in, Qdrant points out.

No stale overwrite: every entry carries the stage 1 entry id of its change as
its version, and every point carries the version it was written at. Each write
is conditional in Qdrant itself (applied only over an older point), deletes
leave a tombstone in Redis (set only if greater), and upserts older than their
point's tombstone are dropped. Under the points' locks, confirmed before every
write, the upserter reads the batch's points and tombstones, drops what is not
newer, writes the rest in one request, and re-checks the tombstones of what it
wrote. Entries are acked only after that, so a crash at any step leads to a
redelivery that is either re-applied (a no-op) or skipped (superseded).

A payload-only entry (its text was unchanged) is applied only if its point
still holds that text, embedded by the same model; otherwise its change goes
back to stage 1 to be embedded, keeping its version, or, once retention has
trimmed that change, its document is read from MongoDB again and published
to stage 1 as `vecsync dlq replay` does. See docs/design.md.

A document of several chunks is one entry, and its lock, tombstone and version
are its first chunk's point's: every chunk is written at the entry's version,
then the document's points of older versions are removed (the prune), so a
search finds the old chunks or the new ones, never neither ("Long documents"
in docs/design.md). A redelivery of the version the first chunk already holds
is applied again, completing a write that a crash cut short.

This module runs each batch through those steps under the points' locks and
keeps the skip-unchanged hint; the steps have modules of their own:
upserter.write_plan decides what each entry needs, upserter.embed_again sends a
change back to be embedded, upserter.tombstones records deletes and sweeps the
tombstones no change can need, and upserter.model_check warns of a collection
that mixes models.

One Upserter serves one sync (its settings are the sync's, vecsync.syncs.settings_for) and writes that sync's
Qdrant collection, which other syncs may share: their points never collide (ids derive from the source and _id),
the tombstones are the collection's, and their sweep reads the streams of every sync that writes it.

Given the upserter's NamedCollections, it writes each entry into the physical collection the entry names (the one
the name serves, or the one a model change builds: upserter.named_collections), one after the other under each
one's own locks; the tombstones stay the name's, since they record MongoDB's order of changes, which both share.
Only writes to the served collection update the skip-unchanged hint, which the embedder-workers read for it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from prometheus_client import Counter
from pymongo.collection import Collection

from upserter.embed_again import EmbedAgain
from upserter.model_check import ModelCheck
from upserter.named_collections import NamedCollections
from upserter.point_locks import HeldLocks, PointLocks
from upserter.settings import UpserterSettings
from upserter.tombstones import Tombstones, TombstoneSweep
from upserter.write_plan import (
    STATE_FIELDS,
    WritePlan,
    chunk_ids,
    older_points,
    plan_writes,
    point_writes,
    states_to_read,
    version_text,
    with_vector_of_same_text,
)
from vecsync.batch import Batch, Entry
from vecsync.constants import tombstones_key
from vecsync.documents import point_id, text_fingerprint
from vecsync.errors import ConfigurationError, InvalidEntry
from vecsync.messages import EmbeddedDocument, parse_version
from vecsync.metrics import END_TO_END_LATENCY
from vecsync.sync import Sync
from vecsync.syncs import sync_of
from vecsync.vectorstore import CollectionMissing, Point, VectorStore, version_of

log = logging.getLogger("vecsync.upserter")

POINTS_WRITTEN = Counter("vecsync_upserter_points_total", "Points written to Qdrant, by operation.", ["op"])
SUPERSEDED = Counter(
    "vecsync_upserter_superseded_total", "Entries skipped because a newer change of their document was already applied."
)
RETIRED = Counter(
    "vecsync_upserter_retired_entries_total",
    "Entries for a physical collection that is no longer written (an aborted model change's, or the one served "
    "before a switch): acknowledged without a write, as their changes reach the collection served now otherwise.",
)
OTHER_MODEL = Counter(
    "vecsync_upserter_other_model_entries_total",
    "Entries naming no collection whose vectors are of another model than the collection served now: sent back "
    "to be embedded by its model.",
)

# How many of the newest stage 2 entries a paused upserter reads to see whether newer vectors fit the collection.
NEWEST_SAMPLE = 100

# After a batch wrote the current generation of the skip-unchanged hint (KEYS[1]), under its locks: drop the points
# it wrote or removed from the previous generation (KEYS[2]), where they would only be stale, and once the current one
# holds ARGV[1] points, make it the previous one (the one before goes). ARGV[2..]: the batch's point ids.
_HINT_UPKEEP = """
for i = 2, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


class Upserter:
    def __init__(
        self,
        settings: UpserterSettings,
        client: redis.Redis,
        store: VectorStore,
        mongo: Collection[dict[str, Any]],
        *,
        sharing: Sequence[Sync] = (),
        names: NamedCollections | None = None,
    ) -> None:
        """``mongo`` is the sync's MongoDB collection; ``sharing``, the other syncs that write ``store``'s
        collection (their streams keep its tombstones alive too). With ``names``, each entry goes to the physical
        collection it names (see the module's docstring); without, every entry goes to ``store``."""
        self.settings = settings
        self.sync = sync_of(settings)
        self.client = client
        self.store = store
        self.names = names
        self.partitions = settings.partitions
        self._locks: dict[str, list[PointLocks]] = {}
        self._model_checks: dict[str, ModelCheck] = {}
        tombstones_of = self.sync.qdrant_collection if names is not None else store.collection
        self.tombstones = [
            Tombstones(client, self.partitions.name(tombstones_key(tombstones_of), partition))
            for partition in self.partitions.indexes()
        ]
        self.embed_again = EmbedAgain(settings, client, mongo)
        self._hint_upkeep = client.register_script(_HINT_UPKEEP)
        self.tombstone_sweep = TombstoneSweep(
            client,
            self.tombstones,
            self.partitions,
            streams=list(dict.fromkeys((sync.stage1_stream, sync.stage2_stream) for sync in [self.sync, *sharing])),
            interval_s=settings.tombstone_sweep_interval_s,
        )

    def handle(self, batch: Batch) -> None:
        for store, entries in self._by_collection(batch).items():
            self._handle_for(store, Batch(entries, batch.tx, batch.rejected, batch.partition))
        self.tombstone_sweep.run_if_due(batch.partition)

    def _by_collection(self, batch: Batch) -> dict[VectorStore, list[Entry]]:
        """The batch's entries by the store each is written to; those of retired collections are left out."""
        if self.names is None:
            return {self.store: batch.entries}
        alias = self.sync.qdrant_collection
        self.names.refresh(self.client, alias)
        by_store: dict[VectorStore, list[Entry]] = {}
        for entry in batch.entries:
            store = self.names.target(alias, entry.fields.get("collection") or None)
            if store is None:
                RETIRED.inc()
                continue
            by_store.setdefault(store, []).append(entry)
        return by_store

    def _handle_for(self, store: VectorStore, batch: Batch) -> None:
        newest = self._newest_per_point(store, batch)
        if not newest:
            return
        try:
            self._apply(store, newest, batch)
        except CollectionMissing:
            # Deleted by hand or by a rebuild: create it empty; the consumer loop retries the batch, which the
            # points' own versions then fence as in any other collection.
            log.warning("Qdrant collection %r is missing; creating it", store.collection)
            store.ensure_collection()
            raise

    def _serves(self, store: VectorStore) -> bool:
        """Whether ``store`` is the collection the sync's name serves (always, without NamedCollections)."""
        return self.names is None or self.names.is_serving(self.sync.qdrant_collection, store)

    def _locks_of(self, store: VectorStore) -> list[PointLocks]:
        """Each partition's point locks for writes to ``store`` (they share its hash slot: vecsync.partitions)."""
        locks = self._locks.get(store.collection)
        if locks is None:
            # A definition's sync locks its points under its Qdrant collection: two syncs of one MongoDB collection
            # into two Qdrant collections have the same point ids, and must not hold one another's locks. So does a
            # collection that a model change builds, beside the one served.
            scoped = self.sync.structured or store.collection != self.sync.qdrant_collection
            lock_scope = f":{store.collection}" if scoped else ""
            locks = [
                PointLocks(
                    self.client,
                    holder=self.settings.consumer_name,
                    ttl_ms=self.settings.point_lock_ttl_ms,
                    wait_ms=self.settings.point_lock_wait_ms,
                    key_suffix=lock_scope + self.partitions.name("", partition),
                )
                for partition in self.partitions.indexes()
            ]
            self._locks[store.collection] = locks
        return locks

    def _model_check(self, store: VectorStore) -> ModelCheck:
        return self._model_checks.setdefault(store.collection, ModelCheck(store))

    def _newest_per_point(self, store: VectorStore, batch: Batch) -> dict[str, EmbeddedDocument]:
        newest: dict[str, EmbeddedDocument] = {}
        upserts: dict[str, list[EmbeddedDocument]] = collections.defaultdict(list)
        documents: list[tuple[Entry, EmbeddedDocument]] = []
        for entry in batch.entries:
            try:
                documents.append((entry, EmbeddedDocument.from_fields(entry.fields)))
            except InvalidEntry as exc:
                batch.reject(entry, str(exc))
        documents = self._of_served_model(store, documents, batch)
        for _entry, document in self._fitting(store, documents, batch):
            pid = point_id(document.source, document.mongo_id)
            if document.op == "upsert":
                upserts[pid].append(document)
            if pid not in newest or parse_version(document.version) > parse_version(newest[pid].version):
                newest[pid] = document
        SUPERSEDED.inc(len(batch.entries) - len(batch.rejected) - len(newest))
        for pid, document in newest.items():
            if document.op == "payload":
                newest[pid] = with_vector_of_same_text(document, upserts[pid])
        return newest

    def _of_served_model(
        self, store: VectorStore, documents: list[tuple[Entry, EmbeddedDocument]], batch: Batch
    ) -> list[tuple[Entry, EmbeddedDocument]]:
        """The documents to write to ``store``; an upsert that names no collection and was embedded by another model
        than the one the name serves (made before a switch, applied after it) goes back to be embedded."""
        if self.names is None:
            return documents
        serving, _change = self.names.state(self.sync.qdrant_collection)
        if serving is None or serving.model is None or store.collection != serving.collection:
            return documents
        kept = []
        for entry, doc in documents:
            model = (doc.payload or {}).get("model")
            if doc.collection is None and doc.op == "upsert" and model is not None and model != serving.model:
                OTHER_MODEL.inc()
                self.embed_again.send(doc, batch)
                continue
            kept.append((entry, doc))
        return kept

    def _fitting(
        self, store: VectorStore, documents: list[tuple[Entry, EmbeddedDocument]], batch: Batch
    ) -> list[tuple[Entry, EmbeddedDocument]]:
        """The batch's documents whose vector (if any) fits the collection; the others are rejected, or pause.

        A vector of another size than the collection's beside vectors that fit is that entry's fault: it is
        dead-lettered. When no vector of the batch fits, the embedder-workers make vectors of another size than
        the upserters' EMBEDDING_DIM: a misconfiguration that would fail every entry alike, so the stage pauses
        (ConfigurationError) until the newest entries of the stream fit again. Then the entries made before the
        fix are stale and go to the dead-letter stream, to be replayed (embedded again).
        """
        dim = store.dim
        # Each entry with a vector of another size (the chunks of one document are embedded by one model).
        misfits: dict[str, int] = {}
        for entry, doc in documents:
            other_sizes = {len(vector) for vector in doc.vectors()} - {dim}
            if other_sizes:
                misfits[entry.id] = min(other_sizes)
        if not misfits:
            return documents
        fitting = any(doc.vectors() and entry.id not in misfits for entry, doc in documents)
        sizes = ", ".join(str(size) for size in sorted(set(misfits.values())))
        if not fitting and not self._newest_vector_fits(store, batch.partition):
            raise ConfigurationError(
                f"Every vector of this batch has {sizes} dimensions, but collection {store.collection!r} holds "
                f"{dim} (the upserters' EMBEDDING_DIM): the embedder-workers' EMBEDDING_DIM and model make vectors "
                "of another size. Set them alike: either the embedder-workers' model and EMBEDDING_DIM back to "
                f"{dim}, or EMBEDDING_DIM={sizes} on the upserters with the collection rebuilt at that size."
            )
        for entry, _doc in documents:
            if entry.id in misfits:
                batch.reject(
                    entry,
                    f"vector has {misfits[entry.id]} dimensions; collection {store.collection!r} holds {dim} "
                    "(EMBEDDING_DIM): it was embedded at another size than the entries that fit now; replay it to "
                    "embed it again",
                )
        return [(entry, doc) for entry, doc in documents if entry.id not in misfits]

    def _newest_vector_fits(self, store: VectorStore, partition: int) -> bool:
        """Whether the newest entry with a vector in this partition's stage 2 stream fits the collection."""
        stream = self.partitions.name(self.settings.stage2_stream, partition)
        for _id, fields in self.client.xrevrange(stream, count=NEWEST_SAMPLE):
            try:
                vectors = EmbeddedDocument.from_fields(fields).vectors()
            except InvalidEntry:
                continue
            if vectors:
                return len(vectors[0]) == store.dim
        return False

    def _apply(self, store: VectorStore, newest: dict[str, EmbeddedDocument], batch: Batch) -> None:
        ids, fence = list(newest), self.tombstones[batch.partition]
        with self._locks_of(store)[batch.partition].hold(ids) as held:
            tombstones = fence.get(ids)
            # Recorded before the points go, so that an upsert racing with this delete finds it when it re-checks.
            fence.record({pid: doc.version for pid, doc in newest.items() if doc.op == "delete"})
            held.confirm()
            current = store.payloads(states_to_read(newest), fields=STATE_FIELDS)
            plan = plan_writes(newest, tombstones, current)
            self._model_check(store).check(list(plan.written().values()))
            held.confirm()
            upserts: list[Point] = []
            payloads: dict[str, dict[str, Any]] = {}
            kept_by: dict[str, str] = {}  # the point id of each payload write -> its document's point id
            for pid, doc in plan.written().items():
                points, kept = point_writes(pid, doc)
                upserts += points
                payloads |= kept
                kept_by |= dict.fromkeys(kept, pid)
            # After the new chunks are in, each document's points of older versions go: chunks its new version no
            # longer has, or all of them after a delete. A search meanwhile finds the old or the new version.
            store.write_if_newer(
                upserts=upserts,
                payloads=payloads,
                prune=[older_points(doc, doc.version) for doc in plan.written().values()]
                + [older_points(newest[pid], version) for pid, version in plan.deletes.items()],
            )
            self._bury_overtaken(store, plan, fence, newest)
            self._embed_lost_texts_again(store, plan, payloads, kept_by)
            if self._serves(store):
                self._record_texts(held, plan, current, batch.partition)
            else:
                held.confirm()
        for pid in plan.needs_vector:
            self.embed_again.send(newest[pid], batch)
        SUPERSEDED.inc(plan.superseded)
        POINTS_WRITTEN.labels("upsert").inc(len(upserts))
        POINTS_WRITTEN.labels("delete").inc(len(plan.deletes))
        POINTS_WRITTEN.labels("payload").inc(len(payloads))
        now = time.time()
        for doc in [*plan.written().values(), *(d for d in newest.values() if d.op == "delete")]:
            END_TO_END_LATENCY.labels("upserter").observe(max(0.0, now - doc.changed_at))

    def _embed_lost_texts_again(
        self, store: VectorStore, plan: WritePlan, payloads: dict[str, dict[str, Any]], kept_by: dict[str, str]
    ) -> None:
        """Send back to be embedded each document a payload write of which did not apply.

        A payload write keeps the point's vector, so it applies only over a point that still holds the same text by
        the same model, as the plan read it. Only a writer whose locks lapsed can change that between the read and
        the write; the prune after it then removes that point, being older. Reading the written points back finds
        such a document, whose text is then embedded again rather than left with a chunk missing.
        """
        if not payloads:
            return
        held = store.payloads(list(payloads), fields=["version"])
        lost = {
            kept_by[point]
            for point, payload in payloads.items()
            if kept_by[point] not in plan.gone  # deleted meanwhile (_bury_overtaken): no text to embed
            and (version_of(held.get(point) or {}) or (-1, -1)) < parse_version(payload["version"])
        }
        for pid in lost:
            log.warning("A payload write of document %s did not apply; embedding its text again", pid)
            plan.upserts.pop(pid, None)
            plan.payloads.pop(pid, None)
            plan.needs_vector.append(pid)
            plan.gone.add(pid)

    def _bury_overtaken(
        self, store: VectorStore, plan: WritePlan, fence: Tombstones, newest: dict[str, EmbeddedDocument]
    ) -> None:
        """Delete what this batch wrote where a newer delete landed meanwhile.

        Possible only once this upserter's locks lapsed mid-write: the other upserter's delete may have run before
        this write inserted the point again. The delete's tombstone was recorded before its point went, so one of
        the two always sees the other. A delete fenced by a tombstone can only remove a state older than a delete
        MongoDB made, so it runs whoever holds the locks now.
        """
        written = plan.written()
        if not written:
            return
        tombstones = fence.get(list(written))
        overtaken = {
            pid: version_text(version)
            for pid, version in tombstones.items()
            if version >= parse_version(written[pid].version)
        }
        if not overtaken:
            return
        log.warning("%d points written by this batch were deleted meanwhile; deleting them again", len(overtaken))
        store.write_if_newer(prune=[older_points(newest[pid], version) for pid, version in overtaken.items()])
        for pid in overtaken:
            plan.upserts.pop(pid, None)
            plan.payloads.pop(pid, None)
            plan.deletes[pid] = overtaken[pid]
            plan.gone.add(pid)

    def _record_texts(
        self, held: HeldLocks, plan: WritePlan, current: dict[str, dict[str, Any]], partition: int
    ) -> None:
        """Update the skip-unchanged hint of each point written, in one step with a last check of the locks.

        Only a hint (the upserter checks a payload-only entry against the point itself), but one that an upserter
        whose locks lapsed must not write: it could be older than what another upserter wrote since. It is kept to
        the points written last, in two generations of at most SKIP_UNCHANGED_HINT_POINTS each. The hints of
        chunks a document no longer has go, as far as its first point's chunk_count tells.
        """
        fields: dict[str, str | None] = {}
        for pid in [*plan.gone, *plan.written()]:
            fields |= dict.fromkeys(chunk_ids(pid, (current.get(pid) or {}).get("chunk_count")))
        for pid, doc in plan.written().items():
            payload = doc.payload or {}
            model = payload.get("model")
            if doc.chunks:
                for chunk_id, chunk in zip(chunk_ids(pid, len(doc.chunks)), doc.chunks, strict=True):
                    fields[chunk_id] = text_fingerprint(chunk.text_sha256, model)
                continue
            sha = payload.get("text_sha256")
            fields[pid] = text_fingerprint(sha, model) if isinstance(sha, str) else None
        hint = self.partitions.name(self.sync.applied_text_key, partition)
        held.confirm_and_set(hint, fields)
        if fields:
            previous = self.partitions.name(self.sync.applied_text_previous_key, partition)
            self._hint_upkeep(keys=[hint, previous], args=[self.settings.skip_unchanged_hint_points, *fields])
