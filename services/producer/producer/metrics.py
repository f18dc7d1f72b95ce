"""The producer's Prometheus metrics: what it read, published and dead-lettered, its snapshot's progress, its
waits for room and for replicas, and its failures.

One process follows every sync, so what each sync's producer reads, publishes and stands at carries a ``sync``
label (the sync's name; "default" for the environment's sync). Four process-wide counters keep no label, so that
what reads them by their name alone goes on reading them: the invalidations, the seconds waited for room, the
replica waits timed out and the lost shares (the producer's log names the sync of each).
"""

from prometheus_client import Counter, Gauge

EVENTS_READ = Counter(
    "vecsync_producer_events_total", "Change events read, by sync and operation type.", ["sync", "operation"]
)
SNAPSHOT_DOCUMENTS = Counter(
    "vecsync_producer_snapshot_documents_total", "Documents published by the initial snapshot.", ["sync"]
)
SNAPSHOT_RUNNING = Gauge(
    "vecsync_producer_snapshot_running", "1 while the producer snapshots the sync's collection, else 0.", ["sync"]
)
SNAPSHOT_DONE = Gauge(
    "vecsync_producer_snapshot_documents_done",
    "Documents the snapshot in progress has published, across restarts.",
    ["sync"],
)
SNAPSHOT_ESTIMATED = Gauge(
    "vecsync_producer_snapshot_documents_estimated",
    "The collection's estimated size when the snapshot began.",
    ["sync"],
)
THROTTLED = Gauge(
    "vecsync_producer_throttled",
    "1 while the producer waits for the pipeline's backlog to fall below PRODUCER_RESUME_BACKLOG, else 0.",
    ["sync"],
)
THROTTLED_FOR = Gauge(
    "vecsync_producer_throttled_for_seconds",
    "How long the producer has been waiting for room (0 when it is not).",
    ["sync"],
)
THROTTLED_SECONDS = Counter(
    "vecsync_producer_throttled_seconds_total", "Time the producer spent waiting for room in the pipeline."
)
PIPELINE_BACKLOG = Gauge(
    "vecsync_producer_pipeline_backlog",
    "Entries not yet processed in both stages of the sync, as the producer last measured them before reading MongoDB.",
    ["sync"],
)
ENTRIES_PUBLISHED = Counter("vecsync_producer_entries_published_total", "Entries added to stage 1.", ["sync", "op"])
INVALIDATIONS = Counter(
    "vecsync_producer_invalidations_total",
    "Drop, rename and invalidate events: the watched collection went away.",
    ["operation"],
)
DEAD_LETTERED = Counter(
    "vecsync_producer_dead_lettered_total",
    "Changes whose document could not be re-read, sent to the stage 1 DLQ.",
    ["sync"],
)
HISTORY_LOST = Counter(
    "vecsync_producer_history_lost_total", "Times the change stream could not resume from the stored token.", ["sync"]
)
ERRORS = Counter(
    "vecsync_producer_errors_total", "Failures talking to MongoDB or Redis, retried.", ["sync", "dependency"]
)
REPLICA_WAITS_TIMED_OUT = Counter(
    "vecsync_producer_replica_waits_timed_out_total",
    "Batches whose share on a Redis Cluster master no replica acknowledged within PRODUCER_REPLICA_WAIT_MS.",
)
LOST_SHARES = Counter(
    "vecsync_producer_lost_shares_total",
    "Partitions found to have lost writes their master had acknowledged (an unplanned failover, a master restarted "
    "without its last writes); the producer went back to their last mark.",
)
TOKEN_AGE = Gauge(
    "vecsync_producer_resume_token_age_seconds", "Seconds since the stored resume token last advanced.", ["sync"]
)
