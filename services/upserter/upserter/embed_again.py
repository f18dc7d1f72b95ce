"""A payload-only change whose point no longer holds its text, sent back to stage 1 to be embedded.

The change goes back with its version, so it keeps its place in the order. Once
retention has trimmed it from stage 1, its document is read from MongoDB again
and published to stage 1 as `vecsync dlq replay` does (a document outside the
sync's filter reads as gone, so its point is deleted); a document of another
collection than the sync's becomes a dead letter for the CLI.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from prometheus_client import Counter
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from upserter.settings import UpserterSettings
from vecsync.batch import Batch
from vecsync.constants import dlq_stream
from vecsync.dead_letters import dead_letter_fields
from vecsync.documents import source_projection
from vecsync.errors import TransientError
from vecsync.messages import DocumentChange, EmbeddedDocument
from vecsync.stage1 import publish_current_states, send_back_to_embed

log = logging.getLogger("vecsync.upserter")

EMBEDDED_AGAIN = Counter(
    "vecsync_upserter_embedded_again_total",
    "Payload-only changes sent back to stage 1 for a vector, because their point no longer held their text "
    "embedded by their model.",
)
REREAD_FROM_MONGO = Counter(
    "vecsync_upserter_reread_from_mongo_total",
    "Changes to embed again whose stage 1 entry was trimmed already: their documents were read from MongoDB instead.",
)


class EmbedAgain:
    """Queues the change behind a payload-only entry again to be embedded, in the batch's transaction."""

    def __init__(self, settings: UpserterSettings, client: redis.Redis, mongo: Collection[dict[str, Any]]) -> None:
        """``settings`` are one sync's (vecsync.syncs.settings_for), ``mongo`` that sync's MongoDB collection."""
        self.settings = settings
        self.client = client
        self.partitions = settings.partitions
        # Read only when a change to embed again was trimmed from stage 1 (see _embed_current_state).
        self.mongo = mongo
        self.projection = source_projection(settings.text_fields, settings.payload_fields)

    def send(self, doc: EmbeddedDocument, batch: Batch) -> None:
        """Queue the change behind a payload-only entry again to be embedded, keeping its place in the order."""
        EMBEDDED_AGAIN.inc()
        stage1 = self.partitions.name(self.settings.stage1_stream, batch.partition)
        original = self.client.xrange(stage1, min=doc.version, max=doc.version)
        if original:
            send_back_to_embed(batch.tx, stage1, DocumentChange.from_fields(original[0][1]), doc.version)
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

        The same re-read as `vecsync dlq replay` (stage1.publish_current_states): its new stage 1 entry comes after
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
