"""The embedder-worker: stage 1 changes in, stage 2 vectors out.

Each batch asks the embedding-api to chunk the texts of the newest change of
each document (a text that fits the model's window is one chunk, its whole
text), then embeds only the chunks whose text differs from what Qdrant holds or
that another model embedded (a document with none to embed gets a payload-only
entry), in requests of at most EMBEDDING_REQUEST_TEXTS chunks. When the
embedding-api names texts its model fails on, their documents' entries are
dead-lettered and the rest embedded in one more call. Each payload names the
model the embedding-api reported for its vectors. One document is one stage 2
entry, however many chunks it has (vecsync.messages). The stage 2 entries are
queued on the batch transaction, so they commit in the same MULTI/EXEC as the
stage 1 acks.

One Embedder serves one sync (its settings are the sync's, vecsync.syncs.settings_for): texts and payloads follow
the sync's mapping (vecsync.documents.text_of and payload_of), its skip-unchanged hint is the sync's, and its
stage 2 entries go to the sync's stage 2 stream.

A model change (vecsync.reindex, docs/design.md "Changing the embedding model"): each batch reads what the sync's
collection name serves and its newest change, in one round trip. Every live change is embedded for the served
collection with the served model, as above; while a new collection is built, it is also chunked and embedded with
the new model for that collection (always embedded: the skip-unchanged hint knows the served collection only), a
second stage 2 entry in the same transaction. A snapshot entry (``build``) is embedded for the collection it names
alone, and dropped once that collection is neither built nor served (an aborted change). Each stage 2 entry names
its collection once the name's record exists; before, entries are as they always were: no collection, the
embedding-api's default model, vectors of EMBEDDING_DIM. The snapshot documents embedded for the new collection are
counted on the change's record after the batch commits.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import redis
from prometheus_client import Counter

from embedder_worker.embedding_client import EmbeddingClient, TextsRejected
from embedder_worker.settings import EmbedderSettings
from vecsync import reindex
from vecsync.batch import Batch, Entry
from vecsync.chunking import Chunk, chunk_point_id, chunks_at
from vecsync.documents import cut_text_of, payload_of, point_id, text_fingerprint, text_sha256
from vecsync.errors import InvalidEntry, TransientError
from vecsync.messages import DocumentChange, EmbeddedChunk, EmbeddedDocument, parse_version
from vecsync.syncs import sync_of

log = logging.getLogger("vecsync.embedder")

DOCUMENTS_WITHOUT_TEXT = Counter(
    "vecsync_embedder_documents_without_text_total",
    "Documents with no text in TEXT_FIELDS: their point, if any, is deleted.",
)
TEXTS_EMBEDDED = Counter(
    "vecsync_embedder_texts_embedded_total", "Texts sent to the embedding-api: documents' chunks (a short text is one)."
)
UNCHANGED_TEXTS = Counter(
    "vecsync_embedder_unchanged_texts_total",
    "Chunks whose text Qdrant already holds: only their payload is written, with no embedding call.",
)
DOCUMENTS_CHUNKED = Counter(
    "vecsync_embedder_chunked_documents_total", "Documents longer than one chunk, split into several."
)
DOCUMENTS_TRUNCATED = Counter(
    "vecsync_embedder_truncated_documents_total",
    "Documents whose text was cut: at MAX_DOCUMENT_CHARS, or without chunking at MAX_TEXT_CHARS or the model's window.",
)
COLLAPSED = Counter(
    "vecsync_embedder_collapsed_total", "Changes skipped because a newer change of the same document was in the batch."
)
BUILD_ENTRIES_DROPPED = Counter(
    "vecsync_embedder_build_entries_dropped_total",
    "Snapshot entries of a model change for a collection that is neither being built nor served (the change was "
    "aborted, or another replaced it): acknowledged without output.",
)


@dataclass(frozen=True)
class _Target:
    """A physical collection that a batch's stage 2 entries are for, as the embedder writes it.

    ``collection`` None: the name's record does not exist yet, so entries name no collection (the upserter writes
    them to whatever the name serves, as before model changes). ``model`` None: the embedding-api's default model,
    requests name none. ``dim`` None: EMBEDDING_DIM. ``served``: the collection the name serves, the one the
    skip-unchanged hint knows; a collection being built gets every text embedded.
    """

    collection: str | None
    model: str | None
    dim: int | None
    served: bool


@dataclass
class _ParsedChange:
    """A stage 1 entry read as a change, with the text, version and point id that the embedder derives from it."""

    entry: Entry
    change: DocumentChange
    text: str
    version: str  # the stage 1 id of the change: its place in the order of changes of its document
    point_id: str
    # Whether the text was cut: at its bound (documents.cut_text_of), or, without chunking, at the model's window.
    truncated: bool = False
    chunks: list[Chunk] = field(default_factory=list)

    def chunk_ids(self) -> list[str]:
        return [chunk_point_id(self.point_id, chunk.index) for chunk in self.chunks]


class Embedder:
    def __init__(self, settings: EmbedderSettings, embedding: EmbeddingClient, client: redis.Redis) -> None:
        self.settings = settings
        self.sync = sync_of(settings)
        self.embedding = embedding
        self.client = client
        self.partitions = settings.partitions

    def handle(self, batch: Batch) -> None:
        parsed = self._parse(batch)
        serving, change = reindex.read_state(self.client, self.sync.qdrant_collection)
        served = (
            _Target(serving.collection, serving.model, serving.dim, served=True)
            if serving is not None
            else _Target(None, None, None, served=True)
        )
        built = (
            _Target(change.collection, change.model or None, change.dim or None, served=False)
            if change is not None and change.building and change.collection != served.collection
            else None
        )
        for_served, for_built, dropped = self._route(parsed, served, built)
        served_work, built_work = self._newest_per_document(for_served), self._newest_per_document(for_built)
        COLLAPSED.inc(len(parsed) - len(dropped) - len({item.entry.id for item in served_work + built_work}))
        if dropped:
            BUILD_ENTRIES_DROPPED.inc(len(dropped))
            log.debug(
                "Dropped %d snapshot entries of %s for collections neither built nor served now (%s): their model "
                "change has ended.",
                len(dropped),
                self.sync.qdrant_collection,
                ", ".join(sorted({str(item.change.build) for item in dropped})),
            )
        written = self._documents_for(batch, served_work, served)
        if built is not None:
            written += self._documents_for(batch, built_work, built)
        stream = self.partitions.name(self.sync.stage2_stream, batch.partition)
        for item, document in written:
            # An entry dead-lettered by either collection's model gets no output at all: it is replayed whole.
            if item.entry.id not in batch.rejected:
                batch.tx.xadd(stream, document.to_fields())
        if built is not None:
            # Every snapshot entry for the new collection that is not dead-lettered is a snapshot document done: by
            # its own entry, or by a newer change of its document in the batch.
            snapshot = sum(
                item.change.build == built.collection and item.entry.id not in batch.rejected for item in for_built
            )
            if snapshot:
                batch.after_commit.append(lambda: self._record_progress(snapshot))

    def _route(
        self, parsed: list[_ParsedChange], served: _Target, built: _Target | None
    ) -> tuple[list[_ParsedChange], list[_ParsedChange], list[_ParsedChange]]:
        """The changes for the served collection, those for the collection being built (a live change's own copy,
        chunked with that collection's model), and the snapshot entries for neither."""
        for_served: list[_ParsedChange] = []
        for_built: list[_ParsedChange] = []
        dropped: list[_ParsedChange] = []
        for item in parsed:
            build = item.change.build
            if build is None:
                for_served.append(item)
                if built is not None:
                    for_built.append(dataclasses.replace(item, chunks=[]))
            elif built is not None and build == built.collection:
                for_built.append(item)
            elif served.collection is not None and build == served.collection:
                for_served.append(item)
            else:
                dropped.append(item)
        return for_served, for_built, dropped

    def _documents_for(
        self, batch: Batch, work: list[_ParsedChange], target: _Target
    ) -> list[tuple[_ParsedChange, EmbeddedDocument]]:
        """The stage 2 entry of each change for ``target``: chunked and embedded with its model, of its size."""
        if not work:
            return []
        self._chunk([item for item in work if item.text], target.model)
        if target.served:
            model, unchanged = self._unchanged_texts(work, batch.partition, target.model)
        else:
            model, unchanged = target.model, set()
        to_embed = [
            (item, chunk_id, chunk)
            for item in work
            for chunk_id, chunk in zip(item.chunk_ids(), item.chunks, strict=True)
            if chunk_id not in unchanged
        ]
        embedded = self._embed(batch, to_embed, target)
        reported = {made_by for _vector, made_by in embedded.values()}
        if unchanged and reported - {model}:
            # The texts kept as unchanged were judged against the old model: judge the batch again against this one.
            raise TransientError(
                f"The embedding-api now reports model {', '.join(sorted(reported))}, not {model} as this batch "
                "assumed; handling the batch again."
            )
        TEXTS_EMBEDDED.inc(len(embedded))
        UNCHANGED_TEXTS.inc(len(unchanged))
        return [
            (item, self._embedded_document(item, embedded, model, unchanged, target.collection))
            for item in work
            if item.entry.id not in batch.rejected
        ]

    def _record_progress(self, embedded: int) -> None:
        """Count snapshot documents embedded for the collection being built, once their batch has committed.

        Approximate by design (a kill between the commit and this loses a count); a failure here must not fail the
        batch, whose entries are acknowledged already.
        """
        try:
            reindex.record_progress(self.client, self.sync.qdrant_collection, embedded)
        except redis.RedisError as exc:
            log.warning(
                "Could not count %d snapshot documents embedded for the model change of %s: %s",
                embedded,
                self.sync.qdrant_collection,
                exc,
            )

    def _chunk(self, work: list[_ParsedChange], model: str | None) -> None:
        """Split each text into chunks, by the tokenizer of ``model`` (None: the embedding-api's default); without
        chunking (CHUNK_TOKENS=0) each text stays one chunk, and the split only tells whether the model reads it
        whole."""
        if not work:
            return
        chunking = self.sync.chunking
        spans = self.embedding.chunk(
            [item.text for item in work],
            tokens=self.sync.chunk_tokens if chunking else None,
            overlap=self.sync.chunk_overlap_tokens if chunking else 0,
            model=model,
        )
        for item, text_spans in zip(work, spans, strict=True):
            if chunking:
                item.chunks = chunks_at(item.text, text_spans)
            else:
                item.chunks = [Chunk(0, 0, len(item.text), item.text)]
                item.truncated = item.truncated or len(text_spans) > 1
        DOCUMENTS_CHUNKED.inc(sum(len(item.chunks) > 1 for item in work))
        DOCUMENTS_TRUNCATED.inc(sum(item.truncated for item in work))

    def _embed(
        self, batch: Batch, to_embed: list[tuple[_ParsedChange, str, Chunk]], target: _Target
    ) -> dict[str, tuple[list[float], str]]:
        """Each chunk's vector by ``target``'s model and the model that made it, by the chunk's point id.

        In requests of at most EMBEDDING_REQUEST_TEXTS chunks. The documents whose text the embedding-api's model
        fails on are dead-lettered, and the rest of that request embedded in one more call, so that no other entry of
        the batch is retried or dead-lettered with them.
        """
        vectors: dict[str, tuple[list[float], str]] = {}
        size = self.settings.embedding_request_texts
        for start in range(0, len(to_embed), size):
            part = [each for each in to_embed[start : start + size] if each[0].entry.id not in batch.rejected]
            vectors |= self._embed_request(batch, part, target)
        # A document rejected by a later request may have chunks embedded by an earlier one: handle() skips it.
        return vectors

    def _embed_request(
        self, batch: Batch, part: list[tuple[_ParsedChange, str, Chunk]], target: _Target
    ) -> dict[str, tuple[list[float], str]]:
        if not part:
            return {}
        try:
            vectors, model = self.embedding.embed_with_model(
                [chunk.text for _item, _id, chunk in part], model=target.model, dim=target.dim
            )
        except TextsRejected as exc:
            for index, reason in exc.reasons.items():
                item, _id, chunk = part[index]
                if item.entry.id not in batch.rejected:
                    where = f" (chunk {chunk.index + 1} of {len(item.chunks)})" if len(item.chunks) > 1 else ""
                    batch.reject(
                        item.entry, f"The embedding-api's model failed on this document's text{where}: {reason}"
                    )
            part = [each for each in part if each[0].entry.id not in batch.rejected]
            if not part:
                return {}
            vectors, model = self.embedding.embed_with_model(
                [chunk.text for _item, _id, chunk in part], model=target.model, dim=target.dim
            )
        return {chunk_id: (vector, model) for (_item, chunk_id, _chunk), vector in zip(part, vectors, strict=True)}

    def _parse(self, batch: Batch) -> list[_ParsedChange]:
        """Parse the batch, and dead-letter what cannot be read."""
        parsed: list[_ParsedChange] = []
        for entry in batch.entries:
            try:
                change = DocumentChange.from_fields(entry.fields)
            except InvalidEntry as exc:
                batch.reject(entry, str(exc))
                continue
            text, cut = "", False
            if change.op == "upsert":
                assert change.document is not None
                text, cut = cut_text_of(change.document, self.sync)
                if not text:
                    DOCUMENTS_WITHOUT_TEXT.inc()
            version, pid = change.version or entry.id, point_id(change.source, change.mongo_id)
            parsed.append(_ParsedChange(entry, change, text, version, pid, truncated=cut))
        return parsed

    @staticmethod
    def _newest_per_document(work: list[_ParsedChange]) -> list[_ParsedChange]:
        """Only the newest change of each document of ``work``, the changes for one collection.

        Older changes in the batch are superseded by the newest one (which holds the current state), so they are
        acknowledged without output instead of being embedded for nothing. Collapsed per collection: a snapshot
        entry for the new collection never hides a live change from the served one.
        """
        newest: dict[str, _ParsedChange] = {}
        for item in work:
            current = newest.get(item.point_id)
            if current is None or parse_version(item.version) > parse_version(current.version):
                newest[item.point_id] = item
        return list(newest.values())

    def _unchanged_texts(
        self, work: list[_ParsedChange], partition: int, served_model: str | None
    ) -> tuple[str | None, set[str]]:
        """The served collection's model, and the chunks' point ids whose text Qdrant already holds as embedded by
        that model.

        The model is the one the name's record names (``served_model``), else the embedding-api's default. One
        Redis round trip for the batch. While the model is unknown (the embedding-api cannot be reached), no text
        counts as unchanged.
        """
        candidates = [
            (chunk_id, chunk.text)
            for item in work
            if not item.change.force_embed
            for chunk_id, chunk in zip(item.chunk_ids(), item.chunks, strict=True)
        ]
        if not self.settings.skip_unchanged_text or not candidates:
            return None, set()
        model = served_model or self.embedding.current_model()
        if model is None:
            return None, set()
        ids = [chunk_id for chunk_id, _text in candidates]
        # The hint's two generations (upserter.service): the current one knows the points written since it began.
        reads = self.client.pipeline(transaction=False)
        reads.hmget(self.partitions.name(self.sync.applied_text_key, partition), ids)
        reads.hmget(self.partitions.name(self.sync.applied_text_previous_key, partition), ids)
        current, previous = reads.execute()
        return model, {
            chunk_id
            for (chunk_id, text), now, before in zip(candidates, current, previous, strict=True)
            if (now if now is not None else before) == text_fingerprint(text_sha256(text), model)
        }

    def _embedded_document(
        self,
        item: _ParsedChange,
        embedded: dict[str, tuple[list[float], str]],
        model: str | None,
        unchanged: set[str],
        collection: str | None,
    ) -> EmbeddedDocument:
        """The stage 2 entry of one document for ``collection``: a delete, its one point, or its chunks."""
        change = item.change
        common = {
            "source": change.source,
            "mongo_id": change.mongo_id,
            "changed_at": change.changed_at,
            "collection": collection,
        }
        if not item.chunks:
            # A delete, or a document with no text: either way it must have no point.
            return EmbeddedDocument(op="delete", version=item.version, **common)  # type: ignore[arg-type]
        vectors = [embedded.get(chunk_id) for chunk_id in item.chunk_ids()]
        made_by = next((made[1] for made in vectors if made is not None), model)
        assert change.document is not None and made_by is not None
        assert all(made or chunk_id in unchanged for made, chunk_id in zip(vectors, item.chunk_ids(), strict=True))
        payload = payload_of(
            change.document,
            self.sync,
            source=change.source,
            mongo_id=change.mongo_id,
            text=item.text,
            version=item.version,
            model=made_by,
        )
        payload["truncated"] = item.truncated
        op = "upsert" if any(made is not None for made in vectors) else "payload"
        if len(item.chunks) == 1:
            vector = vectors[0][0] if vectors[0] is not None else None
            return EmbeddedDocument(op=op, version=item.version, vector=vector, payload=payload, **common)  # type: ignore[arg-type]
        # What every chunk's point shares: each chunk's own text and hash travel with the chunk.
        del payload["text"], payload["text_sha256"]
        chunks = tuple(
            EmbeddedChunk(chunk.start, chunk.end, chunk.text, made[0] if made is not None else None)
            for chunk, made in zip(item.chunks, vectors, strict=True)
        )
        return EmbeddedDocument(op=op, version=item.version, payload=payload, chunks=chunks, **common)  # type: ignore[arg-type]
