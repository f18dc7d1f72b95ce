"""The embedder-worker: stage 1 changes in, stage 2 vectors out.

Each batch makes one embedding-api call. The stage 2 entries are queued on the
batch transaction, so they commit in the same MULTI/EXEC as the stage 1 acks.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.settings import EmbedderSettings
from vecsync.consumer import Batch, Entry
from vecsync.documents import build_payload, build_text
from vecsync.errors import InvalidEntry
from vecsync.messages import DocumentChange, EmbeddedDocument

DOCUMENTS_WITHOUT_TEXT = Counter(
    "vecsync_embedder_documents_without_text_total",
    "Documents with no text in TEXT_FIELDS: their point, if any, is deleted.",
)
TEXTS_EMBEDDED = Counter("vecsync_embedder_texts_embedded_total", "Texts sent to the embedding-api.")


@dataclass
class _Work:
    entry: Entry
    change: DocumentChange
    text: str


class Embedder:
    def __init__(self, settings: EmbedderSettings, embedding: EmbeddingClient) -> None:
        self.settings = settings
        self.embedding = embedding

    def handle(self, batch: Batch) -> None:
        work: list[_Work] = []
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
            work.append(_Work(entry, change, text))

        to_embed = [item for item in work if item.text]
        vectors = self.embedding.embed([item.text for item in to_embed]) if to_embed else []
        TEXTS_EMBEDDED.inc(len(to_embed))
        vector_of = {id(item): vector for item, vector in zip(to_embed, vectors, strict=True)}

        for item in work:
            batch.tx.xadd(self.settings.stage2_stream, self._output(item, vector_of.get(id(item))).to_fields())

    def _output(self, item: _Work, vector: list[float] | None) -> EmbeddedDocument:
        change = item.change
        common = {"source": change.source, "mongo_id": change.mongo_id, "changed_at": change.changed_at}
        if vector is None:
            # A delete, or a document with no text: either way it must have no point.
            return EmbeddedDocument(op="delete", version=item.entry.id, **common)  # type: ignore[arg-type]
        assert change.document is not None
        payload = build_payload(
            change.document,
            self.settings.payload_fields,
            source=change.source,
            mongo_id=change.mongo_id,
            text=item.text,
            version=item.entry.id,
        )
        return EmbeddedDocument(op="upsert", version=item.entry.id, vector=vector, payload=payload, **common)  # type: ignore[arg-type]
