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
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from prometheus_client import Counter, Gauge
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from upserter.point_locks import HeldLocks, PointLocks
from upserter.settings import UpserterSettings
from upserter.tombstones import Tombstones, oldest_version_left
from vecsync.constants import APPLIED_TEXT_KEY, APPLIED_TEXT_PREVIOUS_KEY, dlq_stream, tombstones_key
from vecsync.consumer import Batch, Entry
from vecsync.documents import point_id, source_projection, text_fingerprint
from vecsync.errors import ConfigurationError, InvalidEntry, TransientError
from vecsync.messages import DocumentChange, EmbeddedDocument, parse_version
from vecsync.metrics import END_TO_END_LATENCY
from vecsync.source import publish_current_states
from vecsync.streams import dead_letter_fields
from vecsync.vectorstore import CollectionMissing, Point, VectorStore, version_of

log = logging.getLogger("vecsync.upserter")

POINTS_WRITTEN = Counter("vecsync_upserter_points_total", "Points written to Qdrant, by operation.", ["op"])
EMBEDDED_AGAIN = Counter(
    "vecsync_upserter_embedded_again_total",
    "Payload-only changes sent back to stage 1 for a vector, because their point no longer held their text "
    "embedded by their model.",
)
REREAD_FROM_MONGO = Counter(
    "vecsync_upserter_reread_from_mongo_total",
    "Changes to embed again whose stage 1 entry was trimmed already: their documents were read from MongoDB instead.",
)
SUPERSEDED = Counter(
    "vecsync_upserter_superseded_total", "Entries skipped because a newer change of their document was already applied."
)
TOMBSTONES_REMOVED = Counter(
    "vecsync_upserter_tombstones_removed_total",
    "Tombstones removed because no change older than them was left in the streams or dead-letter streams.",
)
OTHER_MODEL_POINTS = Gauge(
    "vecsync_upserter_other_model_points",
    "Points made by another model than the entries this upserter applies (or with none recorded), in the sample of "
    "the collection it takes at its first entry; 0 when none.",
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

# The fields of a point that decide whether an entry still applies to it.
_STATE_FIELDS = ["version", "text_sha256", "model"]


@dataclass
class _Plan:
    """What one batch writes, once the points' versions and tombstones are known."""

    upserts: dict[str, EmbeddedDocument] = field(default_factory=dict)
    payloads: dict[str, EmbeddedDocument] = field(default_factory=dict)
    # Point id -> version of a delete: the batch's deletes, and points that a newer tombstone buries.
    deletes: dict[str, str] = field(default_factory=dict)
    needs_vector: list[str] = field(default_factory=list)
    superseded: int = 0
    # Points that have no point, or will have none: their skip-unchanged hints go.
    gone: set[str] = field(default_factory=set)

    def written(self) -> dict[str, EmbeddedDocument]:
        return {**self.upserts, **self.payloads}


class Upserter:
    def __init__(
        self,
        settings: UpserterSettings,
        client: redis.Redis,
        store: VectorStore,
        mongo: Collection[dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.partitions = settings.partitions
        # Each partition's locks, tombstones and hints share its hash slot (vecsync.partitions).
        self.locks = [
            PointLocks(
                client,
                holder=settings.consumer_name,
                ttl_ms=settings.point_lock_ttl_ms,
                wait_ms=settings.point_lock_wait_ms,
                key_suffix=self.partitions.name("", partition),
            )
            for partition in self.partitions.indexes()
        ]
        self.tombstones = [
            Tombstones(client, self.partitions.name(tombstones_key(store.collection), partition))
            for partition in self.partitions.indexes()
        ]
        self.models = ModelCheck(store)
        self.projection = source_projection(settings.text_fields, settings.payload_fields)
        # Read only when a change to embed again was trimmed from stage 1 (see _embed_current_state).
        self.mongo = mongo
        self._hint_upkeep = client.register_script(_HINT_UPKEEP)
        # When each partition's tombstones were last swept: the first sweep comes one interval after the start.
        self._last_sweep = dict.fromkeys(self.partitions.indexes(), time.monotonic())

    def handle(self, batch: Batch) -> None:
        newest = self._newest_per_point(batch)
        if not newest:
            return
        try:
            self._apply(newest, batch)
        except CollectionMissing:
            # Deleted by hand or by a rebuild: create it empty; the consumer loop retries the batch, which the
            # points' own versions then fence as in any other collection.
            log.warning("Qdrant collection %r is missing; creating it", self.store.collection)
            self.store.ensure_collection()
            raise
        self._sweep_if_due(batch.partition)

    def _sweep_if_due(self, partition: int) -> None:
        interval = self.settings.tombstone_sweep_interval_s
        if not interval or time.monotonic() - self._last_sweep[partition] < interval:
            return
        self._last_sweep[partition] = time.monotonic()
        try:
            removed = self.sweep_tombstones(partition)
        except Exception as exc:  # noqa: BLE001 - the tombstones stay a while longer; the batch never fails for it
            log.warning("Could not sweep the tombstones of partition %d: %s", partition, exc)
            return
        if removed:
            log.info("Removed %d tombstones that no change left in the streams can need", removed)

    def sweep_tombstones(self, partition: int) -> int:
        """Remove the partition's tombstones that no change left in its streams is older than; the number removed."""
        oldest = oldest_version_left(
            self.client,
            stage1=self.partitions.name(self.settings.stage1_stream, partition),
            stage2=self.partitions.name(self.settings.stage2_stream, partition),
        )
        if oldest is None:
            return 0
        removed = self.tombstones[partition].remove_up_to(oldest)
        TOMBSTONES_REMOVED.inc(removed)
        return removed

    def _newest_per_point(self, batch: Batch) -> dict[str, EmbeddedDocument]:
        newest: dict[str, EmbeddedDocument] = {}
        upserts: dict[str, list[EmbeddedDocument]] = collections.defaultdict(list)
        documents: list[tuple[Entry, EmbeddedDocument]] = []
        for entry in batch.entries:
            try:
                documents.append((entry, EmbeddedDocument.from_fields(entry.fields)))
            except InvalidEntry as exc:
                batch.reject(entry, str(exc))
        for _entry, document in self._fitting(documents, batch):
            pid = point_id(document.source, document.mongo_id)
            if document.op == "upsert":
                upserts[pid].append(document)
            if pid not in newest or parse_version(document.version) > parse_version(newest[pid].version):
                newest[pid] = document
        SUPERSEDED.inc(len(batch.entries) - len(batch.rejected) - len(newest))
        for pid, document in newest.items():
            if document.op == "payload":
                newest[pid] = _with_vector_of_same_text(document, upserts[pid])
        return newest

    def _fitting(
        self, documents: list[tuple[Entry, EmbeddedDocument]], batch: Batch
    ) -> list[tuple[Entry, EmbeddedDocument]]:
        """The batch's documents whose vector (if any) fits the collection; the others are rejected, or pause.

        A vector of another size than the collection's beside vectors that fit is that entry's fault: it is
        dead-lettered. When no vector of the batch fits, the embedder-workers make vectors of another size than
        the upserters' EMBEDDING_DIM: a misconfiguration that would fail every entry alike, so the stage pauses
        (ConfigurationError) until the newest entries of the stream fit again. Then the entries made before the
        fix are stale and go to the dead-letter stream, to be replayed (embedded again).
        """
        dim = self.store.dim
        misfits = {
            entry.id: len(doc.vector) for entry, doc in documents if doc.vector is not None and len(doc.vector) != dim
        }
        if not misfits:
            return documents
        fitting = any(doc.vector is not None and entry.id not in misfits for entry, doc in documents)
        sizes = ", ".join(str(size) for size in sorted(set(misfits.values())))
        if not fitting and not self._newest_vector_fits(batch.partition):
            raise ConfigurationError(
                f"Every vector of this batch has {sizes} dimensions, but collection {self.store.collection!r} holds "
                f"{dim} (the upserters' EMBEDDING_DIM): the embedder-workers' EMBEDDING_DIM and model make vectors "
                "of another size. Set them alike: either the embedder-workers' model and EMBEDDING_DIM back to "
                f"{dim}, or EMBEDDING_DIM={sizes} on the upserters with the collection rebuilt at that size."
            )
        for entry, _doc in documents:
            if entry.id in misfits:
                batch.reject(
                    entry,
                    f"vector has {misfits[entry.id]} dimensions; collection {self.store.collection!r} holds {dim} "
                    "(EMBEDDING_DIM): it was embedded at another size than the entries that fit now; replay it to "
                    "embed it again",
                )
        return [(entry, doc) for entry, doc in documents if entry.id not in misfits]

    def _newest_vector_fits(self, partition: int) -> bool:
        """Whether the newest entry with a vector in this partition's stage 2 stream fits the collection."""
        stream = self.partitions.name(self.settings.stage2_stream, partition)
        for _id, fields in self.client.xrevrange(stream, count=NEWEST_SAMPLE):
            try:
                vector = EmbeddedDocument.from_fields(fields).vector
            except InvalidEntry:
                continue
            if vector is not None:
                return len(vector) == self.store.dim
        return False

    def _apply(self, newest: dict[str, EmbeddedDocument], batch: Batch) -> None:
        ids, fence = list(newest), self.tombstones[batch.partition]
        with self.locks[batch.partition].hold(ids) as held:
            tombstones = fence.get(ids)
            # Recorded before the points go, so that an upsert racing with this delete finds it when it re-checks.
            fence.record({pid: doc.version for pid, doc in newest.items() if doc.op == "delete"})
            held.confirm()
            current = self.store.payloads(ids, fields=_STATE_FIELDS)
            plan = _plan(newest, tombstones, current)
            self.models.check(list(plan.written().values()))
            held.confirm()
            self.store.write_if_newer(
                upserts=[_point(pid, doc) for pid, doc in plan.upserts.items()],
                payloads={pid: _payload(doc) for pid, doc in plan.payloads.items()},
                deletes=plan.deletes,
            )
            self._bury_overtaken(plan, fence)
            self._record_texts(held, plan, batch.partition)
        for pid in plan.needs_vector:
            self._embed_again(newest[pid], batch)
        SUPERSEDED.inc(plan.superseded)
        POINTS_WRITTEN.labels("upsert").inc(len(plan.upserts))
        POINTS_WRITTEN.labels("delete").inc(len(plan.deletes))
        POINTS_WRITTEN.labels("payload").inc(len(plan.payloads))
        now = time.time()
        for doc in [*plan.written().values(), *(d for d in newest.values() if d.op == "delete")]:
            END_TO_END_LATENCY.labels("upserter").observe(max(0.0, now - doc.changed_at))

    def _bury_overtaken(self, plan: _Plan, fence: Tombstones) -> None:
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
            pid: _version_text(version)
            for pid, version in tombstones.items()
            if version >= parse_version(written[pid].version)
        }
        if not overtaken:
            return
        log.warning("%d points written by this batch were deleted meanwhile; deleting them again", len(overtaken))
        self.store.write_if_newer(deletes=overtaken)
        for pid in overtaken:
            plan.upserts.pop(pid, None)
            plan.payloads.pop(pid, None)
            plan.deletes[pid] = overtaken[pid]
            plan.gone.add(pid)

    def _record_texts(self, held: HeldLocks, plan: _Plan, partition: int) -> None:
        """Update the skip-unchanged hint of each point written, in one step with a last check of the locks.

        Only a hint (the upserter checks a payload-only entry against the point itself), but one that an upserter
        whose locks lapsed must not write: it could be older than what another upserter wrote since. It is kept to
        the points written last, in two generations of at most SKIP_UNCHANGED_HINT_POINTS each.
        """
        fields: dict[str, str | None] = dict.fromkeys(plan.gone)
        for pid, doc in plan.written().items():
            payload = doc.payload or {}
            sha = payload.get("text_sha256")
            fields[pid] = text_fingerprint(sha, payload.get("model")) if isinstance(sha, str) else None
        current = self.partitions.name(APPLIED_TEXT_KEY, partition)
        held.confirm_and_set(current, fields)
        if fields:
            previous = self.partitions.name(APPLIED_TEXT_PREVIOUS_KEY, partition)
            self._hint_upkeep(keys=[current, previous], args=[self.settings.skip_unchanged_hint_points, *fields])

    def _embed_again(self, doc: EmbeddedDocument, batch: Batch) -> None:
        """Queue the change behind a payload-only entry again to be embedded, keeping its place in the order."""
        EMBEDDED_AGAIN.inc()
        stage1 = self.partitions.name(self.settings.stage1_stream, batch.partition)
        original = self.client.xrange(stage1, min=doc.version, max=doc.version)
        if original:
            change = DocumentChange.from_fields(original[0][1])
            again = replace(change, version=doc.version, force_embed=True)
            batch.tx.xadd(stage1, again.to_fields())
            return
        if doc.source == self.settings.source:
            self._embed_current_state(doc)
            return
        # A document of another collection than MONGO_DATABASE.MONGO_COLLECTION: `vecsync dlq replay`, run with
        # that collection's settings, reads it.
        letter = dead_letter_fields(
            stream=stage1,
            group=self.settings.stage2_group,
            entry_id=doc.version,
            fields={"source": doc.source, "mongo_id": doc.mongo_id},
            error="the text was unchanged but the point no longer holds it embedded by the same model, the "
            f"change was trimmed from {stage1}, and its document is in {doc.source}, not in {self.settings.source} "
            "(MONGO_DATABASE.MONGO_COLLECTION), which this upserter reads: replay this letter with the CLI's "
            "MONGO_DATABASE and MONGO_COLLECTION set to its collection to embed the document again",
            deliveries=1,
            consumer=self.settings.consumer_name,
        )
        batch.tx.xadd(dlq_stream(stage1), letter)

    def _embed_current_state(self, doc: EmbeddedDocument) -> None:
        """Publish the document's current state, read from MongoDB, to be embedded: the change itself was trimmed.

        The same re-read as `vecsync dlq replay` (source.publish_current_states): its new stage 1 entry comes after
        every change the producer published before it and holds a state no older than theirs, so it takes the
        trimmed change's place. It is written before the batch is acknowledged; a crash in between publishes it
        again, which the stages absorb.
        """
        try:
            publish_current_states(
                self.client,
                self.settings,
                self.mongo,
                doc.source,
                [doc.mongo_id],
                projection=self.projection,
                force_embed=True,
            )
        except PyMongoError as exc:
            raise TransientError(
                f"could not read document {doc.mongo_id} of {doc.source} from MongoDB to embed it again ({exc}); "
                "its change was trimmed from stage 1, so MongoDB is the only source of its text. Check MONGO_URI"
            ) from exc
        REREAD_FROM_MONGO.inc()
        log.info("Document %s of %s was read from MongoDB to be embedded again", doc.mongo_id, doc.source)


def _plan(
    newest: dict[str, EmbeddedDocument],
    tombstones: dict[str, tuple[int, int]],
    current: dict[str, dict[str, Any]],
) -> _Plan:
    """Sort the batch's entries by what each needs, given their points as they are and their tombstones."""
    plan = _Plan()
    for pid, doc in newest.items():
        version, point = parse_version(doc.version), current.get(pid)
        # Read from the `version` string, which points written before the numeric fields also carry.
        held_version = version_of(point) if point is not None else None
        tombstone = tombstones.get(pid)
        if doc.op == "delete" or (tombstone is not None and tombstone >= version):
            # A delete, or an entry that a newer delete overtook: no point may keep an older state (a write that
            # lost its locks could have left one behind).
            deleted_at = version if doc.op == "delete" else tombstone
            assert deleted_at is not None
            if held_version is not None and held_version >= deleted_at:
                plan.superseded += 1  # the document was written again since
                continue
            if doc.op != "delete":
                plan.superseded += 1
            plan.gone.add(pid)
            if point is not None:
                plan.deletes[pid] = _version_text(deleted_at)
            continue
        if held_version is not None and held_version >= version:
            plan.superseded += 1
        elif doc.op == "upsert":
            plan.upserts[pid] = doc
        elif point is not None and _same_text_and_model(point, doc.payload or {}):
            plan.payloads[pid] = doc
        else:
            plan.needs_vector.append(pid)
    return plan


def _same_text_and_model(point: dict[str, Any], payload: dict[str, Any]) -> bool:
    return point.get("text_sha256") == payload.get("text_sha256") and point.get("model") == payload.get("model")


def _with_vector_of_same_text(document: EmbeddedDocument, upserts: list[EmbeddedDocument]) -> EmbeddedDocument:
    """A payload-only entry as an upsert, when its batch holds an older upsert of the same text by the same model.

    Collapsing a batch to the newest entry per point would otherwise lose the vector that a replay of stage 2
    (a rebuild) carries, and send the change back to be embedded although its vector is at hand.
    """
    payload = document.payload or {}
    for upsert in reversed(upserts):
        if _same_text_and_model(upsert.payload or {}, payload):
            return replace(document, op="upsert", vector=upsert.vector)
    return document


def _payload(doc: EmbeddedDocument) -> dict[str, Any]:
    # The entry's version is the one the fence compares, whatever its payload says.
    return {**(doc.payload or {}), "version": doc.version}


def _point(pid: str, doc: EmbeddedDocument) -> Point:
    assert doc.vector is not None
    return Point(pid, doc.vector, _payload(doc))


def _version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}-{version[1]}"


class ModelCheck:
    """Warns once when the collection holds points made by another model than the entries being applied.

    Vectors of two models live in different spaces, so searches over a collection that mixes them rank badly.
    The upserter does not know its model until it applies an entry; the first such entry is compared with a sample
    of the collection taken then, before this upserter wrote anything.
    """

    SAMPLE = 1000

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self.done = False

    def check(self, documents: list[EmbeddedDocument]) -> None:
        if self.done:
            return
        if not documents:
            return
        # The newest entry's model is the one the embedder-workers use now.
        newest = max(documents, key=lambda doc: parse_version(doc.version))
        model = (newest.payload or {}).get("model")
        page, _next = self.store.scroll(limit=self.SAMPLE, offset=None, fields=["model"])
        self.done = True
        counts = collections.Counter(payload.get("model") for payload in page.values())
        others = {name: count for name, count in counts.items() if name != model}
        OTHER_MODEL_POINTS.set(sum(others.values()))
        if others:
            found = ", ".join(
                f"{n} by {name!r}" if name else f"{n} with no model recorded" for name, n in others.items()
            )
            log.warning(
                "Qdrant collection %r holds points made by another model than %r, the model of the entries this "
                "upserter applies: %s, in a sample of %d points. Searches mix vectors of different models until "
                "those points are embedded again: run `vecsync verify --repair`.",
                self.store.collection,
                model,
                found,
                len(page),
            )
