"""The upserter: stage 2 entries in, Qdrant points out.

No stale overwrite: every entry carries the stage 1 entry id of its change as
its version. Under the points' locks, the upserter drops entries not newer than
the version last applied to their point (deletes included, as tombstones),
writes the rest with wait=true, then records their versions. Entries are acked
only after that, so a crash at any step leads to a redelivery that is either
re-applied (same version) or skipped (superseded).

A payload-only entry (its text was unchanged) is applied only if its point
still holds that text; otherwise its change goes back to stage 1 to be
embedded, keeping its version. See docs/design.md.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import redis
from prometheus_client import Counter

from upserter.point_locks import PointLocks
from upserter.settings import UpserterSettings
from vecsync.constants import APPLIED_TEXT_KEY, APPLIED_VERSIONS_KEY, dlq_stream
from vecsync.consumer import Batch
from vecsync.documents import point_id, text_fingerprint
from vecsync.errors import InvalidEntry
from vecsync.messages import DocumentChange, EmbeddedDocument, parse_version
from vecsync.metrics import END_TO_END_LATENCY
from vecsync.streams import dead_letter_fields
from vecsync.vectorstore import Point, VectorStore

POINTS_WRITTEN = Counter("vecsync_upserter_points_total", "Points written to Qdrant, by operation.", ["op"])
EMBEDDED_AGAIN = Counter(
    "vecsync_upserter_embedded_again_total",
    "Payload-only changes sent back to stage 1 for a vector, because their point no longer held their text.",
)
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
            self._apply(newest, batch)

    def _read(self, fields: dict[str, str]) -> EmbeddedDocument:
        document = EmbeddedDocument.from_fields(fields)
        if document.vector is not None and len(document.vector) != self.store.dim:
            raise InvalidEntry(
                f"vector has {len(document.vector)} dimensions; collection {self.store.collection!r} "
                f"holds {self.store.dim} (EMBEDDING_DIM)"
            )
        return document

    def _apply(self, newest: dict[str, EmbeddedDocument], batch: Batch) -> None:
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
            payloads, needs_vector = self._payload_updates(fresh)
            self.store.upsert(upserts)
            self.store.delete(deletes)
            self.store.overwrite_payloads(payloads)
            applied_now = {pid: doc for pid, doc in fresh.items() if pid not in needs_vector}
            self._record(applied_now)
        for pid in needs_vector:
            self._embed_again(fresh[pid], batch)
        SUPERSEDED.inc(len(newest) - len(fresh))
        POINTS_WRITTEN.labels("upsert").inc(len(upserts))
        POINTS_WRITTEN.labels("delete").inc(len(deletes))
        POINTS_WRITTEN.labels("payload").inc(len(payloads))
        now = time.time()
        for doc in applied_now.values():
            END_TO_END_LATENCY.labels("upserter").observe(max(0.0, now - doc.changed_at))

    def _payload_updates(self, fresh: dict[str, EmbeddedDocument]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Split payload-only changes into those whose point still holds their text, and those that need a vector.

        The embedder-worker skipped embedding because the text looked unchanged; Qdrant decides: the point may have
        been deleted, rebuilt or rewritten with another text since the worker looked.
        """
        wanted = {pid: doc for pid, doc in fresh.items() if doc.op == "payload"}
        if not wanted:
            return {}, []
        current = self.store.payloads(list(wanted), fields=["text_sha256"])
        payloads, needs_vector = {}, []
        for pid, doc in wanted.items():
            assert doc.payload is not None
            if current.get(pid, {}).get("text_sha256") == doc.payload["text_sha256"]:
                payloads[pid] = doc.payload
            else:
                needs_vector.append(pid)
        return payloads, needs_vector

    def _record(self, applied: dict[str, EmbeddedDocument]) -> None:
        """Remember each point's version (deletes too, as tombstones) and the hash of its text."""
        if not applied:
            return
        with self.client.pipeline(transaction=True) as tx:
            tx.hset(APPLIED_VERSIONS_KEY, mapping={pid: doc.version for pid, doc in applied.items()})
            payloads = {pid: doc.payload or {} for pid, doc in applied.items()}
            known = {
                pid: text_fingerprint(payload["text_sha256"], payload.get("model"))
                for pid, payload in payloads.items()
                if isinstance(payload.get("text_sha256"), str)
            }
            if known:
                tx.hset(APPLIED_TEXT_KEY, mapping=known)
            # Deleted, or written without a text hash: never skip embedding for these.
            unknown = [pid for pid in payloads if pid not in known]
            if unknown:
                tx.hdel(APPLIED_TEXT_KEY, *unknown)
            tx.execute()

    def _embed_again(self, doc: EmbeddedDocument, batch: Batch) -> None:
        """Queue the change behind a payload-only entry again to be embedded, keeping its place in the order."""
        EMBEDDED_AGAIN.inc()
        stage1 = self.settings.stage1_stream
        original = self.client.xrange(stage1, min=doc.version, max=doc.version)
        if original:
            change = DocumentChange.from_fields(original[0][1])
            again = replace(change, version=doc.version, force_embed=True)
            batch.tx.xadd(stage1, again.to_fields())
            return
        # Trimmed already: the change can only be recovered from MongoDB, which `vecsync dlq replay` reads.
        letter = dead_letter_fields(
            stream=stage1,
            group=self.settings.stage2_group,
            entry_id=doc.version,
            fields={"source": doc.source, "mongo_id": doc.mongo_id},
            error="the text was unchanged but the point no longer holds it, and the change was trimmed from "
            f"{stage1}: replay this letter to embed the document again",
            deliveries=1,
            consumer=self.settings.consumer_name,
        )
        batch.tx.xadd(dlq_stream(stage1), letter)
