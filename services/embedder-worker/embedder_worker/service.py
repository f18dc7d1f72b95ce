"""The embedder-worker: stage 1 changes in, stage 2 vectors out.

Each batch makes one embedding-api call: only for the newest change of each
document, and only when its text differs from the text Qdrant holds or another
model embedded it (otherwise a payload-only entry is written). When the
embedding-api names texts its model fails on, those entries are dead-lettered
and the rest of the batch is embedded in one more call. Each payload names the
model the embedding-api reported for its vector. The stage 2 entries are queued
on the batch transaction, so they commit in the same MULTI/EXEC as the stage 1
acks.

One Embedder serves one sync (its settings are the sync's, vecsync.syncs.settings_for): texts and payloads follow
the sync's mapping (vecsync.documents.text_of and payload_of), its skip-unchanged hint is the sync's, and its
stage 2 entries go to the sync's stage 2 stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from prometheus_client import Counter

from embedder_worker.embedding_client import EmbeddingClient, TextsRejected
from embedder_worker.settings import EmbedderSettings
from vecsync.batch import Batch, Entry
from vecsync.documents import payload_of, point_id, text_fingerprint, text_of, text_sha256
from vecsync.errors import InvalidEntry, TransientError
from vecsync.messages import DocumentChange, EmbeddedDocument, parse_version
from vecsync.syncs import sync_of

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
class _ParsedChange:
    """A stage 1 entry read as a change, with the text, version and point id that the embedder derives from it."""

    entry: Entry
    change: DocumentChange
    text: str
    version: str  # the stage 1 id of the change: its place in the order of changes of its document
    point_id: str


class Embedder:
    def __init__(self, settings: EmbedderSettings, embedding: EmbeddingClient, client: redis.Redis) -> None:
        self.settings = settings
        self.sync = sync_of(settings)
        self.embedding = embedding
        self.client = client
        self.partitions = settings.partitions

    def handle(self, batch: Batch) -> None:
        work = self._newest_per_document(batch)
        model, unchanged = self._unchanged_texts(work, batch.partition)
        to_embed = [item for item in work if item.text and item.point_id not in unchanged]
        embedded = self._embed(batch, to_embed)
        reported = {made_by for _vector, made_by in embedded.values()}
        if unchanged and reported - {model}:
            # The texts kept as unchanged were judged against the old model: judge the batch again against this one.
            raise TransientError(
                f"The embedding-api now reports model {', '.join(sorted(reported))}, not {model} as this batch "
                "assumed; handling the batch again."
            )
        TEXTS_EMBEDDED.inc(len(embedded))
        UNCHANGED_TEXTS.inc(len(unchanged))
        for item in work:
            if item.entry.id in batch.rejected:
                continue
            vector, made_by = embedded.get(item.point_id, (None, model))
            output = self._embedded_document(item, vector, made_by, item.point_id in unchanged)
            batch.tx.xadd(self.partitions.name(self.sync.stage2_stream, batch.partition), output.to_fields())

    def _embed(self, batch: Batch, to_embed: list[_ParsedChange]) -> dict[str, tuple[list[float], str]]:
        """Each text's vector and the model that made it, by point id.

        Entries whose text the embedding-api's model fails on are dead-lettered, and the rest embedded in one more
        call, so that no other entry of the batch is retried or dead-lettered with them.
        """
        if not to_embed:
            return {}
        try:
            vectors = self.embedding.embed([item.text for item in to_embed])
        except TextsRejected as exc:
            for index, reason in exc.reasons.items():
                batch.reject(
                    to_embed[index].entry, f"The embedding-api's model failed on this document's text: {reason}"
                )
            to_embed = [item for index, item in enumerate(to_embed) if index not in exc.reasons]
            vectors = self.embedding.embed([item.text for item in to_embed]) if to_embed else []
        model = self.embedding.model or self.settings.embedding_model
        return {item.point_id: (vector, model) for item, vector in zip(to_embed, vectors, strict=True)}

    def _newest_per_document(self, batch: Batch) -> list[_ParsedChange]:
        """Parse the batch, dead-letter what cannot be read, and keep only the newest change of each document.

        Older changes in the batch are superseded by the newest one (which holds the current state), so they are
        acknowledged without output instead of being embedded for nothing.
        """
        newest: dict[str, _ParsedChange] = {}
        for entry in batch.entries:
            try:
                change = DocumentChange.from_fields(entry.fields)
            except InvalidEntry as exc:
                batch.reject(entry, str(exc))
                continue
            text = ""
            if change.op == "upsert":
                assert change.document is not None
                text = text_of(change.document, self.sync)
                if not text:
                    DOCUMENTS_WITHOUT_TEXT.inc()
            item = _ParsedChange(
                entry, change, text, change.version or entry.id, point_id(change.source, change.mongo_id)
            )
            current = newest.get(item.point_id)
            if current is None or parse_version(item.version) > parse_version(current.version):
                newest[item.point_id] = item
        COLLAPSED.inc(len(batch.entries) - len(batch.rejected) - len(newest))
        return list(newest.values())

    def _unchanged_texts(self, work: list[_ParsedChange], partition: int) -> tuple[str | None, set[str]]:
        """The embedding-api's model, and the point ids whose text Qdrant already holds as embedded by that model.

        One Redis round trip for the batch. While the model is unknown (the embedding-api cannot be reached), no
        text counts as unchanged.
        """
        candidates = [item for item in work if item.text and not item.change.force_embed]
        if not self.settings.skip_unchanged_text or not candidates:
            return None, set()
        model = self.embedding.current_model()
        if model is None:
            return None, set()
        ids = [item.point_id for item in candidates]
        # The hint's two generations (upserter.service): the current one knows the points written since it began.
        reads = self.client.pipeline(transaction=False)
        reads.hmget(self.partitions.name(self.sync.applied_text_key, partition), ids)
        reads.hmget(self.partitions.name(self.sync.applied_text_previous_key, partition), ids)
        current, previous = reads.execute()
        return model, {
            item.point_id
            for item, now, before in zip(candidates, current, previous, strict=True)
            if (now if now is not None else before) == text_fingerprint(text_sha256(item.text), model)
        }

    def _embedded_document(
        self, item: _ParsedChange, vector: list[float] | None, model: str | None, unchanged: bool
    ) -> EmbeddedDocument:
        change = item.change
        common = {"source": change.source, "mongo_id": change.mongo_id, "changed_at": change.changed_at}
        if vector is None and not unchanged:
            # A delete, or a document with no text: either way it must have no point.
            return EmbeddedDocument(op="delete", version=item.version, **common)  # type: ignore[arg-type]
        assert change.document is not None and model is not None
        payload = payload_of(
            change.document,
            self.sync,
            source=change.source,
            mongo_id=change.mongo_id,
            text=item.text,
            version=item.version,
            model=model,
        )
        op = "payload" if unchanged else "upsert"
        return EmbeddedDocument(op=op, version=item.version, vector=vector, payload=payload, **common)  # type: ignore[arg-type]
