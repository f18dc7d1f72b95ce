"""The upserter's settings: a consumer's, the Qdrant collection, and the MongoDB collection it re-reads from."""

import ipaddress
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

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
    # Qdrant's REST API over the embedded store (upserter.qdrant_rest), for the applications that read the
    # collection (curl, qdrant-client, LangChain). Unset: not served. QDRANT_API_KEY is its read-write key.
    qdrant_rest_port: int | None = Field(default=None, ge=0, le=65535)
    qdrant_rest_host: str = Field(default="127.0.0.1", min_length=1)
    # A key that may read through the REST API but not delete a collection or write points.
    qdrant_read_only_api_key: str | None = Field(default=None, repr=False, min_length=1)
    # Collections vecsync does not sync whose points clients may write through the REST API (comma-separated;
    # "*": every collection vecsync does not sync). Points of a synced collection are never written from outside.
    qdrant_rest_writable_collections: Annotated[frozenset[str], NoDecode] = frozenset()

    @field_validator("qdrant_rest_port", "qdrant_read_only_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("qdrant_rest_writable_collections", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _rest_needs_the_embedded_store(self) -> "UpserterSettings":
        if self.qdrant_rest_port is not None and self.qdrant_url:
            raise ValueError(
                "QDRANT_REST_PORT serves Qdrant's REST API over the embedded store, but QDRANT_URL names a Qdrant "
                "server: point clients at that server instead, and unset QDRANT_REST_PORT"
            )
        return self

    def rest_host_is_loopback(self) -> bool:
        """Whether QDRANT_REST_HOST only accepts clients on this host."""
        if self.qdrant_rest_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.qdrant_rest_host).is_loopback
        except ValueError:
            return False

    @model_validator(mode="after")
    def _lock_outlasts_writes(self) -> "UpserterSettings":
        if self.point_lock_ttl_ms <= self.qdrant_timeout_s * 1000:
            raise ValueError(
                f"POINT_LOCK_TTL_MS ({self.point_lock_ttl_ms}) must be longer than QDRANT_TIMEOUT_S "
                f"({self.qdrant_timeout_s} s), so a lock never expires while its write is in flight"
            )
        return self
