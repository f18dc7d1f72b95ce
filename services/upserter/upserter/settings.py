"""The upserter's settings: a consumer's, the Qdrant collection, and the MongoDB collection it re-reads from."""

from pydantic import Field, model_validator

from vecsync.settings import ConsumerSettings, MongoSettings, QdrantSettings, TextSettings


# TextSettings for PAYLOAD_FIELDS: the collection gets a keyword index on each, so that filtered searches stay fast.
# MongoSettings and TEXT_FIELDS: a change to embed again whose stage 1 entry was trimmed is read from MongoDB again.
class UpserterSettings(ConsumerSettings, QdrantSettings, TextSettings, MongoSettings):
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    # Embedded store only: how often its writes are flushed to disk. Each write survives a crash of the process
    # at once; a power loss or an operating system crash can take the writes of this interval. 0 flushes every
    # batch before it is acknowledged (about a third of the write rate, see docs/performance.md).
    qdrant_flush_interval_ms: int = Field(default=1000, ge=0)
    # A point's write lock expires after this, so a crashed upserter cannot block a document forever.
    # It must outlast the slowest Qdrant write (QDRANT_TIMEOUT_S), or two writers could overlap.
    point_lock_ttl_ms: int = Field(default=60_000, ge=1000)
    # How long to wait for points locked by another upserter before retrying the batch later.
    point_lock_wait_ms: int = Field(default=10_000, ge=0)
    # How often, at most, the upserter removes the tombstones of one partition that no change still in the streams
    # can need (upserter.tombstones); 0 keeps every tombstone for ever.
    tombstone_sweep_interval_s: float = Field(default=60.0, ge=0)
    # The skip-unchanged hint (docs/design.md) keeps the text fingerprints of the points written last: its current
    # generation starts anew once it holds this many points (per partition), and the one before is kept beside it.
    skip_unchanged_hint_points: int = Field(default=250_000, ge=1)
    # The key the CLI's collection operations must carry when this upserter serves an embedded store. Unset: a
    # random key, written at start to DATA_DIR/upserter-api-key (mode 0600), where a CLI on this host reads it.
    upserter_api_key: str | None = Field(default=None, repr=False, min_length=16)

    @model_validator(mode="after")
    def _lock_outlasts_writes(self) -> "UpserterSettings":
        if self.point_lock_ttl_ms <= self.qdrant_timeout_s * 1000:
            raise ValueError(
                f"POINT_LOCK_TTL_MS ({self.point_lock_ttl_ms}) must be longer than QDRANT_TIMEOUT_S "
                f"({self.qdrant_timeout_s} s), so a lock never expires while its write is in flight"
            )
        return self
