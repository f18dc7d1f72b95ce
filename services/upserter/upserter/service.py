"""The upserter: stage 2 entries in, Qdrant points out.

No stale overwrite: every entry carries the stage 1 entry id of its change as
its version. Under the points' locks, the upserter drops entries not newer than
the version last applied to their point (deletes included, as tombstones),
writes the rest with wait=true, then records their versions. Entries are acked
only after that, so a crash at any step leads to a redelivery that is either
re-applied (same version) or skipped (superseded). See docs/design.md.
"""

from __future__ import annotations

import time

import redis
from prometheus_client import Counter

from upserter.point_locks import PointLocks
from upserter.settings import UpserterSettings
from vecsync.constants import APPLIED_VERSIONS_KEY
from vecsync.consumer import Batch
from vecsync.documents import point_id
from vecsync.errors import InvalidEntry
from vecsync.messages import EmbeddedDocument, parse_version
from vecsync.metrics import END_TO_END_LATENCY
from vecsync.vectorstore import Point, VectorStore

POINTS_WRITTEN = Counter("vecsync_upserter_points_total", "Points written to Qdrant, by operation.", ["op"])
SUPERSEDED = Counter(
    "vecsync_upserter_superseded_total", "Entries skipped because a newer change of their document was already applied."
)


class Upserter:
    def __init__(self, settings: UpserterSettings, client: redis.Redis, store: VectorStore) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.locks = PointLocks(
            client,
            holder=settings.consumer_name,
            ttl_ms=settings.point_lock_ttl_ms,
            wait_ms=settings.point_lock_wait_ms,
        )

    def handle(self, batch: Batch) -> None:
        newest: dict[str, EmbeddedDocument] = {}
        for entry in batch.entries:
            try:
                document = self._read(entry.fields)
            except InvalidEntry as exc:
                batch.reject(entry, str(exc))
                continue
            pid = point_id(document.source, document.mongo_id)
            if pid not in newest or parse_version(document.version) > parse_version(newest[pid].version):
                newest[pid] = document
        SUPERSEDED.inc(len(batch.entries) - len(batch.rejected) - len(newest))
        if newest:
            self._apply(newest)

    def _read(self, fields: dict[str, str]) -> EmbeddedDocument:
        document = EmbeddedDocument.from_fields(fields)
        if document.vector is not None and len(document.vector) != self.store.dim:
            raise InvalidEntry(
                f"vector has {len(document.vector)} dimensions; collection {self.store.collection!r} "
                f"holds {self.store.dim} (EMBEDDING_DIM)"
            )
        return document

    def _apply(self, newest: dict[str, EmbeddedDocument]) -> None:
        ids = list(newest)
        with self.locks.hold(ids):
            applied = self.client.hmget(APPLIED_VERSIONS_KEY, ids)
            fresh = {
                pid: doc
                for pid, doc, version in zip(ids, newest.values(), applied, strict=True)
                if version is None or parse_version(doc.version) > parse_version(version)
            }
            upserts = [Point(pid, doc.vector, doc.payload) for pid, doc in fresh.items() if doc.op == "upsert"]  # type: ignore[arg-type]
            deletes = [pid for pid, doc in fresh.items() if doc.op == "delete"]
            self.store.upsert(upserts)
            self.store.delete(deletes)
            if fresh:
                self.client.hset(APPLIED_VERSIONS_KEY, mapping={pid: doc.version for pid, doc in fresh.items()})
        SUPERSEDED.inc(len(newest) - len(fresh))
        POINTS_WRITTEN.labels("upsert").inc(len(upserts))
        POINTS_WRITTEN.labels("delete").inc(len(deletes))
        now = time.time()
        for doc in fresh.values():
            END_TO_END_LATENCY.labels("upserter").observe(max(0.0, now - doc.changed_at))
