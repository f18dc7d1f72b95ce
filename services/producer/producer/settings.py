"""The producer's settings: the MongoDB collection to follow, the text it reads, and flow control."""

from pydantic import Field

from vecsync.settings import FlowControlSettings, MongoSettings, ServiceSettings, TextSettings


class ProducerSettings(ServiceSettings, MongoSettings, TextSettings, FlowControlSettings):
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    batch_size: int = Field(default=256, ge=1, le=10_000)
    # How long one change stream read waits for new events; bounds how fast SIGTERM is noticed.
    max_await_ms: int = Field(default=500, ge=1)
    # The shortest interval between two reads of an idle change stream.
    idle_poll_ms: int = Field(default=50, ge=0)
    # The longest: a stream quiet for this long waits twice as long after each further empty read, up to this, and
    # the next event brings it back to IDLE_POLL_MS, so that many idle syncs cost little (producer.idle_poll).
    idle_poll_max_ms: int = Field(default=1000, ge=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # What to do when the stored resume token is older than MongoDB's history: stop (the default) or snapshot again.
    resync_on_history_lost: bool = False
    # On a Redis Cluster: how long each partition's share of a batch may take to reach a replica of its master (WAIT)
    # before the resume token moves past it; longer, the producer pauses and writes the batch again. 0 turns the
    # wait off: an unplanned failover may then lose a share, which the producer finds and publishes again
    # (docs/design.md, "Partitions and Redis Cluster").
    producer_replica_wait_ms: int = Field(default=1000, ge=0)
