"""Prometheus metrics shared by the stages.

Names follow Prometheus conventions: the ``vecsync_`` prefix, ``_total`` on
counters, ``_seconds`` on durations. Labels are ``stage``, ``stream``,
``group``, ``sync`` and ``partition`` only, and a model change's ``collection``
(a Qdrant collection name: vecsync.reindex_metrics); a document id is never a label.
``stream`` names the stage's stream as configured (STAGE1_STREAM,
STAGE2_STREAM) for every sync, and ``sync`` the sync (vecsync.sync), so that
the alert thresholds, which name the stage's stream, hold for each sync.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import redis
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from vecsync.partitions import base_name, partition_index
from vecsync.redis_client import memory_infos, memory_share
from vecsync.stream_stats import StreamStats, stream_stats
from vecsync.sync import DEFAULT_SYNC

log = logging.getLogger(__name__)

_STAGE_LABELS = ["stage", "stream", "group", "sync"]

MESSAGES_PROCESSED = Counter(
    "vecsync_messages_processed_total", "Stream entries handled and acknowledged.", _STAGE_LABELS
)
MESSAGES_FAILED = Counter(
    "vecsync_messages_failed_total",
    "Stream entries whose handling failed, by reason (transient, misconfigured, invalid, error).",
    [*_STAGE_LABELS, "reason"],
)
MESSAGES_RETRIED = Counter(
    "vecsync_messages_retried_total", "Stream entries retried after a transient failure.", _STAGE_LABELS
)
MESSAGES_RECLAIMED = Counter(
    "vecsync_messages_reclaimed_total",
    "Stream entries taken over from an idle consumer with XAUTOCLAIM, or re-read after a restart.",
    _STAGE_LABELS,
)
MESSAGES_DEAD_LETTERED = Counter(
    "vecsync_messages_dead_lettered_total", "Stream entries moved to the dead-letter stream.", _STAGE_LABELS
)
BATCH_SIZE = Histogram(
    "vecsync_batch_size",
    "Entries per handled batch.",
    _STAGE_LABELS,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_DURATION = Histogram(
    "vecsync_batch_duration_seconds",
    "Time to handle and acknowledge one batch.",
    _STAGE_LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REDIS_REFUSED = Counter(
    "vecsync_redis_refused_total",
    "Redis commands refused because Redis was full (maxmemory, noeviction) or read-only (a replica, as after a "
    "failover), by reason (oom, readonly); the work was retried.",
    ["stage", "reason"],
)
CONSUMER_PAUSED = Gauge(
    "vecsync_consumer_paused",
    "1 while the consumer is paused on a misconfiguration (every entry would fail alike: a vector size, a URL, a "
    "model, a key), keeping its entries and trying them again until the cause is gone, else 0.",
    _STAGE_LABELS,
)
LOOP_HEALTHY = Gauge(
    "vecsync_loop_healthy",
    "1 while the service's main loop keeps coming round within STALL_TIMEOUT_S (what /healthz reports), else 0.",
    ["stage"],
)
END_TO_END_LATENCY = Histogram(
    "vecsync_end_to_end_latency_seconds",
    "Time from the MongoDB change to its write in Qdrant being confirmed.",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)


class WatchedStream(NamedTuple):
    """A partition's stream and group whose figures the collector reports, with the sync whose entries it holds."""

    stream: str
    group: str
    sync: str = DEFAULT_SYNC


class StreamStatsCollector(Collector):
    """Reads stream length, lag, pending and DLQ length from Redis at each scrape.

    Reading at scrape time means the numbers are current even while a stage is
    stuck or down, which is exactly when operators look at them. ``streams`` are
    WatchedStreams, or plain (stream, group) pairs of the environment's sync.
    """

    def __init__(self, client: redis.Redis, streams: Iterable[WatchedStream | tuple[str, str]]) -> None:
        self._client = client
        self._streams = [WatchedStream(*watched) for watched in streams]

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vecsync_redis_up", "Whether the last Redis read for stream statistics succeeded.")
        families = {
            "length": GaugeMetricFamily(
                "vecsync_stream_length",
                "Entries in the stream (in one partition).",
                labels=["stream", "sync", "partition"],
            ),
            "lag": GaugeMetricFamily(
                "vecsync_stream_group_lag",
                "Entries not yet delivered to the group.",
                labels=["stream", "group", "sync", "partition"],
            ),
            "pending": GaugeMetricFamily(
                "vecsync_stream_group_pending",
                "Entries delivered to the group and not yet acknowledged.",
                labels=["stream", "group", "sync", "partition"],
            ),
            "oldest": GaugeMetricFamily(
                "vecsync_stream_oldest_pending_age_seconds",
                "Age of the oldest unacknowledged entry (0 when none).",
                labels=["stream", "group", "sync", "partition"],
            ),
            "idle": GaugeMetricFamily(
                "vecsync_stream_oldest_pending_idle_seconds",
                "Time since the oldest unacknowledged entry was last delivered (0 when none).",
                labels=["stream", "group", "sync", "partition"],
            ),
            "dlq": GaugeMetricFamily(
                "vecsync_stream_dlq_length",
                "Entries in the stream's dead-letter stream.",
                labels=["stream", "sync", "partition"],
            ),
        }
        memory = {
            "used": GaugeMetricFamily("vecsync_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory)."),
            "max": GaugeMetricFamily(
                "vecsync_redis_memory_max_bytes", "Redis's maxmemory; 0 when unset (then nothing bounds it)."
            ),
        }
        try:
            all_stats = [
                (watched, stream_stats(self._client, watched.stream, watched.group)) for watched in self._streams
            ]
            # On a Redis Cluster, the master closest to its maxmemory: each refuses writes on its own once full.
            info = max(memory_infos(self._client), key=memory_share)
        except redis.RedisError as exc:
            log.warning("Could not read stream statistics from Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for watched, stats in all_stats:
            _add_stats(families, watched, stats)
        yield from families.values()
        memory["used"].add_metric([], int(info["used_memory"]))
        memory["max"].add_metric([], int(info.get("maxmemory", 0)))
        yield from memory.values()


def _add_stats(families: dict[str, GaugeMetricFamily], watched: WatchedStream, stats: StreamStats) -> None:
    # `stream` is the stream's base name, whatever the partitions (`partition` tells them apart, "0" with one): the
    # stage's stream, or a definition sync's own (raw_document_changes.tickets, which the alert rules give its
    # stage's threshold); `sync` names the sync.
    stream, partition = base_name(stats.stream), str(partition_index(stats.stream))
    families["length"].add_metric([stream, watched.sync, partition], stats.length)
    families["dlq"].add_metric([stream, watched.sync, partition], stats.dlq_length)
    group_labels = [stream, stats.group, watched.sync, partition]
    if stats.lag is not None:
        families["lag"].add_metric(group_labels, stats.lag)
    families["pending"].add_metric(group_labels, stats.pending)
    families["oldest"].add_metric(group_labels, stats.oldest_pending_age_s)
    families["idle"].add_metric(group_labels, stats.oldest_pending_idle_s)


def register_stream_stats(client: redis.Redis, streams: Iterable[WatchedStream | tuple[str, str]]) -> None:
    """Report the figures of ``streams`` (WatchedStreams, or (stream, group) pairs) at every scrape of /metrics."""
    REGISTRY.register(StreamStatsCollector(client, streams))
