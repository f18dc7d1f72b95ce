"""The embedder-worker: stage 1 changes in, stage 2 vectors out.

Each batch makes at most one embedding-api call: only for the newest change of
each document, and only when its text differs from the text Qdrant holds
(otherwise a payload-only entry is written). The stage 2 entries are queued on
the batch transaction, so they commit in the same MULTI/EXEC as the stage 1 acks.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from prometheus_client import Counter

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.settings import EmbedderSettings
from vecsync.constants import APPLIED_TEXT_KEY
from vecsync.consumer import Batch, Entry
from vecsync.documents import build_payload, build_text, point_id, text_fingerprint, text_sha256
from vecsync.errors import InvalidEntry
from vecsync.messages import DocumentChange, EmbeddedDocument, parse_version

DOCUMENTS_WITHOUT_TEXT = Counter(
    "vecsync_embedder_documents_without_text_total",
    "Documents with no text in TEXT_FIELDS: their point, if any, is deleted.",
)
TEXTS_EMBEDDED = Counter("vecsync_embedder_texts_embedded_total", "Texts sent to the embedding-api.")
UNCHANGED_TEXTS = Counter(
    "vecsync_embedder_unchanged_texts_total",
    "Changes whose text Qdrant already holds: only their payload is written, with no embedding call.",
)
COLLAPSED = Counter(
    "vecsync_embedder_collapsed_total", "Changes skipped because a newer change of the same document was in the batch."
)


@dataclass
class _Work:
    entry: Entry
    change: DocumentChange
    text: str
    version: str  # the stage 1 id of the change: its place in the order of changes of its document
    point_id: str


class Embedder:
    def __init__(self, settings: EmbedderSettings, embedding: EmbeddingClient, client: redis.Redis) -> None:
        self.settings = settings
        self.embedding = embedding
        self.client = client

    def handle(self, batch: Batch) -> None:
        work = self._newest_per_document(batch)
        unchanged = self._unchanged_texts(work)
        to_embed = [item for item in work if item.text and item.point_id not in unchanged]
        vectors = self.embedding.embed([item.text for item in to_embed]) if to_embed else []
        TEXTS_EMBEDDED.inc(len(to_embed))
        UNCHANGED_TEXTS.inc(len(unchanged))
        vector_of = {item.point_id: vector for item, vector in zip(to_embed, vectors, strict=True)}
        for item in work:
            output = self._output(item, vector_of.get(item.point_id), item.point_id in unchanged)
            batch.tx.xadd(self.settings.stage2_stream, output.to_fields())

    def _newest_per_document(self, batch: Batch) -> list[_Work]:
        """Parse the batch, dead-letter what cannot be read, and keep only the newest change of each document.

        Older changes in the batch are superseded by the newest one (which holds the current state), so they are
        acknowledged without output instead of being embedded for nothing.
        """
        newest: dict[str, _Work] = {}
        for entry in batch.entries:
            try:
                change = DocumentChange.from_fields(entry.fields)
            except InvalidEntry as exc:
                batch.reject(entry, str(exc))
                continue
            text = ""
            if change.op == "upsert":
                assert change.document is not None
                text = build_text(change.document, self.settings.text_fields, self.settings.max_text_chars)
                if not text:
                    DOCUMENTS_WITHOUT_TEXT.inc()
            item = _Work(entry, change, text, change.version or entry.id, point_id(change.source, change.mongo_id))
            current = newest.get(item.point_id)
            if current is None or parse_version(item.version) > parse_version(current.version):
                newest[item.point_id] = item
        COLLAPSED.inc(len(batch.entries) - len(batch.rejected) - len(newest))
        return list(newest.values())

    def _unchanged_texts(self, work: list[_Work]) -> set[str]:
        """Point ids whose text is the one Qdrant already holds: one Redis round trip for the batch."""
        candidates = [item for item in work if item.text and not item.change.force_embed]
        if not self.settings.skip_unchanged_text or not candidates:
            return set()
        stored = self.client.hmget(APPLIED_TEXT_KEY, [item.point_id for item in candidates])
        model = self.settings.embedding_model
        return {
            item.point_id
            for item, stored_fingerprint in zip(candidates, stored, strict=True)
            if stored_fingerprint == text_fingerprint(text_sha256(item.text), model)
        }

    def _output(self, item: _Work, vector: list[float] | None, unchanged: bool) -> EmbeddedDocument:
        change = item.change
        common = {"source": change.source, "mongo_id": change.mongo_id, "changed_at": change.changed_at}
        if vector is None and not unchanged:
            # A delete, or a document with no text: either way it must have no point.
            return EmbeddedDocument(op="delete", version=item.version, **common)  # type: ignore[arg-type]
        assert change.document is not None
        payload = build_payload(
            change.document,
            self.settings.payload_fields,
            source=change.source,
            mongo_id=change.mongo_id,
            text=item.text,
            version=item.version,
            model=self.settings.embedding_model,
        )
        op = "payload" if unchanged else "upsert"
        return EmbeddedDocument(op=op, version=item.version, vector=vector, payload=payload, **common)  # type: ignore[arg-type]
