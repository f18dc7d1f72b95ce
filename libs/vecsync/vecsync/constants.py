"""Every Redis name the pipeline uses, in one place.

The defaults are the names operators already know; each can be overridden by
the settings (STAGE1_STREAM, STAGE1_GROUP, STAGE2_STREAM, STAGE2_GROUP).
"""

STAGE1_STREAM = "raw_document_changes"
STAGE1_GROUP = "embedding_processors"
STAGE2_STREAM = "embedded_documents"
STAGE2_GROUP = "qdrant_upserters"

DLQ_SUFFIX = ":dlq"


# Producer state: the change stream's resume token, written in the same
# MULTI/EXEC as the entries it covers.
# One per source collection, so that several producers can share a Redis.
def resume_token_key(source: str) -> str:
    """The key of the resume token of the producer of ``source`` ("<database>.<collection>")."""
    return f"vecsync:producer:{source}:resume_token"


def resume_token_updated_key(source: str) -> str:
    """The key of the time at which that resume token last advanced."""
    return f"vecsync:producer:{source}:resume_token_updated_at"


def snapshot_key(source: str) -> str:
    """The key of the snapshot in progress: its position and the resume token of the change stream it follows next.

    Written in the same MULTI/EXEC as each batch the snapshot publishes; deleted, in the transaction that stores the
    resume token, when the snapshot is complete.
    """
    return f"vecsync:producer:{source}:snapshot"


def producer_batch_key(source: str) -> str:
    """With several partitions: the number of the producer's last batch whose every partition is written."""
    return f"vecsync:producer:{source}:batch"


def ids_migrated_key(source: str) -> str:
    """Set once the producer has published again the documents whose id string this release changed.

    Those are string _ids that read as another value's id (24 lowercase hex digits, ``true``, ``{...}``, ``"..."``),
    which earlier releases wrote as themselves and so in one point with, say, the ObjectId of those digits.
    """
    return f"vecsync:producer:{source}:ids_migrated"


def producer_position_key(source: str) -> str:
    """With several partitions, one per partition: the high-water mark of the producer's writes to it, a hash of
    the number of the batch that last wrote it, that batch's size and its resume token."""
    return f"vecsync:producer:{source}:position"


def producer_marks_key(source: str) -> str:
    """With several partitions (or a Redis Cluster): a hash, in the producer's own slot, of the batch number that
    each partition's high-water mark last received, by the name of the mark's key; stored with the resume token, so
    that a partition whose mark is found older has lost writes its master acknowledged (docs/design.md,
    "Partitions and Redis Cluster")."""
    return f"vecsync:producer:{source}:marks"


def producer_replicated_key(source: str) -> str:
    """On a Redis Cluster, one per partition: the number of the last batch that a replica of the partition's master
    acknowledged (WAIT), written just before the WAIT so that WAIT counts from a write of its own connection."""
    return f"vecsync:producer:{source}:replicated"


def partitions_key(stream: str) -> str:
    """The STREAM_PARTITIONS that the pipeline's stream ``stream`` (its base name) is split into: stored by the first
    process that uses it (SET NX), checked by every other, changed only by `vecsync repartition`."""
    return f"vecsync:partitions:{stream}"


# Upserter state. The version fence itself lives in each point's payload in Qdrant (see docs/design.md).
# No longer used: the newest version applied per point, as earlier upserters kept it. `vecsync rebuild` deletes it.
APPLIED_VERSIONS_KEY = "vecsync:upserter:applied_versions"
# The text fingerprint (vecsync.documents.text_fingerprint) of each point as last written: only a hint, which the
# embedder-worker checks to skip unchanged texts.
APPLIED_TEXT_KEY = "vecsync:upserter:applied_text"
# The hint's previous generation: once APPLIED_TEXT_KEY holds SKIP_UNCHANGED_HINT_POINTS points, the upserter renames
# it to this (dropping the generation before), so the hint keeps the points written last, at most about twice that.
APPLIED_TEXT_PREVIOUS_KEY = APPLIED_TEXT_KEY + ":previous"
POINT_LOCK_PREFIX = "vecsync:upserter:lock:"


def tombstones_key(collection: str) -> str:
    """The hash of the newest delete version per point of Qdrant collection ``collection``.

    Deletes leave no point to carry their version, so their tombstones live here. They record MongoDB's order of
    changes, so they stay valid when the collection is emptied, recreated or rebuilt.
    """
    return f"vecsync:upserter:tombstones:{collection}"


# Set to the trim bound once a stream has been trimmed: from then on it no longer holds every change.
TRIMMED_KEY_PREFIX = "vecsync:trimmed:"

# Progress of the operator CLI's long commands, so an interrupted run resumes.
RESYNC_PROGRESS_PREFIX = "vecsync:resync:"
VERIFY_PROGRESS_PREFIX = "vecsync:verify:"

# Version of the stage entry layout. Entries with another version are
# dead-lettered instead of being guessed at.
SCHEMA_VERSION = "1"


def dlq_stream(stream: str) -> str:
    """Name of the dead-letter stream that belongs to ``stream``."""
    return stream + DLQ_SUFFIX


# The bound of a chunked document's text (MAX_DOCUMENT_CHARS): about 125,000 tokens, some 560 chunks of 256 tokens,
# ten times a long magazine article. It keeps one document's stage entries (a few MB at most) within what Redis and
# the stages hold comfortably; the text past it is left out, and its points record that it was cut.
DEFAULT_MAX_DOCUMENT_CHARS = 500_000
# Tokens that consecutive chunks of a document share (CHUNK_OVERLAP_TOKENS), so that a sentence cut by a chunk's
# end is read whole by the next chunk.
DEFAULT_OVERLAP_TOKENS = 32

# The sparse models a collection's points may carry beside their dense vector (SPARSE_MODEL, or a sync's
# sparse_model): each is a named sparse vector of that name, computed from a point's text by the store that writes
# it (docs/design.md, "Hybrid search"). bm25 is Qdrant's BM25, with Qdrant's IDF modifier.
SPARSE_MODELS = ("bm25",)
